"""RAIL-KD — Haidar et al. 2022, *RAIL-KD: RAndom Intermediate Layer Mapping for Knowledge Distillation*
(Findings of NAACL).

Instead of a fixed layer map, each epoch draws ``S`` of the teacher's ``T`` layers at random (kept in
order) for the student's ``S`` layers, so every teacher layer teaches over the run:

``L = (1 - alpha) * CE + alpha * T^2 * KL(p_T || p_S) + beta * sum_k || W_k s_k / |.| - t_n_k / |.| ||^2``

on mean-pooled layer representations (``rail_kd`` loss; ``mode="concat"`` compares the concatenations).
"""
from distill.methods.common import with_ce_and_kd
from distill.methods.registry import register_method
from distill.terms import Term
from distill.transformer import rail_kd_term


@register_method("rail_kd", inputs="tokens")
def rail_kd(student_layers: int, teacher_layers: int, beta: float = 1.0, alpha: float = 0.5,
            temperature: float | None = None, mode: str = "layer", seed: int = 0) -> list[Term]:
    """RAIL-KD (Haidar et al. 2022): a new random sorted choice of teacher layers each epoch, pooled and
    normalised, weighted ``beta``; soft targets ``alpha``, labels ``1 - alpha``."""
    return with_ce_and_kd([rail_kd_term(student_layers, teacher_layers, beta, mode=mode, seed=seed)], alpha,
                          temperature)
