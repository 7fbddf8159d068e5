"""Feature distillation for restoration (FitNets' hint, Romero et al. 2015, on the restoration trunk as in
Gao et al. 2018, *Image Super-Resolution Using Knowledge Distillation*, ACCV).

Loss = ||S(x) - y||_1 + beta * MSE(r(F_s(x)), F_t(x)): the student's last trunk features F_s (tap ``features``),
mapped by a 1x1-convolution connector r to the teacher's width, matched to the teacher's F_t.
"""
from distill.methods.registry import register_method
from distill.methods.restoration import l1_and
from distill.terms import Term


@register_method("restore_feature", inputs="restoration")
def restore_feature(beta: float = 0.1, student_layer: str = "features", teacher_layer: str = "features",
                    connector: str = "conv1x1", alpha: float = 0.0, own: str = "l1") -> list:
    """The clean images' L1 beside the hint on ``student_layer`` -> ``teacher_layer`` weighted ``beta`` (and, with
    ``alpha > 0``, output distillation; ``own``: the clean images' loss, ``"l1"`` or ``"mse"``)."""
    return l1_and([Term("hint", beta, student=student_layer, teacher=teacher_layer, connector=connector)], alpha, own)
