"""Soft-target knowledge distillation and the plain label loss.

Conventions (shared by every loss in ``distill.losses``):

* inputs are *logits* of shape ``(batch, classes)`` or ``(batch, ..., classes)``: the class
  (vocabulary) axis is the **last** one and every leading position counts as a sample;
* the divergence is ``KL(teacher || student)``;
* the reduction is ``batchmean``: the sum over classes, averaged over the counted positions;
  ``mask`` / ``ignore_index`` choose the positions and ``num_items`` the divisor
  (:mod:`distill.losses.positions`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.losses.positions import (IGNORE_INDEX, check_labels, check_logits, check_num_items, counted_positions,
                                      divide, per_position_mean, soft_target_positions)
from distill.losses.registry import register_loss

_check_logits = check_logits  # the name the other loss modules used


@register_loss("kd", softmax=True)
def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 4.0,
    *,
    mask: torch.Tensor | None = None,
    num_items: int | torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    r"""Hinton et al. 2015, *Distilling the Knowledge in a Neural Network*, soft targets.

    .. math::
        \mathcal{L}_{KD} = \frac{T^2}{N_{items}} \sum_{n \in \text{counted}} \mathrm{KL}\big(
            \mathrm{softmax}(z^t_n / T) \,\|\, \mathrm{softmax}(z^s_n / T)\big)

    over the positions :math:`n` (samples, or tokens); :math:`N_{items}` is ``num_items``, by
    default the number of counted positions (so with ``(N, C)`` logits and no mask, the
    ``batchmean`` over the :math:`N` samples).

    The factor :math:`T^2` keeps the gradient's scale independent of the
    temperature (the paper's §2), so the term can be mixed with cross-entropy
    using a fixed weight. For large :math:`T` the loss tends to
    :math:`\frac{1}{2C}\|(z^s - \bar z^s) - (z^t - \bar z^t)\|^2` per sample
    (matching zero-mean logits, the paper's §2.1), where :math:`C` is the
    number of classes.

    TinyBERT's prediction-layer loss (Jiao et al. 2019, eq. 10), the soft cross-entropy
    :math:`-\sum_c \mathrm{softmax}(z^t/T)_c \log \mathrm{softmax}(z^s/T)_c`, is this loss divided by
    :math:`T^2` plus the teacher's entropy, a constant for the student: the same gradients come from
    ``Term("kd", weight=1 / T**2, temperature=T)`` (TinyBERT uses :math:`T = 1`), so no separate
    loss is registered.

    Args:
        student_logits: ``(N, C)`` or ``(B, ..., C)`` raw student scores, classes last.
        teacher_logits: same shape, raw teacher scores (no gradient needed).
        temperature: softening temperature ``T > 0``.
        mask: ``None`` (every position counts), a bool tensor ``student_logits.shape[:-1]``
            (``True`` counts), or integer labels of that shape (``ignore_index`` does not count).
        num_items: the divisor of the sum over counted positions: the number of counted positions
            in the whole accumulated (and distributed) batch; ``None``: those counted in this call.
        ignore_index: the label value of an integer ``mask`` that marks a position not counted.

    Returns:
        a scalar; zero when the two logit vectors agree up to a per-position constant.
        Computed in float32 whatever the input dtype.
    """
    log_p_s, log_p_t, counted = soft_target_positions(student_logits, teacher_logits, temperature, mask,
                                                       num_items, ignore_index)
    kl = F.kl_div(log_p_s, log_p_t, reduction="none", log_target=True)
    return per_position_mean(kl, counted, num_items) * temperature**2


@register_loss("ce", teacher=None, labels=True, softmax=True)
def cross_entropy(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    label_smoothing: float = 0.0,
    *,
    mask: torch.Tensor | None = None,
    num_items: int | torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    r"""Cross-entropy with the ground-truth labels, the student's own task loss.

    .. math:: \mathcal{L}_{CE} = -\frac{1}{N_{items}}\sum_{n \in \text{counted}} \log \mathrm{softmax}(z^s_n)_{y_n}

    A position counts when its label is not ``ignore_index`` (and ``mask``, if given, keeps it);
    :math:`N_{items}` is ``num_items``, by default the number of counted positions. With
    neither ``mask`` nor ``num_items`` this is :func:`torch.nn.functional.cross_entropy`'s mean
    (``nan`` when no label counts, as there).

    Args:
        student_logits: ``(N, C)`` or ``(B, ..., C)`` raw scores, classes last.
        labels: ``(N,)`` or ``(B, ...)`` class indices, the logits' shape without the class axis;
            ``ignore_index`` marks positions to ignore.
        label_smoothing: as in :func:`torch.nn.functional.cross_entropy`.
        mask, num_items, ignore_index: as in :func:`kd_loss`.
    """
    if student_logits.dim() < 2:
        raise ValueError(f"logits need a class dimension, got shape {tuple(student_logits.shape)}")
    check_labels(student_logits, labels)
    check_num_items(num_items)
    classes = student_logits.shape[-1]
    logits, labels = student_logits.float().reshape(-1, classes), labels.reshape(-1).long()
    if mask is None and num_items is None:
        return F.cross_entropy(logits, labels, label_smoothing=label_smoothing, ignore_index=ignore_index)
    counted = labels != ignore_index
    extra = counted_positions(mask, student_logits, ignore_index)
    if extra is not None:
        counted = counted & extra.reshape(-1)
    labels = labels.masked_fill(~counted, ignore_index)
    total = F.cross_entropy(logits, labels, label_smoothing=label_smoothing, ignore_index=ignore_index,
                            reduction="sum")
    return divide(total, counted, num_items, len(labels))
