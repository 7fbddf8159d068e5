"""Sequence-level KD — Kim & Rush 2016, *Sequence-Level Knowledge Distillation* (EMNLP).

The student is trained with cross-entropy on the teacher's outputs instead of the data: each training
sequence keeps its first ``prompt_tokens`` tokens (the "source") and the rest is replaced by the teacher's
``new_tokens``-token continuation (``temperature`` 0: greedy, the mode the paper's beam search approximates;
> 0: a sample), generated once per sample and kept — the transfer set (:class:`distill.generation.TeacherSequences`;
the same transform serves seq2seq decoders). ``word_kd`` > 0 adds the paper's word-level KD (per-token
forward KL to the teacher) on those sequences, its "Seq-KD + Word-KD" combination.
"""
from distill.generation import TeacherSequences
from distill.methods.registry import register_method
from distill.methods.token_kd import check_fraction, divergence_term
from distill.stages import Stage
from distill.terms import Term


@register_method("seqkd", inputs="causal_lm")
def seqkd(prompt_tokens: int = 8, new_tokens: int = 32, temperature: float = 1.0, word_kd: float = 0.0,
          seed: int = 0, transfer: TeacherSequences | None = None) -> list[Stage]:
    """Cross-entropy on the teacher's continuations (the transfer set, seeded by ``seed`` per sample), with
    ``word_kd`` of per-token forward KL; ``transfer``: a ready :class:`TeacherSequences` (e.g. loaded)."""
    word_kd = check_fraction("word_kd", word_kd)
    sampler = transfer or TeacherSequences(prompt_tokens, new_tokens, temperature, seed)
    terms = ([Term("ce", 1.0 - word_kd)] if word_kd < 1 else []) + ([divergence_term(word_kd)] if word_kd else [])
    return [Stage(terms, augment=sampler, name="seqkd")]
