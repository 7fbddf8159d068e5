"""Factor transfer — Kim et al. 2018 (NeurIPS), *Paraphrasing Complex Network*: two stages.

Stage 1 trains a paraphraser (a convolutional autoencoder) to reconstruct the
teacher's ``teacher_layer`` features; the student is not trained. Stage 2 trains
the student with ``CE + beta * mean|F_s/|F_s| - F_t/|F_t||``, the paraphraser's code
of the teacher against a translator of the student's ``layer`` (paper: beta = 500,
at the scale of the per-entry mean; see :func:`distill.losses.ft_loss`).
"""
from distill.losses import FactorTransferLoss, ParaphraserLoss
from distill.methods.common import with_ce_and_kd
from distill.methods.registry import register_method
from distill.stages import Stage
from distill.terms import Term


@register_method("ft")
def ft(beta: float = 500.0, layer: str = "last_stage", teacher_layer: str | None = None, rate: float = 0.5,
       paraphraser_epochs: float = 0.25, alpha: float = 0.0, temperature: float | None = None) -> list[Stage]:
    """Factor transfer (Kim et al. 2018): train a paraphraser of the teacher, then CE + beta * factor distance."""
    paraphrase = ParaphraserLoss(rate=rate)
    teacher_layer = teacher_layer or layer
    return [Stage([Term(paraphrase, 1.0, student="logits", teacher=teacher_layer, name="paraphrase")],
                  epochs=paraphraser_epochs, name="paraphraser"),
            Stage(with_ce_and_kd([Term(FactorTransferLoss(paraphrase), beta, student=layer, teacher=teacher_layer,
                                    name="ft")], alpha, temperature), name="factor transfer")]
