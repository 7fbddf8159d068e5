"""LeNet-5 and LeNet-5-half, the MNIST pair of the data-free KD papers (DAFL, Chen et al. 2019; DFAD,
Fang et al. 2019): teacher LeNet-5 (about 62k parameters), student LeNet-5-half (half the channels and
units, about 16k).

The papers resize MNIST to 32x32 and use unpadded 5x5 convolutions; on our 28x28 images the first
convolution pads by 2 instead, which gives the same feature-map sizes (28 -> 14 -> 10 -> 5) and the
same parameter count. conv 6@5x5 -> ReLU -> max-pool 2 -> conv 16@5x5 -> ReLU -> max-pool 2 -> fc 120 ->
ReLU -> fc 84 -> ReLU -> fc 10 (the fc 120 on the 16x5x5 map is the papers' conv 120@5x5).

``lenet5(batch_norm=True)`` puts a batch norm after each convolution: DeepInversion (Yin et al. 2020) matches
the statistics those layers keep, and plain LeNet-5 has none. ``fc_batch_norm=True`` adds one after each hidden
fully connected layer as well (120 and 84 units), two more sets of statistics for DeepInversion to match.

Taps: ``stage1``, ``stage2`` (the two pooled conv maps), ``last_stage``, and ``embedding``: the 120
features (60 for the half) that DAFL's activation term reads, the input of the two-layer classifier.
"""
from __future__ import annotations

import torch
from torch import nn

from distill.zoo.models import register_model, stage_aliases


class LeNet5(nn.Module):
    """LeNet-5 on ``(C, H, W)`` images with ``H``, ``W`` >= 28 and ``width`` times its channels and units."""

    def __init__(self, in_shape=(1, 28, 28), num_classes: int = 10, width: float = 1.0, batch_norm: bool = False,
                 fc_batch_norm: bool = False):
        super().__init__()
        c, h, w = in_shape
        if h < 28 or w < 28:
            raise ValueError(f"LeNet-5 needs images of at least 28x28, got {h}x{w}")
        c1, c2, f1, f2 = (max(1, round(n * width)) for n in (6, 16, 120, 84))
        pad = 2 if (h, w) == (28, 28) else 0  # 28x28 padded = the papers' 32x32 unpadded
        side = lambda n: ((n + 2 * pad - 4) // 2 - 4) // 2  # noqa: E731  (two conv-5 + pool-2)
        norm = (lambda n: [nn.BatchNorm2d(n)]) if batch_norm else (lambda n: [])  # noqa: E731
        conv1 = [nn.Conv2d(c, c1, 5, padding=pad), *norm(c1), nn.ReLU(), nn.MaxPool2d(2)]
        conv2 = [nn.Conv2d(c1, c2, 5), *norm(c2), nn.ReLU(), nn.MaxPool2d(2)]
        fc_norm = (lambda n: [nn.BatchNorm1d(n)]) if fc_batch_norm else (lambda n: [])  # noqa: E731
        self.features = nn.Sequential(*conv1, *conv2, nn.Flatten(), nn.Linear(c2 * side(h) * side(w), f1),
                                      *fc_norm(f1), nn.ReLU())
        self.classifier = nn.Sequential(nn.Linear(f1, f2), *fc_norm(f2), nn.ReLU(), nn.Linear(f2, num_classes))
        pools = [len(conv1) - 1, len(conv1) + len(conv2) - 1]
        self.tap_aliases = stage_aliases([f"features.{i}" for i in pools], "classifier")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register_model("lenet5", "LeNet-5 (6-16 conv, 120-84 fc), the DAFL / DFAD MNIST teacher (batch_norm: after each "
                "convolution, which DeepInversion needs; fc_batch_norm: after the hidden fc layers too)")
def lenet5(in_shape, num_classes, batch_norm: bool = False, fc_batch_norm: bool = False):
    return LeNet5(in_shape, num_classes, 1.0, batch_norm, fc_batch_norm)


@register_model("lenet5_half", "LeNet-5-half (3-8 conv, 60-42 fc), the DAFL / DFAD MNIST student")
def lenet5_half(in_shape, num_classes):
    return LeNet5(in_shape, num_classes, 0.5)
