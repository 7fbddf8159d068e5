"""Image-restoration networks: a DnCNN-style denoiser and a pixel-shuffle ×2 super-resolver, one class.

:class:`RestorationNet` is a plain stack of 3×3 convolutions with ReLU (``depth`` convolutions of ``channels``
channels) that predicts a *residual* (He et al. 2016; for denoising DnCNN, Zhang et al. 2017, *Beyond a Gaussian
Denoiser*): the output is the input plus what the network predicts. With ``scale = 2`` the last convolution gives
4 channels per image channel that a pixel shuffle (ESPCN, Shi et al. 2016) turns into a twice larger residual,
added to the bicubic upsampling of the input; the trunk thus runs at the low resolution, a quarter of the pixels.
No batch norm: at these depths (≤ 12) Adam trains the plain residual stack well, and the model behaves the same in
training and evaluation.

Initialisation (``init``): ``"he"`` draws the convolutions before the tail from He et al. 2015's normal
(``std = sqrt(2 / fan_in)``, zero bias), ``"torch"`` keeps PyTorch's default. The tail starts at zero either way.
PyTorch's default shrinks the activations of a deep ReLU stack (a 10 × 48 trunk's last features average 0.013,
0.24 with He's), and for ×2 super-resolution, where the residual to learn is small, the 10 × 48 network then never
left bicubic upsampling (12 epochs; with He's, 0.78× bicubic's validation MSE after 300 steps). ``srnet`` uses
``"he"``; ``dncnn`` keeps ``"torch"``, with which its benchmark rows were measured (it trains well either way).

Taps (``tap_aliases``): ``degraded`` (the model's input: the noisy image or the low-resolution one), ``features``
(the trunk's last feature map, ``channels`` × the input's size: what feature distillation matches), ``stage1``
(the trunk's middle). Registered in the zoo as ``dncnn`` (scale 1) and ``srnet`` (scale 2).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RestorationNet(nn.Module):
    """``depth`` 3×3 convolutions (``channels`` wide, ReLU between) predicting a residual on ``in_channels``
    images ``(N, C, H, W)``; returns ``(N, C, scale·H, scale·W)``."""

    def __init__(self, depth: int = 10, channels: int = 32, scale: int = 1, in_channels: int = 1,
                 init: str = "torch"):
        super().__init__()
        if depth < 3 or channels < 1 or scale not in (1, 2, 3, 4) or in_channels < 1 or init not in ("he", "torch"):
            raise ValueError(f"RestorationNet needs depth >= 3, channels >= 1, scale 1-4, in_channels >= 1 and init "
                             f"'he' or 'torch'; got depth={depth}, channels={channels}, scale={scale}, "
                             f"in_channels={in_channels}, init={init!r}")
        self.scale, self.in_channels = scale, in_channels
        self.head = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.body = nn.Sequential(*[nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU())
                                    for _ in range(depth - 2)])
        self.tail = nn.Conv2d(channels, in_channels * scale ** 2, 3, padding=1)
        if init == "he":
            for conv in [self.head, *(block[0] for block in self.body)]:
                nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
                nn.init.zeros_(conv.bias)
        nn.init.zeros_(self.tail.weight)  # start as the identity (denoising) or bicubic upsampling (SR)
        nn.init.zeros_(self.tail.bias)
        self.tap_aliases = {"degraded": "head:input", "features": "body", "stage1": f"body.{(depth - 2) // 2}"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"RestorationNet takes (N, {self.in_channels}, H, W) images, got {tuple(x.shape)}")
        residual = self.tail(self.body(F.relu(self.head(x))))
        if self.scale == 1:
            return x + residual
        base = F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False)
        return base + F.pixel_shuffle(residual, self.scale)


def _register() -> None:
    from distill.zoo.models import register_model

    @register_model("dncnn", "DnCNN-style residual denoiser (depth, channels, init)")
    def dncnn(in_shape=None, num_classes=None, depth: int = 10, channels: int = 32, init: str = "torch"):
        return RestorationNet(depth, channels, 1, in_shape[0] if in_shape else 1, init)

    @register_model("srnet", "residual x2 super-resolver with pixel shuffle (depth, channels, scale, init)")
    def srnet(in_shape=None, num_classes=None, depth: int = 10, channels: int = 48, scale: int = 2, init: str = "he"):
        return RestorationNet(depth, channels, scale, in_shape[0] if in_shape else 1, init)


_register()
