"""Online distillation: a :class:`~distill.zoo.models.Cohort` of peers teach each other, no teacher.

The student is the cohort (``build_model("cohort", peer="wrn_16_2", peers=2)``); its
evaluation scores the peers' ensemble, and each peer can be taken out after training
(``cohort.peers[k]``).

* ``dml``: deep mutual learning (Zhang et al. 2018) - each peer: CE + mean KL to the others;
* ``kdcl``: KDCL (Guo et al. 2020) - the peers' combined logits teach every peer.
"""
from distill.terms import Term


def _peers(peers: int) -> list[str]:
    if peers < 2:
        raise ValueError(f"online distillation needs at least 2 peers, got {peers}")
    return [f"peers.{k}" for k in range(peers)]


def dml(peers: int = 2, temperature: float = 1.0) -> list[Term]:
    """Deep mutual learning over the cohort's ``peers`` (the paper's T = 1)."""
    return [Term("dml", student=_peers(peers), temperature=temperature)]


def kdcl(peers: int = 2, temperature: float = 3.0, ensemble: str = "min_logit") -> list[Term]:
    """KDCL over the cohort's ``peers``; ``ensemble``: ``min_logit`` (KDCL-MinLogit), ``mean`` or ``naive``."""
    return [Term("kdcl", student=_peers(peers), temperature=temperature, ensemble=ensemble)]
