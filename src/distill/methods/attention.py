"""Attention transfer — Zagoruyko & Komodakis 2017 (ICLR): ``CE + beta * sum_j at_loss(stage_j)``.

The paper's ``beta = 1000`` (on the per-position mean, i.e. 500 with its 1/2)
was set for CIFAR wide ResNets; on small 10-class students it swamps the
labels, so the default here is ``beta = 100`` (see the vision benchmark).
Neuron selectivity transfer (Huang & Wang 2017) matches the same stage maps by MMD.
"""
from distill.methods.common import STAGES, per_layer, with_ce_and_kd
from distill.methods.registry import register_method
from distill.terms import Term


@register_method("at")
def at(beta: float = 100.0, layers=STAGES, teacher_layers=None, p: float = 2.0, alpha: float = 0.0,
       temperature: float | None = None) -> list[Term]:
    """Attention transfer (Zagoruyko & Komodakis 2017): CE + beta * AT on each of ``layers`` (same spatial sizes)."""
    return with_ce_and_kd(per_layer("at", beta, layers, teacher_layers, p=p), alpha, temperature)


@register_method("nst")
def nst(beta: float = 50.0, layers=("last_stage",), teacher_layers=None, alpha: float = 0.0,
        temperature: float | None = None) -> list[Term]:
    """Neuron selectivity transfer (Huang & Wang 2017): CE + beta * polynomial-kernel MMD on ``layers``."""
    return with_ce_and_kd(per_layer("nst", beta, layers, teacher_layers), alpha, temperature)
