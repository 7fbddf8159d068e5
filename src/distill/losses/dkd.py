"""Decoupled knowledge distillation."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.losses.positions import (IGNORE_INDEX, check_labels, check_logits, check_num_items, counted_positions,
                                      divide)
from distill.losses.registry import register_loss


@register_loss("dkd", labels=True, softmax=True)
def dkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
    *,
    mask: torch.Tensor | None = None,
    num_items: int | torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    r"""Decoupled KD — Zhao et al. 2022, *Decoupled Knowledge Distillation* (CVPR).

    Splits the KD divergence at temperature :math:`T` into a target-class part
    and a non-target-class part and weights them separately:

    .. math::
        \mathrm{TCKD} = \mathrm{KL}(b^t \,\|\, b^s),\quad
        b = [p_y,\; 1 - p_y],\qquad
        \mathrm{NCKD} = \mathrm{KL}(\hat p^t \,\|\, \hat p^s),\quad
        \hat p_j = \frac{e^{z_j/T}}{\sum_{k \ne y} e^{z_k/T}}\ (j \ne y)

    .. math:: \mathcal{L}_{DKD} = \frac{T^2}{N_{items}} \sum_{n \in \text{counted}}
        \big(\alpha\,\mathrm{TCKD}_n + \beta\,\mathrm{NCKD}_n\big)

    summed over the counted positions and divided by ``num_items`` (by default their number: the
    batch mean). Plain KD equals ``TCKD + (1 - p^t_y) NCKD``: DKD frees
    the non-target weight from the teacher's confidence. The paper's CIFAR-100
    setting is ``alpha=1, beta=8, T=4`` with the weight warmed up linearly over
    the first 20 epochs (give the term a weight schedule for that).

    Args:
        student_logits, teacher_logits: ``(N, C)`` or ``(B, ..., C)`` raw scores, classes last.
        labels: ``(N,)`` or ``(B, ...)`` ground-truth class indices; a position whose label is
            ``ignore_index`` does not count.
        mask, num_items, ignore_index: as in :func:`~distill.losses.kd_loss` (a position counts
            when its label and the mask both keep it).
    """
    check_logits(student_logits, teacher_logits)
    check_labels(student_logits, labels)
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    check_num_items(num_items)
    counted = labels.to(student_logits.device) != ignore_index
    extra = counted_positions(mask, student_logits, ignore_index)
    if extra is not None:
        counted = counted & extra
    s = student_logits.float() / temperature
    t = teacher_logits.float() / temperature
    target = F.one_hot(labels.to(s.device).long().masked_fill(~counted, 0), s.shape[-1]).bool()

    log_p_s, log_p_t = F.log_softmax(s, -1), F.log_softmax(t, -1)
    log_b_s = _binary_log_probs(log_p_s, target)
    log_b_t = _binary_log_probs(log_p_t, target)
    tckd = (log_b_t.exp() * (log_b_t - log_b_s)).sum(-1)

    hidden = torch.finfo(s.dtype).min
    log_q_s = F.log_softmax(s.masked_fill(target, hidden), -1)
    log_q_t = F.log_softmax(t.masked_fill(target, hidden), -1)
    nckd = torch.where(target, 0.0, log_q_t.exp() * (log_q_t - log_q_s)).sum(-1)

    positions = counted.numel()
    tckd = divide(torch.where(counted, tckd, 0.0).sum(), counted, num_items, positions)
    nckd = divide(torch.where(counted, nckd, 0.0).sum(), counted, num_items, positions)
    return temperature**2 * (alpha * tckd + beta * nckd)


def _binary_log_probs(log_p: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``log [p_y, 1 - p_y]`` per position, computed stably from log-probabilities."""
    log_p_y = (log_p * target).sum(-1)
    log_rest = torch.logsumexp(log_p.masked_fill(target, float("-inf")), -1)
    return torch.stack([log_p_y, log_rest], -1)
