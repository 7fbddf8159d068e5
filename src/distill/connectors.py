"""Connectors: small trainable maps from a student tap to the teacher tap's shape.

Built by probing one batch: given the two shapes, :func:`build_connector` picks

* ``identity`` when the shapes already agree,
* ``linear`` for ``(N, D_s) -> (N, D_t)`` (also ``(N, L, D_s) -> (N, L, D_t)``),
* ``conv1x1`` for ``(N, C_s, H, W) -> (N, C_t, H', W')``: a 1x1 convolution with
  batch norm, followed by bilinear interpolation when the spatial size differs,
* ``conv3x3`` likewise with a 3x3 kernel (FitNets' convolutional regressor),
* ``conv1x1_nobn``: a 1x1 convolution with a bias and no batch norm (the regressor of the restoration KD
  papers). Batch norm makes the student's features scale-free for the loss: where the teacher's features are
  small beside the connector's unit-variance output (a super-resolution trunk), the hint is lowest when the
  student's features die, and Adam drives them there before the image loss can act.

Connectors are trained with the student and saved with it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distill.errors import DistillError

KINDS = ("auto", "identity", "linear", "conv1x1", "conv3x3", "conv1x1_nobn")


class ConnectorError(DistillError):
    pass


class ConvConnector(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, size: tuple[int, int], kernel_size: int = 1,
                 norm: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=not norm)
        self.bn = nn.BatchNorm2d(out_channels) if norm else nn.Identity()
        self.size = tuple(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        return self.bn(self.conv(x))


def build_connector(student_shape, teacher_shape, kind: str = "auto") -> nn.Module:
    """A module mapping tensors of ``student_shape`` to ``teacher_shape`` (batch dim included)."""
    s, t = tuple(student_shape), tuple(teacher_shape)
    if kind not in KINDS:
        raise ConnectorError(f"unknown connector {kind!r}; choose one of {', '.join(KINDS)}")
    if kind == "auto":
        if s == t:
            kind = "identity"
        elif len(s) == len(t) == 4:
            kind = "conv1x1"
        elif len(s) == len(t) and len(s) in (2, 3) and s[:-1] == t[:-1]:
            kind = "linear"
        else:
            raise ConnectorError(f"no connector maps student shape {s} to teacher shape {t}")
    if kind == "identity":
        if s != t:
            raise ConnectorError(f"identity connector needs equal shapes, got {s} and {t}")
        return nn.Identity()
    if kind == "linear":
        if len(s) != len(t) or s[:-1] != t[:-1]:
            raise ConnectorError(f"a linear connector maps the last dimension only; got {s} -> {t}")
        return nn.Linear(s[-1], t[-1])
    if len(s) != 4 or len(t) != 4:
        raise ConnectorError(f"a {kind} connector needs (N, C, H, W) shapes; got {s} -> {t}")
    return ConvConnector(s[1], t[1], t[2:], kernel_size=3 if kind == "conv3x3" else 1, norm=kind != "conv1x1_nobn")
