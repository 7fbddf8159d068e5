"""Supervised token-level KD for language models: forward KL, reverse KL or the generalized JSD between them,
per token of the training text, against the teacher's full next-token distribution or its top ``k``.

Loss = (1 - alpha) * CE(student, next tokens) + alpha * JSD_beta(p_teacher^T, p_student^T) per counted token
(``generalized_jsd_loss``: beta = 0 forward KL(teacher || student), beta = 1 reverse KL(student || teacher)).
Agarwal et al. 2024 (GKD) call the beta = 0, alpha = 1 case "supervised KD"; Hinton et al.'s soft targets per
token are that at a temperature (times T^2). With ``top_k`` the teacher is read as its top k logits and the
rest of its mass spread evenly, as a top-k teacher cache on disk stores it (``cache_teacher``,
``teacher_top_k``), so a live and a cached teacher give the same loss.
"""
from distill.methods.registry import register_method
from distill.terms import Term


def divergence_term(weight: float = 1.0, beta: float = 0.0, temperature: float = 1.0, top_k: int | None = None) -> Term:
    """The generalized JSD term of weight ``weight`` (forward KL at beta 0, reverse KL at 1), over the teacher's
    full distribution or (``top_k``) its top k."""
    params = {"beta": beta, "temperature": temperature} | ({"teacher_top_k": top_k} if top_k is not None else {})
    return Term("generalized_jsd", weight, **params)


def check_fraction(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


@register_method("token_kd", inputs="causal_lm")
def token_kd(beta: float = 0.0, alpha: float = 1.0, temperature: float = 1.0, top_k: int | None = None) -> list[Term]:
    """Per-token KD on the training text: ``alpha`` * generalized JSD at ``beta`` (0 forward KL, 1 reverse KL,
    between: the JSD mixture) at ``temperature``, plus ``1 - alpha`` * cross-entropy; ``top_k``: the
    teacher's top k only."""
    check_fraction("beta", beta)
    alpha = check_fraction("alpha", alpha)
    return ([Term("ce", 1.0 - alpha)] if alpha < 1 else []) + ([divergence_term(alpha, beta, temperature, top_k)]
                                                               if alpha > 0 else [])
