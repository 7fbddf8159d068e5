"""Which positions of a ``(batch, ..., classes)`` prediction count, and what their sum is divided by.

Shared by the per-position logit losses (``kd_loss``, ``dkd_loss``, ``dist_loss``, ``cross_entropy``,
``generalized_jsd_loss``):

* the class axis is the last one; every other axis indexes a *position* (a sample, or a token of a
  sample), so ``(N, C)`` logits have ``N`` positions and ``(B, L, V)`` logits ``B * L``;
* ``mask``: which positions count — a bool tensor of the positions' shape (``True`` counts), or an
  integer label tensor of that shape in which ``ignore_index`` (default ``-100``) marks the positions
  that do not count; ``None``: all of them;
* ``num_items``: what the sum over the counted positions is divided by — the number of counted
  positions across the whole accumulated (and distributed) batch, so that the losses of micro-batches
  add up to the loss of the whole batch (Hugging Face's ``num_items_in_batch``); ``None``: the number
  of counted positions in this call (a per-position mean, ``batchmean`` for ``(N, C)``).
"""
from __future__ import annotations

import numbers

import torch

IGNORE_INDEX = -100


def check_logits(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:
    """``ValueError`` unless the two are logits of one shape with a class axis."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} must have the same shape"
        )
    if student_logits.dim() < 2:
        raise ValueError(f"logits need a class dimension, got shape {tuple(student_logits.shape)}")


def check_labels(logits: torch.Tensor, labels: torch.Tensor) -> None:
    """``ValueError`` unless ``labels`` has the positions' shape ``logits.shape[:-1]``."""
    if tuple(labels.shape) != tuple(logits.shape[:-1]):
        raise ValueError(f"labels of shape {tuple(labels.shape)} do not match logits {tuple(logits.shape)}: "
                         f"labels need the logits' shape without the class axis, {tuple(logits.shape[:-1])}")


def counted_positions(mask: torch.Tensor | None, logits: torch.Tensor,
                      ignore_index: int = IGNORE_INDEX) -> torch.Tensor | None:
    """The bool tensor ``logits.shape[:-1]`` of positions that count (``None``: all of them), on the logits' device."""
    if mask is None:
        return None
    shape = tuple(logits.shape[:-1])
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"mask must be a tensor of shape {shape}, got {type(mask).__name__}")
    if tuple(mask.shape) != shape:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not match the positions {shape} "
                         f"(the logits' shape {tuple(logits.shape)} without the class axis)")
    if mask.dtype == torch.bool:
        counted = mask
    elif mask.dtype.is_floating_point or mask.dtype.is_complex:
        raise ValueError(f"mask must be bool (True = counts) or integer labels ({ignore_index} = does not "
                         f"count), got dtype {mask.dtype}")
    else:
        counted = mask != ignore_index
    return counted.to(logits.device)


def check_num_items(num_items) -> None:
    """``ValueError`` when ``num_items`` is a number (or a CPU tensor) that is not positive."""
    if num_items is None:
        return
    if isinstance(num_items, torch.Tensor):
        if num_items.numel() != 1:
            raise ValueError(f"num_items must be one number, got a tensor of shape {tuple(num_items.shape)}")
        if num_items.device.type == "cpu" and not float(num_items) > 0:  # a device tensor is not synced to check
            raise ValueError(f"num_items must be positive, got {float(num_items)}")
    elif not isinstance(num_items, numbers.Real) or isinstance(num_items, bool) or not num_items > 0:
        raise ValueError(f"num_items must be a positive number, got {num_items!r}")


def divide(total: torch.Tensor, counted: torch.Tensor | None, num_items, positions: int) -> torch.Tensor:
    """``total / num_items``; by default over the counted positions (at least 1), or all ``positions``."""
    if num_items is not None:
        if isinstance(num_items, torch.Tensor):
            return total / num_items.to(total.device).reshape(())
        return total / num_items
    if counted is None:
        return total / positions
    return total / counted.sum().clamp_min(1)


def share(counted: torch.Tensor | None, num_items, positions: int):
    """The fraction of ``num_items`` this call's counted positions make up (1 when ``num_items`` is None)."""
    if num_items is None:
        return 1.0
    count = positions if counted is None else counted.sum()
    return divide(torch.as_tensor(count, dtype=torch.float32), None, num_items, positions)


def soft_target_positions(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
                          mask, num_items, ignore_index: int = IGNORE_INDEX):
    """The checks every soft-target loss makes, and its inputs: ``(log_p_s, log_p_t, counted)`` — the two
    log-softmaxes at ``temperature`` in float32 and the positions that count (``None``: all of them)."""
    check_logits(student_logits, teacher_logits)
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    check_num_items(num_items)
    counted = counted_positions(mask, student_logits, ignore_index)
    log_p_s = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p_t = torch.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return log_p_s, log_p_t, counted


def per_position_mean(per_class: torch.Tensor, counted: torch.Tensor | None, num_items) -> torch.Tensor:
    """``(..., C)`` per-class terms summed over the counted positions and divided (:func:`divide`)."""
    if counted is not None:
        per_class = torch.where(counted[..., None], per_class, 0.0)
    positions = per_class.numel() // per_class.shape[-1]
    return divide(per_class.sum(), counted, num_items, positions)
