"""Training from scratch: the student learns from the labels alone (the baseline every method is measured against)."""
from distill.methods.registry import register_method
from distill.terms import Term


@register_method("scratch")
def scratch(label_smoothing: float = 0.0) -> list[Term]:
    """Cross-entropy on the labels only."""
    return [Term("ce", 1.0, label_smoothing=label_smoothing)]
