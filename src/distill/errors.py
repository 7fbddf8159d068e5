"""The one error a user's mistake becomes: :class:`DistillError`, a ``ValueError`` whose message is one line.

Every module's own error (``TermError``, ``TaskError``, ``TapError``, ``ConnectorError`` ...) subclasses it, so
``except DistillError`` catches any of them. A message is kept to one line of at most :data:`MAX_LINE`
characters: line breaks become spaces and a longer text keeps its start (what is wrong) and its end (the fix).
Values shown in messages go through :func:`excerpt`, which bounds them before they are formatted.
This module imports nothing of distill, so every other module may raise its errors.
"""
from __future__ import annotations

import re

MAX_LINE = 300


def one_line(text: str, limit: int = MAX_LINE) -> str:
    """``text`` on one line of at most ``limit`` characters (the middle cut out when longer)."""
    text = re.sub(r"\s*\n\s*", " ", str(text)).strip()
    if len(text) <= limit:
        return text
    head = (limit - 5) * 2 // 3
    return f"{text[:head]} ... {text[len(text) - (limit - 5 - head):]}"


def excerpt(value, limit: int = 60) -> str:
    """A bounded ``repr`` of ``value`` for a message (a long string or container is cut, never copied whole)."""
    if isinstance(value, (str, bytes)) and len(value) > limit:
        value = value[: limit + 1]  # repr of a slice: never the whole string
    try:
        text = repr(value)
    except Exception:  # a broken __repr__
        text = f"<{type(value).__name__}>"
    text = text.replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe(value) -> str:
    """What a value is, in a few words: ``tensor (4, 8) float32``, ``ndarray (3,) float64``, ``list of 5``."""
    shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
    if shape is not None and dtype is not None:
        return f"{type(value).__name__} {tuple(shape)} {str(dtype).replace('torch.', '')}"
    if isinstance(value, (list, tuple, dict)):
        return f"{type(value).__name__} of {len(value)}"
    return type(value).__name__


def samples(index) -> str:
    """`` (sample indices 3, 7, 9, ...)`` for a batch's index tensor (empty when there is none)."""
    if not hasattr(index, "numel") or not index.numel() or index.dim() != 1:
        return ""
    shown = ", ".join(str(int(i)) for i in index[:3])
    return f" (sample indices {shown}{', ...' if index.numel() > 3 else ''})"


def cause(err: BaseException, limit: int = 140) -> str:
    """An exception as ``Type: first line of its message``, bounded, for the middle of a one-line report."""
    text = str(err).strip().strip("'\"")
    first = text.splitlines()[0] if text else ""
    name = type(err).__name__
    return one_line(f"{name}: {first}" if first else name, limit)


class DistillError(ValueError):
    """A problem with the user's set-up (taps, terms, shapes, data), reported in one line."""

    def __init__(self, *args):
        if len(args) == 1 and isinstance(args[0], str):
            args = (one_line(args[0]),)
        super().__init__(*args)
