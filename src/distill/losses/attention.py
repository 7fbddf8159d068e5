"""Attention transfer."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def attention_map(features: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """``(N, C, H, W) -> (N, H*W)``: the channel mean of ``|A|^p``, L2-normalised per sample."""
    return F.normalize(features.float().abs().pow(p).mean(1).flatten(1), dim=1)


def at_loss(student_features: torch.Tensor, teacher_features: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    r"""Attention transfer — Zagoruyko & Komodakis 2017, *Paying More Attention to Attention* (ICLR).

    With the activation-based spatial attention map
    :math:`Q = \mathrm{vec}\big(\tfrac1C\sum_c |A_c|^p\big)` of a ``(N, C, H, W)`` feature map,

    .. math::
        \mathcal{L}_{AT} = \frac{1}{N\,HW}\sum_n
            \Big\| \frac{Q^s_n}{\|Q^s_n\|_2} - \frac{Q^t_n}{\|Q^t_n\|_2} \Big\|_2^2

    (the mean over positions of the squared difference, as in the authors'
    code; the paper's weight β/2 = 500 is for that sum's per-position mean at
    CIFAR scale). Channel counts may differ; spatial sizes must agree.
    """
    if student_features.dim() != 4 or teacher_features.dim() != 4:
        raise ValueError("at_loss needs (N, C, H, W) feature maps")
    if student_features.shape[-2:] != teacher_features.shape[-2:]:
        raise ValueError(f"at_loss needs equal spatial sizes, got student {tuple(student_features.shape[-2:])} "
                         f"and teacher {tuple(teacher_features.shape[-2:])}")
    return (attention_map(student_features, p) - attention_map(teacher_features, p)).pow(2).mean()
