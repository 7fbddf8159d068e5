r"""Decoding and sequence-level distillation for seq2seq models (Kim & Rush 2016, *Sequence-Level Knowledge
Distillation*, EMNLP).

* :func:`greedy` decodes with :func:`distill.generation.sample` at temperature 0, its decoding step
  (:func:`seq2seq_step`) running the decoder over the encoder's output.
* :func:`beam_search` is a batched beam search over any next-token log-probability function: ``beam``
  hypotheses per source, a hypothesis ends at ``</s>`` (or at ``max_len`` tokens), scored with length
  normalisation :math:`\hat s(y) = \log p(y \mid x) / |y|^{\alpha}` (``length_penalty`` :math:`\alpha`; 0: none,
  1: mean log-probability per token, ``</s>`` counted). It stops when no live hypothesis can still enter the
  ``beam`` best finished ones.
* :class:`BeamTargets` (a whole-batch transform for the engine) replaces each training target by a teacher
  beam hypothesis, made once per sample and kept — the transfer set. Sequence-level KD takes the teacher's
  best hypothesis :math:`\hat y = \arg\max_y \hat s_t(y)`; sequence-level interpolation
  (``interpolate=True``) the beam hypothesis closest to the reference,
  :math:`\tilde y = \arg\max_{y \in \mathcal B} \mathrm{sim}(y, y^*)`, with :math:`\mathrm{sim} = -` edit distance
  (the paper uses BLEU; phoneme strings are scored by their edit distance), ties to the higher-scored.
* :func:`g2p_scores`: phoneme error rate, word accuracy and words per second of a decoding.
* A non-autoregressive student (:class:`distill.zoo.seq2seq.ParallelCTC`, the FastSpeech line's parallel
  output made length-free with CTC) trains through the engine with the ``ctc`` task
  (:func:`parallel_task`) on :func:`parallel_items`: the references, or the teacher's beam outputs (a
  :class:`BeamTargets` store); :func:`ctc_greedy` decodes it in one pass.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from distill.errors import DistillError, excerpt
from distill.evaluation import eval_mode
from distill.generation import sample
from distill.losses.positions import IGNORE_INDEX
from distill.tasks import edit_distance

PAD, BOS, EOS = 0, 1, 2


def _check_positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DistillError(f"{name} must be a positive integer, got {excerpt(value)}")
    return value


def next_token_log_probs(model, input_ids: torch.Tensor) -> Callable:
    """``f(prefixes (N, t), rows (N,)) -> (N, V)`` log-probabilities of the next target token of source rows
    ``rows`` of ``input_ids`` after ``prefixes`` (``<pad>`` and ``<s>`` never come next).

    A model with incremental decoding (``start_decoding`` / ``decode_step``, e.g.
    :class:`~distill.zoo.seq2seq.Seq2SeqTransformer`) keeps its keys and values between calls: when ``prefixes``
    extend the previous call's by one token (after ``f.reorder(parents)`` where a beam search reorders its
    rows) only the new token is computed; any other call starts again from the whole prefix."""
    memory, padding = model.encode(input_ids)
    incremental = hasattr(model, "decode_step")
    state: dict = {"cache": None}

    def log_probs(prefixes, rows):
        if not incremental:
            logits = model.decode(memory[rows], padding[rows], prefixes)[:, -1]
        else:
            cache, seen = state["cache"], state.get("seen")
            if (cache is None or seen.shape[1] + 1 != prefixes.shape[1] or not torch.equal(seen, prefixes[:, :-1])
                    or not torch.equal(state["rows"], rows)):
                cache = model.start_decoding(memory[rows], padding[rows])
                for t in range(prefixes.shape[1] - 1):
                    model.decode_step(cache, prefixes[:, t])
            logits = model.decode_step(cache, prefixes[:, -1])
            state.update(cache=cache, seen=prefixes, rows=rows)
        logits = logits.float()
        logits[:, [PAD, BOS]] = float("-inf")
        return torch.log_softmax(logits, -1)

    def reorder(parents: torch.Tensor) -> None:
        if state["cache"] is not None:
            rows = state["rows"][parents]
            # a beam's hypotheses share their source: its keys and values move only if the rows' sources do
            state["cache"].select(parents, source=not torch.equal(rows, state["rows"]))
            state.update(seen=state["seen"][parents], rows=rows)

    log_probs.reorder = reorder
    return log_probs


def seq2seq_step(input_ids: torch.Tensor):
    """A decoding ``step`` for :func:`distill.generation.sample`: its cache is the prefix so far (the model's
    incremental decoding, when it has one, keeps the keys and values: see :func:`next_token_log_probs`)."""
    state = {}

    def step(model, ids, past, seen):
        if "f" not in state:
            state["f"] = next_token_log_probs(model, input_ids)
        prefix = ids if past is None else torch.cat([past, ids], 1)
        return state["f"](prefix, torch.arange(len(prefix))), prefix

    return step


def _fit(model, max_len) -> int:
    """``max_len`` checked, and shortened to what the model's positions allow (``<s>`` takes one)."""
    _check_positive("max_len", max_len)
    limit = getattr(model, "max_len", None)
    return min(max_len, limit - 1) if isinstance(limit, int) else max_len


def _strip(row: list[int]) -> list[int]:
    return row[:row.index(EOS)] if EOS in row else row


@torch.no_grad()
def greedy(model, input_ids: torch.Tensor, max_len: int = 32) -> list[list[int]]:
    """Greedy decoding: each source row's target ids (``</s>`` and after dropped)."""
    max_len = _fit(model, max_len)
    with eval_mode(model):
        seqs, _ = sample(model, torch.full((len(input_ids), 1), BOS, dtype=torch.long), max_len,
                         seeds=[0] * len(input_ids), temperature=0, eos_token_id=EOS, step=seq2seq_step(input_ids))
    return [_strip(row) for row in seqs[:, 1:].tolist()]


@torch.no_grad()
def beam_search(log_probs: Callable, batch_size: int, beam: int = 5, max_len: int = 32, length_penalty: float = 1.0,
                bos: int = BOS, eos: int = EOS) -> list[list[tuple[list[int], float]]]:
    """Batched beam search (see the module docstring). ``log_probs(prefixes (N, t), rows (N,)) -> (N, V)``
    with ``N = batch_size * beam``. Returns, per source row, up to ``beam`` finished hypotheses ``(token ids
    without </s>, normalised score)``, best first."""
    _check_positive("beam", beam)
    _check_positive("max_len", max_len)
    B, K = batch_size, beam
    rows = torch.arange(B).repeat_interleave(K)
    prefix = torch.full((B * K, 1), bos, dtype=torch.long)
    score = torch.full((B, K), float("-inf"))
    score[:, 0] = 0.0
    finished: list[list[tuple[list[int], float]]] = [[] for _ in range(B)]
    for t in range(1, max_len + 1):
        lp = log_probs(prefix, rows).float().cpu()
        V = lp.shape[-1]
        cand = (score[:, :, None] + lp.view(B, K, V)).view(B, K * V)
        top, idx = cand.topk(min(2 * K, K * V), dim=1)
        source, token = idx // V, idx % V
        ends = (token == eos) | (t == max_len)
        norm = float(t) ** length_penalty
        hits = (ends & torch.isfinite(top)).nonzero().tolist()
        if hits:  # (read on the host once per step, not once per hypothesis)
            top_l, source_l, token_l, prefix_l = top.tolist(), source.tolist(), token.tolist(), prefix[:, 1:].tolist()
            for b, j in hits:
                end = token_l[b][j]
                seq = prefix_l[b * K + source_l[b][j]] + ([] if end == eos else [end])
                finished[b].append((seq, top_l[b][j] / norm))
        # the K best continuing candidates (at most K of the 2K end, one per live hypothesis)
        order = torch.argsort(ends.int(), dim=1, stable=True)[:, :K]
        live_score = top.gather(1, order).masked_fill(ends.gather(1, order), float("-inf"))
        parents = (torch.arange(B)[:, None] * K + source.gather(1, order)).reshape(-1)
        prefix = torch.cat([prefix[parents], token.gather(1, order).reshape(-1, 1)], 1)
        if hasattr(log_probs, "reorder"):  # a decoder that keeps state per row follows its rows
            log_probs.reorder(parents)
        score = live_score
        for b in range(B):
            finished[b].sort(key=lambda h: -h[1])
            del finished[b][K:]
        if t == max_len or not torch.isfinite(score).any():
            break
        # a live hypothesis's normalised score can only rise to (its log-prob now) / max_len^alpha
        bound = score.max(1).values / (float(max_len) ** length_penalty if length_penalty > 0 else 1.0)
        if all(len(f) == K and f[-1][1] >= float(bound[b]) for b, f in enumerate(finished)):
            break
    return finished


@torch.no_grad()
def beam_decode(model, input_ids: torch.Tensor, beam: int = 5, max_len: int = 32,
                length_penalty: float = 1.0) -> list[list[tuple[list[int], float]]]:
    """:func:`beam_search` of a :class:`~distill.zoo.seq2seq.Seq2SeqTransformer` on source ids ``(B, S)``."""
    max_len = _fit(model, max_len)
    with eval_mode(model):
        return beam_search(next_token_log_probs(model, input_ids), len(input_ids), beam, max_len, length_penalty)


def decode(model, input_ids: torch.Tensor, beam: int = 1, max_len: int = 32) -> list[list[int]]:
    """Each row's best target ids: greedy at ``beam`` 1, else beam search."""
    if beam == 1:
        return greedy(model, input_ids, max_len)
    return [hyps[0][0] if hyps else [] for hyps in beam_decode(model, input_ids, beam, max_len)]


def target_batch(batch: dict, targets: list[list[int]]) -> dict:
    """``batch`` with its targets replaced: ``decoder_input_ids`` = ``<s>`` + target, labels = target + ``</s>``
    (``-100`` after), ``mask``."""
    width = max(len(t) for t in targets) + 1
    dec = torch.full((len(targets), width), PAD, dtype=torch.long)
    labels = torch.full((len(targets), width), IGNORE_INDEX, dtype=torch.long)
    for b, t in enumerate(targets):
        dec[b, :len(t) + 1] = torch.tensor([BOS, *t])
        labels[b, :len(t) + 1] = torch.tensor([*t, EOS])
    return {**batch, "input": {**batch["input"], "decoder_input_ids": dec}, "label": labels,
            "mask": labels != IGNORE_INDEX}


def references(batch: dict) -> list[list[int]]:
    """Each row's reference target (labels up to ``</s>``)."""
    return [_strip([int(x) for x in row if x != IGNORE_INDEX]) for row in batch["label"]]


class BeamTargets:
    """The transfer set of sequence-level KD (see the module docstring): each training sample's target becomes
    the teacher's beam-search output (``interpolate``: the hypothesis closest to the reference), made the first
    time the sample is met and kept. :meth:`fill` makes all of it at once, :meth:`save` / :meth:`load` keep it
    on disk."""

    whole_batch = True
    needs_teacher = True  # a staged run hands it the teacher although no term may read the teacher

    def __init__(self, beam: int = 5, max_len: int = 32, length_penalty: float = 1.0, interpolate: bool = False):
        self.beam, self.max_len = _check_positive("beam", beam), _check_positive("max_len", max_len)
        self.length_penalty, self.interpolate = float(length_penalty), bool(interpolate)
        self.teacher = None
        self.store: dict[int, list[int]] = {}

    def attach(self, student, *teachers) -> list:
        if teachers:
            self.teacher = teachers[0]
        return []

    def choose(self, hyps: list[tuple[list[int], float]], reference: list[int]) -> list[int]:
        if not hyps:
            return reference
        if not self.interpolate:
            return hyps[0][0]
        return min(hyps, key=lambda h: (edit_distance(h[0], reference), -h[1]))[0]

    def __call__(self, batch: dict, generator=None) -> dict:
        index = [int(i) for i in batch["index"]]
        missing = [b for b, i in enumerate(index) if i not in self.store]
        if missing:
            if self.teacher is None:
                raise DistillError("BeamTargets needs a live teacher to make the transfer set (or load() one)")
            refs = references(batch)
            source = batch["input"]["input_ids"][missing]
            found = beam_decode(self.teacher, source[:, :int((source != PAD).sum(1).max())], self.beam,
                                self.max_len, self.length_penalty)
            for b, hyps in zip(missing, found):
                self.store[index[b]] = self.choose(hyps, refs[b])
        return target_batch(batch, [self.store[i] for i in index])

    def fill(self, dataset, collate, batch_size: int = 256) -> "BeamTargets":
        """Make the target of every sample of ``dataset`` now (``collate``: the task's collate)."""
        for start in range(0, len(dataset), batch_size):
            batch = collate([dataset[i] for i in range(start, min(len(dataset), start + batch_size))])
            batch["index"] = torch.arange(start, start + len(batch["index"]))
            self(batch)
        return self

    def save(self, path) -> None:
        keys = sorted(self.store)
        np.savez(path, index=np.array(keys, dtype=np.int64),
                 offsets=np.cumsum([0] + [len(self.store[k]) for k in keys]),
                 tokens=np.array([x for k in keys for x in self.store[k]], dtype=np.int32))

    def load(self, path) -> "BeamTargets":
        with np.load(path) as f:
            for n, i in enumerate(f["index"]):
                self.store[int(i)] = f["tokens"][f["offsets"][n]:f["offsets"][n + 1]].tolist()
        return self


def g2p_scores(model, items: list[dict], beam: int = 1, batch_size: int = 256, max_len: int = 32) -> dict:
    """Phoneme error rate (%: edit distance over reference phonemes), word accuracy (%: whole pronunciation
    right) and decoding words per second (this process's threads) of ``model`` on seq2seq ``items``."""
    errors = total = correct = 0
    seconds = 0.0
    for start in range(0, len(items), batch_size):
        part = items[start:start + batch_size]
        width = max(len(it["input_ids"]) for it in part)
        source = torch.full((len(part), width), PAD, dtype=torch.long)
        for b, it in enumerate(part):
            source[b, :len(it["input_ids"])] = it["input_ids"]
        begin = time.perf_counter()
        found = ctc_greedy(model, source) if hasattr(model, "upsample") else decode(model, source, beam, max_len)
        seconds += time.perf_counter() - begin
        for it, hyp in zip(part, found):
            ref = it["label"][:-1].tolist()
            d = edit_distance(hyp, ref)
            errors, total, correct = errors + d, total + len(ref), correct + (d == 0)
    return {"per": 100.0 * errors / max(total, 1), "word_acc": 100.0 * correct / max(len(items), 1),
            "words_per_second": len(items) / seconds if seconds else float("nan")}


def ctc_greedy(model, input_ids: torch.Tensor) -> list[list[int]]:
    """Best-path decoding of a :class:`~distill.zoo.seq2seq.ParallelCTC`: per frame the likeliest symbol, repeats
    merged, blanks (id 0) dropped — one parallel pass, no decoding loop."""
    with torch.no_grad(), eval_mode(model):
        best = model(input_ids).argmax(-1)
    frames = (input_ids != PAD).sum(1) * model.upsample
    out = []
    for row, n in zip(best.tolist(), frames.tolist()):
        merged = [s for i, s in enumerate(row[:n]) if s != PAD and (i == 0 or s != row[i - 1])]
        out.append(merged)
    return out


def parallel_items(items: list[dict], targets: dict[int, list[int]] | None = None) -> list[dict]:
    """``ctc``-task items for a parallel student from seq2seq items (``input_ids``, ``label`` = target +
    ``</s>``): the source and, as the label, the reference without ``</s>`` or (``targets``, by item index: e.g.
    :attr:`BeamTargets.store`) the teacher's output — sequence-level KD for a parallel student."""
    return [{"input_ids": it["input_ids"],
             "label": torch.tensor(targets[i], dtype=torch.long) if targets is not None else it["label"][:-1]}
            for i, it in enumerate(items)]


def parallel_task(vocab: int, frames_per_token: int):
    """The ``ctc`` task for a parallel student over ``vocab`` output ids (0 the blank, also the padding id) that
    emits ``frames_per_token`` frames per source token. Each symbol is spelt as one character of its own, so
    the task's CER is the symbol (phoneme) error rate and its WER is 100 - word accuracy."""
    from distill.tasks import get_task

    alphabet = "".join(chr(0x4E00 + i) for i in range(1, vocab))  # distinct single characters, no space
    return get_task("ctc", alphabet=alphabet, pad_token_id=PAD, frames_per_token=frames_per_token)
