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
student and teacher run unmodified and need neither ``output_hidden_states`` nor ``output_attentions``
(the hooks live in :mod:`distill.taps`, :class:`~distill.taps.TransformerTaps`).

Layer maps pair student layer ``m`` with a teacher layer (:func:`layer_map`); :func:`layer_terms` turns
a map into one :class:`~distill.terms.Term` per pair, and :func:`rail_kd_term` builds RAIL-KD's term.
"""
from __future__ import annotations

from distill.errors import DistillError
from distill.losses.transformer import random_layer_map
from distill.taps import TRANSFORMER_TAP, find_layers
from distill.terms import LOSSES, Term

__all__ = ["LayerMapError", "STRATEGIES", "find_layers", "layer_map", "layer_terms", "rail_kd_term", "random_layer_map"]


class LayerMapError(DistillError):
    """A layer map that cannot pair the student's layers with the teacher's."""


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
    tap = LOSSES.get(loss, (None, {}))[1].get("student") if isinstance(loss, str) else None
    match = TRANSFORMER_TAP.fullmatch(tap) if isinstance(tap, str) else None
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
    stem = tap or _stem(loss)
    base = loss if isinstance(loss, str) else getattr(loss, "__name__", "term")
    return [Term(loss, weight, student=f"{stem}[{m}]", teacher=f"{stem}[{n}]", name=f"{base}_s{m}_t{n}", **params)
            for m, n in layer_map(student_layers, teacher_layers, strategy)]


def rail_kd_term(student_layers: int, teacher_layers: int, weight=1.0, pooling: str = "mean", **params):
    """RAIL-KD's term (:class:`~distill.losses.transformer.RailKD`): the student's ``S`` pooled layers
    against all ``T`` of the teacher's, of which the loss picks ``S`` at random each epoch.

    ``pooling``: ``"mean"`` (over real tokens) or ``"cls"``; ``params``: ``mode``, ``seed``.
    """
    if pooling not in ("mean", "cls"):
        raise LayerMapError(f"rail_kd_term: pooling must be 'mean' or 'cls', got {pooling!r}")
    layer_map(student_layers, teacher_layers, "bottom")  # the same checks
    return Term("rail_kd", weight, student=[f"{pooling}[{m}]" for m in range(1, student_layers + 1)],
                teacher=[f"{pooling}[{n}]" for n in range(1, teacher_layers + 1)], **params)
