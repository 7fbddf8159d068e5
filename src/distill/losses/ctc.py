"""Connectionist temporal classification: its loss, its decoders, and frame- and sequence-level CTC KD.

Conventions: logits ``(B, T, V)`` per frame, the vocabulary last, **blank = index 0**; ``mask`` ``(B, T)``
marks the real frames (the task builds it from each utterance's frame count); ``labels`` ``(B, S)`` are the
target symbol ids ``1 .. V-1``, right-padded with ``-100``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from distill.losses.positions import IGNORE_INDEX
from distill.losses.registry import register_loss

BLANK = 0


def _frames(logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Each utterance's number of real frames ``(B,)`` from the frame mask (all ``T`` without one)."""
    if logits.dim() != 3:
        raise ValueError(f"CTC logits are (batch, frames, vocabulary), got shape {tuple(logits.shape)}")
    if mask is None:
        return torch.full((len(logits),), logits.shape[1], dtype=torch.long)
    if tuple(mask.shape) != tuple(logits.shape[:2]):
        raise ValueError(f"frame mask {tuple(mask.shape)} does not match the logits' frames {tuple(logits.shape[:2])}")
    return mask.long().sum(1).cpu()


@register_loss("ctc", teacher=None, labels=True, softmax=True)
def ctc_loss(student_logits: torch.Tensor, labels: torch.Tensor, *, mask: torch.Tensor | None = None) -> torch.Tensor:
    r"""Graves et al. 2006, *Connectionist Temporal Classification*: the negative log-likelihood of the
    label sequence summed over every frame alignment :math:`\pi` that collapses to it (:math:`\mathcal{B}`
    removes repeats, then blanks):

    .. math:: \mathcal{L}_{CTC} = -\frac{1}{B} \sum_b \log \sum_{\pi \in \mathcal{B}^{-1}(y_b)}
        \prod_{t=1}^{T_b} p_t(\pi_t \mid x_b)

    Args:
        student_logits: ``(B, T, V)`` frame logits, blank = 0.
        labels: ``(B, S)`` symbol ids ``1 .. V-1``, right-padded with ``-100``.
        mask: ``(B, T)`` bool, the real frames (``None``: all ``T``).

    Returns:
        the mean over utterances (float32); an utterance too short for its labels counts zero
        (``zero_infinity``).
    """
    if labels.dim() != 2 or len(labels) != len(student_logits):
        raise ValueError(f"CTC labels are (batch, symbols), padded with -100; got shape {tuple(labels.shape)} for "
                         f"logits {tuple(student_logits.shape)}")
    frames = _frames(student_logits, mask)
    keep = labels != IGNORE_INDEX
    if bool((labels[keep] <= BLANK).any()) or bool((labels[keep] >= student_logits.shape[-1]).any()):
        raise ValueError(f"CTC labels must be symbol ids 1 to {student_logits.shape[-1] - 1} (0 is the blank)")
    log_probs = student_logits.float().log_softmax(-1).transpose(0, 1)  # (T, B, V)
    targets = labels.masked_fill(~keep, BLANK).long()
    return F.ctc_loss(log_probs, targets, frames, keep.sum(1).cpu(), blank=BLANK, reduction="sum",
                      zero_infinity=True) / len(labels)


def shifted_pairs(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor | None,
                  shift: int):
    """The student's frames ``t + shift`` beside the teacher's frames ``t``, and the frames that count
    (``t + shift`` is a real frame): ``(student (B, T - shift, V), teacher (B, T - shift, V), counted (B, T - shift))``;
    no frames at all when ``shift >= T`` (utterances no longer than the delay have nothing to match)."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} must have the same shape")
    frames = _frames(student_logits, mask).to(student_logits.device)
    steps = student_logits.shape[1]
    if not isinstance(shift, int) or shift < 0:
        raise ValueError(f"shift is a number of frames, 0 or more, got {shift!r}")
    kept = max(steps - shift, 0)
    student, teacher = student_logits[:, steps - kept:], teacher_logits[:, :kept]
    t = torch.arange(kept, device=student.device)
    return student, teacher, (t[None, :] + shift) < frames[:, None]


@register_loss("ctc_frame_kd", softmax=True)
def ctc_frame_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
                 shift: int = 0, *, mask: torch.Tensor | None = None) -> torch.Tensor:
    r"""Frame-level CTC distillation (Takashima et al. 2018, *An investigation of a knowledge distillation
    method for CTC acoustic models*; Kurata & Audhkhasi 2018, *Improved knowledge distillation from
    bi-directional to uni-directional LSTM CTC for end-to-end speech recognition*): the KL divergence of the
    student's per-frame posteriors from the teacher's, **blank included**, summed over the vocabulary and
    averaged over the real frames:

    .. math:: \mathcal{L}_{frame} = \frac{T^2}{N} \sum_b \sum_{t < T_b - d} \mathrm{KL}\big(
        \mathrm{softmax}(z^t_{b,t}/T) \,\|\, \mathrm{softmax}(z^s_{b,t+d}/T)\big)

    A bidirectional teacher fires its spikes where it has heard the whole symbol (and what follows); a
    unidirectional (streaming) student can only fire later, so matching frame ``t`` to frame ``t`` asks
    the impossible. Kurata & Audhkhasi shift the targets: the student's frame :math:`t + d` learns the
    teacher's frame :math:`t`, a delay of ``shift`` = :math:`d` frames (:math:`N`: the frames counted).

    Args:
        student_logits, teacher_logits: ``(B, T, V)`` frame logits, blank = 0.
        temperature: softening temperature ``T`` (1: the posteriors as they are).
        shift: the student's delay ``d`` in frames (0: frame to frame).
        mask: ``(B, T)`` bool, the real frames.

    Returns:
        a scalar, zero when the (shifted) posteriors agree, or when no utterance is longer than ``shift``.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    student, teacher, counted = shifted_pairs(student_logits, teacher_logits, mask, shift)
    log_s = (student.float() / temperature).log_softmax(-1)
    log_t = (teacher.float() / temperature).log_softmax(-1)
    kl = F.kl_div(log_s, log_t, reduction="none", log_target=True).sum(-1)
    return (kl * counted).sum() / counted.sum().clamp_min(1) * temperature**2


# ------------------------------------------------------------------------------------------------ decoding
def greedy_decode(logits: torch.Tensor, frames: torch.Tensor | None = None) -> list[list[int]]:
    """Best path: the most likely symbol per frame, repeats merged, blanks dropped.

    ``logits``: ``(B, T, V)`` (or ``(T, V)`` for one utterance); ``frames``: each utterance's real frames.
    Returns one list of symbol ids per utterance."""
    if logits.dim() == 2:
        logits = logits[None]
    if logits.dim() != 3:
        raise ValueError(f"CTC logits are (batch, frames, vocabulary), got shape {tuple(logits.shape)}")
    best = logits.argmax(-1).cpu()
    out = []
    for b, row in enumerate(best.tolist()):
        n = len(row) if frames is None else int(frames[b])
        symbols, last = [], BLANK
        for s in row[:n]:
            if s != last and s != BLANK:
                symbols.append(s)
            last = s
        out.append(symbols)
    return out


def ctc_align(logits: torch.Tensor, target: list[int] | torch.Tensor) -> torch.Tensor:
    r"""Forced alignment (Viterbi): the single most likely frame path that collapses to ``target``,

    .. math:: \hat\pi = \arg\max_{\pi \in \mathcal{B}^{-1}(y)} \prod_t p_t(\pi_t \mid x),

    found by dynamic programming over the 2S+1 states of the target with a blank before, between and after its
    symbols (a state is entered from itself, the one before, or two before when that skips a blank between two
    different symbols).

    ``logits``: ``(T, V)`` of one utterance (blank = 0); ``target``: its ``S`` symbol ids ``1 .. V-1``.
    Returns ``(S, 2)`` long: the first and last frame each target symbol occupies on that path. Raises
    ``ValueError`` when ``T`` frames cannot hold the target (a repeated symbol needs a blank between)."""
    if logits.dim() != 2:
        raise ValueError(f"ctc_align takes one utterance's (frames, vocabulary) logits, got {tuple(logits.shape)}")
    target = torch.as_tensor(target, dtype=torch.long).cpu()
    if len(target) == 0 or bool((target <= BLANK).any()) or bool((target >= logits.shape[-1]).any()):
        raise ValueError(f"the target must be 1 or more symbol ids from 1 to {logits.shape[-1] - 1}")
    needed = len(target) + int((target[1:] == target[:-1]).sum())
    if logits.shape[0] < needed:
        raise ValueError(f"{logits.shape[0]} frames cannot hold a target needing {needed}")
    log_probs = logits.detach().float().log_softmax(-1).cpu()
    states = torch.full((2 * len(target) + 1,), BLANK, dtype=torch.long)
    states[1::2] = target
    skip = torch.zeros(len(states), dtype=torch.bool)  # may come from two states before
    skip[3::2] = target[1:] != target[:-1]
    score = torch.full((len(states),), -math.inf)
    score[:2] = log_probs[0, states[:2]]
    came = torch.zeros(log_probs.shape[0], len(states), dtype=torch.long)  # 0, 1 or 2 states back
    for t in range(1, log_probs.shape[0]):
        one = torch.cat([score.new_full((1,), -math.inf), score[:-1]])
        two = torch.cat([score.new_full((2,), -math.inf), score[:-2]]).masked_fill(~skip, -math.inf)
        best, came[t] = torch.stack([score, one, two]).max(0)
        score = best + log_probs[t, states]
    state = len(states) - 1 if score[-1] >= score[-2] else len(states) - 2
    spans = torch.full((len(target), 2), -1, dtype=torch.long)
    for t in range(log_probs.shape[0] - 1, -1, -1):
        if state % 2:
            j = state // 2
            spans[j, 0] = t
            if spans[j, 1] < 0:
                spans[j, 1] = t
        state -= int(came[t, state])
    return spans


def _logaddexp(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    return max(a, b) + math.log1p(math.exp(-abs(a - b)))


class Lexicon:
    """A closed vocabulary for :func:`prefix_beam_search`: each word as a sequence of symbol ids (``words``), and
    the ``separator`` symbol between words (the space). Hypotheses then spell vocabulary words only."""

    def __init__(self, words, separator: int):
        self.words = {tuple(w) for w in words if len(w)}
        if not self.words:
            raise ValueError("a Lexicon needs at least one non-empty word")
        if any(separator in w for w in self.words):
            raise ValueError(f"a lexicon word holds the separator symbol {separator}")
        self.separator = separator
        self.prefixes = {w[:i] for w in self.words for i in range(len(w) + 1)}

    def last_word(self, prefix: tuple[int, ...]) -> tuple[int, ...]:
        cut = len(prefix)
        while cut and prefix[cut - 1] != self.separator:
            cut -= 1
        return prefix[cut:]

    def allows(self, word: tuple[int, ...], symbol: int) -> bool:
        """Whether a prefix whose :meth:`last_word` is ``word`` can take ``symbol`` and still become a sequence
        of vocabulary words."""
        if symbol == self.separator:
            return word in self.words
        return word + (symbol,) in self.prefixes

    def complete(self, prefix: tuple[int, ...]) -> bool:
        """Whether ``prefix`` is a whole sequence of vocabulary words (no words at all is one: silence)."""
        return not prefix or self.last_word(prefix) in self.words


def prefix_beam_search(log_probs: torch.Tensor, beam: int = 8, n_best: int = 1, prune: float = 1e-3,
                       lexicon: Lexicon | None = None, word_score: float = 0.0) -> list[tuple[tuple[int, ...], float]]:
    r"""CTC prefix beam search (Hannun et al. 2014, *First-pass large vocabulary continuous speech recognition
    using bi-directional recurrent DNNs*, without a language model) over one utterance.

    Each prefix keeps two log-probabilities: of the frames so far ending in blank, :math:`p_b`, and ending
    in its last symbol, :math:`p_{nb}`; a symbol equal to the last one extends the prefix only after a blank.
    Symbols below ``prune`` probability at a frame are not tried (blank always is). With a ``lexicon``, a
    prefix is extended only while its words stay vocabulary words (or their beginnings), and the hypotheses
    returned end on a whole word or are empty (lexicon-constrained decoding of a closed vocabulary; none does if the
    beam lost them all, and then the unconstrained ends are returned). ``word_score`` is Hannun et al.'s word
    insertion term without the language model: prefixes are ranked by
    :math:`\log p(\text{prefix} \mid x) + \beta\,|W|`, :math:`|W|` the number of words begun; a negative
    :math:`\beta` penalises each word, against a CTC model that splits words apart (insertions).

    Args:
        log_probs: ``(T, V)`` log-posteriors of one utterance's real frames, blank = 0.
        beam: prefixes kept per frame.
        n_best: hypotheses returned.
        lexicon: the words hypotheses may spell (:class:`Lexicon`); ``None``: any symbols.
        word_score: :math:`\beta`, added to a prefix's log-probability for each of its words when ranking
            (needs a ``lexicon``, whose separator delimits the words).

    Returns:
        ``[(symbols, log p(symbols | x)), ...]``, the ``n_best`` best by the ranking, best first (the scores are
        the log-probabilities alone, without the word term).
    """
    if log_probs.dim() != 2:
        raise ValueError(f"prefix_beam_search takes one utterance's (frames, vocabulary) log-posteriors, got "
                         f"shape {tuple(log_probs.shape)}")
    if beam < 1 or n_best < 1:
        raise ValueError(f"beam and n_best must be at least 1, got {beam} and {n_best}")
    if word_score and lexicon is None:
        raise ValueError("word_score needs a lexicon: its separator symbol marks where words begin")
    lp = log_probs.detach().float().cpu()
    floor = math.log(prune)
    beams: dict[tuple[int, ...], tuple[float, float]] = {(): (0.0, -math.inf)}  # prefix -> (p_b, p_nb)
    ninf = -math.inf
    separator = lexicon.separator if lexicon is not None else None
    words = {(): 0}  # prefix -> words begun in it (for word_score)

    def rank(item):
        prefix, (pb, pnb) = item
        return _logaddexp(pb, pnb) + (word_score * words[prefix] if word_score else 0.0)

    for t in range(len(lp)):
        row = lp[t].tolist()
        symbols = [s for s, v in enumerate(row) if s != BLANK and v >= floor]
        nxt: dict[tuple[int, ...], list[float]] = {}

        def add(prefix, pb, pnb):
            if pb == ninf and pnb == ninf:
                return
            cur = nxt.get(prefix)
            if cur is None:
                nxt[prefix] = [pb, pnb]
            else:
                cur[0], cur[1] = _logaddexp(cur[0], pb), _logaddexp(cur[1], pnb)

        for prefix, (pb, pnb) in beams.items():
            total = _logaddexp(pb, pnb)
            add(prefix, total + row[BLANK], ninf)  # a blank: the prefix stays
            last = prefix[-1] if prefix else None
            if last is not None:  # the last symbol repeated without a blank: the prefix stays
                add(prefix, ninf, pnb + row[last])
            word = lexicon.last_word(prefix) if lexicon is not None else None  # once per prefix, not per symbol
            for s in symbols:
                if lexicon is not None and not lexicon.allows(word, s):
                    continue
                if word_score and prefix + (s,) not in words:
                    words[prefix + (s,)] = words[prefix] + (s != separator and (last is None or last == separator))
                if s == last:  # a new copy of the last symbol needs a blank between
                    add(prefix + (s,), ninf, pb + row[s])
                else:
                    add(prefix + (s,), ninf, total + row[s])
        ranked = sorted(nxt.items(), key=rank, reverse=True)[:beam]
        beams = {k: (v[0], v[1]) for k, v in ranked}
        if word_score:
            words = {k: words[k] for k in beams}
    ranked = sorted(beams.items(), key=rank, reverse=True)
    if lexicon is not None:
        ranked = [kv for kv in ranked if lexicon.complete(kv[0])] or ranked
    return [(k, _logaddexp(*v)) for k, v in ranked[:n_best]]


def beam_decode(logits: torch.Tensor, frames: torch.Tensor | None = None, beam: int = 8,
                lexicon: Lexicon | None = None, word_score: float = 0.0) -> list[list[int]]:
    """The best hypothesis of :func:`prefix_beam_search` per utterance of ``(B, T, V)`` logits."""
    log_probs = logits.float().log_softmax(-1)
    return [list(prefix_beam_search(log_probs[b, : (len(log_probs[b]) if frames is None else int(frames[b]))],
                                    beam, lexicon=lexicon, word_score=word_score)[0][0]) for b in range(len(log_probs))]


@register_loss("ctc_sequence_kd", softmax=True)
def ctc_sequence_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, n_best: int = 4, beam: int = 8,
                    *, mask: torch.Tensor | None = None) -> torch.Tensor:
    r"""Sequence-level CTC distillation (Takashima et al. 2018, after Kim & Rush 2016's sequence-level KD):
    the teacher's N-best hypotheses :math:`\hat y_1..\hat y_N` (prefix beam search on its posteriors) are the
    student's CTC targets, each weighted by its share of the teacher's probability mass among them:

    .. math:: \mathcal{L}_{seq} = -\frac{1}{B}\sum_b \sum_{n=1}^{N} w_{b,n} \log p^s(\hat y_{b,n} \mid x_b),
        \qquad w_{b,n} = \frac{p^t(\hat y_{b,n} \mid x_b)}{\sum_{m} p^t(\hat y_{b,m} \mid x_b)}

    (the N-best approximation of :math:`\sum_y p^t(y|x) \log p^s(y|x)`). It needs no frame alignment between
    teacher and student, so a streaming student may fire its spikes when it likes.

    Args:
        student_logits, teacher_logits: ``(B, T, V)`` frame logits, blank = 0 (the teacher's frames may differ
            in number from the student's only through padding: both use ``mask``).
        n_best: hypotheses per utterance; beam: prefixes kept during the search.
        mask: ``(B, T)`` bool, the real frames.
    """
    frames = _frames(student_logits, mask)
    teacher_lp = teacher_logits.detach().float().log_softmax(-1)
    hyps, weights, rows = [], [], []
    for b in range(len(student_logits)):
        found = prefix_beam_search(teacher_lp[b, : int(frames[b])], beam, n_best)
        scores = torch.tensor([s for _, s in found])
        for (symbols, _), w in zip(found, scores.softmax(0).tolist()):
            hyps.append(torch.tensor(symbols, dtype=torch.long))
            weights.append(w)
            rows.append(b)
    rows_t = torch.tensor(rows)
    log_probs = student_logits.float().log_softmax(-1)[rows_t.to(student_logits.device)].transpose(0, 1)
    target_lengths = torch.tensor([len(h) for h in hyps])
    targets = torch.cat(hyps) if int(target_lengths.sum()) else torch.zeros(0, dtype=torch.long)
    nll = F.ctc_loss(log_probs, targets, frames[rows_t], target_lengths, blank=BLANK, reduction="none",
                     zero_infinity=True)
    return (nll * torch.tensor(weights, device=nll.device)).sum() / len(student_logits)
