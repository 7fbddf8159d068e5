"""Loss terms: pure functions of tensors.

Every function here takes tensors and returns a scalar tensor. None of them
knows about models, taps, engines or recipes; :class:`distill.terms.Term`
binds a function to tap names and a weight.
"""
from distill.losses.hint import hint_loss
from distill.losses.kd import cross_entropy, kd_loss

__all__ = ["cross_entropy", "hint_loss", "kd_loss"]
