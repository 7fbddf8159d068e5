"""Frame-level CTC KD (Takashima et al. 2018; Kurata & Audhkhasi 2018, shifted for streaming students).

Loss = (1 - alpha) * CTC(student, transcript) + alpha * T^2 * mean_t KL(p_teacher[t] || p_student[t + shift]),
the KL over the per-frame posteriors including blank, over the real frames.
"""
from distill.methods.ctc import ctc_and
from distill.methods.registry import register_method


@register_method("ctc_frame_kd", inputs="ctc")
def ctc_frame_kd(alpha: float = 0.5, temperature: float = 1.0, shift: int = 0) -> list:
    """CTC on the transcripts weighted ``1 - alpha`` beside frame-level KD weighted ``alpha``; ``shift``: the
    student's delay in frames (a unidirectional student behind a bidirectional teacher's spikes)."""
    return ctc_and(alpha, "ctc_frame_kd", temperature=temperature, shift=shift)
