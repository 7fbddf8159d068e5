"""Teacher signals: where the teacher's tap values come from.

A teacher signal is called with a batch and returns ``{tap: tensor}``. The live
teacher runs the model; a cache of its outputs (later) returns the same dict
from disk, so loss terms cannot tell them apart.
"""
from __future__ import annotations

import weakref
from collections.abc import Mapping

import torch
from torch import nn

from distill.taps import TapError, TapRecorder


def teacher_input(batch: Mapping):
    """What the teacher is called on: the batch's ``teacher_input`` when the items carry the teacher its own
    inputs (``teacher_``-prefixed keys, e.g. ``teacher_input_ids`` from another tokenizer), else ``input``."""
    return batch.get("teacher_input", batch["input"])


def run_model(model: nn.Module, inputs):
    """Call a model on a batch's inputs: keyword arguments for a mapping, positional otherwise."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    return model(inputs)


# the state a model had before its first freeze (each submodule's training mode, each parameter's
# requires_grad), kept until thaw() puts it back; weak keys, so a model dropped by its user is not kept alive
_BEFORE_FREEZE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def freeze(model: nn.Module) -> nn.Module:
    """``eval()`` and no gradients for ``model``'s parameters; the state before is kept for :func:`thaw`."""
    if model not in _BEFORE_FREEZE:
        _BEFORE_FREEZE[model] = ([(m, m.training) for m in model.modules()],
                                 [(p, p.requires_grad) for p in model.parameters()])
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def thaw(model: nn.Module) -> nn.Module:
    """Put back the training modes and ``requires_grad`` flags ``model`` had before :func:`freeze`."""
    state = _BEFORE_FREEZE.pop(model, None)
    if state is not None:
        modes, flags = state
        for module, training in modes:
            module.training = training
        for p, flag in flags:
            p.requires_grad_(flag)
    return model


class LiveTeacher:
    """A frozen model run under ``torch.inference_mode()`` in ``eval()`` mode
    (under ``torch.enable_grad()`` when a tap is a ``gradcam++(...)`` map; values come back detached).

    Its parameters never enter an optimiser and the model is never wrapped for gradient synchronisation;
    while :meth:`Distiller.fit <distill.engine.Distiller.fit>` runs, they do not require gradients either
    (:func:`freeze`), and after it the model's ``requires_grad`` flags and training mode are put back (:func:`thaw`).
    """

    def __init__(self, model: nn.Module, taps):
        self.model = model  # frozen while a run uses it: Distiller.fit freezes it and thaws it after
        self.taps = list(dict.fromkeys(taps))
        self.recorder = TapRecorder(self.model, self.taps, model_name="teacher")
        self.needs_grad = any(spec.kind == "gradcam++" for spec in self.recorder.specs.values())

    def to(self, device) -> "LiveTeacher":
        self.model.to(device)
        return self

    def __call__(self, batch: Mapping) -> dict[str, torch.Tensor]:
        if not self.taps:  # kept only for what an augmentation does with it (sequence-level KD generates)
            return {}
        self.model.eval()
        if self.needs_grad:  # Grad-CAM++ differentiates the class score; the parameters stay frozen
            with torch.enable_grad():
                values = self.recorder.collect(run_model(self.model, teacher_input(batch)))
            return {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in values.items()}
        with torch.inference_mode():
            values = self.recorder.collect(run_model(self.model, teacher_input(batch)))
        # Inference tensors cannot be saved for backward; a clone made outside
        # inference mode is an ordinary tensor that loss functions may use freely.
        return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in values.items()}


class TeacherEnsemble:
    """Several frozen teachers as one teacher signal: the tap ``"NAME/TAP"`` is ``TAP`` of teacher ``NAME``.

    Each teacher is a :class:`LiveTeacher` of the taps asked of it, so terms can mix
    several teachers' logits (``multi_kd``) or features (a hint from ``"b/stage2"``).
    """

    def __init__(self, models: Mapping[str, nn.Module], taps):
        if not models:
            raise TapError("a teacher ensemble needs at least one teacher")
        self.model = nn.ModuleDict(dict(models))  # one module for fingerprints and device moves
        self.taps = list(dict.fromkeys(taps))
        asked: dict[str, list[str]] = {name: [] for name in models}
        for tap in self.taps:
            name, sep, inner = tap.partition("/")
            if not sep or name not in models:
                raise TapError(f"teacher tap {tap!r}: with several teachers a tap is 'NAME/TAP', NAME one of "
                               f"{', '.join(models)}")
            asked[name].append(inner)
        self.teachers = {name: LiveTeacher(models[name], inner) for name, inner in asked.items() if inner}
        self.needs_grad = any(t.needs_grad for t in self.teachers.values())

    def to(self, device) -> "TeacherEnsemble":
        for teacher in self.teachers.values():
            teacher.to(device)
        return self

    def __call__(self, batch: Mapping) -> dict[str, torch.Tensor]:
        return {f"{name}/{tap}": value for name, teacher in self.teachers.items()
                for tap, value in teacher(batch).items()}
