"""The method registry: ``METHODS`` maps a method's name (as a recipe writes it) to its function.

Each method registers itself where it is defined::

    @register_method("kd")
    def kd(alpha: float = 0.9, temperature: float | None = None) -> list[Term]: ...

``distill.methods`` imports every module of the package, so a new method is one new file.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)

METHODS: dict[str, Callable] = {}
#: name -> the inputs a method needs: "any" (every model), "tokens" (token sequences, e.g. MixKD's mixup) or
#: "causal_lm" (a causal language model on token sequences: per-token KD, generation inside the loop)
#: "ctc" (per-frame CTC outputs of speech models, task ``ctc``), "seq2seq" (encoder-decoder models called with
#: ``input_ids`` and ``decoder_input_ids``: beam search inside the loop), "detection" (detectors of
#: :mod:`distill.zoo.detection`: heatmap, box-distribution and neck taps, task ``detection``), "restoration"
#: (image-to-image models of :mod:`distill.zoo.restoration`: output images and trunk features, task ``restoration``)
METHOD_INPUTS: dict[str, str] = {}
INPUTS = ("any", "tokens", "causal_lm", "ctc", "seq2seq", "detection", "restoration")


def register_method(name: str, inputs: str = "any") -> Callable[[F], F]:
    """Register the decorated function as the method ``name`` (a name is taken once); ``inputs``: what it
    needs of the data and models, ``"any"``, ``"tokens"``, ``"causal_lm"``, ``"ctc"`` or ``"seq2seq"``."""
    if inputs not in INPUTS:
        raise ValueError(f"register_method({name!r}): inputs must be one of {', '.join(map(repr, INPUTS))}, "
                         f"got {inputs!r}")

    def register(fn: F) -> F:
        if name in METHODS and METHODS[name] is not fn:
            other = METHODS[name]
            raise ValueError(f"method {name!r} is registered twice: {other.__module__}.{other.__qualname__} and "
                             f"{fn.__module__}.{fn.__qualname__}")
        METHODS[name] = fn
        METHOD_INPUTS[name] = inputs
        return fn

    return register
