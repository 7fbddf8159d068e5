"""Contrastive representation distillation — Tian et al. 2020 (ICLR): ``CE + beta * CRD(embedding)`` (+ KD).

Both anchors, linear heads into a 128-d space, InfoNCE over stored negatives.
By default the negatives come from a fixed-size queue (memory independent of
the dataset); ``num_data=len(train)`` switches to the paper's memory bank.
"""
from distill.methods.common import with_ce_and_kd
from distill.methods.registry import register_method
from distill.terms import Term


@register_method("crd")
def crd(beta: float = 0.8, layer: str = "embedding", teacher_layer: str | None = None, feat_dim: int = 128,
        queue_size: int = 4096, num_data: int | None = None, num_negatives: int = 4096, temperature: float = 0.07,
        alpha: float = 0.0, kd_temperature: float | None = None) -> list[Term]:
    """Contrastive representation distillation (Tian et al. 2020): CE + beta * CRD on the embeddings."""
    memory = {"num_data": num_data, "num_negatives": num_negatives} if num_data else {"queue_size": queue_size}
    return with_ce_and_kd([Term("crd", beta, student=layer, teacher=teacher_layer or layer, feat_dim=feat_dim,
                             temperature=temperature, **memory)], alpha, kd_temperature)
