"""CIFAR-style classifiers of the knowledge-distillation literature.

The teacher/student zoo of CRD / RepDistiller (Tian et al., "Contrastive
Representation Distillation", ICLR 2020) and mdistiller (Zhao et al.,
"Decoupled Knowledge Distillation", CVPR 2022), written from the papers and
adapted to small inputs: every model accepts any ``(C, H, W)`` (tested with
1x28x28, 3x32x32 and 1x8x8) and ends with adaptive average pooling, so no
stage ever shrinks a map below 1x1.

* ``resnet8x4``, ``resnet32x4`` - ResNet (He et al., "Deep Residual Learning
  for Image Recognition", CVPR 2016) with 4x wider stages (64, 128, 256),
  built with :class:`distill.zoo.models.ResNet`.  Difference from CRD: there
  the stem has 32 channels and the first block projects 32 -> 64; here the
  stem has 64 channels (the first stage width) and the first block has an
  identity shortcut.
* ``wrn_16_2``, ``wrn_40_2`` - Wide ResNet (Zagoruyko & Komodakis, "Wide
  Residual Networks", BMVC 2016): depth ``6n + 4``, widen factor ``k``,
  pre-activation basic blocks, widths 16, 16k, 32k, 64k, dropout 0 by default.
* ``vgg8``, ``vgg13`` - VGG with batch norm (Simonyan & Zisserman, "Very Deep
  Convolutional Networks for Large-Scale Image Recognition", ICLR 2015;
  Ioffe & Szegedy 2015) with CRD's per-stage configurations and a single
  linear classifier.
* ``mobilenetv2`` - MobileNetV2 (Sandler et al., "MobileNetV2: Inverted
  Residuals and Linear Bottlenecks", CVPR 2018), width multiplier 0.5 by
  default as CRD's ``MobileNetV2`` for CIFAR.
* ``shufflenetv2`` - ShuffleNetV2 (Ma et al., "ShuffleNet V2: Practical
  Guidelines for Efficient CNN Architecture Design", ECCV 2018), ``net_size``
  0.5 / 1.0 / 1.5 / 2.0.

Tap paths: ``conv1``, ``layer1``..``layer3`` (ResNet); ``conv1``,
``block1``..``block3``, ``bn1`` (WRN); ``features.0``..``features.4`` (VGG
stages); ``conv1``, ``blocks.0``..``blocks.6``, ``conv2`` (MobileNetV2);
``conv1``, ``layer1``..``layer3``, ``conv2`` (ShuffleNetV2).  Every model has
a ``pool`` (adaptive average pooling to 1x1) and ends in a linear layer.
"""
from __future__ import annotations

import torch
from torch import nn

from distill.zoo.models import ResNet, register_model, stage_aliases

# ---------------------------------------------------------------------------
# ResNet x4 (reuses distill.zoo.models.ResNet)
# ---------------------------------------------------------------------------

_X4_WIDTHS = (64, 128, 256)


@register_model("resnet8x4", "CIFAR ResNet-8 with 4x widths 64-128-256 (CRD teacher/student)")
def resnet8x4(in_shape, num_classes, zero_init_residual=False):
    return ResNet(in_shape, 8, _X4_WIDTHS, num_classes, zero_init_residual)


@register_model("resnet32x4", "CIFAR ResNet-32 with 4x widths 64-128-256 (CRD teacher)")
def resnet32x4(in_shape, num_classes, zero_init_residual=False):
    return ResNet(in_shape, 32, _X4_WIDTHS, num_classes, zero_init_residual)


# ---------------------------------------------------------------------------
# Wide ResNet
# ---------------------------------------------------------------------------

class WideBasicBlock(nn.Module):
    """Pre-activation basic block: BN-ReLU-conv3x3 (-dropout) -BN-ReLU-conv3x3, plus the shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, dropout: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.equal_in_out = in_planes == planes and stride == 1
        # projection shortcut on the pre-activated input when the shape changes
        self.shortcut = None if self.equal_in_out else nn.Conv2d(in_planes, planes, 1, stride, 0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.relu1(self.bn1(x))
        out = self.conv1(act)
        out = self.conv2(self.dropout(self.relu2(self.bn2(out))))
        return out + (x if self.shortcut is None else self.shortcut(act))


class WideResNet(nn.Module):
    """Wide ResNet (Zagoruyko & Komodakis 2016): depth ``6n + 4``, widths 16, 16k, 32k, 64k."""

    def __init__(self, in_shape, depth: int = 16, widen_factor: int = 2, num_classes: int = 10,
                 dropout: float = 0.0):
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n+4 with n >= 1, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_shape[0], widths[0], 3, 1, 1, bias=False)
        planes = widths[0]
        groups = []
        for i, w in enumerate(widths[1:]):
            blocks = []
            for j in range(n):
                blocks.append(WideBasicBlock(planes, w, stride=2 if (i > 0 and j == 0) else 1, dropout=dropout))
                planes = w
            groups.append(nn.Sequential(*blocks))
        self.block1, self.block2, self.block3 = groups
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(planes, num_classes)
        # the last stage is the block3 output after the final BN-ReLU, as the classifier sees it
        self.tap_aliases = stage_aliases(["block1", "block2", "relu"], "fc")
        _init_conv_bn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        x = self.relu(self.bn1(x))
        return self.fc(torch.flatten(self.pool(x), 1))


@register_model("wrn", "Wide ResNet (depth=6n+4, widen_factor, dropout)")
def wrn(in_shape, num_classes, depth=16, widen_factor=2, dropout=0.0):
    return WideResNet(in_shape, int(depth), int(widen_factor), num_classes, dropout)


@register_model("wrn_16_2", "Wide ResNet-16-2, widths 16-32-64-128 (CRD student)")
def wrn_16_2(in_shape, num_classes, dropout=0.0):
    return WideResNet(in_shape, 16, 2, num_classes, dropout)


@register_model("wrn_40_2", "Wide ResNet-40-2, widths 16-32-64-128 (CRD teacher)")
def wrn_40_2(in_shape, num_classes, dropout=0.0):
    return WideResNet(in_shape, 40, 2, num_classes, dropout)


# ---------------------------------------------------------------------------
# VGG with batch norm
# ---------------------------------------------------------------------------

VGG_CFGS = {
    8: ((64,), (128,), (256,), (512,), (512,)),
    11: ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    13: ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    16: ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    19: ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512), (512, 512, 512, 512)),
}


class VGG(nn.Module):
    """VGG-BN as in CRD: five stages of conv3x3-BN-ReLU, 2x2 max-pooling between stages, one linear layer.

    ``features.i`` is stage ``i``; stages 1..4 begin with the max-pool (ceil
    mode, so a 1x1 map stays 1x1 and a 7x7 map becomes 4x4), so each stage's
    output is the feature map at that stage's resolution.
    """

    def __init__(self, in_shape, cfg=VGG_CFGS[13], num_classes: int = 10):
        super().__init__()
        c = in_shape[0]
        stages = []
        for i, widths in enumerate(cfg):
            layers: list[nn.Module] = [nn.MaxPool2d(2, ceil_mode=True)] if i else []
            for w in widths:
                layers += [nn.Conv2d(c, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
                c = w
            stages.append(nn.Sequential(*layers))
        self.features = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)
        self.tap_aliases = stage_aliases([f"features.{i}" for i in range(len(cfg))], "classifier")
        _init_conv_bn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


@register_model("vgg", "VGG-BN, CRD configurations (depth=8|11|13|16|19)")
def vgg(in_shape, num_classes, depth=13):
    if int(depth) not in VGG_CFGS:
        raise ValueError(f"VGG depth must be one of {sorted(VGG_CFGS)}, got {depth}")
    return VGG(in_shape, VGG_CFGS[int(depth)], num_classes)


@register_model("vgg8", "VGG-8-BN, one conv per stage 64-128-256-512-512 (CRD student)")
def vgg8(in_shape, num_classes):
    return VGG(in_shape, VGG_CFGS[8], num_classes)


@register_model("vgg13", "VGG-13-BN, two convs per stage 64-128-256-512-512 (CRD teacher)")
def vgg13(in_shape, num_classes):
    return VGG(in_shape, VGG_CFGS[13], num_classes)


# ---------------------------------------------------------------------------
# MobileNetV2
# ---------------------------------------------------------------------------

def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1, relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(c_out)]
    if relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand (skipped when ``t == 1``), 3x3 depthwise, linear 1x1 projection."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = c_in * expand_ratio
        self.use_residual = stride == 1 and c_in == c_out
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(_conv_bn(c_in, hidden, 1))
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden), _conv_bn(hidden, c_out, 1, relu=False)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """MobileNetV2 for small images (CRD's CIFAR variant): stride-1 stem, second stage at stride 1.

    The setting rows are ``(t, c, n, s)``: expansion, output channels (before
    ``width_mult``), repeats, stride of the first repeat.  ``ReLU`` is used
    instead of ``ReLU6`` as in CRD.
    """

    SETTING = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
               (6, 320, 1, 1))

    def __init__(self, in_shape, width_mult: float = 0.5, num_classes: int = 10, expand_ratio: int = 6):
        super().__init__()
        c = max(1, int(32 * width_mult))
        self.conv1 = _conv_bn(in_shape[0], c, 3, 1)
        stages = []
        for t, ch, n, s in self.SETTING:
            out = max(1, int(ch * width_mult))
            t = expand_ratio if t != 1 else 1
            blocks = []
            for i in range(n):
                blocks.append(InvertedResidual(c, out, s if i == 0 else 1, t))
                c = out
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        self.last_channel = _make_divisible(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = _conv_bn(c, self.last_channel, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(self.last_channel, num_classes)
        # stages at each resolution: 28 (blocks.1), 14 (blocks.2), 7 (blocks.4), 4 (conv2)
        self.tap_aliases = stage_aliases(["blocks.1", "blocks.2", "blocks.4", "conv2"], "classifier")
        _init_conv_bn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(self.blocks(self.conv1(x)))
        return self.classifier(torch.flatten(self.pool(x), 1))


def _make_divisible(v: float, divisor: int = 8) -> int:
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


@register_model("mobilenetv2", "MobileNetV2, stride-1 stem (width_mult=0.5, CRD student)")
def mobilenetv2(in_shape, num_classes, width_mult=0.5):
    return MobileNetV2(in_shape, float(width_mult), num_classes)


# ---------------------------------------------------------------------------
# ShuffleNetV2
# ---------------------------------------------------------------------------

def channel_shuffle(x: torch.Tensor, groups: int = 2) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleBlock(nn.Module):
    """ShuffleNetV2 basic unit: split the channels in half, transform one half, concatenate, shuffle."""

    def __init__(self, channels: int):
        super().__init__()
        half = channels // 2
        self.split = half
        self.branch = nn.Sequential(
            _conv_bn(half, half, 1),
            _conv_bn(half, half, 3, 1, groups=half, relu=False),
            _conv_bn(half, half, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x[:, :self.split], x[:, self.split:]
        return channel_shuffle(torch.cat([x1, self.branch(x2)], 1))


class ShuffleDownBlock(nn.Module):
    """ShuffleNetV2 spatial down-sampling unit: two stride-2 branches concatenated, then shuffled."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        mid = c_out // 2
        self.left = nn.Sequential(
            _conv_bn(c_in, c_in, 3, 2, groups=c_in, relu=False),
            _conv_bn(c_in, mid, 1),
        )
        self.right = nn.Sequential(
            _conv_bn(c_in, mid, 1),
            _conv_bn(mid, mid, 3, 2, groups=mid, relu=False),
            _conv_bn(mid, c_out - mid, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(torch.cat([self.left(x), self.right(x)], 1))


SHUFFLENETV2_CFGS = {
    0.5: (48, 96, 192, 1024),
    1.0: (116, 232, 464, 1024),
    1.5: (176, 352, 704, 1024),
    2.0: (244, 488, 976, 2048),
}


class ShuffleNetV2(nn.Module):
    """ShuffleNetV2 for small images: 3x3 stride-1 stem without max-pool, stages of 4, 8, 4 units."""

    def __init__(self, in_shape, net_size: float = 1.0, num_classes: int = 10, repeats=(3, 7, 3)):
        super().__init__()
        if float(net_size) not in SHUFFLENETV2_CFGS:
            raise ValueError(f"ShuffleNetV2 net_size must be one of {sorted(SHUFFLENETV2_CFGS)}, got {net_size}")
        widths = SHUFFLENETV2_CFGS[float(net_size)]
        c = 24
        self.conv1 = _conv_bn(in_shape[0], c, 3, 1)
        layers = []
        for w, n in zip(widths[:3], repeats):
            layers.append(nn.Sequential(ShuffleDownBlock(c, w), *[ShuffleBlock(w) for _ in range(n)]))
            c = w
        self.layer1, self.layer2, self.layer3 = layers
        self.conv2 = _conv_bn(c, widths[3], 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        self.tap_aliases = stage_aliases(["layer1", "layer2", "layer3", "conv2"], "fc")
        _init_conv_bn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(self.conv2(x)), 1))


@register_model("shufflenetv2", "ShuffleNetV2, stride-1 stem (net_size=0.5|1|1.5|2, CRD student)")
def shufflenetv2(in_shape, num_classes, net_size=1.0):
    return ShuffleNetV2(in_shape, float(net_size), num_classes)


# ---------------------------------------------------------------------------

def _init_conv_bn(model: nn.Module) -> None:
    """He-normal (fan-out) convolutions, BN weight 1 / bias 0, zero linear bias."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)
