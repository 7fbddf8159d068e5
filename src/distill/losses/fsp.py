"""Flow of solution procedure (FSP): match how features change between consecutive layers."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from distill.losses.registry import STAGES, register_loss


def fsp_matrix(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    r"""The FSP matrix of two ``(N, C_1, H, W)`` and ``(N, C_2, H', W')`` feature maps: ``(N, C_1, C_2)``.

    .. math:: G_{ij} = \frac{1}{HW}\sum_{h=1}^{H}\sum_{w=1}^{W} F^1_{i,h,w}\, F^2_{j,h,w}

    When the spatial sizes differ, each map is average-pooled to the smaller
    size in each dimension (``adaptive_avg_pool2d``) first.
    """
    if first.dim() != 4 or second.dim() != 4:
        raise ValueError(f"fsp_matrix needs (N, C, H, W) feature maps, got {tuple(first.shape)} "
                         f"and {tuple(second.shape)}")
    if first.shape[0] != second.shape[0]:
        raise ValueError(f"fsp_matrix needs equal batch sizes, got {first.shape[0]} and {second.shape[0]}")
    size = (min(first.shape[2], second.shape[2]), min(first.shape[3], second.shape[3]))
    a, b = first.float(), second.float()
    if tuple(a.shape[-2:]) != size:
        a = F.adaptive_avg_pool2d(a, size)
    if tuple(b.shape[-2:]) != size:
        b = F.adaptive_avg_pool2d(b, size)
    return a.flatten(2) @ b.flatten(2).transpose(1, 2) / (size[0] * size[1])


@register_loss("fsp", student=list(STAGES), teacher=list(STAGES))
def fsp_loss(student_features: Sequence[torch.Tensor], teacher_features: Sequence[torch.Tensor]) -> torch.Tensor:
    r"""FSP loss — Yim et al. 2017, *A Gift from Knowledge Distillation: Fast Optimization, Network
    Minimization and Transfer Learning* (CVPR).

    Each model gives a list of ``k + 1`` feature maps :math:`F_0, \dots, F_k`
    (e.g. the outputs of successive stages); each consecutive pair gives an FSP
    matrix :math:`G_i = G(F_{i}, F_{i+1})` (:func:`fsp_matrix`), and

    .. math::
        \mathcal{L}_{FSP} = \frac{1}{k}\sum_{i=0}^{k-1}\frac{1}{N}\sum_{n=1}^{N}
            \frac{\| G^s_{i,n} - G^t_{i,n} \|_F^2}{C_i\, C_{i+1}}

    The paper sums the squared L2 distances over pairs and samples with equal
    pair weights :math:`\lambda_i`; dividing by the matrix size and the number
    of pairs (the mean squared entry) keeps the value independent of the
    widths and of how many pairs are used, a constant absorbed in the weight.

    The student's and teacher's matrices must have the same shape, so student
    map :math:`i` needs as many channels as teacher map :math:`i` (spatial sizes
    may differ between the two models: the matrix sums them away).

    Args:
        student_features: ``[F_0, ..., F_k]``, ``(N, C_i, H_i, W_i)`` student maps, ``k >= 1``.
        teacher_features: the teacher's maps at the same points, channel counts equal to the student's.
    """
    if isinstance(student_features, torch.Tensor) or isinstance(teacher_features, torch.Tensor):
        raise ValueError("fsp_loss needs lists of feature maps (two or more per model), got a single tensor")
    s_list, t_list = list(student_features), list(teacher_features)
    if len(s_list) != len(t_list):
        raise ValueError(f"fsp_loss needs as many student as teacher feature maps, got {len(s_list)} and {len(t_list)}")
    if len(s_list) < 2:
        raise ValueError(f"fsp_loss needs at least two feature maps per model (one pair), got {len(s_list)}")
    for i, (s, t) in enumerate(zip(s_list, t_list)):
        if s.dim() != 4 or t.dim() != 4:
            raise ValueError(f"fsp_loss needs (N, C, H, W) feature maps; map {i} has shapes "
                             f"{tuple(s.shape)} and {tuple(t.shape)}")
        if s.shape[1] != t.shape[1]:
            raise ValueError(f"fsp_loss needs equal student and teacher channels at each map (the FSP matrices "
                             f"must have the same shape); map {i} has {s.shape[1]} and {t.shape[1]}")
        if s.shape[0] != t.shape[0]:
            raise ValueError(f"student batch {s.shape[0]} and teacher batch {t.shape[0]} differ at map {i}")
    losses = [F.mse_loss(fsp_matrix(s_list[i], s_list[i + 1]), fsp_matrix(t_list[i], t_list[i + 1]))
              for i in range(len(s_list) - 1)]
    return torch.stack(losses).mean()
