"""MixKD — Liang et al. 2021, *MixKD: Towards Efficient Distillation of Large-scale Language Models* (ICLR).

Each batch of sequences gains as many mixed ones, ``e' = lam * E(x_i) + (1 - lam) * E(x_j)`` in each
model's word-embedding space with ``lam ~ Beta(alpha_mix, alpha_mix)`` (:class:`distill.data.TokenMixUp`),
and the student matches the teacher's soft targets on originals and mixtures alike:

``L = (1 - alpha) * CE(originals) + alpha * T^2 * KL(p_T || p_S)`` over all ``2N`` rows

(the paper's teacher-mixup KD term; its student-mixup term with interpolated labels and its
back-translation augmentation are not included).
"""
from distill.data import TokenMixUp
from distill.methods.common import with_ce_and_kd
from distill.methods.registry import register_method
from distill.stages import Stage


@register_method("mixkd", inputs="tokens")
def mixkd(alpha: float = 0.5, temperature: float | None = None, mix_alpha: float = 0.4) -> list[Stage]:
    """MixKD (Liang et al. 2021): soft targets weighted ``alpha`` on the batch and its embedding mixtures
    (``lam ~ Beta(mix_alpha, mix_alpha)``), labels ``1 - alpha`` on the originals."""
    return [Stage(with_ce_and_kd([], alpha, temperature), augment=TokenMixUp(mix_alpha), name="mixkd")]
