"""Sequence-level CTC KD (Takashima et al. 2018): the teacher's N-best hypotheses as weighted CTC targets.

Loss = (1 - alpha) * CTC(student, transcript) + alpha * sum_n w_n * CTC(student, teacher hypothesis n).
"""
from distill.methods.ctc import ctc_and
from distill.methods.registry import register_method


@register_method("ctc_sequence_kd", inputs="ctc")
def ctc_sequence_kd(alpha: float = 0.5, n_best: int = 4, beam: int = 8) -> list:
    """CTC on the transcripts weighted ``1 - alpha`` beside CTC on the teacher's ``n_best`` hypotheses
    (weighted by the teacher's probabilities) weighted ``alpha``."""
    return ctc_and(alpha, "ctc_sequence_kd", n_best=n_best, beam=beam)
