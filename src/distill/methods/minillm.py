"""MiniLLM — Gu et al. 2024, *MiniLLM: Knowledge Distillation of Large Language Models* (ICLR).

Two stages, as the paper starts from a student fine-tuned on the data: a ``warmup`` fraction of the epochs of
supervised forward-KL token KD, then the reverse-KL policy objective (``minillm_loss``: single-step reverse
KL over the vocabulary + the length-normalised long-term REINFORCE part, with teacher-mixed sampling at
``teacher_mix`` and its importance weights) on the student's own samples, generated every batch
(:class:`distill.generation.OnPolicy` with λ = 1). Simplified: one gradient step per sample (no PPO
clipping), no reward baseline, and no pre-training-corpus loss in the second stage.
"""
from distill.generation import OnPolicy
from distill.methods.registry import register_method
from distill.methods.token_kd import check_fraction, divergence_term
from distill.stages import Stage
from distill.terms import Term


@register_method("minillm", inputs="causal_lm")
def minillm(warmup: float = 0.5, teacher_mix: float = 0.2, sample_temperature: float = 1.0, prompt_tokens: int = 8,
            new_tokens: int = 32, whiten: bool = False) -> list[Stage]:
    """Forward-KL token KD for a ``warmup`` fraction of the epochs (0: none), then MiniLLM's reverse-KL policy
    gradient on student samples drawn with ``teacher_mix`` of the teacher mixed in (``whiten``: standardised
    rewards, as the authors' code)."""
    warmup = check_fraction("warmup", warmup)
    sampler = OnPolicy(1.0, prompt_tokens, new_tokens, sample_temperature, teacher_mix=teacher_mix)
    policy = Stage([Term("minillm", teacher_mix=teacher_mix, whiten=whiten)], augment=sampler, name="minillm")
    if warmup == 0:
        return [policy]
    if warmup == 1:
        raise ValueError("warmup is the fraction of epochs before the policy stage: below 1")
    return [Stage([divergence_term(1.0, beta=0.0)], epochs=warmup, name="warm-up"), policy]
