"""Online distillation: a :class:`~distill.zoo.models.Cohort` of peers teach each other, no teacher.

The student is the cohort (``build_model("cohort", peer="wrn_16_2", peers=2)``); its
evaluation scores the peers' ensemble, and each peer can be taken out after training
(``cohort.peers[k]``).

* ``dml``: deep mutual learning (Zhang et al. 2018) - each peer: CE + mean KL to the others;
* ``kdcl``: KDCL (Guo et al. 2020) - the peers' combined logits teach every peer;
* ``one``: ONE (Lan et al. 2018) - for the ``one`` model (shared trunk, gated branches): the
  gated ensemble teaches every branch.
"""
from distill.methods.registry import register_method
from distill.terms import Term


def _peers(peers: int) -> list[str]:
    if peers < 2:
        raise ValueError(f"online distillation needs at least 2 peers, got {peers}")
    return [f"peers.{k}" for k in range(peers)]


@register_method("dml")
def dml(peers: int = 2, temperature: float = 1.0, alternate: bool = True) -> list[Term]:
    """Deep mutual learning over the cohort's ``peers`` (the paper's T = 1).

    ``alternate`` (the paper's Algorithm 1): the peers step one after another on each batch, each
    on a fresh forward pass that sees the peers before it already updated (one term per peer, in
    its own update ``group``; K forward passes per batch). ``alternate=False``: every peer steps on
    the same forward pass (one term, one pass).
    """
    taps = _peers(peers)
    if not alternate:
        return [Term("dml", student=taps, temperature=temperature)]
    return [Term("dml", student=taps, temperature=temperature, peer=k, group=k, name=f"dml_{k}")
            for k in range(peers)]


@register_method("kdcl")
def kdcl(peers: int = 2, temperature: float = 3.0, ensemble: str = "min_logit") -> list[Term]:
    """KDCL over the cohort's ``peers``; ``ensemble``: ``min_logit`` (KDCL-MinLogit), ``mean`` or ``naive``."""
    return [Term("kdcl", student=_peers(peers), temperature=temperature, ensemble=ensemble)]


@register_method("one")
def one(branches: int = 3, temperature: float = 3.0) -> list[Term]:
    """ONE over the ``one`` model's ``branches`` and its gated ensemble (the paper's T = 3)."""
    if branches < 2:
        raise ValueError(f"ONE needs at least 2 branches, got {branches}")
    return [Term("one", student=[f"branches.{k}" for k in range(branches)] + ["logits"], temperature=temperature)]
