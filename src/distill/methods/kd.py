"""Hinton et al. 2015: soft targets at temperature T mixed with the hard labels.

Loss = (1 - alpha) * CE(student, labels) + alpha * T^2 * KL(p_teacher^T || p_student^T).
"""
from distill.methods.common import with_labels
from distill.terms import Term


def kd(alpha: float = 0.9, temperature: float = 4.0) -> list[Term]:
    """Hinton et al. 2015: soft targets at ``temperature`` weighted ``alpha``, labels ``1 - alpha``."""
    return with_labels([], alpha, temperature)
