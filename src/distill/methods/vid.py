"""Variational information distillation — Ahn et al. 2019 (CVPR): ``CE + beta * sum_j VID(stage_j)``.

Each layer gets its own regressor and per-channel variance (:class:`~distill.losses.VID`),
trained with the student; the loss is the per-element Gaussian negative log-likelihood.
"""
from distill.methods.common import STAGES, per_layer, with_ce_and_kd
from distill.methods.registry import register_method
from distill.terms import Term


@register_method("vid")
def vid(beta: float = 1.0, layers=STAGES, teacher_layers=None, alpha: float = 0.0,
        temperature: float | None = None) -> list[Term]:
    """Variational information distillation (Ahn et al. 2019): CE + beta * VID on each of ``layers``."""
    return with_ce_and_kd(per_layer("vid", beta, layers, teacher_layers), alpha, temperature)
