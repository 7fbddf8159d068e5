"""All the restoration terms together: output, feature, wavelet and contrastive distillation.

Loss = (1 - alpha) ||S - y||_1 + alpha ||S - T||_1 + beta hint(features) + gamma wavelet_kd(S, T)
       + lam csd(S, T, x^-)   (each term: restore_output, restore_feature, restore_wavelet, restore_contrastive).
"""
from distill.methods.registry import register_method
from distill.methods.restoration import l1_and
from distill.terms import Term


@register_method("restore_combined", inputs="restoration")
def restore_combined(alpha: float = 0.5, beta: float = 0.1, gamma: float = 1.0, lam: float = 0.1,
                     levels: int = 2, input_tap: str = "degraded", own: str = "l1", connector: str = "conv1x1") -> list:
    """Output KD (``alpha``), the feature hint (``beta``, through ``connector``), wavelet KD (``gamma``) and the
    contrastive term (``lam``) beside the clean images' L1 (``own``: or ``"mse"``); a weight of 0 leaves its term
    out."""
    terms = [Term("hint", beta, student="features", teacher="features", connector=connector)] if beta else []
    terms += [Term("wavelet_kd", gamma, levels=levels)] if gamma else []
    terms += [Term("csd", lam, student=["logits", input_tap])] if lam else []
    return l1_and(terms, alpha, own)
