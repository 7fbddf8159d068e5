"""Function matching — Beyer et al. 2022, *Knowledge distillation: A good teacher is patient and consistent*
(CVPR). The student matches the teacher's function, not its labels: both see the *same* aggressively
augmented view of each image (here: a random shift, then mixup within the batch), no label term, and a long
("patient") schedule:

``L = T^2 * KL(p_teacher^T(x~) || p_student^T(x~))``, with ``x~ = mixup(shift(x))`` drawn fresh every step,

``T = 1`` by default as in the paper. The view is made once per batch and fed to both models, so the teacher
can never be cached (the engine refuses ``cache_teacher`` with it). Images only (4-d inputs).
"""
from distill.data import Compose, MixUp, RandomShift
from distill.methods.registry import register_method
from distill.stages import Stage
from distill.terms import Term


@register_method("function_matching")
def function_matching(mixup: float = 1.0, shift: int = 2, temperature: float = 1.0) -> list[Stage]:
    """Beyer et al. 2022: KD alone (``temperature``) on consistent views, mixup ``Beta(mixup, mixup)`` after a
    random shift of up to ``shift`` pixels (0: none), the same view for teacher and student."""
    views = [RandomShift(shift)] if shift else []
    views.append(MixUp(mixup))
    augment = views[0] if len(views) == 1 else Compose(*views)
    return [Stage([Term("kd", 1.0, temperature=temperature)], name="function matching", augment=augment)]
