"""Image restoration from the clean images alone (the baseline), and what the restoration methods share.

Every restoration method keeps the student's own loss on the clean image (task ``restoration``; ``own``: ``"l1"``,
the default, or ``"mse"``) beside its distillation terms, as the papers do.
"""
from distill.methods.registry import register_method
from distill.terms import Term


OWN = ("l1", "mse")


@register_method("restore_scratch", inputs="restoration")
def restore_scratch(own: str = "l1") -> list[Term]:
    """The distance to the clean images only: L1 (EDSR's loss) or, ``own="mse"``, the squared error (DnCNN's)."""
    return l1_and([], 0.0, own)


def l1_and(terms: list[Term], alpha: float = 0.0, own: str = "l1") -> list[Term]:
    """``(1 - alpha) * own(student, clean) + alpha * L1(student, teacher) + terms``: the student's own loss (``own``:
    ``"l1"`` or ``"mse"``), output distillation when ``alpha > 0``, and a method's terms."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if own not in OWN:
        raise ValueError(f"own must be 'l1' or 'mse' (the student's loss on the clean images), got {own!r}")
    mine = [Term(own, 1.0 - alpha)] if alpha < 1.0 else []
    return mine + ([Term("image_kd", alpha)] if alpha > 0 else []) + list(terms)
