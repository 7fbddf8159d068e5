"""Teacher signals: where the teacher's tap values come from.

A teacher signal is called with a batch and returns ``{tap: tensor}``. The live
teacher runs the model; a cache of its outputs (later) returns the same dict
from disk, so loss terms cannot tell them apart.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from distill.taps import TapRecorder


def run_model(model: nn.Module, inputs):
    """Call a model on a batch's inputs: keyword arguments for a mapping, positional otherwise."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    return model(inputs)


def freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class LiveTeacher:
    """A frozen model run under ``torch.inference_mode()`` in ``eval()`` mode
    (under ``torch.enable_grad()`` when a tap is a ``gradcam++(...)`` map; values come back detached).

    Its parameters never require gradients, never enter an optimiser and the
    model is never wrapped for gradient synchronisation.
    """

    def __init__(self, model: nn.Module, taps):
        self.model = freeze(model)
        self.taps = list(dict.fromkeys(taps))
        self.recorder = TapRecorder(self.model, self.taps, model_name="teacher")
        self.needs_grad = any(spec.kind == "gradcam++" for spec in self.recorder.specs.values())

    def to(self, device) -> "LiveTeacher":
        self.model.to(device)
        return self

    def __call__(self, batch: Mapping) -> dict[str, torch.Tensor]:
        self.model.eval()
        if self.needs_grad:  # Grad-CAM++ differentiates the class score; the parameters stay frozen
            with torch.enable_grad():
                values = self.recorder.collect(run_model(self.model, batch["input"]))
            return {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in values.items()}
        with torch.inference_mode():
            values = self.recorder.collect(run_model(self.model, batch["input"]))
        # Inference tensors cannot be saved for backward; a clone made outside
        # inference mode is an ordinary tensor that loss functions may use freely.
        return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in values.items()}
