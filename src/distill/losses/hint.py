"""Feature-matching losses on intermediate representations."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.losses.registry import register_loss


@register_loss("hint", connector="auto")
def hint_loss(student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
    r"""FitNets hint loss — Romero et al. 2015, *FitNets: Hints for Thin Deep Nets*.

    .. math::
        \mathcal{L}_{HT} = \frac{1}{N}\sum_n \frac{1}{D}
            \big\| r(u^s_n) - u^t_n \big\|_2^2

    i.e. the mean squared error between the teacher's hint and the student's
    guided layer after the regressor :math:`r` (a :mod:`distill.connectors`
    connector, applied before this function is called). The paper uses
    :math:`\frac12\|\cdot\|^2` summed over positions; the mean over all
    elements used here differs only by a constant factor absorbed in the weight.

    Args:
        student_features: ``(N, ...)`` student features, already mapped to the
            teacher's shape.
        teacher_features: ``(N, ...)`` teacher features of the same shape.
    """
    if student_features.shape != teacher_features.shape:
        raise ValueError(
            f"hint_loss needs equal shapes, got student {tuple(student_features.shape)} and "
            f"teacher {tuple(teacher_features.shape)}; add a connector to map the student tap"
        )
    return F.mse_loss(student_features.float(), teacher_features.float())


def match_spatial(x: torch.Tensor, size) -> torch.Tensor:
    """Resize ``(N, C, H, W)`` to spatial ``size``: average-pool when larger, bilinear when smaller."""
    size = tuple(size)
    if tuple(x.shape[-2:]) == size:
        return x
    if x.shape[-2] >= size[0] and x.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
