"""Wavelet (frequency-aware) distillation for restoration — Zhang et al. 2022, *Wavelet Knowledge Distillation:
Towards Efficient Image-to-Image Translation* (CVPR).

Loss = ||S(x) - y||_1 + gamma * mean_l ||H_l(S(x)) - H_l(T(x))||_1: the Haar wavelet high-frequency bands
(LH, HL, HH of ``levels`` levels) of the student's image matched to the teacher's; the low band is left to the
clean images.
"""
from distill.methods.registry import register_method
from distill.methods.restoration import l1_and
from distill.terms import Term


@register_method("restore_wavelet", inputs="restoration")
def restore_wavelet(gamma: float = 1.0, levels: int = 2, alpha: float = 0.0, own: str = "l1") -> list:
    """The clean images' L1 (``own``: or ``"mse"``) beside wavelet KD weighted ``gamma`` (and output distillation
    with ``alpha > 0``)."""
    return l1_and([Term("wavelet_kd", gamma, levels=levels)], alpha, own)
