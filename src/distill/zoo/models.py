"""Model builders, by name.

Every builder takes ``in_shape`` (``(C, H, W)`` without the batch) and
``num_classes`` plus its own options, and returns a plain ``nn.Module`` whose
forward maps a batch of images to logits. Submodule names are stable, so they
work as tap paths (``features.1``, ``layer2.0.bn2`` ...).

Every zoo model also names its main features in ``tap_aliases``, so a method can
be written once for all architectures: ``stage1`` .. ``stageK`` (the output of
each resolution stage), ``last_stage``, and ``embedding`` (the vector the
classifier reads). ``distill list models`` shows them.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

MODELS: dict[str, Callable[..., nn.Module]] = {}
DESCRIPTIONS: dict[str, str] = {}


def register_model(name: str, description: str = ""):
    def wrap(builder):
        MODELS[name] = builder
        DESCRIPTIONS[name] = description or (builder.__doc__ or "").strip().splitlines()[0]
        return builder

    return wrap


def build_model(name: str, in_shape=(1, 28, 28), num_classes: int = 10, **options) -> nn.Module:
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(sorted(MODELS))}")
    # in_shape None: data whose items are not one tensor (a user's data function); the builder picks its default
    return MODELS[name](in_shape=None if in_shape is None else tuple(in_shape), num_classes=num_classes, **options)


def stage_aliases(stages: list[str], classifier: str) -> dict[str, str]:
    """Tap aliases of a zoo model: ``stage1``.. for ``stages``, ``last_stage``, and ``embedding``."""
    aliases = {f"stage{i}": path for i, path in enumerate(stages, start=1)}
    return aliases | {"last_stage": stages[-1], "embedding": f"{classifier}:input"}


class MLP(nn.Module):
    """Fully connected ReLU network: ``hidden`` widths, optional dropout on inputs and hidden units."""

    def __init__(self, in_features: int, hidden=(800, 800), num_classes: int = 10, dropout: float = 0.0,
                 input_dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        if input_dropout:
            layers.append(nn.Dropout(input_dropout))
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = h
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_classes)
        relus = [f"features.{i}" for i, m in enumerate(layers) if isinstance(m, nn.ReLU)]
        self.tap_aliases = stage_aliases(relus or ["features"], "classifier")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register_model("mlp", "fully connected ReLU network (hidden=[...], dropout, input_dropout)")
def mlp(in_shape, num_classes, hidden=(800, 800), dropout=0.0, input_dropout=0.0):
    return MLP(math.prod(in_shape), tuple(hidden), num_classes, dropout, input_dropout)


class SmallCNN(nn.Module):
    """Conv-BN-ReLU blocks, each followed by 2x2 max-pooling, then a hidden layer and the classifier."""

    def __init__(self, in_shape, channels=(32, 64), hidden: int = 128, num_classes: int = 10, dropout: float = 0.0):
        super().__init__()
        c, h, w = in_shape
        blocks = []
        for out in channels:
            blocks.append(nn.Sequential(
                nn.Conv2d(c, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(),
                nn.Conv2d(out, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(),
                nn.MaxPool2d(2),
            ))
            c, h, w = out, h // 2, w // 2
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(c * h * w, hidden), nn.ReLU(),
                                  nn.Dropout(dropout))
        self.classifier = nn.Linear(hidden, num_classes)
        self.tap_aliases = stage_aliases([f"features.{i}" for i in range(len(blocks))], "classifier")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.head(self.features(x)))


@register_model("cnn", "small VGG-style CNN (channels=[...], hidden, dropout)")
def cnn(in_shape, num_classes, channels=(32, 64), hidden=128, dropout=0.0):
    return SmallCNN(in_shape, tuple(channels), hidden, num_classes, dropout)


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet (He et al. 2016): a 3x3 stem and three stages of basic blocks.

    ``depth = 6n + 2``; ``widths`` are the three stages' channels (16, 32, 64 in
    the paper; the ``x4`` variants of the KD literature use 64, 128, 256).
    ``zero_init_residual``: start every block's last batch-norm scale at zero, so each block
    begins as the identity (Goyal et al. 2017, "Accurate, Large Minibatch SGD"); steadies the
    first epochs of deep ResNets at high learning rates.
    """

    def __init__(self, in_shape, depth: int = 20, widths=(16, 32, 64), num_classes: int = 10,
                 zero_init_residual: bool = False):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_shape[0], widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        planes = widths[0]
        stages = []
        for i, w in enumerate(widths):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(planes, w, stride=2 if (i > 0 and j == 0) else 1))
                planes = w
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(planes, num_classes)
        self.tap_aliases = stage_aliases(["layer1", "layer2", "layer3"], "fc")
        if zero_init_residual:
            for block in self.modules():
                if isinstance(block, BasicBlock):
                    nn.init.zeros_(block.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


@register_model("resnet", "CIFAR-style ResNet (depth=6n+2, widths=[16,32,64])")
def resnet(in_shape, num_classes, depth=20, widths=(16, 32, 64), zero_init_residual=False):
    return ResNet(in_shape, depth, tuple(widths), num_classes, zero_init_residual)


for _depth in (8, 14, 20, 32, 56):
    register_model(f"resnet{_depth}", f"CIFAR-style ResNet-{_depth}, widths 16-32-64")(
        lambda in_shape, num_classes, zero_init_residual=False, _d=_depth:
        ResNet(in_shape, _d, (16, 32, 64), num_classes, zero_init_residual))


class Cohort(nn.Module):
    """Peers trained together without a pretrained teacher (online distillation: DML, KDCL).

    ``peers.K`` (alias ``peerK``) is peer K's output, its logits; the cohort's own output is
    the mean of the peers' logits, so evaluating the cohort scores the peers' ensemble.
    Each peer keeps its own aliases under ``peers.K.`` (``peers.0.layer3``).
    """

    def __init__(self, peers: list[nn.Module]):
        super().__init__()
        if len(peers) < 2:
            raise ValueError(f"a cohort needs at least 2 peers, got {len(peers)}")
        self.peers = nn.ModuleList(peers)
        self.tap_aliases = {f"peer{k}": f"peers.{k}" for k in range(len(peers))}

    def forward(self, x):
        return torch.stack([peer(x) for peer in self.peers]).mean(0)

    def deployable(self) -> nn.Module:
        """The network kept after training: the first peer (every peer has the same architecture)."""
        return self.peers[0]


@register_model("cohort", "K peers of a zoo model trained together, online KD (peer=NAME, peers=K, options=...)")
def cohort(in_shape, num_classes, peer: str = "mlp", peers: int = 2, options: dict | None = None):
    return Cohort([build_model(peer, in_shape, num_classes, **(options or {})) for _ in range(peers)])


class Generator(nn.Module):
    """Image generator for data-free distillation, the generator of DAFL (Chen et al. 2019) and DFAD
    (Fang et al. 2019, their ``GeneratorA``): noise ``(N, latent)`` -> ``(N, C, H, W)``; ``H`` and ``W``
    divisible by 4.

    Linear -> BN -> up x2 -> conv -> BN -> LeakyReLU -> up x2 -> conv -> BN -> LeakyReLU -> conv -> tanh ->
    BN(affine=False), as in the authors' code. That last batch norm sets every batch to zero mean and unit
    variance per channel: in the authors' code, the statistics of the teacher's (normalised) inputs. Our
    teachers read raw inputs (MNIST pixels in ``[0, 1]``, mean 0.13, std 0.31), so the output is mapped to
    ``mean + std * BN(tanh(.))`` with the per-channel ``mean`` and ``std`` of the inputs the teacher was
    trained on (floats or one per channel). Without that map (a sigmoid on the standardised output, as
    this class did before) every batch averages 0.5, a grey the teacher never saw, and the generator
    cannot make a dark background.

    ``eps``: the epsilon of the two inner batch norms (DAFL's code has 0.8, DFAD's the default 1e-5).
    """

    def __init__(self, out_shape, latent: int = 100, width: int = 64, mean=0.5, std=0.5, eps: float = 1e-5):
        super().__init__()
        c, h, w = out_shape
        if h % 4 or w % 4:
            raise ValueError(f"the generator needs height and width divisible by 4, got {h}x{w}")
        self.latent, self.start = latent, (2 * width, h // 4, w // 4)
        self.project = nn.Linear(latent, 2 * width * (h // 4) * (w // 4))
        self.body = nn.Sequential(
            nn.BatchNorm2d(2 * width), nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width, eps), nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * width, width, 3, padding=1), nn.BatchNorm2d(width, eps), nn.LeakyReLU(0.2),
            nn.Conv2d(width, c, 3, padding=1), nn.Tanh(), nn.BatchNorm2d(c, affine=False),
        )
        self.register_buffer("mean", _per_channel(mean, c, "mean"))
        self.register_buffer("std", _per_channel(std, c, "std"))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.mean + self.std * self.body(self.project(z).view(z.shape[0], *self.start))

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        device = self.project.weight.device
        z = torch.randn(n, self.latent, generator=generator).to(device)
        return self(z)


def _per_channel(value, channels: int, what: str) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=torch.float32).flatten()
    if t.numel() == 1:
        t = t.expand(channels)
    if t.numel() != channels:
        raise ValueError(f"the generator's {what} needs one value or one per channel ({channels}), got {t.numel()}")
    return t.reshape(1, channels, 1, 1).clone()


@register_model("generator", "image generator for data-free KD: noise -> images with the data's per-channel mean "
                             "and std (latent, width, mean, std, eps)")
def generator(in_shape, num_classes, latent: int = 100, width: int = 64, mean=0.5, std=0.5, eps: float = 1e-5):
    return Generator(in_shape, latent, width, mean, std, eps)


class OnTheFlyNativeEnsemble(nn.Module):
    """ONE (Lan, Zhu & Gong 2018) on a CIFAR ResNet: the first two stages shared, ``branches`` copies
    of the last stage and classifier, and a gate (pooled shared features -> FC -> BN -> ReLU ->
    softmax) that weights the branches' logits into the ensemble, the model's output.

    Taps: ``branches.K`` (alias ``branchK``) is branch K's logits; ``gate`` the gate's weights.
    A single branch (``model.branch(k)``) is the small network deployed after training.
    """

    def __init__(self, in_shape, depth: int = 32, widths=(16, 32, 64), num_classes: int = 10, branches: int = 3):
        super().__init__()
        if branches < 2:
            raise ValueError(f"ONE needs at least 2 branches, got {branches}")
        nets = [ResNet(in_shape, depth, tuple(widths), num_classes) for _ in range(branches)]
        first = nets[0]
        self.trunk = nn.Sequential(first.conv1, first.bn1, first.relu, first.layer1, first.layer2)
        self.branches = nn.ModuleList(nn.Sequential(n.layer3, n.pool, nn.Flatten(), n.fc) for n in nets)
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(widths[1], branches),
                                  nn.BatchNorm1d(branches), nn.ReLU(), nn.Softmax(dim=1))
        self.tap_aliases = {f"branch{k}": f"branches.{k}" for k in range(branches)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shared = self.trunk(x)
        logits = torch.stack([branch(shared) for branch in self.branches], dim=1)  # (N, m, C)
        return (self.gate(shared).unsqueeze(2) * logits).sum(1)

    def branch(self, k: int) -> nn.Module:
        """Branch ``k`` with the shared trunk: one ordinary network."""
        return nn.Sequential(self.trunk, self.branches[k])

    def deployable(self) -> nn.Module:
        """The network kept after training: the first branch with the trunk."""
        return self.branch(0)


@register_model("one", "ONE: a CIFAR ResNet with shared early stages, gated branches (depth, widths, branches)")
def one(in_shape, num_classes, depth: int = 32, widths=(16, 32, 64), branches: int = 3):
    return OnTheFlyNativeEnsemble(in_shape, depth, widths, num_classes, branches)
