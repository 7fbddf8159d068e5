"""On-policy GKD — Agarwal et al. 2024, *On-Policy Distillation of Language Models: Learning from
Self-Generated Mistakes* (ICLR), Algorithm 1.

With probability ``lam`` (the paper's student-data fraction λ) a training batch is replaced by the student's
own continuations of its prompts (sampled at ``sample_temperature``, generated inside the training loop by
:class:`distill.generation.OnPolicy`); otherwise the batch is the fixed training text. On both, the loss is the
generalized JSD at ``beta`` between the teacher's and the student's next-token distributions on the
continuation's tokens, the teacher scoring the student's tokens live. λ = 0 is supervised KD
(``token_kd``); λ = 1, β = 1 is on-policy reverse KL.
"""
from distill.generation import OnPolicy
from distill.methods.registry import register_method
from distill.methods.token_kd import check_fraction, divergence_term
from distill.stages import Stage


@register_method("gkd", inputs="causal_lm")
def gkd(lam: float = 0.5, beta: float = 0.5, temperature: float = 1.0, sample_temperature: float = 1.0,
        prompt_tokens: int = 8, new_tokens: int = 32, top_k: int | None = None) -> list[Stage]:
    """On-policy GKD: a fraction ``lam`` of batches are student samples (``new_tokens`` after the first
    ``prompt_tokens`` of each sequence); generalized JSD at ``beta`` and ``temperature`` on every batch."""
    check_fraction("beta", beta)
    sampler = OnPolicy(lam, prompt_tokens, new_tokens, sample_temperature)
    return [Stage([divergence_term(1.0, beta, temperature, top_k)], augment=sampler, name="gkd")]
