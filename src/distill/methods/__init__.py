"""Methods: named recipes of loss terms.

A method is a function returning a list of :class:`~distill.terms.Term`;
methods whose training loop differs (two stages, peers, generators) get a
class of their own when they arrive.
"""
from collections.abc import Callable

from distill.methods.fitnets import fitnets
from distill.methods.kd import kd
from distill.methods.scratch import scratch

METHODS: dict[str, Callable] = {"scratch": scratch, "kd": kd, "fitnets": fitnets}

__all__ = ["METHODS", "fitnets", "kd", "scratch"]
