"""Losses on float targets: regression and multi-label classification, the student's own loss in those tasks."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.losses.registry import register_loss


@register_loss("mse", teacher=None, labels=True)
def mse_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    r"""Mean squared error over every element, computed in float32:
    :math:`\frac{1}{N D}\sum_{n,d} (y_{nd} - \hat y_{nd})^2`.

    ``prediction``: ``(N, ...)``; ``target``: the same number of elements (``(N,)`` targets match ``(N, 1)``
    outputs). Float targets are used as they are, never rounded.
    """
    if target.numel() != prediction.numel():
        raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} have different "
                         "numbers of elements")
    return F.mse_loss(prediction.float(), target.float().reshape(prediction.shape))


def bce_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    r"""Binary cross-entropy of independent sigmoid outputs (multi-label), averaged over every element:
    :math:`-\frac{1}{N D}\sum_{n,d} y_{nd}\log\sigma(z_{nd}) + (1-y_{nd})\log(1-\sigma(z_{nd}))`.

    ``logits``: ``(N, D)`` raw scores; ``targets``: ``(N, D)`` in ``[0, 1]`` (multi-hot or soft).
    """
    if targets.shape != logits.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} must have the same shape")
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float())
