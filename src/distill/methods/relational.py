"""Relational methods: ``CE + weight * loss`` on how samples in a batch relate, in each model's own feature space.

* ``sp`` — Tung & Mori 2019, on the last stage (paper weight 3000 with this normalisation);
* ``rkd`` — Park et al. 2019, distance (25) and angle (50) on the embedding;
* ``pkt`` — Passalis & Tefas 2018, probability distributions of cosine similarities on the embedding
  (weight 500: the CRD benchmark's 30000 on a mean over N^2 pairs is about 470 on this loss's mean over N
  at batch 64; on validation 500 beat scratch by 1.45 points, see docs/vision.md);
* ``cc`` — Peng et al. 2019, correlation congruence with a Gaussian-RBF Taylor kernel on the embedding
  (weight 10: the CRD benchmark's 0.02 belongs to a different, embedded form; see docs/vision.md).
"""
from distill.methods.common import with_ce_and_kd
from distill.methods.registry import register_method
from distill.terms import Term


@register_method("sp")
def sp(beta: float = 3000.0, layer: str = "last_stage", teacher_layer: str | None = None, alpha: float = 0.0,
       temperature: float | None = None) -> list[Term]:
    """Similarity-preserving KD (Tung & Mori 2019): CE + beta * SP on the batch Gram matrices of ``layer``."""
    return with_ce_and_kd([Term("sp", beta, student=layer, teacher=teacher_layer or layer)], alpha, temperature)


@register_method("rkd")
def rkd(beta: float = 1.0, layer: str = "embedding", teacher_layer: str | None = None, distance_weight: float = 25.0,
        angle_weight: float = 50.0, alpha: float = 0.0, temperature: float | None = None) -> list[Term]:
    """Relational KD (Park et al. 2019): CE + beta * (distance + angle relations) of the embeddings."""
    return with_ce_and_kd([Term("rkd", beta, student=layer, teacher=teacher_layer or layer,
                             distance_weight=distance_weight, angle_weight=angle_weight)], alpha, temperature)


@register_method("pkt")
def pkt(beta: float = 500.0, layer: str = "embedding", teacher_layer: str | None = None, alpha: float = 0.0,
        temperature: float | None = None) -> list[Term]:
    """Probabilistic KT (Passalis & Tefas 2018): CE + beta * KL of cosine-similarity distributions."""
    return with_ce_and_kd([Term("pkt", beta, student=layer, teacher=teacher_layer or layer)], alpha, temperature)


@register_method("cc")
def cc(beta: float = 10.0, layer: str = "embedding", teacher_layer: str | None = None, gamma: float = 0.4,
       alpha: float = 0.0, temperature: float | None = None) -> list[Term]:
    """Correlation congruence (Peng et al. 2019): CE + beta * distance of the batch correlation matrices."""
    return with_ce_and_kd([Term("cc", beta, student=layer, teacher=teacher_layer or layer, gamma=gamma)],
                       alpha, temperature)
