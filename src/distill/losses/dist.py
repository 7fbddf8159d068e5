"""DIST: distillation by correlation of predictions."""
from __future__ import annotations

import torch

from distill.losses.positions import IGNORE_INDEX, check_logits, check_num_items, counted_positions, divide, share
from distill.losses.registry import register_loss


def _pearson_distances(a: torch.Tensor, b: torch.Tensor, dim: int, weight: torch.Tensor | None = None,
                       eps: float = 1e-8) -> torch.Tensor:
    """``1 - rho`` between ``a`` and ``b`` along ``dim``, one per slice; ``weight`` (0/1, broadcast to ``a``)
    leaves entries out of the means and sums."""
    if weight is None:
        a = a - a.mean(dim, keepdim=True)
        b = b - b.mean(dim, keepdim=True)
    else:
        count = weight.sum(dim, keepdim=True).clamp_min(1)
        a = (a - (a * weight).sum(dim, keepdim=True) / count) * weight
        b = (b - (b * weight).sum(dim, keepdim=True) / count) * weight
    rho = (a * b).sum(dim) / (a.norm(dim=dim) * b.norm(dim=dim) + eps)
    return 1.0 - rho


@register_loss("dist", gather=True, softmax=True)
def dist_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float = 1.0, gamma: float = 1.0,
              temperature: float = 1.0, *, mask: torch.Tensor | None = None,
              num_items: int | torch.Tensor | None = None, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    r"""DIST — Huang et al. 2022, *Knowledge Distillation from A Stronger Teacher* (NeurIPS).

    Matches *relations* of predictions with the Pearson distance
    :math:`d_p(u, v) = 1 - \rho(u, v)` rather than their exact values. With
    :math:`Y = \mathrm{softmax}(Z/T)`, an ``(N, C)`` matrix whose rows are the :math:`N` counted
    positions (samples, or the tokens of ``(B, ..., C)`` logits, flattened) and whose columns
    are the :math:`C` classes:

    .. math::
        \mathcal{L}_{inter} = \frac{1}{N_{items}} \sum_i d_p(Y^s_{i,:}, Y^t_{i,:}),\qquad
        \mathcal{L}_{intra} = \frac{N}{N_{items}} \cdot \frac1C \sum_j d_p(Y^s_{:,j}, Y^t_{:,j})

    .. math:: \mathcal{L}_{DIST} = T^2 (\beta\,\mathcal{L}_{inter} + \gamma\,\mathcal{L}_{intra})

    :math:`N_{items}` is ``num_items``, by default :math:`N`, which gives the paper's means. The
    intra-class part is a statistic of the positions in this call, not a sum over them: with
    ``num_items`` it is weighted by this call's share :math:`N / N_{items}` of the positions, so
    micro-batches' weights add up to 1 (the inter-class part adds up exactly; the intra-class part
    of two micro-batches is not that of their union).

    Zero when the student's predictions are a positive affine map of the teacher's.

    Args:
        student_logits, teacher_logits: ``(N, C)`` or ``(B, ..., C)``, classes last.
        mask, num_items, ignore_index: as in :func:`~distill.losses.kd_loss`.
    """
    check_logits(student_logits, teacher_logits)
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    check_num_items(num_items)
    counted = counted_positions(mask, student_logits, ignore_index)
    classes = student_logits.shape[-1]
    y_s = torch.softmax(student_logits.float().reshape(-1, classes) / temperature, dim=-1)
    y_t = torch.softmax(teacher_logits.float().reshape(-1, classes) / temperature, dim=-1)
    positions = y_s.shape[0]
    if counted is None:
        inter = _pearson_distances(y_s, y_t, dim=1).sum()
        intra = _pearson_distances(y_s, y_t, dim=0).mean()
    else:
        counted = counted.reshape(-1)
        inter = torch.where(counted, _pearson_distances(y_s, y_t, dim=1), 0.0).sum()
        intra = _pearson_distances(y_s, y_t, dim=0, weight=counted[:, None].float()).mean() * counted.any()
    inter = divide(inter, counted, num_items, positions)
    intra = intra * share(counted, num_items, positions)
    return temperature**2 * (beta * inter + gamma * intra)
