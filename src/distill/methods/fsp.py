"""FSP — Yim et al. 2017 (CVPR), *A Gift from Knowledge Distillation*: two stages.

Stage 1 trains the student to reproduce the teacher's flow between consecutive
stages (the FSP matrices of ``layers``, equal channels needed in both models);
stage 2 trains it on the labels (``alpha > 0`` adds KD).
"""
from distill.methods.common import STAGES, with_ce_and_kd
from distill.methods.registry import register_method
from distill.stages import Stage
from distill.terms import Term


@register_method("fsp")
def fsp(layers=STAGES, teacher_layers=None, beta: float = 1.0, fsp_epochs: float = 0.25, alpha: float = 0.0,
        temperature: float | None = None) -> list[Stage]:
    """FSP (Yim et al. 2017): fit the teacher's flow matrices for ``fsp_epochs`` of the run, then the labels."""
    flow = Term("fsp", beta, student=list(layers), teacher=list(teacher_layers or layers))
    return [Stage([flow], epochs=fsp_epochs, name="fsp"),
            Stage(with_ce_and_kd([], alpha, temperature), name="labels")]
