"""Causal distillation by interchange interventions — Wu et al. 2022, *Causal Distillation for Language
Models* (NAACL), after Geiger et al. 2022's interchange intervention training, here for image models.

Besides the teacher's outputs on clean images, the student matches its outputs on counterfactuals: base
image ``b`` with one square region (of the input, or of an aligned pair of feature maps) set to its value
on a source image ``s`` (:class:`distill.interventions.Interchange`). With ``x~`` the counterfactual,

``L = (1 - alpha) * CE(z_s(b), y) + alpha * T^2 * 1/2 [KL(p_t^T(b) || p_s^T(b)) + KL(p_t^T(x~) || p_s^T(x~))]``

— soft targets over the batch's ``2N`` rows, clean and counterfactual alike (Wu et al.'s DIITO term beside
the standard distillation term, equally weighted). The teacher runs live: counterfactuals change every batch.
"""
from distill.interventions import Interchange
from distill.methods.common import with_ce_and_kd
from distill.methods.registry import register_method
from distill.stages import Stage


@register_method("interchange")
def interchange(alpha: float = 0.9, temperature: float | None = None, size: float = 0.5,
                student_layer: str | None = None, teacher_layer: str | None = None) -> list[Stage]:
    """Causal distillation (Wu et al. 2022): soft targets weighted ``alpha`` on each image and on one interchange
    counterfactual of it (a ``size`` x ``size`` region from another image of the batch: of the input, or of
    the aligned ``student_layer`` / ``teacher_layer`` feature maps), labels ``1 - alpha`` on the real images."""
    return [Stage(with_ce_and_kd([], alpha, temperature), name="interchange",
                  augment=Interchange(size, student_layer, teacher_layer))]
