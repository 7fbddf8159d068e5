"""Contrastive distillation for restoration — Wang et al. 2021, *Towards Compact Single Image Super-Resolution
via Contrastive Self-distillation* (IJCAI), its contrastive term.

Loss = ||S(x) - y||_1 + lam * sum_j d(phi_j(S(x)), phi_j(T(x))) / d(phi_j(S(x)), phi_j(x^-)): pulled toward the
teacher's image, pushed from the degraded input x^- (bicubically upsampled for SR), phi_j the layers of a fixed
random convolutional embedding (no pretrained VGG ships offline; :func:`distill.losses.restoration.contrastive_loss`).
The student's input is read from its ``degraded`` tap.
"""
from distill.methods.registry import register_method
from distill.methods.restoration import l1_and
from distill.terms import Term


@register_method("restore_contrastive", inputs="restoration")
def restore_contrastive(lam: float = 0.1, input_tap: str = "degraded", alpha: float = 0.0, own: str = "l1") -> list:
    """The clean images' L1 (``own``: or ``"mse"``) beside the contrastive term weighted ``lam`` (and output
    distillation with ``alpha > 0``); ``input_tap``: where the student's input is read (``"head:input"`` on other
    models)."""
    return l1_and([Term("csd", lam, student=["logits", input_tap])], alpha, own)
