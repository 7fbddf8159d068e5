"""Hinton et al. 2015: soft targets at temperature T mixed with the hard labels.

Loss = (1 - alpha) * CE(student, labels) + alpha * T^2 * KL(p_teacher^T || p_student^T).
"""
from distill.terms import Term


def kd(alpha: float = 0.9, temperature: float = 4.0) -> list[Term]:
    """Soft targets weighted ``alpha``, labels ``1 - alpha``."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    terms = [Term("kd", alpha, temperature=temperature)]
    if alpha < 1.0:
        terms.insert(0, Term("ce", 1.0 - alpha))
    return terms
