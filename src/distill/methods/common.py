"""What most methods share: the labels' cross-entropy beside the method's own terms, optional KD,
one term per layer, and the zoo's stage taps."""
import inspect

from distill.losses import kd_loss
from distill.losses.registry import STAGES  # noqa: F401 - the zoo's stage taps, the default layers of AT, VID, FSP, AB
from distill.terms import Term


def kd_temperature(temperature: float | None = None) -> float:
    """``temperature``, or when ``None`` the default of :func:`~distill.losses.kd_loss` (the one place the
    KD temperature is defaulted; passed explicitly so a run's settings key shows it)."""
    return inspect.signature(kd_loss).parameters["temperature"].default if temperature is None else temperature


def with_ce_and_kd(terms: list[Term], alpha: float = 0.0, temperature: float | None = None) -> list[Term]:
    """``(1 - alpha) * CE + terms + alpha * KD``: a method's terms beside the labels' cross-entropy and,
    when ``alpha > 0``, Hinton's soft targets at ``temperature`` (``None``: ``kd_loss``'s default)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    out = ([Term("ce", 1.0 - alpha)] if alpha < 1.0 else []) + list(terms)
    if alpha > 0:
        out.append(Term("kd", alpha, temperature=kd_temperature(temperature)))
    return out


def per_layer(loss: str, weight: float, layers, teacher_layers=None, **params) -> list[Term]:
    """One term of ``loss`` per student layer, matched to the teacher layer of the same position."""
    layers = [layers] if isinstance(layers, str) else list(layers)
    teacher_layers = layers if teacher_layers is None else (
        [teacher_layers] if isinstance(teacher_layers, str) else list(teacher_layers))
    if len(layers) != len(teacher_layers):
        raise ValueError(f"{len(layers)} student layers but {len(teacher_layers)} teacher layers")
    return [Term(loss, weight, student=s, teacher=t, name=f"{loss}_{s}" if len(layers) > 1 else loss, **params)
            for s, t in zip(layers, teacher_layers)]
