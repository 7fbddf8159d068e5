"""An anchor-free detector: CenterNet-style centre heatmaps with GFL-style box distributions.

``CenterDet`` = a small ResNet-like backbone (stride 2, 4, 8, 16 stages) -> a feature pyramid neck (FPN
top-down: 1x1 laterals of the stride 4, 8 and 16 features, upsampled and added, a 3x3 conv) at stride 4 ->
two heads on the neck's output: ``logits`` ``(B, C, H/4, W/4)`` per-class centre logits, and ``box``
``(B, 4, K, H/4, W/4)`` logits of distributions over ``K`` distances (in strides) to the box's left, top,
right and bottom edges, so localization distillation (LD) has distributions to match. The neck's output is
the module ``neck`` (tap ``neck``), what feature distillation reads.

Two sizes are registered: ``centerdet`` (options below) and the presets ``centerdet_teacher`` /
``centerdet_student`` used by ``distill bench dense``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distill.zoo.models import register_model
from distill.zoo.scenes import CLASSES

TEACHER = {"widths": (24, 48, 80, 112), "neck": 80, "head": 64}
STUDENT = {"widths": (16, 24, 32, 48), "neck": 32, "head": 32}


def conv_bn(cin: int, cout: int, stride: int = 1, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class Stage(nn.Module):
    """A strided 3x3 conv, then a residual pair of 3x3 convs."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.down = conv_bn(cin, cout, 2)
        self.body = nn.Sequential(conv_bn(cout, cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        x = self.down(x)
        return F.relu(x + self.body(x))


class Neck(nn.Module):
    """FPN top-down path ending at the finest level given (stride 4)."""

    def __init__(self, widths: tuple[int, ...], out: int):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(w, out, 1) for w in widths)
        self.smooth = conv_bn(out, out)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = self.lateral[-1](features[-1])
        for lateral, f in zip(reversed(self.lateral[:-1]), reversed(features[:-1])):
            x = lateral(f) + F.interpolate(x, size=f.shape[-2:], mode="nearest")
        return self.smooth(x)


class CenterDet(nn.Module):
    """CenterNet-style detector with a feature pyramid neck and distribution box heads; ``stride`` = 4.

    Args:
        num_classes: heatmap channels.
        in_channels: image channels.
        widths: the stem's and three stages' widths (strides 2, 4, 8, 16).
        neck: the neck's width; head: the heads' hidden width.
        bins: ``K``, the distance bins 0 .. K-1 (in strides: 10 bins reach 36 px from a location at stride 4).
    """

    stride = 4

    def __init__(self, num_classes: int = len(CLASSES), in_channels: int = 1, widths=(32, 64, 96, 128),
                 neck: int = 96, head: int = 96, bins: int = 10):
        super().__init__()
        if len(widths) != 4:
            raise ValueError(f"widths are the stem's and three stages' widths, four numbers, got {widths}")
        self.num_classes, self.bins = num_classes, bins
        self.stem = conv_bn(in_channels, widths[0], 2)
        self.stages = nn.ModuleList(Stage(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.neck = Neck(tuple(widths[1:]), neck)
        self.cls_head = nn.Sequential(conv_bn(neck, head), nn.Conv2d(head, num_classes, 1))
        self.box_head = nn.Sequential(conv_bn(neck, head), nn.Conv2d(head, 4 * bins, 1))
        nn.init.constant_(self.cls_head[-1].bias, -2.19)  # a prior of 0.1 (CenterNet), so the focal loss starts calm

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.dim() != 4 or x.shape[-1] % 16 or x.shape[-2] % 16:
            raise ValueError(f"CenterDet takes (B, C, H, W) images with H and W multiples of 16, got {tuple(x.shape)}")
        x = self.stem(x)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        neck = self.neck(features)
        box = self.box_head(neck)
        b, _, h, w = box.shape
        return {"logits": self.cls_head(neck), "box": box.reshape(b, 4, self.bins, h, w)}


def _channels(in_shape) -> int:
    return 1 if in_shape is None else int(in_shape[0])


@register_model("centerdet", "anchor-free detector: CenterNet heatmaps, FPN neck, GFL box distributions "
                             "(widths, neck, head, bins)")
def centerdet(in_shape=None, num_classes: int = len(CLASSES), **options) -> CenterDet:
    return CenterDet(num_classes, _channels(in_shape), **options)


@register_model("centerdet_teacher", "the detection benchmark's teacher CenterDet (widths 24-48-80-112, neck 80)")
def centerdet_teacher(in_shape=None, num_classes: int = len(CLASSES), **options) -> CenterDet:
    return CenterDet(num_classes, _channels(in_shape), **{**TEACHER, **options})


@register_model("centerdet_student", "the detection benchmark's student CenterDet (widths 16-24-32-48, neck 32)")
def centerdet_student(in_shape=None, num_classes: int = len(CLASSES), **options) -> CenterDet:
    return CenterDet(num_classes, _channels(in_shape), **{**STUDENT, **options})
