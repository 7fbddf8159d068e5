"""Relational losses: match how samples in a batch relate to each other, not the features themselves.

Each takes ``(N, ...)`` student and teacher features of any widths (flattened
per sample), so no connector is needed. They compare samples *within* the
batch. Called directly, they see the batch they are given; bound in a
:class:`~distill.terms.Term`, they are marked ``gather`` and under several
processes see the whole batch gathered from all of them (``distill.distributed``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.losses.registry import register_loss


def _flat(x: torch.Tensor) -> torch.Tensor:
    if x.dim() < 2 or x.shape[0] < 2:
        raise ValueError(f"relational losses need a batch of at least 2 samples, got shape {tuple(x.shape)}")
    return x.float().flatten(1)


def _same_batch(s: torch.Tensor, t: torch.Tensor) -> None:
    if s.shape[0] != t.shape[0]:
        raise ValueError(f"student batch {s.shape[0]} and teacher batch {t.shape[0]} differ")


@register_loss("sp", gather=True)
def sp_loss(student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
    r"""Similarity-preserving KD — Tung & Mori 2019, *Similarity-Preserving Knowledge Distillation* (ICCV).

    .. math::
        G = \mathrm{rownorm}(F F^\top),\qquad
        \mathcal{L}_{SP} = \frac{1}{N^2}\,\| G^s - G^t \|_F^2

    where :math:`F` is the ``(N, D)`` matrix of flattened features and each row of
    the ``N x N`` Gram matrix is L2-normalised.
    """
    s, t = _flat(student_features), _flat(teacher_features)
    _same_batch(s, t)
    g_s = F.normalize(s @ s.T, dim=1)
    g_t = F.normalize(t @ t.T, dim=1)
    return (g_s - g_t).pow(2).sum() / s.shape[0] ** 2


def _pairwise_distances(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    squared = (x.unsqueeze(0) - x.unsqueeze(1)).pow(2).sum(-1)
    return squared.clamp_min(eps).sqrt() * (1 - torch.eye(len(x), device=x.device))


@register_loss("rkd", gather=True)
def rkd_loss(student_features: torch.Tensor, teacher_features: torch.Tensor,
             distance_weight: float = 25.0, angle_weight: float = 50.0) -> torch.Tensor:
    r"""Relational KD — Park et al. 2019, *Relational Knowledge Distillation* (CVPR).

    Distance-wise: pairwise Euclidean distances, each set divided by its mean
    over the :math:`N(N-1)` distinct pairs,
    :math:`\psi_D(t_i, t_j) = \|t_i - t_j\|_2 / \mu`.
    Angle-wise: for every triplet, the cosine of the angle at :math:`t_j`,
    :math:`\psi_A(t_i, t_j, t_k) = \langle e^{ij}, e^{kj} \rangle`,
    :math:`e^{ij} = (t_i - t_j)/\|t_i - t_j\|_2`.

    .. math::
        \mathcal{L}_{RKD} = \lambda_D \,\overline{\ell_\delta(\psi_D^s, \psi_D^t)}
            + \lambda_A \,\overline{\ell_\delta(\psi_A^s, \psi_A^t)}

    with the Huber loss :math:`\ell_\delta` (``smooth_l1``, δ = 1) averaged over
    pairs and triplets; the paper's weights are λ_D = 25, λ_A = 50.

    Scale against the authors' reference code: its distance term averages the Huber loss over all
    :math:`N^2` entries of the distance matrices, the :math:`N` zero diagonal entries included; this
    averages over the :math:`N(N-1)` distinct pairs (the paper's mean over pairs), so the distance
    term here is :math:`N/(N-1)` times the reference's (1.016× at batch 64, 2× at batch 2): a λ_D
    copied from the reference matches it as :math:`\lambda_D (N-1)/N` here. The angle term matches
    the reference (both average over all :math:`N^3` triplets, degenerate ones included).
    """
    s, t = _flat(student_features), _flat(teacher_features)
    _same_batch(s, t)
    n = s.shape[0]
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=s.device)
    d_s, d_t = _pairwise_distances(s), _pairwise_distances(t)
    d_s = d_s / d_s[off_diagonal].mean()
    d_t = d_t / d_t[off_diagonal].mean()
    distance = F.smooth_l1_loss(d_s[off_diagonal], d_t[off_diagonal])
    angle = F.smooth_l1_loss(_angles(s), _angles(t))
    return distance_weight * distance + angle_weight * angle


def _angles(x: torch.Tensor) -> torch.Tensor:
    e = F.normalize(x.unsqueeze(0) - x.unsqueeze(1), p=2, dim=2)  # e[j, i] = unit vector from x_j to x_i
    return torch.bmm(e, e.transpose(1, 2)).flatten()  # [j, i, k] = <e_ji, e_jk>: the angle at x_j


@register_loss("pkt", gather=True)
def pkt_loss(student_features: torch.Tensor, teacher_features: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    r"""Probabilistic knowledge transfer — Passalis & Tefas 2018, *Learning Deep Representations with
    Probabilistic Knowledge Transfer* (ECCV).

    Cosine similarities of the L2-normalised features, mapped to :math:`[0, 1]`
    and normalised per row into conditional probabilities
    :math:`p_{j|i} = \frac{(1 + \cos(f_i, f_j))/2}{\sum_k (1 + \cos(f_i, f_k))/2}`;
    the loss is the divergence of the student's from the teacher's:

    .. math:: \mathcal{L}_{PKT} = \frac{1}{N}\sum_i\sum_j p^t_{j|i}\,\log\frac{p^t_{j|i} + \epsilon}{p^s_{j|i} + \epsilon}

    the mean over the :math:`N` samples of each row's divergence (the ``batchmean`` of every
    loss here). Scale against the authors' reference code: it takes the mean over all :math:`N^2`
    entries instead, so this is :math:`N` times the reference's value (64× at batch 64) and is
    independent of the batch size where the reference's shrinks as :math:`1/N`; a weight
    :math:`\lambda` tuned with the reference code at batch size :math:`N` is :math:`\lambda / N` here.
    """
    s, t = _flat(student_features), _flat(teacher_features)
    _same_batch(s, t)

    def conditional(x):
        x = F.normalize(x, dim=1)
        similarity = (x @ x.T + 1.0) / 2.0
        return similarity / similarity.sum(1, keepdim=True)

    p_s, p_t = conditional(s), conditional(t)
    return (p_t * torch.log((p_t + eps) / (p_s + eps))).sum() / s.shape[0]


@register_loss("cc", gather=True)
def cc_loss(student_features: torch.Tensor, teacher_features: torch.Tensor, gamma: float = 0.4) -> torch.Tensor:
    r"""Correlation congruence — Peng et al. 2019, *Correlation Congruence for Knowledge Distillation* (ICCV).

    With the Gaussian RBF correlation of L2-normalised embeddings,
    :math:`C_{ij} = \exp(-\gamma \|f_i - f_j\|_2^2)`,

    .. math:: \mathcal{L}_{CC} = \frac{1}{N^2}\,\| C^s - C^t \|_F^2

    The paper approximates the kernel with a P-order Taylor series; this computes
    it exactly (the batch is small), which is the series' limit.
    """
    s, t = F.normalize(_flat(student_features), dim=1), F.normalize(_flat(teacher_features), dim=1)
    _same_batch(s, t)
    c_s = torch.exp(-gamma * (s.unsqueeze(0) - s.unsqueeze(1)).pow(2).sum(-1))
    c_t = torch.exp(-gamma * (t.unsqueeze(0) - t.unsqueeze(1)).pow(2).sum(-1))
    return (c_s - c_t).pow(2).sum() / s.shape[0] ** 2
