"""Attention transfer."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.losses.registry import register_loss


def attention_map(features: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """``(N, C, H, W) -> (N, H*W)``: the channel mean of ``|A|^p``, L2-normalised per sample."""
    return F.normalize(features.float().abs().pow(p).mean(1).flatten(1), dim=1)


@register_loss("at")
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


@register_loss("nst")
def nst_loss(student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
    r"""Neuron selectivity transfer — Huang & Wang 2017, *Like What You Like: Knowledge Distill via
    Neuron Selectivity Transfer*.

    Each channel's spatial map, flattened and L2-normalised, is one sample of a
    model's "selectivity" distribution; the loss is the squared maximum mean
    discrepancy between the student's :math:`\{s_i\}_{i=1}^{C_s}` and the
    teacher's :math:`\{t_j\}_{j=1}^{C_t}` under the polynomial kernel
    :math:`k(x, y) = (x^\top y)^2` (the paper's choice, d = 2, c = 0):

    .. math::
        \mathcal{L}_{NST} = \frac{1}{C_t^2}\sum_{j,j'} k(t_j, t_{j'}) + \frac{1}{C_s^2}\sum_{i,i'} k(s_i, s_{i'})
            - \frac{2}{C_s C_t}\sum_{i,j} k(s_i, t_j)

    averaged over the batch. Channel counts may differ; spatial sizes must agree.
    """
    if student_features.dim() != 4 or teacher_features.dim() != 4:
        raise ValueError("nst_loss needs (N, C, H, W) feature maps")
    if student_features.shape[-2:] != teacher_features.shape[-2:]:
        raise ValueError(f"nst_loss needs equal spatial sizes, got student {tuple(student_features.shape[-2:])} "
                         f"and teacher {tuple(teacher_features.shape[-2:])}")
    s = F.normalize(student_features.float().flatten(2), dim=2)  # (N, C_s, HW)
    t = F.normalize(teacher_features.float().flatten(2), dim=2)

    def mean_kernel(a, b):
        return (a @ b.transpose(1, 2)).pow(2).mean((1, 2))

    return (mean_kernel(t, t) + mean_kernel(s, s) - 2 * mean_kernel(s, t)).mean()
