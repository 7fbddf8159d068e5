"""Activation boundaries: teach the student which neurons are on, not how strongly."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.losses.registry import register_loss


@register_loss("ab", connector="auto")
def ab_loss(student_preact: torch.Tensor, teacher_preact: torch.Tensor,
            margin: float | torch.Tensor = 1.0, reduction: str = "sum") -> torch.Tensor:
    r"""Activation-boundary transfer — Heo et al. 2019, *Knowledge Transfer via Distillation of Activation
    Boundaries Formed by Hidden Neurons* (AAAI).

    The ideal loss counts neurons whose on/off state (the sign of the
    pre-activation) differs between student and teacher; it is not
    differentiable, so the paper uses a hinge-squared surrogate. With
    :math:`\rho(t) = \mathbb{1}[t > 0]` the teacher's activation indicator and a
    margin :math:`\mu > 0`, for one sample

    .. math::
        \mathcal{L}_{AB} = \Big\| \rho(t) \odot \max(0, \mu - s)
            + (1 - \rho(t)) \odot \max(0, \mu + s) \Big\|_2^2

    over all neurons (channels and positions): the student is pushed above
    :math:`+\mu` where the teacher is on and below :math:`-\mu` where it is off,
    and costs nothing once it is past the margin. The paper's objective is the
    expectation over samples, so this returns the mean over the batch of the
    per-sample sum (``reduction="sum"``). That sum grows with the tap's size
    (``C*H*W``); ``reduction="mean"`` divides it by the number of neurons per
    sample, so one weight suits taps of any size.
    The paper uses this loss to initialise the student, before ordinary training.

    Args:
        student_preact: ``(N, ...)`` student pre-activations, already mapped to the
            teacher's shape by a connector.
        teacher_preact: ``(N, ...)`` teacher pre-activations (before the ReLU).
        margin: :math:`\mu`, a number or a ``(C,)`` tensor of per-channel margins
            (channels at dim 1).
        reduction: ``"sum"`` over each sample's neurons (the paper) or their ``"mean"``.
    """
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    if student_preact.shape != teacher_preact.shape:
        raise ValueError(
            f"ab_loss needs equal shapes, got student {tuple(student_preact.shape)} and "
            f"teacher {tuple(teacher_preact.shape)}; add a connector to map the student tap"
        )
    if student_preact.dim() < 1 or student_preact.shape[0] == 0:
        raise ValueError(f"ab_loss needs a batch of samples, got shape {tuple(student_preact.shape)}")
    s, t = student_preact.float(), teacher_preact.float()
    if isinstance(margin, torch.Tensor) and margin.dim() > 0:
        if s.dim() < 2 or margin.shape != (s.shape[1],):
            raise ValueError(f"a per-channel margin needs shape ({s.shape[1] if s.dim() > 1 else '?'},), "
                             f"got {tuple(margin.shape)}")
        margin = margin.to(s).reshape(1, -1, *([1] * (s.dim() - 2)))
    on = t > 0
    per_neuron = torch.where(on, F.relu(margin - s), F.relu(margin + s)).pow(2)
    per_sample = per_neuron.sum() / s.shape[0]
    return per_sample / (s[0].numel() if reduction == "mean" else 1)
