"""Methods: named recipes of loss terms.

A method is a function of its hyper-parameters returning a list of
:class:`~distill.terms.Term` (trained together for the whole run) or a list of
:class:`~distill.stages.Stage` (trained one after the other). Tap names default
to the zoo's aliases (``stage2``, ``last_stage``, ``embedding``), so one method
works for every zoo architecture; pass module paths for other models.
"""
from collections.abc import Callable

from distill.methods.ab import ab
from distill.methods.attention import at, nst
from distill.methods.crd import crd
from distill.methods.dist import dist
from distill.methods.dkd import dkd
from distill.methods.fitnets import fitnets
from distill.methods.fsp import fsp
from distill.methods.ft import ft
from distill.methods.gradcam import gradcam
from distill.methods.kd import kd
from distill.methods.multi_teacher import multi_teacher
from distill.methods.online import dml, kdcl, one
from distill.methods.relational import cc, pkt, rkd, sp
from distill.methods.scratch import scratch
from distill.methods.tf_kd import tf_kd
from distill.methods.vid import vid

METHODS: dict[str, Callable] = {
    "scratch": scratch, "kd": kd, "dkd": dkd, "dist": dist, "fitnets": fitnets, "at": at, "nst": nst, "sp": sp,
    "rkd": rkd, "pkt": pkt, "cc": cc, "vid": vid, "fsp": fsp, "ft": ft, "ab": ab, "gradcam": gradcam,
    "crd": crd, "multi_teacher": multi_teacher, "tf_kd": tf_kd, "dml": dml, "kdcl": kdcl, "one": one,
}

__all__ = ["METHODS", *sorted(METHODS)]
