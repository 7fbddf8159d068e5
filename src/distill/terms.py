"""Loss terms bound to taps and weights.

A :class:`Term` says *which* tensors a loss function sees and how much it
counts::

    Term("ce", weight=0.5)                          # cross_entropy(student logits, labels)
    Term("kd", weight=0.5, temperature=4)           # kd_loss(student logits, teacher logits, T=4)
    Term("hint", student="layer2", teacher="conv2", connector="conv1x1")
    Term(my_loss, student="feat", teacher="feat")   # any function of tensors

The function is called as ``fn(student_value[, teacher_value][, labels], **params)``.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from distill.losses import (at_loss, cc_loss, cross_entropy, dist_loss, dkd_loss, hint_loss, kd_loss, nst_loss,
                            pkt_loss, rkd_loss, sp_loss)

# name -> (function, default binding). The binding says which inputs the function takes.
LOSSES: dict[str, tuple[Callable, dict]] = {
    "ce": (cross_entropy, {"teacher": None, "labels": True}),
    "kd": (kd_loss, {}),
    "hint": (hint_loss, {"connector": "auto"}),
    "dkd": (dkd_loss, {"labels": True}),
    "dist": (dist_loss, {}),
    "at": (at_loss, {}),
    "nst": (nst_loss, {}),
    "sp": (sp_loss, {}),
    "rkd": (rkd_loss, {}),
    "pkt": (pkt_loss, {}),
    "cc": (cc_loss, {}),
}


class TermError(ValueError):
    pass


class Term:
    """One weighted loss term.

    Args:
        fn: a loss function of tensors, or the name of a registered one
            (``distill list losses``).
        weight: a number, or a function of training progress in epochs
            (a float, ``1.5`` = halfway through the second epoch) giving the weight.
        student: the student tap the function receives first.
        teacher: the teacher tap it receives second, or ``None`` for no teacher input.
        labels: whether the batch labels are passed after the tap values.
        connector: ``None`` (use the student tap as it is), or a connector kind
            (``"auto"``, ``"linear"``, ``"conv1x1"``, ...) mapping the student tap to
            the teacher tap's shape, built on the first batch and trained with the student.
        name: the term's name in logs; defaults to the registered name or function name.
        **params: keyword arguments for the function (``temperature=4``).
    """

    def __init__(
        self,
        fn: Callable | str,
        weight: float | Callable[[float], float] = 1.0,
        *,
        student: str | None = None,
        teacher: str | None | object = ...,
        labels: bool | None = None,
        connector: str | None | object = ...,
        name: str | None = None,
        **params,
    ):
        binding: dict = {}
        if isinstance(fn, str):
            if fn not in LOSSES:
                raise TermError(f"unknown loss {fn!r}; registered losses: {', '.join(sorted(LOSSES))}")
            name = name or fn
            fn, binding = LOSSES[fn]
        elif not callable(fn):
            raise TermError(f"a term needs a loss function or a loss name, got {fn!r}")
        self.fn = fn
        # the name keys logs and the connector (a ModuleDict key: no dots)
        self.name = (name or getattr(fn, "__name__", "term")).replace(".", "_")
        self.weight = weight
        self.student = student or binding.get("student", "logits")
        self.teacher = binding.get("teacher", "logits") if teacher is ... else teacher
        self.labels = binding.get("labels", False) if labels is None else labels
        self.connector = binding.get("connector") if connector is ... else connector
        if self.connector is not None and self.teacher is None:
            raise TermError(f"term {self.name!r}: a connector maps to a teacher tap, but teacher=None")
        self.params = params

    @property
    def student_key(self) -> str:
        """Key of this term's (possibly connected) student value in the student's tap dict."""
        return f"{self.name}<-{self.student}" if self.connector else self.student

    def weight_at(self, progress: float) -> float:
        return float(self.weight(progress)) if callable(self.weight) else float(self.weight)

    def __call__(self, student_values: dict, teacher_values: dict, labels=None) -> torch.Tensor:
        args = [student_values[self.student_key]]
        if self.teacher is not None:
            args.append(teacher_values[self.teacher])
        if self.labels:
            if labels is None:
                raise TermError(f"term {self.name!r} needs labels but the batch has none")
            args.append(labels)
        return self.fn(*args, **self.params)

    def __repr__(self) -> str:
        params = "".join(f", {k}={v!r}" for k, v in self.params.items())
        return (
            f"Term({self.name!r}, weight={self.weight!r}, student={self.student!r}, "
            f"teacher={self.teacher!r}{params})"
        )


def unique_names(terms: list[Term]) -> list[Term]:
    """Give repeated term names a numeric suffix so logs and connectors stay distinct."""
    seen: dict[str, int] = {}
    for term in terms:
        count = seen.get(term.name, 0)
        seen[term.name] = count + 1
        if count:
            term.name = f"{term.name}_{count}"
    return terms
