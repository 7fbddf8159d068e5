"""Generalized Jensen-Shannon divergence: one knob from forward to reverse KL (GKD)."""
from __future__ import annotations

import math

import torch

from distill.losses.positions import IGNORE_INDEX, per_position_mean, soft_target_positions
from distill.losses.registry import register_loss
from distill.losses.topk import truncate_teacher


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Per-class terms of ``KL(p || q)`` from log-probabilities (sum them over the last axis)."""
    return log_p.exp() * (log_p - log_q)


@register_loss("generalized_jsd", softmax=True)
def generalized_jsd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    beta: float = 0.5,
    temperature: float = 1.0,
    *,
    mask: torch.Tensor | None = None,
    num_items: int | torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
    teacher_top_k: int | None = None,
) -> torch.Tensor:
    r"""Generalized JSD — Agarwal et al. 2024, *On-Policy Distillation of Language Models: Learning
    from Self-Generated Mistakes* (ICLR; GKD), eq. 1, with the conventions of TRL's
    ``GKDTrainer.generalized_jsd_loss``.

    With :math:`p^t = \mathrm{softmax}(z^t / T)`, :math:`p^s = \mathrm{softmax}(z^s / T)` and the
    mixture :math:`m = \beta\,p^t + (1 - \beta)\,p^s`, per position

    .. math::
        \mathrm{JSD}_\beta = \beta\,\mathrm{KL}(p^t \,\|\, m) + (1 - \beta)\,\mathrm{KL}(p^s \,\|\, m)
        \qquad (0 < \beta < 1)

    and at the end points the divergences the interpolation stands for:
    :math:`\beta = 0` gives the forward :math:`\mathrm{KL}(p^t \,\|\, p^s)` (plain KD's direction) and
    :math:`\beta = 1` the reverse :math:`\mathrm{KL}(p^s \,\|\, p^t)` (mode-seeking). (The interior
    formula itself tends to 0 at both ends; the end points are set, as in TRL, not limits.)

    .. math:: \mathcal{L} = \frac{1}{N_{items}} \sum_{n \in \text{counted}} \mathrm{JSD}_\beta(n)

    No :math:`T^2` factor (as TRL): at ``beta=0`` this is ``kd_loss(..., temperature=T) / T**2``, so a
    weight taken from TRL means the same here.

    Args:
        student_logits, teacher_logits: ``(N, V)`` or ``(B, L, V)`` (any ``(B, ..., V)``) raw
            scores, the vocabulary / class axis last.
        beta: :math:`\beta \in [0, 1]`, the teacher's share of the mixture.
        temperature: :math:`T > 0`, applied to both.
        mask, num_items, ignore_index: as in :func:`~distill.losses.kd_loss` (TRL's ``labels``
            with ``-100`` is ``mask=labels``; its ``num_items_in_batch`` is ``num_items``).
        teacher_top_k: read the teacher as its top ``k`` logits with the rest of its mass spread evenly over
            the other classes (:func:`~distill.losses.topk.truncate_teacher`), exactly as a top-``k`` teacher
            cache on disk hands it over, so a live and a cached teacher give the same loss; ``None``: the full
            distribution.

    Returns:
        a scalar in float32; zero when the two predictions agree.
    """
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be a number in [0, 1] (0 forward KL, 1 reverse KL), got {beta!r}")
    if teacher_top_k is not None:
        teacher_logits = truncate_teacher(teacher_logits, teacher_top_k, temperature)
    log_p_s, log_p_t, counted = soft_target_positions(student_logits, teacher_logits, temperature, mask,
                                                       num_items, ignore_index)
    if beta == 0:
        per_class = _kl(log_p_t, log_p_s)
    elif beta == 1:
        per_class = _kl(log_p_s, log_p_t)
    else:
        log_m = torch.logaddexp(log_p_t + math.log(beta), log_p_s + math.log1p(-beta))
        per_class = beta * _kl(log_p_t, log_m) + (1 - beta) * _kl(log_p_s, log_m)
    return per_position_mean(per_class, counted, num_items)
