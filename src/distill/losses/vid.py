"""Variational information distillation: the student predicts a Gaussian over the teacher's features."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from distill.losses.hint import match_spatial
from distill.losses.registry import register_loss


def _channel_rows(x: torch.Tensor) -> torch.Tensor:
    """``(M, C)`` rows of channels: dim 1 of ``(N, C)`` and ``(N, C, H, W)``, the last dim of ``(N, L, C)``."""
    if x.dim() == 4:
        return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
    if x.dim() in (2, 3):
        return x.reshape(-1, x.shape[-1])
    raise ValueError(f"VID needs (N, C), (N, L, C) or (N, C, H, W) features, got shape {tuple(x.shape)}")


def vid_loss(student_mean: torch.Tensor, teacher_features: torch.Tensor, alpha: torch.Tensor,
             eps: float = 1e-6) -> torch.Tensor:
    r"""Variational information distillation — Ahn et al. 2019, *Variational Information Distillation
    for Knowledge Transfer* (CVPR).

    The mutual information between teacher features :math:`t` and student
    features :math:`s` is bounded below by :math:`H(t) + \mathbb{E}[\log q(t \mid s)]`;
    with a Gaussian :math:`q` whose mean :math:`\mu(s)` is a small regressor
    (:class:`VID`) and whose variance is one learnt number per channel
    (the paper's choice for intermediate layers),

    .. math::
        \sigma_c^2 = \log(1 + e^{\alpha_c}) + \epsilon,\qquad
        \mathcal{L}_{VID} = \frac{1}{MC}\sum_{m=1}^{M}\sum_{c=1}^{C}
            \frac12\Big(\log\sigma_c^2 + \frac{(t_{m,c} - \mu_{m,c})^2}{\sigma_c^2}\Big)

    the negative log-likelihood of the teacher features per element, without
    the constant :math:`\tfrac12\log 2\pi`: averaged over channels and over the
    :math:`M` rows (samples times spatial positions or tokens), as in the
    authors' code, so its size does not grow with the width (the paper writes
    the sum over channels: multiply the weight by :math:`C` for that). It is not
    bounded below by zero: it falls as :math:`\sigma^2` shrinks onto a good fit.

    Args:
        student_mean: :math:`\mu(s)`, the regressor's output, same shape as the teacher features.
        teacher_features: ``(N, C)``, ``(N, L, C)`` (channels last, like the linear
            connectors) or ``(N, C, H, W)`` (channels at dim 1).
        alpha: ``(C,)`` raw variance parameters (any real numbers); the variance
            is their softplus plus ``eps``, so it stays positive.
        eps: floor on the variance.
    """
    if student_mean.shape != teacher_features.shape:
        raise ValueError(f"vid_loss needs the predicted mean in the teacher's shape, got {tuple(student_mean.shape)} "
                         f"and teacher {tuple(teacher_features.shape)}")
    mu, t = _channel_rows(student_mean.float()), _channel_rows(teacher_features.float())
    if alpha.shape != (t.shape[1],):
        raise ValueError(f"vid_loss needs one variance parameter per channel ({t.shape[1]}), "
                         f"got alpha of shape {tuple(alpha.shape)}")
    variance = F.softplus(alpha.float()) + eps
    return (0.5 * (variance.log() + (t - mu).pow(2) / variance)).mean()


@register_loss("vid")
class VID(nn.Module):
    r"""The VID loss with its regressor and variances, for use as a term function.

    ``VID(student_channels, teacher_channels)`` builds the regressor now;
    ``VID()`` builds it on the first call from the features' channel counts
    (so a term can be declared before the taps' shapes are known). The
    regressor :math:`\mu(\cdot)` is the paper's three 1x1 convolutions with
    ReLUs between them (batch norm after the first two with ``batch_norm=True``);
    on ``(N, C)`` and ``(N, L, C)`` features it acts per sample or token, i.e.
    as three linear layers. The per-channel :math:`\alpha` starts where the
    variance is ``init_variance``.

    ``forward(student_features, teacher_features)`` returns :func:`vid_loss`.
    ``(N, C, H, W)`` student maps of another spatial size are average-pooled
    (if larger) or bilinearly resized (if smaller) to the teacher's size first.

    State: the buffer ``dims`` = (student channels, hidden, teacher channels),
    zeros until built. Loading a built state into an unbuilt ``VID()`` builds it
    to those sizes; loading a state saved *before* building (the engine's probe
    snapshot) into a built one keeps the built layers as they are.
    """

    def __init__(self, student_channels: int | None = None, teacher_channels: int | None = None,
                 hidden: int | None = None, *, init_variance: float = 5.0, eps: float = 1e-6,
                 batch_norm: bool = False):
        super().__init__()
        if (student_channels is None) != (teacher_channels is None):
            raise ValueError("VID needs both student_channels and teacher_channels, or neither (built on first call)")
        if init_variance <= eps:
            raise ValueError(f"init_variance must exceed eps={eps}, got {init_variance}")
        self.hidden = hidden
        self.init_variance = float(init_variance)
        self.eps = float(eps)
        self.batch_norm = bool(batch_norm)
        self.register_buffer("dims", torch.zeros(3, dtype=torch.long))
        self.add_module("regressor", None)
        self.register_parameter("alpha", None)
        self.register_load_state_dict_pre_hook(VID._before_load)
        if student_channels is not None:
            self._build(int(student_channels), int(hidden or teacher_channels), int(teacher_channels))

    @property
    def built(self) -> bool:
        return self.regressor is not None

    def _build(self, student_channels: int, hidden: int, teacher_channels: int, device=None) -> None:
        if min(student_channels, hidden, teacher_channels) < 1:
            raise ValueError(f"VID channel counts must be positive, got {student_channels}, {hidden}, {teacher_channels}")
        bn = self.batch_norm

        def block(c_in, c_out):
            layers = [nn.Conv2d(c_in, c_out, 1, bias=not bn)]
            return layers + ([nn.BatchNorm2d(c_out)] if bn else []) + [nn.ReLU()]

        self.regressor = nn.Sequential(*block(student_channels, hidden), *block(hidden, hidden),
                                       nn.Conv2d(hidden, teacher_channels, 1))
        if device is not None:
            self.regressor.to(device)
        # softplus(alpha) + eps == init_variance at the start
        start = math.log(math.expm1(self.init_variance - self.eps))
        self.alpha = nn.Parameter(torch.full((teacher_channels,), start, device=device))
        self.dims.copy_(torch.tensor([student_channels, hidden, teacher_channels]))

    @staticmethod
    def _before_load(module: VID, state_dict, prefix, *_):
        saved = state_dict.get(prefix + "dims")
        if saved is None:
            return  # reported as a missing key
        dims = [int(v) for v in saved.tolist()]
        if dims[0] == 0:  # saved before it was built: nothing to restore beyond what is here
            if module.built:
                for key, value in module.state_dict(prefix=prefix).items():
                    state_dict[key] = value
            return
        if not module.built:
            module._build(*dims, device=module.dims.device)

    def forward(self, student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
        s, t = student_features, teacher_features
        if s.shape[0] != t.shape[0]:
            raise ValueError(f"student batch {s.shape[0]} and teacher batch {t.shape[0]} differ")
        if s.dim() != t.dim() or s.dim() not in (2, 3, 4):
            raise ValueError(f"VID needs student and teacher features of the same rank, (N, C), (N, L, C) or "
                             f"(N, C, H, W); got {tuple(s.shape)} and {tuple(t.shape)}")
        if s.dim() == 3 and s.shape[1] != t.shape[1]:
            raise ValueError(f"VID needs equal sequence lengths, got {s.shape[1]} and {t.shape[1]}")
        spatial = s.dim() == 4
        c_s, c_t = (s.shape[1], t.shape[1]) if spatial else (s.shape[-1], t.shape[-1])
        if not self.built:
            self._build(c_s, self.hidden or c_t, c_t, device=s.device)
        expected = (int(self.dims[0]), int(self.dims[2]))
        if (c_s, c_t) != expected:
            raise ValueError(f"VID was built for {expected[0]} student and {expected[1]} teacher channels, "
                             f"got {c_s} and {c_t}")
        dtype = self.alpha.dtype
        if spatial:
            mu = self.regressor(match_spatial(s.to(dtype), t.shape[-2:]))
        else:
            mu = self.regressor(s.to(dtype).reshape(-1, c_s, 1, 1)).reshape(*t.shape)
        return vid_loss(mu, t, self.alpha, self.eps)
