"""Grad-CAM++ matching — Chattopadhay et al. 2018 (WACV), §5: ``CE + beta * ||CAM_s - CAM_t||^2`` (+ KD).

The teacher's Grad-CAM++ map of ``teacher_layer`` (for its predicted class) is a
teacher tap, so it can be cached; the student's map of ``layer`` for the same
class is computed with a double backward, so the student learns to look where
the teacher looks.
"""
from distill.methods.common import with_ce_and_kd
from distill.methods.registry import register_method
from distill.terms import Term


@register_method("gradcam")
def gradcam(beta: float = 10.0, layer: str = "last_stage", teacher_layer: str | None = None, alpha: float = 0.0,
            temperature: float | None = None) -> list[Term]:
    """Grad-CAM++ matching (Chattopadhay et al. 2018): CE + beta * squared distance of the two models' maps."""
    teacher_layer = teacher_layer or layer
    return with_ce_and_kd([Term("cam", beta, student=[layer, "logits"],
                             teacher=[f"gradcam++({teacher_layer})", "logits"])], alpha, temperature)
