"""Decoupled KD — Zhao et al. 2022 (CVPR): ``CE + w(t) * T^2 (alpha TCKD + beta NCKD)``, ``w`` warmed up from 0.

The paper's CIFAR-100 setting is ``alpha=1, beta=8, T=4``, warm-up over the first
20 of 240 epochs. ``beta=8`` multiplies a non-target part that, with only 9
non-target classes and a confident teacher, is large: here the default is
``beta=2`` (see the vision benchmark in the docs), warm-up over a tenth of the run.
"""
from distill.methods.common import with_ce_and_kd
from distill.methods.registry import register_method
from distill.terms import Ramp, Term


@register_method("dkd")
def dkd(alpha: float = 1.0, beta: float = 2.0, temperature: float = 4.0, warmup: float = 0.1) -> list[Term]:
    """Decoupled KD (Zhao et al. 2022): cross-entropy plus DKD whose weight ramps from 0 to 1 over the first
    ``warmup`` fraction of training (``alpha`` 1 and ``temperature`` 4: the paper's CIFAR-100 setting)."""
    weight = Ramp(0.0, 1.0, over=warmup) if warmup > 0 else 1.0
    return with_ce_and_kd([Term("dkd", weight, alpha=alpha, beta=beta, temperature=temperature)])
