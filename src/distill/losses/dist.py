"""DIST: distillation by correlation of predictions."""
from __future__ import annotations

import torch

from distill.losses.kd import _check_logits


def _pearson_distance(a: torch.Tensor, b: torch.Tensor, dim: int, eps: float = 1e-8) -> torch.Tensor:
    a = a - a.mean(dim, keepdim=True)
    b = b - b.mean(dim, keepdim=True)
    rho = (a * b).sum(dim) / (a.norm(dim=dim) * b.norm(dim=dim) + eps)
    return (1.0 - rho).mean()


def dist_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float = 1.0, gamma: float = 1.0,
              temperature: float = 1.0) -> torch.Tensor:
    r"""DIST — Huang et al. 2022, *Knowledge Distillation from A Stronger Teacher* (NeurIPS).

    Matches *relations* of predictions with the Pearson distance
    :math:`d_p(u, v) = 1 - \rho(u, v)` rather than their exact values. With
    :math:`Y = \mathrm{softmax}(Z/T)` (rows: samples, columns: classes):

    .. math::
        \mathcal{L}_{inter} = \frac1N \sum_i d_p(Y^s_{i,:}, Y^t_{i,:}),\qquad
        \mathcal{L}_{intra} = \frac1C \sum_j d_p(Y^s_{:,j}, Y^t_{:,j})

    .. math:: \mathcal{L}_{DIST} = T^2 (\beta\,\mathcal{L}_{inter} + \gamma\,\mathcal{L}_{intra})

    Zero when the student's predictions are a positive affine map of the teacher's.
    """
    _check_logits(student_logits, teacher_logits)
    y_s = torch.softmax(student_logits.float() / temperature, dim=-1)
    y_t = torch.softmax(teacher_logits.float() / temperature, dim=-1)
    inter = _pearson_distance(y_s, y_t, dim=1)
    intra = _pearson_distance(y_s, y_t, dim=0)
    return temperature**2 * (beta * inter + gamma * intra)
