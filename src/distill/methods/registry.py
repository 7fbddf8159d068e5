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


def register_method(name: str) -> Callable[[F], F]:
    """Register the decorated function as the method ``name`` (a name is taken once)."""
    def register(fn: F) -> F:
        if name in METHODS and METHODS[name] is not fn:
            other = METHODS[name]
            raise ValueError(f"method {name!r} is registered twice: {other.__module__}.{other.__qualname__} and "
                             f"{fn.__module__}.{fn.__qualname__}")
        METHODS[name] = fn
        return fn

    return register
