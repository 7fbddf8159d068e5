"""Loss terms bound to taps and weights.

A :class:`Term` says *which* tensors a loss function sees and how much it
counts::

    Term("ce", weight=0.5)                          # cross_entropy(student logits, labels)
    Term("kd", weight=0.5, temperature=4)           # kd_loss(student logits, teacher logits, T=4)
    Term("hint", student="layer2", teacher="conv2", connector="conv1x1")
    Term(my_loss, student="feat", teacher="feat")   # any function of tensors

The function is called as ``fn(student_value[, teacher_value][, labels], **params)``.
A list of taps (``student=["layer1", "layer2"]``) passes a list of values;
``index=True`` adds ``index=batch["index"]`` (sample indices, for memory banks).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from distill.distributed import gather_batch, world_size
from distill.losses import (VID, LazyCRD, ab_loss, at_loss, cam_match_loss, cc_loss, cross_entropy, dist_loss, dkd_loss,
                            dml_loss, fsp_loss, hint_loss, kd_loss, kdcl_loss, logit_l1, multi_teacher_kd_loss,
                            nst_loss, one_loss, pkt_loss, rkd_loss, sp_loss, tf_kd_loss)

STAGES = ["stage1", "stage2", "stage3"]

# name -> (function, default binding). The binding says which inputs the function takes, and
# "gather" marks losses that compare samples within a batch. A loss with learnt parameters or
# memory is an nn.Module class: each term builds its own, with the term's parameters.
LOSSES: dict[str, tuple[Callable, dict]] = {
    "ce": (cross_entropy, {"teacher": None, "labels": True}),
    "kd": (kd_loss, {}),
    "hint": (hint_loss, {"connector": "auto"}),
    "dkd": (dkd_loss, {"labels": True}),
    "dist": (dist_loss, {"gather": True}),
    "at": (at_loss, {}),
    "nst": (nst_loss, {}),
    "sp": (sp_loss, {"gather": True}),
    "rkd": (rkd_loss, {"gather": True}),
    "pkt": (pkt_loss, {"gather": True}),
    "cc": (cc_loss, {"gather": True}),
    "vid": (VID, {}),
    "fsp": (fsp_loss, {"student": STAGES, "teacher": STAGES}),
    "ab": (ab_loss, {"connector": "auto"}),
    "crd": (LazyCRD, {"student": "embedding", "teacher": "embedding", "index": True, "gather": True}),
    "cam": (cam_match_loss, {"student": ["last_stage", "logits"], "teacher": ["gradcam++(last_stage)", "logits"]}),
    # several teachers: pass teacher=["a/logits", "b/logits"] (the teachers' names in Distiller(teacher={...}))
    "multi_kd": (multi_teacher_kd_loss, {"labels": True}),
    "tf_kd": (tf_kd_loss, {"teacher": None, "labels": True}),
    # online: the student is a Cohort; pass student=["peers.0", "peers.1", ...]
    "dml": (dml_loss, {"teacher": None, "labels": True}),
    "kdcl": (kdcl_loss, {"teacher": None, "labels": True}),
    "one": (one_loss, {"teacher": None, "labels": True}),  # student=["branches.0", ..., "logits"]
    "logit_l1": (logit_l1, {}),  # DFAD's student loss
}


class TermError(ValueError):
    pass


@dataclass(frozen=True)
class Ramp:
    """A term weight moving linearly from ``start`` to ``end`` over the first ``over`` of the run, then held.

    ``over`` is a fraction of the training run (of the stage, for staged methods):
    ``Ramp(0, 1, over=0.1)`` warms a weight up during the first tenth of training (DKD),
    ``Ramp(0.9, 0.5)`` anneals a soft-target weight over the whole run (FitNets).
    """

    start: float
    end: float
    over: float = 1.0

    def at(self, progress: float, total_epochs: float) -> float:
        span = self.over * total_epochs
        fraction = min(1.0, progress / span) if span > 0 else 1.0
        return self.start + (self.end - self.start) * fraction


class Term:
    """One weighted loss term.

    Args:
        fn: a loss function of tensors, or the name of a registered one
            (``distill list losses``).
        weight: a number, a :class:`Ramp`, or a function of training progress in epochs
            (a float, ``1.5`` = halfway through the second epoch) giving the weight.
        student: the student tap the function receives first.
        teacher: the teacher tap it receives second, or ``None`` for no teacher input.
        labels: whether the batch labels are passed after the tap values.
        index: whether the batch's sample indices are passed as ``index=`` (a memory bank keyed by sample).
        gather: the loss compares samples within the batch (RKD, SP, CRD ...): under several processes
            its inputs are first gathered from all of them (:func:`distill.distributed.gather_batch`),
            so it sees the whole batch, as with one process. Registered losses set it themselves.
        group: terms of different groups update the student one after another on each batch, in
            increasing order, each group on a fresh forward pass that sees the parameters the groups
            before it just updated (DML's alternating peers). ``None`` (default): group 0. A group's loss
            must give gradients only to the parameters it updates.
        connector: ``None`` (use the student tap as it is), or a connector kind
            (``"auto"``, ``"linear"``, ``"conv1x1"``, ...) mapping the student tap to
            the teacher tap's shape, built on the first batch and trained with the student.
        name: the term's name in logs; defaults to the registered name or function name.
        **params: keyword arguments for the function (``temperature=4``).
    """

    def __init__(
        self,
        fn: Callable | str,
        weight: float | Ramp | Callable[[float], float] = 1.0,
        *,
        student: str | list[str] | None = None,
        teacher: str | list[str] | None | object = ...,
        labels: bool | None = None,
        index: bool | None = None,
        gather: bool | None = None,
        group: int | None = None,
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
        if isinstance(fn, type) and issubclass(fn, nn.Module):  # a fresh module per term, built from the params
            name = name or fn.__name__.lower()
            try:
                fn, params = fn(**params), {}
            except TypeError as err:
                raise TermError(f"loss {name!r}: {err}") from None
        self.fn = fn
        # the name keys logs and the connector (a ModuleDict key: no dots)
        self.name = (name or getattr(fn, "__name__", "term")).replace(".", "_")
        self.weight = weight
        self.student = _taps(student if student is not None else binding.get("student", "logits"))
        self.teacher = _taps(binding.get("teacher", "logits") if teacher is ... else teacher)
        self.labels = binding.get("labels", False) if labels is None else labels
        self.index = binding.get("index", False) if index is None else index
        self.gather = binding.get("gather", False) if gather is None else gather
        self.group = group or 0
        self.connector = binding.get("connector") if connector is ... else connector
        if self.connector is not None and self.teacher is None:
            raise TermError(f"term {self.name!r}: a connector maps to a teacher tap, but teacher=None")
        if self.connector is not None and (isinstance(self.student, list) or isinstance(self.teacher, list)):
            raise TermError(f"term {self.name!r}: a connector maps one tap to one tap, not lists of taps")
        self.params = params

    @property
    def student_taps(self) -> list[str]:
        return self.student if isinstance(self.student, list) else [self.student]

    @property
    def teacher_taps(self) -> list[str]:
        if self.teacher is None:
            return []
        return self.teacher if isinstance(self.teacher, list) else [self.teacher]

    @property
    def student_key(self) -> str:
        """Key of this term's (possibly connected) student value in the student's tap dict."""
        return f"{self.name}<-{self.student}" if self.connector else self.student

    def weight_at(self, progress: float, total_epochs: float = 1.0) -> float:
        """The weight after ``progress`` epochs of a run lasting ``total_epochs``."""
        if isinstance(self.weight, Ramp):
            return self.weight.at(progress, total_epochs)
        return float(self.weight(progress)) if callable(self.weight) else float(self.weight)

    def __call__(self, student_values: dict, teacher_values: dict, batch: dict | None = None) -> torch.Tensor:
        """The term's loss from the two models' tap values and the batch (for labels and indices)."""
        batch = batch or {}
        if isinstance(self.student, list):
            args = [[student_values[tap] for tap in self.student]]
        else:
            args = [student_values[self.student_key]]
        if isinstance(self.teacher, list):
            args.append([teacher_values[tap] for tap in self.teacher])
        elif self.teacher is not None:
            args.append(teacher_values[self.teacher])
        if self.labels:
            if batch.get("label") is None:
                raise TermError(f"term {self.name!r} needs labels but the batch has none")
            args.append(batch["label"])
        params = self.params
        if self.index:  # the function decides whether it can do without (a CRD queue can, its memory bank not)
            index = batch.get("index")
            params = {**params, "index": None if index is None else torch.as_tensor(index).long()}
        if self.gather and world_size() > 1:
            args = [[gather_batch(v) for v in a] if isinstance(a, list) else gather_batch(a) for a in args]
            if params.get("index") is not None:
                first = args[0][0] if isinstance(args[0], list) else args[0]
                params = {**params, "index": gather_batch(params["index"].to(first.device))}
        return self.fn(*args, **params)

    def __repr__(self) -> str:
        params = "".join(f", {k}={v!r}" for k, v in self.params.items())
        group = f", group={self.group}" if self.group else ""
        return (f"Term({self.name!r}, weight={self.weight!r}, student={self.student!r}, "
                f"teacher={self.teacher!r}{params}{group})")


def _taps(value):
    if isinstance(value, (list, tuple)):
        if not value or not all(isinstance(v, str) for v in value):
            raise TermError(f"a list of taps must be a non-empty list of strings, got {value!r}")
        return list(value)
    return value


def update_groups(terms: list[Term]) -> list[list[Term]]:
    """The terms split by :attr:`Term.group`, in the order their groups update the student."""
    return [[t for t in terms if t.group == g] for g in sorted({t.group for t in terms})]


def unique_names(terms: list[Term]) -> list[Term]:
    """Give repeated term names a numeric suffix so logs and connectors stay distinct."""
    seen: dict[str, int] = {}
    for term in terms:
        count = seen.get(term.name, 0)
        seen[term.name] = count + 1
        if count:
            term.name = f"{term.name}_{count}"
    return terms
