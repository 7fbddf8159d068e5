r"""Contrastive representation distillation — Tian, Krishnan & Isola 2020, *Contrastive Representation
Distillation* (ICLR).

CRD embeds the student's and the teacher's penultimate features with two small
linear heads, L2-normalises them, and trains the student so that the embedding
pair of the *same* input (a positive) scores high and pairs of *different*
inputs (negatives) score low. Matching whole representations, not logits, lets
the student pick up the dependencies between feature dimensions that a
per-dimension loss (KD, hints) ignores.

Notation used below: a batch of :math:`N` anchors, :math:`K` negatives per
anchor (the paper writes :math:`N` for this count), :math:`M` training samples,
temperature :math:`\tau`, and the score of a pair of unit embeddings
:math:`s(a, b) = \langle a, b\rangle / \tau`.

Two pieces:

* :func:`crd_nce_loss` — the contrastive objective on given anchors, positives
  and negatives (a pure function of tensors, like the rest of ``distill.losses``);
* :class:`CRD` — the ``nn.Module`` a :class:`~distill.terms.Term` uses: the two
  embedding heads, the memory the negatives come from (the paper's memory bank,
  or a fixed-size queue), and both contrast directions.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from distill.losses.registry import register_loss

OBJECTIVES = ("nce", "infonce")


def _check_objective(objective: str) -> None:
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(map(repr, OBJECTIVES))}, got {objective!r}")


def log_normalizer_estimate(negative_scores: torch.Tensor, num_data: int) -> torch.Tensor:
    r"""Monte-Carlo estimate of :math:`\log Z`, :math:`Z = \sum_{j=1}^{M} e^{s_j}`, from uniformly drawn negatives.

    :math:`\log Z \approx \log M + \log \frac{1}{|\mathcal N|}\sum_{k \in \mathcal N} e^{s_k}`
    over all the negative scores ``(N, K)`` of the batch (detached: it is a constant
    of the critic, not a path for gradients). The reference implementation computes
    the same estimate once, on the first batch, and keeps it.
    """
    flat = negative_scores.detach().reshape(-1)
    return math.log(num_data) + torch.logsumexp(flat, 0) - math.log(flat.numel())


def contrastive_loss_from_scores(
    positive_scores: torch.Tensor,
    negative_scores: torch.Tensor,
    objective: str = "infonce",
    num_data: int | None = None,
    log_normalizer: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`crd_nce_loss` on precomputed scores: ``positive_scores`` ``(N,)`` and ``negative_scores`` ``(N, K)``,
    both already divided by the temperature. See :func:`crd_nce_loss` for the objectives."""
    _check_objective(objective)
    if positive_scores.dim() != 1 or negative_scores.dim() != 2 or negative_scores.shape[0] != positive_scores.shape[0]:
        raise ValueError(f"scores need shapes (N,) and (N, K), got {tuple(positive_scores.shape)} "
                         f"and {tuple(negative_scores.shape)}")
    n, k = negative_scores.shape
    if k < 1:
        raise ValueError("the contrastive loss needs at least one negative")
    if objective == "infonce":
        logits = torch.cat([positive_scores.unsqueeze(1), negative_scores], dim=1)
        return F.cross_entropy(logits, torch.zeros(n, dtype=torch.long, device=logits.device))
    if log_normalizer is not None and num_data is None:
        raise ValueError("a fixed log_normalizer needs num_data (the dataset size M of the noise distribution)")
    m = num_data if num_data is not None else k  # with the batch estimate of Z, M cancels out of h
    if m < 1:
        raise ValueError(f"num_data must be positive, got {num_data}")
    if log_normalizer is None:
        log_normalizer = log_normalizer_estimate(negative_scores, m)
    log_ratio = math.log(k) - math.log(m)  # log(K/M): the prior odds of a noise sample
    log_p_pos = positive_scores - log_normalizer
    log_p_neg = negative_scores - log_normalizer
    log_h_pos = log_p_pos - torch.logaddexp(log_p_pos, torch.full_like(log_p_pos, log_ratio))
    log_not_h_neg = log_ratio - torch.logaddexp(log_p_neg, torch.full_like(log_p_neg, log_ratio))
    return -(log_h_pos.sum() + log_not_h_neg.sum()) / n


def crd_nce_loss(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    negatives: torch.Tensor,
    temperature: float = 0.07,
    num_data: int | None = None,
    objective: str = "infonce",
    log_normalizer: float | torch.Tensor | None = None,
) -> torch.Tensor:
    r"""The CRD contrastive objective for one anchor side (Tian et al. 2020, ICLR).

    Scores are :math:`s^+_i = \langle a_i, p_i\rangle/\tau` for the positive pair
    and :math:`s^-_{ik} = \langle a_i, n_{ik}\rangle/\tau` for the negatives.

    ``objective="nce"`` — the paper's critic. Noise-contrastive estimation
    tells the one positive pair from :math:`K` pairs drawn from the product of
    the marginals (a uniform draw over the :math:`M` training samples), with

    .. math::
        h(a, b) = \frac{e^{s(a,b)}/Z}{e^{s(a,b)}/Z + K/M},\qquad
        \mathcal{L}_{NCE} = -\frac{1}{N}\sum_i\Big[\log h(a_i, p_i)
            + \sum_{k=1}^{K}\log\big(1 - h(a_i, n_{ik})\big)\Big]

    i.e. :math:`-\mathbb{E}_{pos}[\log h] - K\,\mathbb{E}_{neg}[\log(1-h)]`. The
    paper writes :math:`h = e^{s}/(e^{s} + K/M)`; its implementation divides
    :math:`e^{s}` by a normalising constant :math:`Z` (the partition function
    :math:`\sum_{j\le M} e^{s_j}`), which this does too: ``log_normalizer=None``
    estimates :math:`\log Z` from this batch's negatives
    (:func:`log_normalizer_estimate`, detached) — then :math:`M` cancels out of
    :math:`h` and ``num_data`` is not needed; a number fixes :math:`\log Z` (the
    reference freezes the first batch's estimate), and then ``num_data`` is
    :math:`M`. Computed in log space (``logaddexp``), so no epsilon is needed.

    ``objective="infonce"`` — softmax cross-entropy of the positive among
    :math:`1 + K` candidates (van den Oord et al. 2018, *Representation Learning
    with Contrastive Predictive Coding*):

    .. math::
        \mathcal{L}_{InfoNCE} = -\frac{1}{N}\sum_i
            \log\frac{e^{s^+_i}}{e^{s^+_i} + \sum_{k} e^{s^-_{ik}}}

    Both bound the mutual information between the representations from below
    (NCE: :math:`I \ge \log K + \mathbb{E}[\log h]`; InfoNCE:
    :math:`I \ge \log(1+K) - \mathcal{L}_{InfoNCE}`).

    The default is ``"infonce"``: it needs neither :math:`Z` nor :math:`M`, its
    gradient is a bounded softmax, and nothing in it goes stale as the embeddings
    train. The NCE critic is calibrated only as well as :math:`Z` is estimated:
    the reference's frozen first-batch :math:`Z` drifts away from the true
    partition function as training moves the scores. Measured with :class:`CRD`
    (memory bank, 256 negatives, τ = 0.07) matching a small CNN's penultimate
    features on the digits data for 12 epochs, scored by how often the teacher
    embedding nearest a student embedding has the same class: at batch 8 the
    three variants end level (88–89%) but InfoNCE discriminates instances best;
    at batch 64 InfoNCE reaches 91%, NCE with a per-batch :math:`Z` 89%, with a
    frozen :math:`Z` 65%; on a 64-sample toy problem InfoNCE was never behind.

    Args:
        anchor: ``(N, D)`` anchor embeddings, L2-normalised (not renormalised here).
        positive: ``(N, D)`` the positive for each anchor, L2-normalised.
        negatives: ``(N, K, D)`` negatives per anchor, or ``(K, D)`` shared by all anchors
            (a queue), L2-normalised.
        temperature: :math:`\tau > 0` (the paper's 0.07).
        num_data: :math:`M`, only used by ``"nce"`` with a fixed ``log_normalizer``.
        objective: ``"infonce"`` or ``"nce"``.
        log_normalizer: ``"nce"`` only: a fixed :math:`\log Z`; ``None`` estimates it per batch.

    Returns:
        a scalar, the mean over the :math:`N` anchors; computed in float32 (float64 for float64 inputs).
    """
    _check_objective(objective)
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if anchor.dim() != 2 or positive.shape != anchor.shape:
        raise ValueError(f"anchor and positive must both be (N, D), got {tuple(anchor.shape)} and {tuple(positive.shape)}")
    n, d = anchor.shape
    dtype = torch.promote_types(anchor.dtype, torch.float32)
    a, p, neg = anchor.to(dtype), positive.to(dtype), negatives.to(dtype)
    if neg.dim() == 3 and neg.shape[0] == n and neg.shape[2] == d:
        negative_scores = torch.bmm(neg, a.unsqueeze(2)).squeeze(2)
    elif neg.dim() == 2 and neg.shape[1] == d:
        negative_scores = a @ neg.T
    else:
        raise ValueError(f"negatives must be (N, K, D) = ({n}, K, {d}) or (K, {d}), got {tuple(negatives.shape)}")
    positive_scores = (a * p).sum(1)
    return contrastive_loss_from_scores(positive_scores / temperature, negative_scores / temperature,
                                        objective, num_data, log_normalizer)


#: The contrastive objective under its family's name (the same function as :func:`crd_nce_loss`).
crd_loss = crd_nce_loss


class CRD(nn.Module):
    r"""Contrastive representation distillation as a stateful loss term (Tian, Krishnan & Isola 2020, ICLR).

    ``forward(student_features, teacher_features, index=None)`` flattens both
    ``(N, ...)`` feature tensors, embeds them with linear heads
    :math:`g^S, g^T` into ``feat_dim`` and L2-normalises them,
    :math:`e^s_i = g^S(s_i)/\|g^S(s_i)\|`, :math:`e^t_i = g^T(t_i)/\|g^T(t_i)\|`,
    and returns the sum of both contrast directions, as the paper's implementation does:

    .. math::
        \mathcal{L}_{CRD} = \ell\big(e^s_i;\; k^t_i,\; \{\bar e^t_{j}\}\big)
                          + \ell\big(e^t_i;\; k^s_i,\; \{\bar e^s_{j}\}\big)

    the student embedding anchored against the teacher's memory, plus the
    teacher embedding anchored against the student's memory, where :math:`\ell`
    is :func:`crd_nce_loss`, :math:`\bar e_j` are stored (detached) embeddings of
    other samples, and the positive :math:`k_i` is a stored or slowly moving
    embedding of the same sample (below). The positive must be exactly as stale
    as the negatives: with the *current* embedding as positive against stored
    negatives, both heads are rewarded for drifting together away from the
    memory, and the embeddings collapse (on the digits data, matching a small
    CNN's penultimate features that way left the nearest teacher embedding of a
    student embedding of the right class about 10–30% of the time, near chance;
    each scheme below reached about 90% in 12 epochs).

    Gradients reach the student features (through the student anchor) and both
    heads; the teacher features are detached. Training the teacher head with the
    student is part of the method: the engine registers this module and trains
    its parameters.

    Memory (all of it registered buffers, so checkpoints carry it):

    * memory bank (default, the paper's): ``memory_student`` and
      ``memory_teacher`` of shape ``(num_data, feat_dim)``, one unit row per
      training sample. Needs ``index`` (the samples' dataset indices, a
      LongTensor ``(N,)``). The positive is the other network's row of the same
      sample, :math:`k^t_i = \bar e^t_{\mathrm{index}_i}` (as in the reference
      code); each anchor gets ``num_negatives`` rows drawn uniformly, with
      replacement, from the other ``num_data - 1`` samples (its own index is
      never drawn). After a training forward the rows at ``index`` become
      :math:`\mathrm{normalise}(m\,\bar e_i + (1-m)\,e_i)` with momentum :math:`m`
      (the rows start random, so the first epoch mostly fills the bank).
    * queue (``queue_size=K``, MoCo-style — He et al. 2020, *Momentum Contrast for
      Unsupervised Visual Representation Learning*): ``queue_student``/``queue_teacher``
      ``(K, feat_dim)`` FIFO queues and a ``queue_ptr`` pointer. Positives and queue
      entries are *keys* from momentum copies of the two heads (buffers
      ``key_{student,teacher}_{weight,bias}``,
      :math:`\theta_k \leftarrow \mu\,\theta_k + (1-\mu)\,\theta` before each
      training forward, :math:`\mu` = ``key_momentum``); every queue entry is a
      negative for every anchor, and the batch's keys are enqueued after a training
      forward. Memory is independent of the dataset size and no ``index`` is
      needed. An entry can be a key of the anchor's own sample from an earlier
      epoch (rare when ``queue_size`` is much smaller than the dataset).

    The memory starts as random unit vectors and changes only in training mode,
    under ``torch.no_grad``. Negatives are drawn from the global CPU torch RNG,
    so a run is reproducible under ``torch.manual_seed`` and a resume that
    restores the RNG state is bit-exact; evaluation forwards draw from it too.

    Args:
        student_dim: values per sample of the flattened student features.
        teacher_dim: values per sample of the flattened teacher features.
        feat_dim: embedding width (the paper's 128).
        num_data: training-set size :math:`M`; required for the memory bank. In
            queue mode it is only the :math:`M` of a ``normalizer="fixed"`` NCE critic
            (default: ``queue_size``).
        num_negatives: negatives per anchor in memory-bank mode (the paper uses 16384).
        temperature: :math:`\tau` (the paper's 0.07).
        momentum: memory-bank update momentum (the paper's 0.5).
        queue_size: use a queue of this many entries instead of the memory bank.
        key_momentum: queue mode: momentum :math:`\mu` of the key heads.
        objective: ``"infonce"`` (default) or ``"nce"``; see :func:`crd_nce_loss`.
        normalizer: ``"nce"`` only: ``"batch"`` re-estimates :math:`\log Z` every batch;
            ``"fixed"`` estimates it on the first training batch and keeps it (the
            reference's choice), in the ``log_normalizer`` buffer (with ``log_normalizer_set``).

    The paper weighs CRD with β = 0.8 next to cross-entropy (weight 1), with or
    without KD (weight 1).
    """

    def __init__(self, student_dim: int, teacher_dim: int, feat_dim: int = 128, num_data: int | None = None,
                 num_negatives: int = 4096, temperature: float = 0.07, momentum: float = 0.5,
                 queue_size: int | None = None, key_momentum: float = 0.99, objective: str = "infonce",
                 normalizer: str = "batch"):
        super().__init__()
        _check_objective(objective)
        for name, value in (("student_dim", student_dim), ("teacher_dim", teacher_dim), ("feat_dim", feat_dim)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        for name, value in (("momentum", momentum), ("key_momentum", key_momentum)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        if normalizer not in ("batch", "fixed"):
            raise ValueError(f"normalizer must be 'batch' or 'fixed', got {normalizer!r}")
        if normalizer == "fixed" and objective != "nce":
            raise ValueError("normalizer='fixed' is for objective='nce' (InfoNCE has no normaliser)")
        if queue_size is None:
            if num_data is None:
                raise ValueError("CRD's memory bank needs num_data (the training-set size); "
                                 "or pass queue_size=K for a fixed-size queue that needs no sample indices")
            if num_data < 2:
                raise ValueError(f"num_data must be at least 2 (a sample needs another as negative), got {num_data}")
            if num_negatives < 1:
                raise ValueError(f"num_negatives must be positive, got {num_negatives}")
        elif queue_size < 1:
            raise ValueError(f"queue_size must be positive, got {queue_size}")
        self.student_dim, self.teacher_dim, self.feat_dim = student_dim, teacher_dim, feat_dim
        self.num_data, self.num_negatives, self.queue_size = num_data, num_negatives, queue_size
        self.temperature, self.momentum, self.key_momentum = float(temperature), float(momentum), float(key_momentum)
        self.objective, self.normalizer = objective, normalizer
        self.embed_student = nn.Linear(student_dim, feat_dim)
        self.embed_teacher = nn.Linear(teacher_dim, feat_dim)
        rows = num_data if queue_size is None else queue_size
        kind = "memory" if queue_size is None else "queue"
        self.register_buffer(f"{kind}_student", F.normalize(torch.randn(rows, feat_dim), dim=1))
        self.register_buffer(f"{kind}_teacher", F.normalize(torch.randn(rows, feat_dim), dim=1))
        if queue_size is not None:
            self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
            for side in ("student", "teacher"):
                head = getattr(self, f"embed_{side}")
                self.register_buffer(f"key_{side}_weight", head.weight.detach().clone())
                self.register_buffer(f"key_{side}_bias", head.bias.detach().clone())
        if normalizer == "fixed":  # log Z of the two directions (student-, teacher-anchored), set on the first batch
            self.register_buffer("log_normalizer", torch.zeros(2))
            self.register_buffer("log_normalizer_set", torch.zeros((), dtype=torch.bool))

    @property
    def uses_queue(self) -> bool:
        return self.queue_size is not None

    def extra_repr(self) -> str:
        memory = f"queue_size={self.queue_size}, key_momentum={self.key_momentum}" if self.uses_queue else \
            f"num_data={self.num_data}, num_negatives={self.num_negatives}, momentum={self.momentum}"
        return f"feat_dim={self.feat_dim}, {memory}, temperature={self.temperature}, objective={self.objective!r}"

    # ------------------------------------------------------------------ helpers
    def _features(self, x: torch.Tensor, dim: int, who: str) -> torch.Tensor:
        if x.dim() < 2:
            raise ValueError(f"CRD needs (N, ...) {who} features, got shape {tuple(x.shape)}")
        x = x.float().flatten(1)
        if x.shape[1] != dim:
            raise ValueError(f"{who} features have {x.shape[1]} values per sample, but CRD was built with "
                             f"{who}_dim={dim}")
        return x

    def _check_index(self, index, n: int) -> torch.Tensor:
        if index is None:
            raise ValueError("CRD in memory-bank mode needs index= (the samples' dataset indices, a LongTensor (N,)); "
                             "or build it with queue_size=K, which needs none")
        index = torch.as_tensor(index)
        if index.dtype.is_floating_point or index.dtype == torch.bool or index.dtype.is_complex:
            raise ValueError(f"CRD index must be an integer tensor, got dtype {index.dtype}")
        index = index.reshape(-1).long()
        if index.numel() != n:
            raise ValueError(f"CRD index has {index.numel()} entries for a batch of {n}")
        low, high = int(index.min()), int(index.max())
        if low < 0 or high >= self.num_data:
            raise ValueError(f"CRD index out of range: indices must be in [0, num_data={self.num_data}), "
                             f"got values from {low} to {high}")
        return index

    def _sample_negatives(self, index: torch.Tensor) -> torch.Tensor:
        """``(N, num_negatives)`` indices uniform over ``[0, num_data)`` minus each row's own index (global CPU RNG)."""
        index = index.cpu()
        draw = torch.randint(0, self.num_data - 1, (index.numel(), self.num_negatives))
        return draw + (draw >= index.unsqueeze(1)).long()

    @staticmethod
    def _bank_scores(anchor: torch.Tensor, memory: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        """``<anchor_i, memory[negatives_ik]>`` as ``(N, K)``, whichever way needs less memory."""
        rows, dim = memory.shape
        if rows <= negatives.shape[1] * dim:  # an (N, M) score matrix is smaller than (N, K, D) gathered rows
            # a copy: the bank is updated in place after the forward, and autograd keeps it for the backward
            return (anchor @ memory.clone().T).gather(1, negatives)
        return torch.bmm(memory[negatives], anchor.unsqueeze(2)).squeeze(2)

    def _direction(self, anchor, positive, negative_scores, which: int) -> torch.Tensor:
        positive_scores = (anchor * positive).sum(1) / self.temperature
        negative_scores = negative_scores / self.temperature
        log_z, num_data = None, None
        if self.objective == "nce" and self.normalizer == "fixed":
            num_data = self.num_data if self.num_data is not None else self.queue_size
            if bool(self.log_normalizer_set):
                log_z = self.log_normalizer[which].clone()
            else:
                log_z = log_normalizer_estimate(negative_scores, num_data)
                if self.training:
                    self.log_normalizer[which] = log_z
                    if which == 1:
                        self.log_normalizer_set.fill_(True)
        return contrastive_loss_from_scores(positive_scores, negative_scores, self.objective, num_data, log_z)

    # ------------------------------------------------------------------ forward
    def forward(self, student_features: torch.Tensor, teacher_features: torch.Tensor,
                index: torch.Tensor | None = None) -> torch.Tensor:
        """The CRD loss (a scalar) of ``(N, ...)`` student and teacher features; ``index`` ``(N,)`` holds the
        samples' dataset indices, required by the memory bank and ignored by the queue."""
        s = self._features(student_features, self.student_dim, "student")
        t = self._features(teacher_features.detach(), self.teacher_dim, "teacher")
        n = s.shape[0]
        if t.shape[0] != n:
            raise ValueError(f"student batch {n} and teacher batch {t.shape[0]} differ")
        if self.uses_queue:
            return self._queue_forward(s, t)
        index = self._check_index(index, n).to(self.memory_student.device)
        e_s = F.normalize(self.embed_student(s), dim=1)
        e_t = F.normalize(self.embed_teacher(t), dim=1)
        drawn = self._sample_negatives(index).to(self.memory_student.device)
        positive_t, positive_s = self.memory_teacher[index], self.memory_student[index]  # copies, read before the update
        loss = (self._direction(e_s, positive_t, self._bank_scores(e_s, self.memory_teacher, drawn), 0)
                + self._direction(e_t, positive_s, self._bank_scores(e_t, self.memory_student, drawn), 1))
        if self.training:
            with torch.no_grad():
                self._update_bank(index, e_s.detach(), e_t.detach())
        return loss

    def _queue_forward(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.training:
            with torch.no_grad():
                for side in ("student", "teacher"):
                    head = getattr(self, f"embed_{side}")
                    for key, live in ((getattr(self, f"key_{side}_weight"), head.weight),
                                      (getattr(self, f"key_{side}_bias"), head.bias)):
                        key.mul_(self.key_momentum).add_(live.detach(), alpha=1.0 - self.key_momentum)
        e_s = F.normalize(self.embed_student(s), dim=1)
        e_t = F.normalize(self.embed_teacher(t), dim=1)
        with torch.no_grad():
            k_s = F.normalize(F.linear(s, self.key_student_weight, self.key_student_bias), dim=1)
            k_t = F.normalize(F.linear(t, self.key_teacher_weight, self.key_teacher_bias), dim=1)
        # clones: the queues are written in place below, and autograd keeps the negatives for the backward
        loss = (self._direction(e_s, k_t, e_s @ self.queue_teacher.clone().T, 0)
                + self._direction(e_t, k_s, e_t @ self.queue_student.clone().T, 1))
        if self.training:
            with torch.no_grad():
                self._enqueue(k_s, k_t)
        return loss

    def _update_bank(self, index: torch.Tensor, e_s: torch.Tensor, e_t: torch.Tensor) -> None:
        if index.unique().numel() != index.numel():  # repeated indices: the last occurrence wins, deterministically
            positions = torch.arange(index.numel(), device=index.device)
            unique, inverse = index.unique(return_inverse=True)
            last = torch.zeros_like(unique).scatter_reduce(0, inverse, positions, reduce="amax", include_self=False)
            index, e_s, e_t = index[last], e_s[last], e_t[last]
        for memory, e in ((self.memory_student, e_s), (self.memory_teacher, e_t)):
            rows = memory[index] * self.momentum + e * (1.0 - self.momentum)
            memory[index] = F.normalize(rows, dim=1)

    def _enqueue(self, k_s: torch.Tensor, k_t: torch.Tensor) -> None:
        size, n = self.queue_size, k_s.shape[0]
        start = int(self.queue_ptr)
        if n > size:  # only the newest `size` keys fit
            start, k_s, k_t = (start + n - size) % size, k_s[-size:], k_t[-size:]
        slots = (start + torch.arange(k_s.shape[0], device=k_s.device)) % size
        self.queue_student[slots] = k_s
        self.queue_teacher[slots] = k_t
        self.queue_ptr.fill_((int(self.queue_ptr) + n) % size)


@register_loss("crd", student="embedding", teacher="embedding", index=True, gather=True)
class LazyCRD(nn.Module):
    """:class:`CRD` whose feature widths are read from the first batch it sees.

    A method (or recipe) names CRD before the models' widths are known;
    ``LazyCRD(**kwargs)`` builds ``CRD(student_dim, teacher_dim, **kwargs)`` on its
    first call (the engine's set-up batch) and delegates to it after.
    """

    def __init__(self, feat_dim: int = 128, num_data: int | None = None, num_negatives: int = 4096,
                 temperature: float = 0.07, momentum: float = 0.5, queue_size: int | None = None,
                 key_momentum: float = 0.99, objective: str = "infonce", normalizer: str = "batch"):
        super().__init__()
        self.kwargs = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        self.crd: CRD | None = None

    def forward(self, student_features: torch.Tensor, teacher_features: torch.Tensor,
                index: torch.Tensor | None = None) -> torch.Tensor:
        if self.crd is None:
            dims = student_features[0].numel(), teacher_features[0].numel()
            self.crd = CRD(*dims, **self.kwargs).to(student_features.device)
        return self.crd(student_features, teacher_features, index=index)
