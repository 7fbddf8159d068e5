"""Plain CTC (Graves et al. 2006): the speech student learns from the transcripts alone, the baseline."""
from distill.methods.registry import register_method
from distill.terms import Term


@register_method("ctc", inputs="ctc")
def ctc() -> list[Term]:
    """The CTC loss on the transcripts only (task ``ctc``)."""
    return [Term("ctc")]


def ctc_and(alpha: float, loss: str, **params) -> list[Term]:
    """``(1 - alpha) * CTC(transcripts) + alpha * loss``: a CTC distillation term beside the transcripts' CTC."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    terms = [Term("ctc", 1.0 - alpha)] if alpha < 1.0 else []
    return terms + ([Term(loss, alpha, **params)] if alpha > 0 else [])
