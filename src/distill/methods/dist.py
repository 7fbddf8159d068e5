"""DIST — Huang et al. 2022 (NeurIPS), *Knowledge Distillation from A Stronger Teacher*:
``CE + T^2 (beta * inter-class + gamma * intra-class Pearson distance)`` on the logits (see ``dist_loss``)."""
from distill.methods.common import with_ce_and_kd
from distill.methods.registry import register_method
from distill.terms import Term


@register_method("dist")
def dist(beta: float = 1.0, gamma: float = 1.0, temperature: float = 1.0) -> list[Term]:
    """DIST (Huang et al. 2022): CE + inter- and intra-class Pearson relations of the logits (ImageNet defaults)."""
    return with_ce_and_kd([Term("dist", 1.0, beta=beta, gamma=gamma, temperature=temperature)])
