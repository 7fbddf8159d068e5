"""Online distillation: peers trained together teach each other, no pretrained teacher.

The peers' logits arrive as a list of ``(N, C)`` tensors. A peer's targets are
the *other* peers' predictions, treated as constants (detached), so each peer's
gradient comes only from its own terms. Conventions as in :mod:`distill.losses.kd`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.losses.kd import kd_loss
from distill.losses.registry import register_loss


def _check_peers(peer_logits: list[torch.Tensor]) -> None:
    if len(peer_logits) < 2:
        raise ValueError(f"online distillation needs at least 2 peers, got {len(peer_logits)}")
    shapes = {tuple(z.shape) for z in peer_logits}
    if len(shapes) != 1:
        raise ValueError(f"peer logits must share one shape, got {sorted(shapes)}")


def _kl(target_logits: torch.Tensor, logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KD from ``target_logits`` taken as a constant: ``T^2 KL(softmax(target/T) || softmax(logits/T))``."""
    return kd_loss(logits, target_logits.detach(), temperature)


# the student is a Cohort; pass student=["peers.0", "peers.1", ...]
@register_loss("dml", teacher=None, labels=True, softmax=True)
def dml_loss(peer_logits: list[torch.Tensor], labels: torch.Tensor, temperature: float = 1.0,
             peer: int | None = None) -> torch.Tensor:
    r"""Deep mutual learning — Zhang, Xiang, Hospedales & Lu 2018, *Deep Mutual Learning* (CVPR).

    Each of the :math:`K` peers learns from the labels and from the mean of the others:

    .. math::
        \mathcal{L}_k = \mathrm{CE}(z_k, y) +
            \frac{1}{K-1}\sum_{j \ne k} T^2\,\mathrm{KL}\big(p_j \,\|\, p_k\big),
        \qquad p_j = \mathrm{softmax}(z_j / T)\ \text{(a constant in peer } k\text{'s loss)}

    ``peer=k`` returns :math:`\mathcal{L}_k` alone (the paper's alternating updates: each peer
    steps on its own loss after the peers before it have stepped, see :func:`distill.methods.dml`);
    ``peer=None`` returns :math:`\sum_k \mathcal{L}_k`, every peer stepping on the same forward pass.
    """
    _check_peers(peer_logits)
    k = len(peer_logits)
    if peer is not None and not 0 <= peer < k:
        raise ValueError(f"peer must be in [0, {k}), got {peer}")
    total = peer_logits[0].new_zeros((), dtype=torch.float32)
    for i, z in enumerate(peer_logits):
        if peer is not None and i != peer:
            continue
        mimic = sum(_kl(other, z, temperature) for j, other in enumerate(peer_logits) if j != i) / (k - 1)
        total = total + F.cross_entropy(z.float(), labels) + mimic
    return total


@register_loss("kdcl", teacher=None, labels=True, softmax=True)
def kdcl_loss(peer_logits: list[torch.Tensor], labels: torch.Tensor, temperature: float = 3.0,
              ensemble: str = "min_logit") -> torch.Tensor:
    r"""KDCL — Guo et al. 2020, *Online Knowledge Distillation via Collaborative Learning* (CVPR).

    The peers' logits are combined into one soft teacher that teaches every peer:

    .. math::
        \mathcal{L} = \sum_k \Big[\mathrm{CE}(z_k, y) + T^2\,\mathrm{KL}\big(\mathrm{softmax}(z_t / T) \,\|\,
            \mathrm{softmax}(z_k / T)\big)\Big]

    with the teacher logits :math:`z_t` (a constant) from ``ensemble``:

    * ``"naive"``: the peer whose cross-entropy on the sample is lowest;
    * ``"mean"``: the peers' mean logits;
    * ``"min_logit"``: KDCL-MinLogit — each peer's logits minus its true-class logit,
      :math:`\bar z_k = z_k - z_{k,y}`, and per class the minimum over peers,
      :math:`z_{t,c} = \min_k \bar z_{k,c}` (the true class stays at 0, every other class at
      its smallest margin: the most confident combination).
    """
    _check_peers(peer_logits)
    stacked = torch.stack([z.detach().float() for z in peer_logits])  # (K, N, C)
    if ensemble == "mean":
        teacher = stacked.mean(0)
    elif ensemble == "naive":
        ce = torch.stack([F.cross_entropy(z, labels, reduction="none") for z in stacked])  # (K, N)
        teacher = stacked[ce.argmin(0), torch.arange(stacked.shape[1])]
    elif ensemble == "min_logit":
        true = stacked.gather(2, labels.view(1, -1, 1).expand(stacked.shape[0], -1, 1))
        teacher = (stacked - true).amin(0)
    else:
        raise ValueError(f"ensemble must be 'min_logit', 'mean' or 'naive', got {ensemble!r}")
    return sum(F.cross_entropy(z.float(), labels) + _kl(teacher, z, temperature) for z in peer_logits)


# student=["branches.0", ..., "logits"]
@register_loss("one", teacher=None, labels=True, softmax=True)
def one_loss(branch_and_ensemble_logits: list[torch.Tensor], labels: torch.Tensor,
             temperature: float = 3.0) -> torch.Tensor:
    r"""ONE — Lan, Zhu & Gong 2018, *Knowledge Distillation by On-the-Fly Native Ensemble* (NeurIPS).

    ``[z_1, ..., z_m, z_e]``: the logits of the :math:`m` branches and of their gated ensemble
    :math:`z_e = \sum_i g_i z_i` (the last entry). Every branch and the ensemble learn the labels;
    the ensemble, a constant here, teaches every branch:

    .. math::
        \mathcal{L} = \sum_{i=1}^{m} \mathrm{CE}(z_i, y) + \mathrm{CE}(z_e, y)
            + T^2 \sum_{i=1}^{m} \mathrm{KL}\big(\mathrm{softmax}(z_e / T) \,\|\, \mathrm{softmax}(z_i / T)\big)
    """
    *branches, ensemble = branch_and_ensemble_logits
    _check_peers(branches)
    ce = sum(F.cross_entropy(z.float(), labels) for z in branches) + F.cross_entropy(ensemble.float(), labels)
    return ce + sum(_kl(ensemble, z, temperature) for z in branches)
