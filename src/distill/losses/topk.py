"""A teacher distribution kept as its top ``k`` logits and the mass of the rest.

The one form both teacher signals take when the vocabulary is large: the on-disk cache
(:class:`distill.cache.TeacherOutputs` with ``top_k``) stores :func:`topk_logits`, and a loss given a live
teacher with ``teacher_top_k`` reduces it the same way (:func:`truncate_teacher`), so a cached and a live
teacher give the same loss. Pure tensor functions; imports nothing from the rest of ``distill``.
"""
from __future__ import annotations

import math

import torch


def topk_logits(logits: torch.Tensor, k: int, temperatures=(1.0,)) -> dict[str, torch.Tensor]:
    r"""The top ``k`` logits of each row and, per temperature :math:`T`, the log of the rest's mass.

    ``logits``: ``(..., C)``, the class axis last. Returns ``values`` ``(..., k)``, ``indices`` ``(..., k)`` and
    ``tail`` ``(..., len(temperatures))`` with
    :math:`\mathrm{tail}_T = \log \sum_{i \notin \mathrm{top}k} e^{z_i / T}` (``-inf`` when ``k = C``).
    """
    values, indices = logits.topk(k, dim=-1)
    rest = logits.scatter(-1, indices, float("-inf"))
    tail = torch.stack([torch.logsumexp(rest / t, dim=-1) for t in temperatures], dim=-1)
    return {"values": values, "indices": indices, "tail": tail}


def dense_from_topk(values: torch.Tensor, indices: torch.Tensor, tail: torch.Tensor, num_classes: int,
                    temperature: float = 1.0) -> torch.Tensor:
    r"""``(..., C)`` logits whose softmax at ``temperature`` gives the exact top-``k`` probabilities
    and the exact remaining mass, spread evenly over the other ``C - k`` classes.

    ``values``, ``indices``: ``(..., k)``; ``tail``: ``(...)``, the log tail mass at that temperature
    (:func:`topk_logits`). Every other class gets :math:`T\,(\mathrm{tail}_T - \log(C - k))`. For
    ``KL(p || q)`` against any student ``q``, replacing the teacher's tail by an even one changes the value
    by at most :math:`p_{tail}\,(\log(C-k) + \max_{i,j \in tail} |\log q_i - \log q_j|)` per position
    (before KD's :math:`T^2`), and leaves the top-``k`` gradients exact.
    """
    k = values.shape[-1]
    shape = (*values.shape[:-1], num_classes)
    if k == num_classes:
        return torch.empty(shape, dtype=values.dtype, device=values.device).scatter_(-1, indices, values)
    fill = temperature * (tail - math.log(num_classes - k))
    dense = fill[..., None].to(values.dtype).expand(shape).clone()
    return dense.scatter_(-1, indices, values)


def truncate_teacher(logits: torch.Tensor, k: int, temperature: float = 1.0) -> torch.Tensor:
    """``(..., C)`` logits reduced to their top ``k`` with the remaining mass (at ``temperature``) spread evenly
    over the other classes: exactly what a top-``k`` teacher cache hands a loss. ``k`` must be ``1..C``."""
    classes = logits.shape[-1]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= classes:
        raise ValueError(f"teacher_top_k must be an integer from 1 to the vocabulary size {classes}, got {k!r}")
    if k == classes:
        return logits
    parts = topk_logits(logits.float(), k, (temperature,))
    return dense_from_topk(parts["values"], parts["indices"], parts["tail"][..., 0], classes, temperature)
