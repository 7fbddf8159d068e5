"""Methods: named recipes of loss terms.

A method is a function of its hyper-parameters returning a list of
:class:`~distill.terms.Term` (trained together for the whole run) or a list of
:class:`~distill.stages.Stage` (trained one after the other). Tap names default
to the zoo's aliases (``stage2``, ``last_stage``, ``embedding``), so one method
works for every zoo architecture; pass module paths for other models.

Each method registers itself in :data:`METHODS` where it is defined
(:func:`register_method`); this package imports all its modules, so adding a
method is adding one file.
"""
import importlib
import pkgutil

from distill.methods.common import STAGES
from distill.methods.registry import METHODS, register_method

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

globals().update(METHODS)  # from distill.methods import kd: the function (the module stays distill.methods.kd)

__all__ = ["METHODS", "STAGES", "register_method", *sorted(METHODS)]
