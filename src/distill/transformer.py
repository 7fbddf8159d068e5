"""Transformer taps and layer maps, for unmodified Hugging Face encoders (BERT, RoBERTa, DistilBERT, MiniLM ...).

Tap names (:mod:`distill.taps` hands them here), for a model with ``config.num_hidden_layers = L`` whose
layers are an ``nn.ModuleList`` of that length (found at ``*.encoder.layer``, ``*.transformer.layer``,
``*.transformer.h``, ``*.layers`` ...):

* ``hidden[i]`` — ``(N, Lq, D)`` the hidden states after layer ``i``, Hugging Face's numbering:
  ``hidden[0]`` is the embedding output (``embeddings`` is a name for it), ``hidden[L]`` the last
  layer's output; ``-1`` is ``L``. (For a pre-norm model the last entry of HF's ``hidden_states`` also
  has the final norm applied; ``hidden[L]`` is the layer's own output.)
* ``cls[i]`` — ``(N, D)`` ``hidden[i][:, 0]``; ``mean[i]`` — ``(N, D)`` the mean of ``hidden[i]`` over the
  real tokens (``attention_mask`` = 1; all tokens when the model was called without one).
* ``attention_scores[i]`` — ``(N, heads, Lq, Lk)`` layer ``i``'s pre-softmax scores ``QK^T / sqrt(d)``
  *before* the attention mask is added (TinyBERT's target), from forward hooks on the layer's query and
  key projections; ``attention[i]`` — the attention probabilities, ``softmax`` of those scores with padded
  keys masked out (before attention dropout). Layers count from 1 (``1..L``, or ``-L..-1``), as in
  TinyBERT. These need a bidirectional encoder with absolute positions and separate query / key
  projections (``query``/``key``, ``q_lin``/``k_lin``, ``q_proj``/``k_proj``); elsewhere read HF's own
  ``attentions[i]`` output field (``output_attentions=True``).

Everything is captured with forward hooks (and a pre-hook on the model for its ``attention_mask``), so
student and teacher run unmodified and need neither ``output_hidden_states`` nor ``output_attentions``.

Layer maps pair student layer ``m`` with a teacher layer (:func:`layer_map`); :func:`layer_terms` turns
a map into one :class:`~distill.terms.Term` per pair, and :func:`rail_kd_term` builds RAIL-KD's term.
"""
from __future__ import annotations

import inspect
import re

import torch
from torch import nn

from distill.errors import DistillError
from distill.losses.transformer import random_layer_map
from distill.taps import TapError, TapSpec

__all__ = ["LayerMapError", "STRATEGIES", "TransformerTaps", "find_layers", "layer_map", "layer_terms", "parse",
           "rail_kd_term", "random_layer_map"]

_TAP = re.compile(r"(hidden|attention|attention_scores|cls|mean)\[(-?\d+)\]")
_LAYER_PATHS = ("encoder.layer", "transformer.layer", "transformer.h", "encoder.layers", "layers", "layer", "h")
_QUERY, _KEY = ("query", "q_lin", "q_proj"), ("key", "k_lin", "k_proj")


class LayerMapError(DistillError):
    """A layer map that cannot pair the student's layers with the teacher's."""


def find_layers(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """``(path, layers)``: the model's ``nn.ModuleList`` of ``config.num_hidden_layers`` layers, or ``None``."""
    count = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    if not isinstance(count, int):
        return None
    found = [(name, m) for name, m in model.named_modules()
             if isinstance(m, nn.ModuleList) and len(m) == count
             and any(name == p or name.endswith("." + p) for p in _LAYER_PATHS)]
    return min(found, key=lambda item: item[0].count(".")) if found else None


def parse(path: str, model: nn.Module) -> TapSpec | None:
    """The :class:`TapSpec` of a transformer tap name (the layer index made non-negative), ``None`` for other
    names or models that are not transformers; a :class:`TapError` for an index out of range."""
    match = _TAP.fullmatch(path)
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


# ---------------------------------------------------------------------------------------------- layer maps

STRATEGIES = ("uniform", "skip", "last", "top", "bottom")


def layer_map(student_layers: int, teacher_layers: int, strategy="uniform") -> list[tuple[int, int]]:
    """Pairs ``(m, n)``: student layer ``m`` (``1..S``) learns from teacher layer ``n`` (``1..T``).

    * ``"uniform"`` (TinyBERT, Jiao et al. 2019): ``n = m * T / S``, rounded half up when ``S`` does not
      divide ``T``; the last student layer always meets the last teacher layer.
    * ``"skip"`` (PKD-Skip, Sun et al. 2019): every ``k``-th teacher layer, ``n = m * k`` with
      ``k = T // S``; the same as ``"uniform"`` when ``S`` divides ``T``, otherwise it stops short of the top.
    * ``"last"`` / ``"top"`` (PKD-Last): the last ``S`` teacher layers, ``n = T - S + m``.
    * ``"bottom"``: the first ``S`` teacher layers, ``n = m``.
    * a list: ``S`` teacher layers in student order (``[2, 4]``), or explicit ``(m, n)`` pairs.

    PKD leaves out the last pair (its [CLS] feeds the classifier, distilled by the logits):
    ``layer_map(S, T, "skip")[:-1]``. The embedding output (``hidden[0]``) is not in the map; TinyBERT
    distils it with its own term (``embedding_mse``).
    """
    for name, value in (("student_layers", student_layers), ("teacher_layers", teacher_layers)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise LayerMapError(f"layer_map: {name} must be a positive whole number, got {value!r}")
    s, t = student_layers, teacher_layers
    if isinstance(strategy, (list, tuple)):
        pairs = [tuple(p) if isinstance(p, (list, tuple)) else (m, p) for m, p in enumerate(strategy, 1)]
        bad = [p for p in pairs if len(p) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) for x in p)
               or not (1 <= p[0] <= s and 1 <= p[1] <= t)]
        if bad or not pairs:
            raise LayerMapError(f"layer_map: an explicit map gives teacher layers 1..{t} for student layers 1..{s} "
                                f"(a list of teacher layers, or (student, teacher) pairs); got {strategy!r}")
        return [(int(m), int(n)) for m, n in pairs]
    if strategy not in STRATEGIES:
        raise LayerMapError(f"layer_map: unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}, "
                            "or pass a list of teacher layers")
    if s > t:
        raise LayerMapError(f"layer_map: a {s}-layer student has more layers than the {t}-layer teacher; "
                            "pass an explicit list of teacher layers")
    if strategy == "uniform":
        return [(m, (2 * m * t + s) // (2 * s)) for m in range(1, s + 1)]
    if strategy == "skip":
        return [(m, m * (t // s)) for m in range(1, s + 1)]
    if strategy in ("last", "top"):
        return [(m, t - s + m) for m in range(1, s + 1)]
    return [(m, m) for m in range(1, s + 1)]


def _stem(loss) -> str:
    from distill.terms import LOSSES

    tap = LOSSES.get(loss, (None, {}))[1].get("student") if isinstance(loss, str) else None
    match = _TAP.fullmatch(tap) if isinstance(tap, str) else None
    if not match:
        raise LayerMapError(f"layer_terms: loss {loss!r} has no default transformer tap; pass tap='hidden' "
                            "(or 'attention_scores', 'attention', 'cls', 'mean')")
    return match.group(1)


def layer_terms(loss, student_layers: int, teacher_layers: int, strategy="uniform", weight=1.0,
                tap: str | None = None, **params) -> list:
    """One :class:`~distill.terms.Term` per pair of :func:`layer_map`, on the transformer tap ``tap``
    (default: the one the loss is registered with, e.g. ``hidden`` for ``hidden_mse``)::

        terms = layer_terms("hidden_mse", 2, 4) + layer_terms("attention_mse", 2, 4)   # TinyBERT, 4 -> 2
        terms = layer_terms("pkd", 6, 12, "skip")[:-1]                                   # PKD-Skip

    Each term is named ``<loss>_s<m>_t<n>``; ``weight`` and ``params`` go to every term.
    """
    from distill.terms import Term

    stem = tap or _stem(loss)
    base = loss if isinstance(loss, str) else getattr(loss, "__name__", "term")
    return [Term(loss, weight, student=f"{stem}[{m}]", teacher=f"{stem}[{n}]", name=f"{base}_s{m}_t{n}", **params)
            for m, n in layer_map(student_layers, teacher_layers, strategy)]


def rail_kd_term(student_layers: int, teacher_layers: int, weight=1.0, pooling: str = "mean", **params):
    """RAIL-KD's term (:class:`~distill.losses.transformer.RailKD`): the student's ``S`` pooled layers
    against all ``T`` of the teacher's, of which the loss picks ``S`` at random each epoch.

    ``pooling``: ``"mean"`` (over real tokens) or ``"cls"``; ``params``: ``mode``, ``seed``.
    """
    from distill.terms import Term

    if pooling not in ("mean", "cls"):
        raise LayerMapError(f"rail_kd_term: pooling must be 'mean' or 'cls', got {pooling!r}")
    layer_map(student_layers, teacher_layers, "bottom")  # the same checks
    return Term("rail_kd", weight, student=[f"{pooling}[{m}]" for m in range(1, student_layers + 1)],
                teacher=[f"{pooling}[{n}]" for n in range(1, teacher_layers + 1)], **params)
