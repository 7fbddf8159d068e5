"""FitNets — Romero et al. 2015, *FitNets: Hints for Thin Deep Nets* (ICLR).

A regressor ``r`` (the connector) maps the student's guided layer to the shape
of the teacher's hint layer, and the student learns to match it:
``L_HT = 1/2 ||u_h(x) - r(v_g(x))||^2`` (``hint_loss``: the mean squared error).

* one stage (the common form): ``CE + beta * L_HT`` for the whole run. ``beta = 1``: the CRD
  benchmark's 100 diverged in the first epoch on the WRN pair here (a WRN stage output is a
  sum of residuals, not normalised, so the hint starts near 15); 1 had the best validation accuracy;
* two stages (the paper): stage 1 trains only the student up to the guided layer,
  with the regressor, on ``L_HT``; stage 2 trains the whole student with KD whose
  soft-target weight is annealed linearly (the paper decays lambda from 4 to 1 on
  an unscaled cross-entropy; here the KD mixture weight goes from ``alpha`` to
  ``alpha_end``).
"""
from distill.methods.common import kd_temperature, with_ce_and_kd
from distill.methods.registry import register_method
from distill.stages import Stage
from distill.terms import Ramp, Term


@register_method("fitnets")
def fitnets(student_layer: str = "stage2", teacher_layer: str = "stage2", beta: float = 1.0,
            connector: str = "auto", alpha: float = 0.0, temperature: float | None = None, two_stage: bool = False,
            hint_epochs: float = 0.25, alpha_end: float = 0.5) -> list[Term] | list[Stage]:
    """FitNets (Romero et al. 2015): hint on ``student_layer`` -> ``teacher_layer``; one stage weighted ``beta`` (+ KD weighted ``alpha``),
    or the paper's two stages (``two_stage=True``: ``hint_epochs`` of the run fitting the hint, then KD
    with the soft weight annealed from ``alpha`` (0.9 when unset) to ``alpha_end``). KD's ``temperature``:
    ``kd_loss``'s when unset."""
    hint = Term("hint", beta, student=student_layer, teacher=teacher_layer, connector=connector)
    if two_stage:
        start = alpha or 0.9
        first = Term("hint", 1.0, student=student_layer, teacher=teacher_layer, connector=connector)
        return [Stage([first], epochs=hint_epochs, train_up_to=student_layer, name="hint"),
                Stage([Term("ce", Ramp(1 - start, 1 - alpha_end)),
                       Term("kd", Ramp(start, alpha_end), temperature=kd_temperature(temperature))],
                      name="kd, annealed")]
    return with_ce_and_kd([hint], alpha, temperature)
