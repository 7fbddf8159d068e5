"""The loss registry: each loss registers itself where it is defined.

::

    @register_loss("kd")
    def kd_loss(student_logits, teacher_logits, temperature=4.0): ...

    @register_loss("ce", teacher=None, labels=True)
    def cross_entropy(student_logits, labels): ...

:data:`LOSSES` maps each name to ``(function or nn.Module class, binding)``. The binding is
the term's default wiring (:class:`distill.terms.Term` reads it): ``student`` / ``teacher`` (tap
names, a list of them, or ``teacher=None`` for no teacher input; default ``"logits"``),
``labels`` (pass the batch labels), ``index`` (pass the sample indices), ``gather`` (the loss
compares samples within a batch, so its inputs are gathered across processes) and ``connector``
(a connector kind mapping the student tap to the teacher's shape); ``softmax`` marks a loss that reads its
logits as a softmax distribution over the last axis, which a run refuses for tasks whose outputs are
not one (sigmoid multi-label outputs, regression values, embeddings). A loss with learnt parameters
or memory is registered as its ``nn.Module`` class: each term builds its own.

What comes from the batch is read from the loss's signature, not the binding: a loss with a keyword
``mask`` / ``num_items`` gets the token task's ``batch["mask"]`` / ``batch["num_items"]``, one with
``attention_mask`` gets the model input ``batch["input"]["attention_mask"]`` (padding = 0; the
transformer losses of :mod:`distill.losses.transformer` leave it out), one with ``epoch`` the training
epoch (:data:`distill.terms.BATCH_KEYWORDS`).

This module imports nothing from the rest of ``distill``.
"""
from __future__ import annotations

from collections.abc import Callable

#: The zoo models' stage tap aliases, shallow to deep (``distill.zoo`` models expose them).
STAGES = ("stage1", "stage2", "stage3")

BINDING_KEYS = ("student", "teacher", "labels", "index", "gather", "connector", "softmax")

#: name -> (function or nn.Module class, default binding)
LOSSES: dict[str, tuple[Callable, dict]] = {}


def register_loss(name: str, **binding) -> Callable:
    """Register the decorated loss function (or ``nn.Module`` class) under ``name``, with its default binding.

    Returns the loss unchanged, so decorators can be stacked to register one loss under several names.
    A name registered twice, or a binding key other than :data:`BINDING_KEYS`, is a ``ValueError``.
    """
    unknown = sorted(set(binding) - set(BINDING_KEYS))
    if unknown:
        raise ValueError(f"register_loss({name!r}): unknown binding keys {unknown}; known: {', '.join(BINDING_KEYS)}")

    def decorate(fn: Callable) -> Callable:
        if name in LOSSES and LOSSES[name][0] is not fn:
            raise ValueError(f"loss name {name!r} is registered already, for {LOSSES[name][0].__qualname__}")
        LOSSES[name] = (fn, dict(binding))
        return fn

    return decorate
