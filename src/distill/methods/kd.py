"""Hinton et al. 2015: soft targets at temperature T mixed with the hard labels.

Loss = (1 - alpha) * CE(student, labels) + alpha * T^2 * KL(p_teacher^T || p_student^T).
"""
from distill.methods.common import with_ce_and_kd
from distill.methods.registry import register_method
from distill.terms import Term


@register_method("kd")
def kd(alpha: float = 0.9, temperature: float | None = None) -> list[Term]:
    """Hinton et al. 2015: soft targets at ``temperature`` (``None``: ``kd_loss``'s) weighted ``alpha``, labels ``1 - alpha``."""
    return with_ce_and_kd([], alpha, temperature)
