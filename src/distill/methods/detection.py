"""The detector's own loss alone (CenterNet focal heatmap loss + GFL box loss): the from-scratch baseline.

Loss = focal(heatmap, Gaussian centres) + DFL(box distributions) + (1 - GIoU(decoded boxes)), at stride 4.
"""
from distill.methods.registry import register_method
from distill.terms import Term


@register_method("detection", inputs="detection")
def detection(stride: int = 4) -> list[Term]:
    """The detection loss on the boxes only (task ``detection``)."""
    return [Term("detection", stride=stride)]


def detection_and(weight: float, loss: str, stride: int, /, **params) -> list[Term]:
    """The detector's own loss (at ``stride``) beside the distillation term ``loss(**params)`` weighted ``weight``."""
    if weight < 0:
        raise ValueError(f"a distillation weight must be >= 0, got {weight}")
    return [Term("detection", stride=stride)] + ([Term(loss, weight, **params)] if weight > 0 else [])
