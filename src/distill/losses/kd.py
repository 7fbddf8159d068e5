"""Soft-target knowledge distillation and the plain label loss.

Conventions (shared by every loss in ``distill.losses``):

* inputs are *logits* of shape ``(batch, classes)`` (or ``(batch, ..., classes)``,
  in which case every leading position counts as a sample);
* the divergence is ``KL(teacher || student)``;
* the reduction is ``batchmean``: the sum over classes, averaged over samples.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _check_logits(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} must have the same shape"
        )
    if student_logits.dim() < 2:
        raise ValueError(f"logits need a class dimension, got shape {tuple(student_logits.shape)}")


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 4.0,
) -> torch.Tensor:
    r"""Hinton et al. 2015, *Distilling the Knowledge in a Neural Network*, soft targets.

    .. math::
        \mathcal{L}_{KD} = T^2 \cdot \frac{1}{N} \sum_{n} \mathrm{KL}\big(
            \mathrm{softmax}(z^t_n / T) \,\|\, \mathrm{softmax}(z^s_n / T)\big)

    The factor :math:`T^2` keeps the gradient's scale independent of the
    temperature (the paper's §2), so the term can be mixed with cross-entropy
    using a fixed weight. For large :math:`T` the loss tends to
    :math:`\frac{1}{2C}\|(z^s - \bar z^s) - (z^t - \bar z^t)\|^2` per sample
    (matching zero-mean logits, the paper's §2.1), where :math:`C` is the
    number of classes.

    Args:
        student_logits: ``(N, C)`` (or ``(..., C)``) raw student scores.
        teacher_logits: same shape, raw teacher scores (no gradient needed).
        temperature: softening temperature ``T > 0``.

    Returns:
        a scalar; zero when the two logit vectors agree up to a per-sample constant.
        Computed in float32 whatever the input dtype.
    """
    _check_logits(student_logits, teacher_logits)
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    classes = student_logits.shape[-1]
    s = student_logits.float().reshape(-1, classes) / temperature
    t = teacher_logits.float().reshape(-1, classes) / temperature
    log_p_s = F.log_softmax(s, dim=-1)
    log_p_t = F.log_softmax(t, dim=-1)
    kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
    return kl * temperature**2


def cross_entropy(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    r"""Cross-entropy with the ground-truth labels, the student's own task loss.

    .. math:: \mathcal{L}_{CE} = -\frac{1}{N}\sum_n \log \mathrm{softmax}(z^s_n)_{y_n}

    Args:
        student_logits: ``(N, C)`` (or ``(..., C)``) raw scores.
        labels: ``(N,)`` (or ``(...)``) class indices; ``-100`` marks positions to ignore.
        label_smoothing: as in :func:`torch.nn.functional.cross_entropy`.
    """
    classes = student_logits.shape[-1]
    return F.cross_entropy(
        student_logits.float().reshape(-1, classes),
        labels.reshape(-1).long(),
        label_smoothing=label_smoothing,
    )
