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
A function that takes ``mask`` or ``num_items`` keywords gets ``batch["mask"]`` and
``batch["num_items"]`` when the batch has them (token tasks: which positions count, and the
number of counted positions across the accumulated batch). One that takes ``attention_mask`` gets
the model input ``batch["input"]["attention_mask"]`` (1 = real token, 0 = padding; the transformer
losses use it to leave padding out), and one that takes ``epoch`` gets the 0-based training epoch the
loop puts in ``batch["epoch"]`` (RAIL-KD redraws its layer map with it).

The registered names and default bindings live beside each loss
(:data:`distill.losses.registry.LOSSES`, also importable from here).
"""
from __future__ import annotations

import difflib
import inspect
import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

import distill.losses  # noqa: F401  (importing the losses registers them)
from distill.connectors import KINDS as CONNECTOR_KINDS
from distill.distributed import gather_batch, world_size
from distill.errors import DistillError, excerpt
from distill.losses.registry import LOSSES, STAGES

__all__ = ["LOSSES", "STAGES", "Ramp", "Term", "TermError", "unique_names", "update_groups"]

# keyword arguments a term passes from the batch when its loss takes them (token tasks' masks and counts,
# the model input attention_mask, the training epoch)
BATCH_KEYWORDS = ("mask", "num_items", "attention_mask", "epoch")
_MISSING = object()


class TermError(DistillError):
    """A term that cannot be built or called; the message names the term and the argument."""


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

    def __post_init__(self):
        for field in ("start", "end", "over"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise TermError(f"Ramp {field} must be a finite number, got {excerpt(value)}")
        if self.over < 0:
            raise TermError(f"Ramp over is a fraction of the run (0 to 1, default 1), got {self.over}")

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
        if name is not None and (not isinstance(name, str) or not name):
            raise TermError(f"a term's name must be a non-empty string, got {excerpt(name)}")
        if isinstance(fn, str):
            if fn not in LOSSES:
                close = difflib.get_close_matches(fn, LOSSES, n=3)
                hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
                raise TermError(f"unknown loss {excerpt(fn)}; {hint}(`distill list losses` shows the {len(LOSSES)} "
                                "registered ones, or pass a function)")
            name = name or fn
            fn, binding = LOSSES[fn]
        elif not callable(fn):
            raise TermError(f"a term needs a loss function or a loss name, got {excerpt(fn)}")
        self.init_params: dict = {}  # the params a module loss was built with
        if isinstance(fn, type) and issubclass(fn, nn.Module):  # a fresh module per term, built from the params
            name = name or fn.__name__.lower()
            try:
                fn, params, self.init_params = fn(**params), {}, params
            except TypeError as err:
                raise TermError(f"loss {name!r}: {err}") from None
        self.fn = fn
        self._signatures = _signatures(fn)
        # the batch keywords the function takes by name, read from its signature once
        self.batch_keywords = tuple(k for k in BATCH_KEYWORDS if k in self._signatures[0].parameters)
        # the name keys logs and the connector (a ModuleDict key: no dots)
        self.name = (name or getattr(fn, "__name__", "term")).replace(".", "_")
        self.weight = _weight(weight, self.name)
        self.student = _taps(student if student is not None else binding.get("student", "logits"), "student",
                             self.name)
        self.teacher = _taps(binding.get("teacher", "logits") if teacher is ... else teacher, "teacher", self.name)
        for flag, value in (("labels", labels), ("index", index), ("gather", gather)):
            if value is not None and not isinstance(value, bool):
                raise TermError(f"term {self.name!r}: {flag} must be True, False or None, got {excerpt(value)}")
        self.labels = binding.get("labels", False) if labels is None else labels
        self.index = binding.get("index", False) if index is None else index
        self.gather = binding.get("gather", False) if gather is None else gather
        self.softmax = binding.get("softmax", False)  # reads logits as a softmax distribution (kd, ce, dkd ...)
        if group is not None and (isinstance(group, bool) or not isinstance(group, numbers.Integral)):
            raise TermError(f"term {self.name!r}: group must be a whole number (or None), got {excerpt(group)}")
        self.group = int(group or 0)
        self.connector = binding.get("connector") if connector is ... else connector
        if self.connector is not None and not (isinstance(self.connector, str) and self.connector in CONNECTOR_KINDS):
            raise TermError(f"term {self.name!r}: unknown connector {excerpt(self.connector)}; choose one of "
                            f"{', '.join(CONNECTOR_KINDS)}, or None")
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
    def student_value_key(self) -> str:
        """The key under which the student's tap dict holds this term's student value: the tap's name,
        or, when the term has a connector, ``"<term name><-<tap>"`` (the tap mapped by the connector)."""
        return f"{self.name}<-{self.student}" if self.connector else self.student

    def param(self, name: str, default=_MISSING):
        """The value of parameter ``name`` the loss will actually use: the term's own setting, else (for a
        module loss) what the module was built with, else the default in the function's signature.

        ``Term("kd").param("temperature")`` is ``4.0``, :func:`~distill.losses.kd_loss`'s default. A parameter
        the function neither is given nor has a default for returns ``default``, or, without one, raises
        :class:`TermError`.
        """
        if name in self.params:
            return self.params[name]
        if name in self.init_params:
            return self.init_params[name]
        for signature in self._signatures:
            parameter = signature.parameters.get(name)
            if parameter is not None and parameter.default is not inspect.Parameter.empty:
                return parameter.default
        if default is not _MISSING:
            return default
        raise TermError(f"term {self.name!r}: its loss has no parameter {name!r} with a value or a default")

    @property
    def effective_params(self) -> dict:
        """Every keyword parameter of the loss with the value it will use (:meth:`param`); the batch keywords
        (``mask``, ``num_items``, ``attention_mask``, ``epoch``) and ``index`` are left out (they come with each
        batch)."""
        values = {}
        for signature in reversed(self._signatures):  # the call's own signature wins
            for key, parameter in signature.parameters.items():
                if parameter.default is not inspect.Parameter.empty and key not in (*BATCH_KEYWORDS, "index"):
                    values[key] = parameter.default
        return {**values, **self.init_params, **self.params}

    def weight_at(self, progress: float, total_epochs: float = 1.0) -> float:
        """The weight after ``progress`` epochs of a run lasting ``total_epochs``."""
        if isinstance(self.weight, Ramp):
            return self.weight.at(progress, total_epochs)
        if not callable(self.weight):
            return float(self.weight)
        value = self.weight(progress)
        try:
            value = float(value)
        except (TypeError, ValueError, RuntimeError):
            value = math.nan
        if not math.isfinite(value):
            raise TermError(f"term {self.name!r}: its weight function gave {excerpt(self.weight(progress))} at "
                            f"progress {progress:g}; it must return a finite number")
        return value

    def __call__(self, student_values: dict, teacher_values: dict, batch: dict | None = None) -> torch.Tensor:
        """The term's loss from the two models' tap values and the batch (for labels and indices)."""
        batch = batch or {}
        if isinstance(self.student, list):
            args = [[student_values[tap] for tap in self.student]]
        else:
            args = [student_values[self.student_value_key]]
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
        for key in self.batch_keywords:  # a term's own setting wins over the batch's
            value = batch_value(batch, key)
            if key not in params and value is not None:
                params = {**params, key: value}
        if self.gather and world_size() > 1:
            args = [[gather_batch(v) for v in a] if isinstance(a, list) else gather_batch(a) for a in args]
            first = args[0][0] if isinstance(args[0], list) else args[0]
            if params.get("index") is not None:
                params = {**params, "index": gather_batch(params["index"].to(first.device))}
            mask = params.get("mask")
            if isinstance(mask, torch.Tensor):  # the positions of the gathered batch (bool through uint8)
                gathered = gather_batch(mask.to(first.device, torch.uint8 if mask.dtype == torch.bool else mask.dtype))
                params = {**params, "mask": gathered.bool() if mask.dtype == torch.bool else gathered}
        return self.fn(*args, **params)

    def __repr__(self) -> str:
        params = "".join(f", {k}={v!r}" for k, v in self.params.items())
        group = f", group={self.group}" if self.group else ""
        return (f"Term({self.name!r}, weight={self.weight!r}, student={self.student!r}, "
                f"teacher={self.teacher!r}{params}{group})")


def batch_value(batch: dict, key: str):
    """The value of batch keyword ``key`` (:data:`BATCH_KEYWORDS`) in ``batch``; ``attention_mask`` is a model input."""
    if key == "attention_mask":
        inputs = batch.get("input")
        return inputs.get("attention_mask") if isinstance(inputs, Mapping) else None
    return batch.get(key)


def _signatures(fn) -> list[inspect.Signature]:
    """The signatures whose defaults the term's loss uses: the function's (a module's ``forward``), then,
    for a module, its class's ``__init__``."""
    signatures = []
    targets = [fn.forward, type(fn).__init__] if isinstance(fn, nn.Module) else [fn]
    for target in targets:
        try:
            signatures.append(inspect.signature(target))
        except (TypeError, ValueError):  # a builtin without a signature
            signatures.append(inspect.Signature())
    return signatures


def _taps(value, role: str, name: str):
    if isinstance(value, (list, tuple)):
        if not value or not all(isinstance(v, str) and v for v in value):
            raise TermError(f"term {name!r}: a list of {role} taps must be a non-empty list of strings, "
                            f"got {excerpt(value)}")
        return list(value)
    if value is None and role == "teacher":
        return None
    if not isinstance(value, str) or not value:
        none = ", a list of them or None" if role == "teacher" else " or a list of them"
        raise TermError(f"term {name!r}: {role} must be a tap name (a module path such as 'layer3' or an output "
                        f"such as 'logits'){none}, got {excerpt(value)}")
    return value


def _weight(weight, name: str):
    """A term's weight checked when the term is made: a finite number, a :class:`Ramp` or a function of progress."""
    if isinstance(weight, Ramp):
        return weight
    if isinstance(weight, (torch.Tensor, np.ndarray)) and weight.dtype != bool and weight.ndim == 0:
        weight = float(weight.item())  # a 0-dimensional tensor or array is a number
    if isinstance(weight, numbers.Real) and not isinstance(weight, bool):
        if not math.isfinite(weight):
            raise TermError(f"term {name!r}: weight must be a finite number, got {weight}")
        return float(weight)
    if callable(weight) and not isinstance(weight, (type, torch.Tensor)):
        try:
            signature = inspect.signature(weight)
        except (TypeError, ValueError):  # a builtin without a signature: trusted
            return weight
        try:
            signature.bind(0.0)
        except TypeError:
            raise TermError(f"term {name!r}: a weight function takes one argument, the training progress in epochs "
                            "(e.g. lambda epoch: min(1.0, epoch / 5)); this one cannot be called with one") from None
        return weight
    raise TermError(f"term {name!r}: weight must be a number, a Ramp or a function of training progress, "
                    f"got {excerpt(weight)}")


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
