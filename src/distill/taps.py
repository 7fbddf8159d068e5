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
  (:mod:`distill.transformer` describes them; :class:`TransformerTaps` below hooks them); these names win
  over module paths and output fields.

Module taps are captured with forward hooks, so any ``nn.Module`` works
unmodified. A wrong path fails with the nearest valid names.
"""
from __future__ import annotations

import difflib
import inspect
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
    spec = parse_transformer_tap(path, model)
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


# ------------------------------------------------------------------------------------------ transformer taps
# hidden[i], embeddings, cls[i], mean[i], attention[i], attention_scores[i]: see distill.transformer's docstring

TRANSFORMER_TAP = re.compile(r"(hidden|attention|attention_scores|cls|mean)\[(-?\d+)\]")
_LAYER_PATHS = ("encoder.layer", "transformer.layer", "transformer.h", "encoder.layers", "layers", "layer", "h")
_QUERY, _KEY = ("query", "q_lin", "q_proj"), ("key", "k_lin", "k_proj")


def find_layers(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """``(path, layers)``: the model's ``nn.ModuleList`` of ``config.num_hidden_layers`` layers, or ``None``."""
    count = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    if not isinstance(count, int):
        return None
    found = [(name, m) for name, m in model.named_modules()
             if isinstance(m, nn.ModuleList) and len(m) == count
             and any(name == p or name.endswith("." + p) for p in _LAYER_PATHS)]
    return min(found, key=lambda item: item[0].count(".")) if found else None


def parse_transformer_tap(path: str, model: nn.Module) -> TapSpec | None:
    """The :class:`TapSpec` of a transformer tap name (:mod:`distill.transformer`), its layer index made
    non-negative; ``None`` for other names, or for models that are not transformers. An index out of range is a
    :class:`TapError` naming the valid range."""
    match = TRANSFORMER_TAP.fullmatch(path)
    if path != "embeddings" and not match:
        return None
    layers = find_layers(model)
    if layers is None:
        return None
    count = len(layers[1])
    kind, index = ("hidden", 0) if path == "embeddings" else (match.group(1), int(match.group(2)))
    if kind in ("attention", "attention_scores"):
        if not (1 <= index <= count or -count <= index <= -1):
            raise TapError(f"tap {path!r}: a {count}-layer model has {kind}[1]..{kind}[{count}] (layers count "
                           f"from 1; or -{count}..-1)")
        index = index if index > 0 else count + 1 + index
        _check_attention(model, layers[1][index - 1], path)
    elif not -(count + 1) <= index <= count:
        raise TapError(f"tap {path!r}: a {count}-layer model has {kind}[0]..{kind}[{count}] (0 = embeddings; "
                       f"or -{count + 1}..-1)")
    return TapSpec(path, "transformer", kind, (index % (count + 1),))


def _projections(layer: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    found = {}
    for name, module in layer.named_modules():
        last = name.rpartition(".")[2]
        for role, names in (("q", _QUERY), ("k", _KEY)):
            if last in names and isinstance(module, nn.Linear):
                found.setdefault(role, []).append(module)
    if len(found.get("q", [])) != 1 or len(found.get("k", [])) != 1:
        return None
    return found["q"][0], found["k"][0]


def _check_attention(model: nn.Module, layer: nn.Module, path: str) -> None:
    config = model.config
    position = getattr(config, "position_embedding_type", "absolute")
    why = ("a causal decoder" if getattr(config, "is_decoder", False) else
           f"position_embedding_type={position!r}" if position not in (None, "absolute") else
           "no single query and key projection (query/key, q_lin/k_lin, q_proj/k_proj) in its layers"
           if _projections(layer) is None else None)
    if why:
        raise TapError(f"tap {path!r}: attention taps are computed from a bidirectional encoder's query and key "
                       f"projections; this model has {why}: read the output field 'attentions[i]' "
                       "(output_attentions=True) instead")


class TransformerTaps:
    """The forward hooks behind the transformer taps of one model, and the tap values after a forward pass."""

    def __init__(self, model: nn.Module, specs, model_name: str = "model"):
        self.model_name = model_name
        self.heads = model.config.num_attention_heads
        layers = find_layers(model)[1]
        self._captured: dict = {}
        self._handles = [model.register_forward_pre_hook(self._mask_hook(model), with_kwargs=True)]
        wanted = set()
        for spec in specs:
            i = spec.indices[0]
            wanted |= {("q", i), ("k", i)} if spec.target.startswith("attention") else {("hidden", i)}
        for what, i in sorted(wanted):
            if what == "hidden" and i == 0:  # the embedding output is the first layer's input
                hook = layers[0].register_forward_pre_hook(self._input_hook(("hidden", 0)), with_kwargs=True)
            elif what == "hidden":
                hook = layers[i - 1].register_forward_hook(self._output_hook(("hidden", i)))
            else:
                query, key = _projections(layers[i - 1])
                hook = (query if what == "q" else key).register_forward_hook(self._output_hook((what, i)))
            self._handles.append(hook)

    def _mask_hook(self, model):
        signature = inspect.signature(model.forward)

        def hook(module, args, kwargs):
            try:
                mask = signature.bind_partial(*args, **kwargs).arguments.get("attention_mask")
            except TypeError:
                mask = kwargs.get("attention_mask")
            self._captured["mask"] = mask

        return hook

    def _input_hook(self, key):
        def hook(module, args, kwargs):
            self._captured[key] = args[0] if args else kwargs.get("hidden_states")

        return hook

    def _output_hook(self, key):
        def hook(module, inputs, output):
            self._captured[key] = output[0] if isinstance(output, (tuple, list)) else output

        return hook

    def _get(self, key, spec: TapSpec):
        if key not in self._captured or self._captured[key] is None:
            raise TapError(f"{self.model_name} tap {spec.path!r}: its layer did not run in the forward pass")
        return self._captured[key]

    def value(self, spec: TapSpec) -> torch.Tensor:
        kind, i = spec.target, spec.indices[0]
        if kind.startswith("attention"):
            scores = self._scores(self._get(("q", i), spec), self._get(("k", i), spec))
            return scores if kind == "attention_scores" else self._softmax(scores)
        hidden = self._get(("hidden", i), spec)
        if kind == "hidden":
            return hidden
        if kind == "cls":
            return hidden[:, 0]
        mask = self._captured.get("mask")
        if mask is None:
            return hidden.mean(1)
        weights = mask.to(hidden.device, hidden.dtype).unsqueeze(-1)
        return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1)

    def _scores(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        (n, length, width), heads = query.shape, self.heads
        q = query.view(n, length, heads, width // heads).transpose(1, 2)
        k = key.view(n, key.shape[1], heads, width // heads).transpose(1, 2)
        return torch.matmul(q, k.transpose(2, 3)) * (width // heads) ** -0.5

    def _softmax(self, scores: torch.Tensor) -> torch.Tensor:
        mask = self._captured.get("mask")
        if mask is not None:
            keep = mask.to(scores.device).bool()[:, None, None, :]
            scores = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)
        return torch.softmax(scores, dim=-1)

    def clear(self) -> None:
        self._captured.clear()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
