"""Patient KD — Sun et al. 2019, *Patient Knowledge Distillation for BERT Model Compression* (EMNLP).

The student learns from the teacher's intermediate layers as well as its output:

``L = (1 - alpha) * CE + alpha * T^2 * KL(p_T || p_S) + beta * sum_j || h^S_j/|h^S_j| - h^T_I(j)/|h^T_I(j)| ||^2``

on the [CLS] state of each mapped pair of layers ``(j, I(j))`` (``pkd`` loss), the last pair left out
(its [CLS] feeds the classifier, which the soft targets distil). PKD-Skip takes every ``T/S``-th
teacher layer, PKD-Last the top ``S``. The paper searched beta in {10, 100, 500, 1000} and alpha in
{0.2, 0.5, 0.7} with T in {5, 10, 20}.
"""
from distill.methods.common import with_ce_and_kd
from distill.methods.registry import register_method
from distill.terms import Term
from distill.transformer import layer_terms


@register_method("pkd", inputs="tokens")
def pkd(student_layers: int, teacher_layers: int, strategy: str = "skip", beta: float = 100.0,
        alpha: float = 0.5, temperature: float | None = None) -> list[Term]:
    """Patient KD (Sun et al. 2019): normalised [CLS] states of ``strategy``-mapped layers (``skip`` or
    ``last``) weighted ``beta``, soft targets ``alpha``, labels ``1 - alpha``."""
    return with_ce_and_kd(layer_terms("pkd", student_layers, teacher_layers, strategy, beta)[:-1], alpha,
                          temperature)
