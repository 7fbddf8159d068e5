"""Losses for data-free distillation: what a generator (or a batch of synthesised inputs) is
trained to make the teacher do, when no real training image may be used.

Conventions: logits ``(N, C)``; features ``(N, ...)``; every function returns a scalar.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from distill.losses.registry import register_loss


def dafl_generator_loss(teacher_logits: torch.Tensor, teacher_features: torch.Tensor, alpha: float = 0.1,
                        beta: float = 5 / math.log(10)) -> torch.Tensor:
    r"""DAFL — Chen et al. 2019, *Data-Free Learning of Student Networks* (ICCV), eq. 7.

    The generator's images should look, to the teacher, like real ones:

    .. math::
        \mathcal{L}_G = \underbrace{\frac1N\sum_i \mathrm{CE}(z_i, \arg\max z_i)}_{\text{one-hot}}
            \;-\; \alpha\,\underbrace{\frac1N\sum_i \frac{\|f_i\|_1}{d}}_{\text{activation}}
            \;-\; \beta\,\underbrace{H\Big(\frac1N \sum_i \mathrm{softmax}(z_i)\Big)}_{\text{information entropy}}

    confident teacher predictions, strongly activated features :math:`f_i` (the layer before
    the classifier, :math:`d` its size), and classes balanced over the batch (high entropy
    of the mean prediction). :math:`H` is in nats. The authors' code (``DAFL-train.py``) weighs the
    three terms 1, 0.1, 5 but takes the entropy with ``log10``: the default
    :math:`\beta = 5 / \ln 10 \approx 2.17` is that weight on nats. The minimum of the entropy term
    is :math:`-\beta \ln C`, reached by a batch whose mean prediction is uniform over the ``C`` classes.

    Shapes: ``teacher_logits`` ``(N, C)``, ``teacher_features`` ``(N, ...)``; returns a scalar.
    """
    z = teacher_logits.float()
    one_hot = F.cross_entropy(z, z.argmax(1))
    activation = teacher_features.float().flatten(1).abs().mean()
    mean_p = torch.softmax(z, dim=1).mean(0)
    entropy = -(mean_p * torch.log(mean_p.clamp_min(1e-12))).sum()
    return one_hot - alpha * activation - beta * entropy


@register_loss("logit_l1")  # DFAD's student loss
def logit_l1(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    r"""Mean absolute difference of logits, DFAD's discrepancy — Fang et al. 2019, *Data-Free
    Adversarial Distillation*: :math:`\frac{1}{NC}\sum_{i,c}|z^s_{ic} - z^t_{ic}|`. The student
    minimises it; the generator maximises it."""
    return (student_logits.float() - teacher_logits.float()).abs().mean()


def js_divergence(logits_a: torch.Tensor, logits_b: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    r"""Jensen-Shannon divergence of two predictions, batchmean:
    :math:`\frac12 \mathrm{KL}(p\|m) + \frac12 \mathrm{KL}(q\|m)`, :math:`m = \frac{p+q}{2}`
    (in nats, between 0 and :math:`\ln 2`)."""
    p = torch.softmax(logits_a.float() / temperature, dim=1)
    q = torch.softmax(logits_b.float() / temperature, dim=1)
    m = (0.5 * (p + q)).clamp_min(1e-12)
    kl = lambda a: (a * (a.clamp_min(1e-12).log() - m.log())).sum(1)  # noqa: E731
    return (0.5 * kl(p) + 0.5 * kl(q)).mean()


def bn_statistics_loss(batch_stats: list[tuple[torch.Tensor, torch.Tensor]],
                       running_stats: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    r"""DeepInversion's feature prior — Yin et al. 2020, *Dreaming to Distill: Data-free Knowledge
    Transfer via DeepInversion* (CVPR), eq. 4: at every batch-norm layer :math:`l`, the
    synthesised batch's per-channel mean and variance should match the layer's running ones,

    .. math:: \mathcal{R}_{feature} = \sum_l \|\mu_l(\hat x) - \mu^{BN}_l\|_2 + \|\sigma^2_l(\hat x) - \sigma^{2,BN}_l\|_2

    ``batch_stats`` and ``running_stats``: per layer, ``(mean, var)`` vectors of channels.
    """
    if len(batch_stats) != len(running_stats) or not batch_stats:
        raise ValueError(f"need one (mean, var) per layer on both sides, got {len(batch_stats)} and "
                         f"{len(running_stats)}")
    return sum(torch.linalg.vector_norm(m - rm) + torch.linalg.vector_norm(v - rv)
               for (m, v), (rm, rv) in zip(batch_stats, running_stats))


def total_variation(images: torch.Tensor) -> torch.Tensor:
    r"""Anisotropic total variation of ``(N, C, H, W)`` images, DeepInversion's smoothness prior
    :math:`\mathcal{R}_{TV}`: the mean absolute difference between horizontally and vertically
    neighbouring pixels (summed over the two directions)."""
    dh = (images[:, :, 1:, :] - images[:, :, :-1, :]).abs().mean()
    dw = (images[:, :, :, 1:] - images[:, :, :, :-1]).abs().mean()
    return dh + dw
