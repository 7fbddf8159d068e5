"""Generation inside distillation: sampling from causal LMs, and the two batch transforms built on it.

* :func:`sample` continues prompts with a causal LM (a Hugging Face ``...ForCausalLM`` or any model taking
  ``input_ids``, ``past_key_values``, ``use_cache`` and returning ``logits``), token by token with its
  key/value cache. Each row draws from its **own** ``torch.Generator`` (Gumbel-max sampling), so a row's
  continuation depends on its seed alone: not on the batch it sits in, nor on the global RNG, nor on what
  ran before. That is what makes generation inside the training loop resumable bit for bit.
* :class:`OnPolicy` (GKD, MiniLLM): a whole-batch transform that, for a fraction ``lam`` of the training
  batches, replaces each sequence's continuation with the *student's* own sample from its prompt; the
  teacher then scores those tokens like any other batch.
* :class:`TeacherSequences` (sequence-level KD, Kim & Rush 2016): replaces each training sequence's
  continuation with the *teacher's* sample (or greedy output), generated once per sample and kept — the
  transfer set.

Both hand the engine a finished ``tokens``-task batch: ``input_ids`` = prompt + continuation, shifted labels
with ``-100`` over the prompt (and after an end-of-sequence token), ``mask`` and ``lengths``.
"""
from __future__ import annotations

import inspect
import time
from collections.abc import Mapping
from contextlib import nullcontext

import numpy as np
import torch
from torch import nn

from distill.errors import DistillError, excerpt
from distill.evaluation import eval_mode
from distill.losses.positions import IGNORE_INDEX

_MIX = 2**61 - 1  # row seeds: (seed * ROW + row) mod a Mersenne prime
_ROW = 1_000_003


def row_seed(seed: int, row: int) -> int:
    """The seed of row ``row`` of a draw seeded ``seed`` (both integers ``>= 0``)."""
    return (int(seed) * _ROW + int(row)) % _MIX


def _check_sampling(temperature, new_tokens) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature >= 0:
        raise DistillError(f"temperature must be a number >= 0 (0: greedy), got {excerpt(temperature)}")
    if isinstance(new_tokens, bool) or not isinstance(new_tokens, int) or new_tokens < 1:
        raise DistillError(f"new_tokens must be a positive integer, got {excerpt(new_tokens)}")


def _cache_keyword(model) -> str:
    """``cache`` (transformers >= 5.x) or ``past_key_values`` (earlier, and most other models)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def next_logits(model, ids, past, seen: int):
    """One decoding step of a causal LM: the last position's logits and the grown key/value cache, after feeding
    ``ids`` (``seen`` tokens in all; ``past`` None on the first step, which feeds the whole prompt). The default
    ``step`` of :func:`sample`; another model kind (a seq2seq decoder over its encoder's output) passes its own
    function of the same signature."""
    keyword = _cache_keyword(model)
    out = model(input_ids=ids, attention_mask=torch.ones(len(ids), seen, dtype=torch.long, device=ids.device),
                use_cache=True, **{keyword: past})
    return out.logits[:, -1].float(), getattr(out, keyword)


@torch.no_grad()
def sample(model: nn.Module, prompts: torch.Tensor, new_tokens: int, seeds, temperature: float = 1.0,
           teacher: nn.Module | None = None, teacher_mix: float = 0.0,
           eos_token_id: int | None = None, step=next_logits) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Continue ``prompts`` ``(B, P)`` (no padding) by ``new_tokens`` tokens.

    Each step draws :math:`y_t = \arg\max_v (\log \pi_v + g_v)` with Gumbel noise :math:`g` from row ``b``'s
    generator seeded ``seeds[b]`` — a draw from :math:`\pi` — where :math:`\pi = \mathrm{softmax}(z / T)`;
    ``temperature=0`` is greedy decoding. With a ``teacher`` and ``teacher_mix`` :math:`\alpha > 0`,
    :math:`\pi = \alpha\,\mathrm{softmax}(z^t / T) + (1 - \alpha)\,\mathrm{softmax}(z / T)` (MiniLLM's
    teacher-mixed sampling). The models run in eval mode (no dropout) and are put back as they were.

    ``step(model, ids, cache, seen) -> (last logits, cache)`` runs the model one step (:func:`next_logits`).

    Returns ``(sequences (B, P + new_tokens), alive (B, new_tokens))``: ``alive`` is False after a generated
    ``eos_token_id`` (the end token itself counts); once every row has ended, decoding stops and the remaining
    positions hold ``eos_token_id``.
    """
    _check_sampling(temperature, new_tokens)
    if not isinstance(prompts, torch.Tensor) or prompts.dim() != 2 or prompts.shape[1] < 1:
        raise DistillError(f"prompts must be a (batch, length >= 1) tensor of token ids, got {excerpt(prompts)}")
    seeds = [int(s) for s in seeds]
    if len(seeds) != len(prompts):
        raise DistillError(f"one seed per prompt: {len(prompts)} prompts, {len(seeds)} seeds")
    if not 0.0 <= teacher_mix < 1.0 or (teacher_mix > 0 and teacher is None):
        raise DistillError(f"teacher_mix must be in [0, 1) and needs a teacher, got {teacher_mix!r}")
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    out, alive = [], []
    running = torch.ones(len(prompts), dtype=torch.bool, device=prompts.device)
    mixing = teacher is not None and teacher_mix > 0
    with eval_mode(model), (eval_mode(teacher) if mixing else nullcontext()):
        seen = prompts.shape[1]
        logits, past = step(model, prompts, None, seen)
        t_logits, t_past = step(teacher, prompts, None, seen) if mixing else (None, None)
        for k in range(new_tokens):
            if temperature == 0:
                token = logits.argmax(-1)
            else:
                log_pi = torch.log_softmax(logits / temperature, -1)
                if mixing:
                    log_pi = torch.logaddexp(log_pi + np.log1p(-teacher_mix),
                                             torch.log_softmax(t_logits / temperature, -1) + np.log(teacher_mix))
                u = torch.stack([torch.rand(logits.shape[-1], generator=g, dtype=torch.float64) for g in generators])
                gumbel = -torch.log(-torch.log(u.clamp(1e-300, 1.0 - 1e-16)))
                token = (log_pi.double().cpu() + gumbel).argmax(-1).to(prompts.device)
            out.append(token)
            alive.append(running.clone())
            if eos_token_id is not None:
                running &= token != eos_token_id
                if not running.any():  # every row has ended: the rest is end tokens, none alive
                    out += [torch.full_like(token, eos_token_id)] * (new_tokens - k - 1)
                    alive += [running.clone()] * (new_tokens - k - 1)
                    break
            if k + 1 == new_tokens:
                break
            ids, seen = token[:, None], seen + 1
            logits, past = step(model, ids, past, seen)
            if mixing:
                t_logits, t_past = step(teacher, ids, t_past, seen)
    return torch.cat([prompts, torch.stack(out, 1)], 1), torch.stack(alive, 1)


def continuation_batch(sequences: list[torch.Tensor], prompt_lengths: list[int], alive: list[torch.Tensor] | None,
                       pad_token_id: int, index=None) -> dict:
    """The ``tokens`` task's training batch (causal shift done) of ``sequences`` (1-D token ids, any lengths)
    whose first ``prompt_lengths[b]`` tokens are the prompt: only the continuation's tokens count as targets,
    and of those only where ``alive`` (up to an end token)."""
    lengths = torch.tensor([len(s) for s in sequences])
    width = int(lengths.max())
    ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(sequences), width), IGNORE_INDEX, dtype=torch.long)
    for b, (seq, p) in enumerate(zip(sequences, prompt_lengths)):
        ids[b, :len(seq)] = seq
        target = seq[p:].clone()  # predicted at positions p-1 ... len-2
        if alive is not None:
            target[~alive[b][:len(target)]] = IGNORE_INDEX
        labels[b, p - 1:len(seq) - 1] = target
    attention = (torch.arange(width)[None, :] < lengths[:, None]).long()
    batch = {"input": {"input_ids": ids, "attention_mask": attention}, "label": labels, "mask": labels != IGNORE_INDEX,
             "lengths": lengths}
    if index is not None:
        batch["index"] = torch.as_tensor(index).long()
    return batch


def prompts_of(batch: Mapping, prompt_tokens: int) -> tuple[torch.Tensor, list[int]]:
    """Each row's first tokens (``min(prompt_tokens, its length - 1)``, at least 1) and their lengths."""
    ids = batch["input"]["input_ids"]
    lengths = batch.get("lengths")
    lengths = [ids.shape[1]] * len(ids) if lengths is None else [int(n) for n in lengths]
    return ids, [max(1, min(prompt_tokens, n - 1)) for n in lengths]


def sample_rows(model, ids: torch.Tensor, prompt_lengths: list[int], new_tokens: int, seeds: list[int], **options):
    """:func:`sample` for rows whose prompts differ in length: rows with equal prompt lengths go together (a
    row's sample depends on its seed alone, so the grouping changes nothing). Returns per-row sequences and
    ``alive`` masks in the rows' order."""
    sequences, alive = [None] * len(ids), [None] * len(ids)
    for p in sorted(set(prompt_lengths)):
        rows = [b for b, n in enumerate(prompt_lengths) if n == p]
        seqs, live = sample(model, ids[rows, :p], new_tokens, [seeds[b] for b in rows], **options)
        for k, b in enumerate(rows):
            sequences[b], alive[b] = seqs[k], live[k]
    return sequences, alive


def _check_prompt(prompt_tokens) -> None:
    if isinstance(prompt_tokens, bool) or not isinstance(prompt_tokens, int) or prompt_tokens < 1:
        raise DistillError(f"prompt_tokens must be a positive integer, got {excerpt(prompt_tokens)}")


class _Generating:
    """What the two transforms share: options, checks, the attached models and a generation clock."""

    whole_batch = True

    def __init__(self, prompt_tokens: int, new_tokens: int, temperature: float, pad_token_id: int,
                 eos_token_id: int | None):
        _check_prompt(prompt_tokens)
        _check_sampling(temperature, new_tokens)
        self.prompt_tokens, self.new_tokens, self.temperature = prompt_tokens, new_tokens, float(temperature)
        self.pad_token_id, self.eos_token_id = pad_token_id, eos_token_id
        self.student = self.teacher = None
        self.generated_tokens, self.generation_seconds = 0, 0.0

    def attach(self, student, *teachers) -> list:
        """Keep the models (the engine calls this with the student and its live teachers); no hooks."""
        self.student, self.teacher = student, (teachers[0] if teachers else None)
        return []

    def _generate(self, model, batch, seeds, **options) -> dict:
        ids, prompt_lengths = prompts_of(batch, self.prompt_tokens)
        start = time.perf_counter()
        sequences, alive = sample_rows(model, ids, prompt_lengths, self.new_tokens, seeds,
                                       temperature=self.temperature, eos_token_id=self.eos_token_id, **options)
        self.generation_seconds += time.perf_counter() - start
        self.generated_tokens += len(ids) * self.new_tokens
        return continuation_batch([s.cpu() for s in sequences], prompt_lengths, [a.cpu() for a in alive],
                                  self.pad_token_id, batch.get("index"))

    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.generation_seconds if self.generation_seconds else float("nan")


class OnPolicy(_Generating):
    """On-policy batches for GKD (Agarwal et al. 2024) and MiniLLM (Gu et al. 2024).

    Per training batch, with probability ``lam`` (GKD's :math:`\\lambda`, the student-data fraction) the
    batch is replaced by the student's continuations (``new_tokens`` at ``temperature``) of each sequence's
    first ``prompt_tokens`` tokens; the other batches pass unchanged (the supervised part). Only the generated
    tokens count as targets. ``teacher_mix`` > 0 samples from MiniLLM's teacher-mixed distribution.

    Determinism: the coin and a 62-bit batch seed are drawn from the engine's augmentation generator
    (seeded by the run's seed and the epoch, saved in every checkpoint), two draws per batch whatever the
    coin; row ``b`` then samples from its own generator seeded ``row_seed(batch seed, b)``. So a killed and
    resumed run generates exactly the tokens an uninterrupted one does, without touching the global RNG.
    """

    def __init__(self, lam: float = 0.5, prompt_tokens: int = 8, new_tokens: int = 32, temperature: float = 1.0,
                 teacher_mix: float = 0.0, pad_token_id: int = 0, eos_token_id: int | None = None):
        super().__init__(prompt_tokens, new_tokens, temperature, pad_token_id, eos_token_id)
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not 0.0 <= lam <= 1.0:
            raise DistillError(f"lam (the fraction of on-policy batches) must be a number in [0, 1], "
                               f"got {excerpt(lam)}")
        if isinstance(teacher_mix, bool) or not isinstance(teacher_mix, (int, float)) or not 0.0 <= teacher_mix < 1:
            raise DistillError(f"teacher_mix must be a number in [0, 1), got {excerpt(teacher_mix)}")
        self.lam, self.teacher_mix = float(lam), float(teacher_mix)
        self.on_policy_batches = 0

    def __call__(self, batch: dict, generator: torch.Generator) -> dict:
        coin = float(torch.rand((), generator=generator))
        seed = int(torch.randint(0, 2**62, (), generator=generator))
        if coin >= self.lam:
            return batch
        if self.student is None:
            raise DistillError("OnPolicy needs the student: use it as a Distiller augment (it is attached in fit)")
        if self.teacher_mix > 0 and self.teacher is None:
            raise DistillError("OnPolicy(teacher_mix > 0) samples from the teacher too: it needs a live teacher "
                               "(not a cached one)")
        self.on_policy_batches += 1
        extra = {"teacher": self.teacher, "teacher_mix": self.teacher_mix} if self.teacher_mix > 0 else {}
        return self._generate(self.student, batch, [row_seed(seed, b) for b in range(len(batch["index"]))], **extra)


class TeacherSequences(_Generating):
    """Sequence-level KD (Kim & Rush 2016, *Sequence-Level Knowledge Distillation*, EMNLP): the student is
    trained on the teacher's outputs instead of the data. Each training sequence's continuation after its
    first ``prompt_tokens`` tokens is replaced by the teacher's (``temperature=0``: greedy, the mode the
    paper's beam search approximates; > 0: a sample), generated the first time the sample is met, from a
    generator seeded by ``(seed, sample index)`` alone, and kept: the transfer set. :meth:`save` /
    :meth:`load` keep it on disk (ragged ``.npz``) for other runs.
    """

    needs_teacher = True  # a staged run hands it the teacher although no term reads the teacher

    def __init__(self, prompt_tokens: int = 8, new_tokens: int = 32, temperature: float = 1.0, seed: int = 0,
                 pad_token_id: int = 0, eos_token_id: int | None = None, teacher: nn.Module | None = None):
        super().__init__(prompt_tokens, new_tokens, temperature, pad_token_id, eos_token_id)
        self.seed = int(seed)
        self.teacher = teacher
        self.store: dict[int, tuple[torch.Tensor, int, torch.Tensor]] = {}  # index -> (sequence, prompt, alive)

    def attach(self, student, *teachers) -> list:
        if teachers:
            self.teacher = teachers[0]
        self.student = student
        return []

    def __call__(self, batch: dict, generator: torch.Generator | None = None) -> dict:
        index = [int(i) for i in batch["index"]]
        missing = [b for b, i in enumerate(index) if i not in self.store]
        if missing:
            if self.teacher is None:
                raise DistillError("TeacherSequences needs a live teacher to generate the transfer set (or load() one)")
            rows = {"input": {"input_ids": batch["input"]["input_ids"][missing]},
                    "lengths": batch["lengths"][missing] if batch.get("lengths") is not None else None,
                    "index": torch.tensor([index[b] for b in missing])}
            made = self._generate(self.teacher, rows, [row_seed(self.seed, index[b]) for b in missing])
            prompt_lengths = prompts_of(rows, self.prompt_tokens)[1]
            for k, b in enumerate(missing):
                n, p = int(made["lengths"][k]), prompt_lengths[k]
                self.store[index[b]] = (made["input"]["input_ids"][k, :n].clone(), p,
                                        made["label"][k, p - 1:n - 1] != IGNORE_INDEX)
        seqs, prompts, alive = zip(*(self.store[i] for i in index))
        return continuation_batch(list(seqs), list(prompts), list(alive), self.pad_token_id, index)

    def fill(self, dataset, collate, batch_size: int = 64) -> "TeacherSequences":
        """Generate the continuation of every sample of ``dataset`` now (``collate``: the task's collate)."""
        for start in range(0, len(dataset), batch_size):
            items = [dataset[i] for i in range(start, min(len(dataset), start + batch_size))]
            batch = collate(items)
            batch["index"] = torch.arange(start, start + len(items))
            self(batch)
        return self

    def save(self, path) -> None:
        keys = sorted(self.store)
        seqs = [self.store[k][0] for k in keys]
        np.savez(path, index=np.array(keys), offsets=np.cumsum([0] + [len(s) for s in seqs]),
                 tokens=torch.cat(seqs).numpy().astype(np.int32), prompts=np.array([self.store[k][1] for k in keys]),
                 alive=torch.cat([self.store[k][2] for k in keys]).numpy(), new_tokens=self.new_tokens)

    def load(self, path) -> "TeacherSequences":
        with np.load(path) as f:
            offsets, alive_at = f["offsets"], np.cumsum([0] + [self.new_tokens] * len(f["index"]))
            for n, i in enumerate(f["index"]):
                seq = torch.from_numpy(f["tokens"][offsets[n]:offsets[n + 1]].astype(np.int64))
                alive = torch.from_numpy(f["alive"][alive_at[n]:alive_at[n + 1]])
                self.store[int(i)] = (seq, int(f["prompts"][n]), alive)
        return self


@torch.no_grad()
def sequence_nll(model: nn.Module, batch: Mapping) -> tuple[float, int]:
    """``(summed negative log-likelihood, counted tokens)`` of a ``tokens`` batch's targets under ``model`` —
    the teacher's NLL of student samples (:func:`continuation_batch` batches) when ``model`` is the teacher."""
    with eval_mode(model):
        logits = model(**batch["input"]).logits.float()
    labels = batch["label"]
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                            ignore_index=IGNORE_INDEX, reduction="sum")
    return float(nll), int((labels != IGNORE_INDEX).sum())
