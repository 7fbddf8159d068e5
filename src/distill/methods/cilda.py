"""CILDA — Haidar et al. 2022, *CILDA: Contrastive Data Augmentation using Intermediate Layer Knowledge
Distillation* (COLING).

Intermediate layers are matched contrastively: the student's pooled layer ``m`` for sample ``i`` should
be nearer the teacher's mapped layer for sample ``i`` than for the batch's other samples (InfoNCE,
``cilda`` loss), beside soft targets and labels:

``L = (1 - alpha) * CE + alpha * T^2 * KL(p_T || p_S) + beta * sum_m InfoNCE(z^S_m, z^T_g(m))``

The paper's augmentation (masked inputs refilled by a masked LM, the teacher labelling them) is a
transfer set: :func:`distill.augment.masked_refill` makes one.
"""
from distill.methods.common import with_ce_and_kd
from distill.methods.registry import register_method
from distill.terms import Term
from distill.transformer import layer_terms


@register_method("cilda", inputs="tokens")
def cilda(student_layers: int, teacher_layers: int, strategy: str = "uniform", beta: float = 0.1,
          alpha: float = 0.5, temperature: float | None = None, tau: float = 0.1) -> list[Term]:
    """CILDA (Haidar et al. 2022): InfoNCE between the student's and the teacher's mean-pooled mapped layers
    (the batch's other samples as negatives, at ``tau``) weighted ``beta``; soft targets ``alpha``, labels
    ``1 - alpha``."""
    return with_ce_and_kd(layer_terms("cilda", student_layers, teacher_layers, strategy, beta, temperature=tau),
                          alpha, temperature)
