"""Taps: named views into a model's forward pass.

A tap is a string:

* ``"logits"`` — the model's logits: the output itself when the model returns a
  tensor, ``output.logits`` / ``output["logits"]`` for Hugging Face style
  outputs, ``output[0]`` for tuples;
* ``"layer3.1.bn2"`` — the output of the submodule at that dotted path
  (``"layer3.1.bn2:input"`` for its first positional input);
* ``"hidden_states[4]"``, ``"output.attentions[-1]"`` — a field of the model's
  output, with optional indices;
* a name from the model's ``tap_aliases`` dict (zoo models have ``stage1``..,
  ``last_stage`` and ``embedding``), standing for the tap it maps to;
* ``"gradcam++(last_stage)"`` — the ``(N, H, W)`` Grad-CAM++ map of a module's output
  for the model's own predicted class (needs autograd; returned detached);
* on a transformer (``config.num_hidden_layers`` layers in an ``nn.ModuleList``): ``"hidden[i]"``,
  ``"embeddings"``, ``"cls[i]"``, ``"mean[i]"``, ``"attention[i]"``, ``"attention_scores[i]"``
  (:mod:`distill.transformer`); these names win over module paths and output fields.

Module taps are captured with forward hooks, so any ``nn.Module`` works
unmodified. A wrong path fails with the nearest valid names.
"""
from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch
from torch import nn

from distill.errors import DistillError
from distill.losses.cam import gradcam_pp

_INDEX = re.compile(r"\[(-?\d+)\]")
_GRADCAM = re.compile(r"gradcam\+\+\((.+)\)")


class TapError(DistillError):
    """A tap path that names nothing in the model or its output."""


@dataclass(frozen=True)
class TapSpec:
    path: str
    kind: str  # "logits" | "module" | "output" | "gradcam++" | "transformer"
    target: str  # module path, output field name, or transformer tap kind ("hidden", "attention" ...)
    indices: tuple[int, ...] = ()
    capture: str = "output"  # for module taps: "output" or "input"


def _split_indices(text: str) -> tuple[str, tuple[int, ...]]:
    base = _INDEX.sub("", text)
    return base, tuple(int(i) for i in _INDEX.findall(text))


def parse_tap(path: str, model: nn.Module) -> TapSpec:
    """Resolve ``path`` against ``model``'s submodules (output fields are checked later)."""
    if not isinstance(path, str) or not path:
        raise TapError(f"a tap must be a non-empty string, got {path!r}")
    aliases = getattr(model, "tap_aliases", None) or {}
    if path in aliases:
        return replace(parse_tap(aliases[path], model), path=path)
    if path == "logits":
        return TapSpec(path, "logits", "logits")
    from distill import transformer  # imports this module

    spec = transformer.parse(path, model)
    if spec is not None:
        return spec
    gradcam = _GRADCAM.fullmatch(path)
    if gradcam:
        layer = parse_tap(gradcam.group(1), model)
        if layer.kind != "module" or layer.capture != "output" or layer.indices:
            hint = ", ".join(nearest(gradcam.group(1), [*aliases, *(name for name, _ in model.named_modules())]))
            raise TapError(f"tap {path!r}: gradcam++(...) needs a module whose output is a feature map; "
                           f"nearest: {hint}")
        return TapSpec(path, "gradcam++", layer.target)
    body, _, capture = path.partition(":")
    capture = capture or "output"
    if capture not in ("output", "input"):
        raise TapError(f"tap {path!r}: the suffix after ':' must be 'input' or 'output'")
    base, indices = _split_indices(body)
    modules = dict(model.named_modules())
    if base in modules and base != "":
        return TapSpec(path, "module", base, indices, capture)
    field = base[len("output."):] if base.startswith("output.") else base
    if field == "output":
        field = ""
    return TapSpec(path, "output", field, indices)


def nearest(name: str, candidates, n: int = 5) -> list[str]:
    candidates = [c for c in candidates if c]
    close = difflib.get_close_matches(name, candidates, n=n, cutoff=0.4)
    return close or sorted(candidates, key=len)[:n]


def output_fields(output) -> list[str]:
    if isinstance(output, Mapping):
        return [k for k, v in output.items() if v is not None]
    return []


def logits_of(output) -> torch.Tensor:
    """The logits in a model's output (tensor, mapping with 'logits', or tuple)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping) and "logits" in output:
        return output["logits"]
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TapError(f"cannot find logits in a model output of type {type(output).__name__}")


def _index(value, indices, path):
    for i in indices:
        try:
            value = value[i]
        except (IndexError, TypeError, KeyError) as err:
            raise TapError(f"tap {path!r}: cannot index with [{i}] ({err})") from None
    return value


class TapRecorder:
    """Registers forward hooks for a set of taps on one model and collects their values.

    Use :meth:`collect` after a forward pass::

        recorder = TapRecorder(model, ["layer1", "logits"])
        out = model(x)
        values = recorder.collect(out)   # {"layer1": tensor, "logits": tensor}
    """

    def __init__(self, model: nn.Module, paths, model_name: str = "model"):
        self.model = model
        self.model_name = model_name
        self.specs = {p: parse_tap(p, model) for p in dict.fromkeys(paths)}
        self._captured: dict[str, object] = {}
        self._handles = []
        self.transformer = None  # the hooks of transformer taps (hidden[i], attention[i] ...)
        specs = [spec for spec in self.specs.values() if spec.kind == "transformer"]
        if specs:
            from distill.transformer import TransformerTaps

            self.transformer = TransformerTaps(model, specs, model_name)
        modules = dict(model.named_modules())
        for spec in self.specs.values():
            if spec.kind in ("module", "gradcam++"):
                self._handles.append(modules[spec.target].register_forward_hook(self._hook(spec)))

    def _hook(self, spec: TapSpec):
        def hook(module, inputs, output):
            value = output if spec.capture == "output" else (inputs[0] if inputs else None)
            frozen = isinstance(value, torch.Tensor) and not value.requires_grad and torch.is_grad_enabled()
            if spec.kind == "gradcam++" and frozen:  # a leaf the class score can be differentiated to
                value = value.detach().requires_grad_()
            self._captured[spec.path] = value
            return value if spec.kind == "gradcam++" else None

        return hook

    def collect(self, output) -> dict[str, torch.Tensor]:
        values = {}
        for path, spec in self.specs.items():
            if spec.kind == "logits":
                value = logits_of(output)
            elif spec.kind == "gradcam++":
                value = self._gradcam(spec, output)
            elif spec.kind == "transformer":
                value = self.transformer.value(spec)
            elif spec.kind == "module":
                if path not in self._captured:
                    raise TapError(
                        f"{self.model_name} tap {path!r}: module {spec.target!r} did not run in the forward pass"
                    )
                value = _index(self._captured[path], spec.indices, path)
            else:
                value = self._output_field(output, spec)
            values[path] = value
        self._captured.clear()
        if self.transformer is not None:
            self.transformer.clear()
        return values

    def _gradcam(self, spec: TapSpec, output) -> torch.Tensor:
        """The Grad-CAM++ map of the captured layer for each sample's predicted class (detached)."""
        features = self._captured.get(spec.path)
        where = f"{self.model_name} tap {spec.path!r}"
        if spec.path not in self._captured:
            raise TapError(f"{where}: module {spec.target!r} did not run in the forward pass")
        if not isinstance(features, torch.Tensor) or features.dim() != 4:
            shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
            raise TapError(f"{where}: {spec.target!r} gives {shape}, not an (N, C, H, W) feature map")
        if not (torch.is_grad_enabled() and features.requires_grad):
            raise TapError(f"{where} differentiates the class score: run the model with autograd enabled")
        logits = logits_of(output)
        score = logits.gather(1, logits.argmax(1, keepdim=True)).sum()
        (grads,) = torch.autograd.grad(score, features, retain_graph=True, allow_unused=True)
        if grads is None:
            raise TapError(f"{where}: the logits do not depend on {spec.target!r}")
        return gradcam_pp(features.detach(), grads)

    def _output_field(self, output, spec: TapSpec):
        if spec.target == "":
            return _index(output, spec.indices, spec.path)
        fields = output_fields(output)
        if spec.target in fields:
            return _index(output[spec.target], spec.indices, spec.path)
        if not isinstance(output, Mapping) and hasattr(output, spec.target):
            return _index(getattr(output, spec.target), spec.indices, spec.path)
        modules = [name for name, _ in self.model.named_modules()]
        aliases = list(getattr(self.model, "tap_aliases", None) or {})
        hint = ", ".join(nearest(spec.target, aliases + modules + fields))
        raise TapError(
            f"{self.model_name} has no module or output field {spec.target!r} (tap {spec.path!r}); "
            f"nearest: {hint}"
        )

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self.transformer is not None:
            self.transformer.remove()

