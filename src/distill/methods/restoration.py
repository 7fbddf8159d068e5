"""Image restoration from the clean images alone (the baseline), and what the restoration methods share.

Every restoration method keeps the student's own L1 loss on the clean image (task ``restoration``) beside its
distillation terms, as the papers do.
"""
from distill.methods.registry import register_method
from distill.terms import Term


@register_method("restore_scratch")
def restore_scratch() -> list[Term]:
    """The L1 distance to the clean images only (EDSR's loss)."""
    return [Term("l1")]


def l1_and(terms: list[Term], alpha: float = 0.0) -> list[Term]:
    """``(1 - alpha) * L1(student, clean) + alpha * L1(student, teacher) + terms``: the student's own loss, output
    distillation when ``alpha > 0``, and a method's terms."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    own = [Term("l1", 1.0 - alpha)] if alpha < 1.0 else []
    return own + ([Term("image_kd", alpha)] if alpha > 0 else []) + list(terms)
