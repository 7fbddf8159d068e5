"""Output distillation for restoration: the student's image is drawn toward the teacher's restored image.

Loss = (1 - alpha) * ||S(x) - y||_1 + alpha * ||S(x) - T(x)||_1 (the teacher-output term of FAKD, He et al. 2020,
and of CSD, Wang et al. 2021); y the clean image.
"""
from distill.methods.registry import register_method
from distill.methods.restoration import l1_and


@register_method("restore_output", inputs="restoration")
def restore_output(alpha: float = 0.5, own: str = "l1") -> list:
    """L1 (``own``: or ``"mse"``) to the clean image weighted ``1 - alpha`` beside L1 to the teacher's image
    weighted ``alpha``."""
    return l1_and([], alpha, own)
