"""Loss terms: pure functions of tensors.

Every function here takes tensors and returns a scalar tensor. None of them
knows about models, taps, engines or recipes; :class:`distill.terms.Term`
binds a function to tap names and a weight.
"""
from distill.losses.attention import at_loss, nst_loss
from distill.losses.dist import dist_loss
from distill.losses.dkd import dkd_loss
from distill.losses.hint import hint_loss
from distill.losses.kd import cross_entropy, kd_loss
from distill.losses.relational import cc_loss, pkt_loss, rkd_loss, sp_loss

__all__ = ["at_loss", "cc_loss", "cross_entropy", "dist_loss", "dkd_loss", "hint_loss", "kd_loss", "nst_loss", "pkt_loss",
           "rkd_loss", "sp_loss"]
