"""Activation boundaries — Heo et al. 2019 (AAAI): two stages.

Stage 1 initialises the student by transferring the teacher's activation
boundaries (which neurons are on) at ``layers``, through a connector per layer;
stage 2 trains it on the labels (``alpha > 0`` adds KD). The loss is averaged
over neurons (``reduction="mean"``) so one weight suits every layer. The paper
uses pre-ReLU values; the zoo's stage taps are after the ReLU, which keeps the
teacher's on/off pattern (pass ``relu:input`` style taps for the exact form).
"""
from distill.methods.common import STAGES, per_layer, with_ce_and_kd
from distill.methods.registry import register_method
from distill.stages import Stage


@register_method("ab")
def ab(layers=STAGES, teacher_layers=None, beta: float = 1.0, margin: float = 1.0, ab_epochs: float = 0.25,
       alpha: float = 0.0, temperature: float | None = None) -> list[Stage]:
    """Activation boundaries (Heo et al. 2019): transfer on/off patterns for ``ab_epochs`` of the run, then labels."""
    boundaries = per_layer("ab", beta, layers, teacher_layers, margin=margin, reduction="mean")
    return [Stage(boundaries, epochs=ab_epochs, name="activation boundaries"),
            Stage(with_ce_and_kd([], alpha, temperature), name="labels")]
