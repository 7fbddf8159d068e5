"""Teacher-free KD: a hand-made virtual teacher in place of a trained one.

Conventions as in :mod:`distill.losses.kd`: logits in, ``KL(target || student)``,
``batchmean``, :math:`T^2`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.losses.registry import register_loss


@register_loss("tf_kd", teacher=None, labels=True, softmax=True)
def tf_kd_loss(student_logits: torch.Tensor, labels: torch.Tensor, correct_probability: float = 0.9,
               temperature: float = 20.0) -> torch.Tensor:
    r"""Teacher-free KD with a virtual teacher — Yuan et al. 2020, *Revisiting Knowledge
    Distillation via Label Smoothing Regularization* (CVPR), Tf-KD\ :sub:`reg`.

    The teacher is hand-made: it puts ``a = correct_probability`` on the true class and
    spreads the rest evenly, :math:`p^d_c = a` for :math:`c = y` and :math:`(1 - a)/(C - 1)`
    otherwise; it is softened at the temperature as the authors' reference code does, by
    treating :math:`p^d` as scores, :math:`p^d_T = \mathrm{softmax}(p^d / T)`:

    .. math:: \mathcal{L} = T^2 \frac1N \sum_n \mathrm{KL}\big(p^d_{T,n} \,\|\, \mathrm{softmax}(z^s_n / T)\big)

    (:math:`T^2` and ``batchmean`` as every KD term here; the paper mixes it with CE as
    :math:`(1-\alpha)\,\mathrm{CE} + \alpha\,\mathcal{L}`). KD acts as a learned label smoothing;
    this is the smoothing without the teacher.

    Args:
        student_logits: ``(N, C)``.
        labels: ``(N,)`` class indices.
        correct_probability: ``a`` in ``(1/C, 1]``.
    """
    classes = student_logits.shape[-1]
    if not 1.0 / classes < correct_probability <= 1.0:
        raise ValueError(f"correct_probability must be in (1/{classes}, 1], got {correct_probability}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    virtual = torch.full_like(student_logits, (1 - correct_probability) / (classes - 1), dtype=torch.float32)
    virtual.scatter_(1, labels[:, None], correct_probability)
    target = torch.softmax(virtual / temperature, dim=-1)
    log_q = F.log_softmax(student_logits.float() / temperature, dim=-1)
    return F.kl_div(log_q, target, reduction="batchmean") * temperature**2
