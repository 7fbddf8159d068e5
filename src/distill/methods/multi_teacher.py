"""Several teachers — the student learns from a weighted mixture of their soft targets, and
optionally from each teacher's features.

``Distiller(student, {"a": teacher_a, "b": teacher_b}, multi_teacher(["a", "b"]))``.
Weightings (``distill.losses.teacher_weights``): ``"mean"`` (the ensemble average),
``"fixed"`` (``weights``), ``"confidence"`` (CA-MKD, Zhang et al. 2022: per sample, the
teacher with the lower cross-entropy on the true label counts more). With ``feature_layer``,
each teacher also gives a FitNets hint (``hint_loss`` through a connector) on that layer,
weighted ``beta`` split evenly across teachers.
"""
import inspect

from distill.losses import multi_teacher_kd_loss
from distill.methods.registry import register_method
from distill.terms import Term


@register_method("multi_teacher")
def multi_teacher(teachers: list[str], weighting: str = "mean", weights: list[float] | None = None,
                  alpha: float = 0.9, temperature: float | None = None, feature_layer: str | None = None,
                  student_layer: str | None = None, beta: float = 1.0) -> list[Term]:
    """``(1 - alpha) * CE + alpha * multi_kd`` over ``teachers`` (their names in the teacher mapping),
    plus, with ``feature_layer``, a hint from each teacher's ``feature_layer`` to the student's
    ``student_layer`` (default: the same name). ``temperature``: ``multi_teacher_kd_loss``'s when unset."""
    if not teachers:
        raise ValueError("multi_teacher needs the names of the teachers")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if temperature is None:  # the loss's default, written into the term (a run's settings key shows it)
        temperature = inspect.signature(multi_teacher_kd_loss).parameters["temperature"].default
    terms = [Term("ce", 1.0 - alpha)] if alpha < 1 else []
    terms.append(Term("multi_kd", alpha, teacher=[f"{name}/logits" for name in teachers], temperature=temperature,
                      weighting=weighting, weights=weights))
    if feature_layer is not None:
        terms += [Term("hint", beta / len(teachers), student=student_layer or feature_layer,
                       teacher=f"{name}/{feature_layer}", name=f"hint_{name}") for name in teachers]
    return terms
