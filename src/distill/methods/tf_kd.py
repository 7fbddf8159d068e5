"""Teacher-free KD (Yuan et al. 2020, Tf-KD reg): a virtual teacher that is right with probability
``correct_probability`` and uniform elsewhere, softened at ``temperature``, mixed with the labels:
``(1 - alpha) * CE + alpha * tf_kd``. No teacher model is needed."""
from distill.methods.registry import register_method
from distill.terms import Term


@register_method("tf_kd")
def tf_kd(alpha: float = 0.1, correct_probability: float = 0.9, temperature: float = 20.0) -> list[Term]:
    """Tf-KD reg: ``(1 - alpha) * CE + alpha * tf_kd_loss`` (the paper's alpha 0.1, T 20, a 0.9)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    return [Term("ce", 1.0 - alpha),
            Term("tf_kd", alpha, correct_probability=correct_probability, temperature=temperature)]
