"""Several teachers: one student learns from the mixture of their soft targets.

Conventions as in :mod:`distill.losses.kd`: logits in, ``KL(target || student)``,
``batchmean``, :math:`T^2`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.losses.kd import _check_logits
from distill.losses.registry import register_loss

WEIGHTINGS = ("mean", "fixed", "confidence")


def teacher_mixture_weights(teacher_logits: list[torch.Tensor], labels: torch.Tensor | None = None,
                            weighting: str = "mean", weights: list[float] | None = None) -> torch.Tensor:
    r"""Per-sample weights ``(N, M)`` of ``M`` teachers (each row sums to 1).

    * ``"mean"``: :math:`w_m = 1/M` (the ensemble average, Hinton et al. 2015 §3 uses one);
    * ``"fixed"``: the given ``weights``, normalised to sum to 1;
    * ``"confidence"``: CA-MKD (Zhang, Chen & Wang 2022, *Confidence-Aware Multi-Teacher
      Knowledge Distillation*, ICASSP), from each teacher's cross-entropy on the true label
      :math:`\mathcal{L}^m_{CE}` of the sample:

      .. math:: w_m = \frac{1}{M-1}\Big(1 - \frac{\exp(\mathcal{L}^m_{CE})}{\sum_j \exp(\mathcal{L}^j_{CE})}\Big)

      so the teacher that is surer of the right class counts more (one teacher: weight 1).

    (Called ``teacher_weights`` before; that name stays an alias.)
    """
    if not teacher_logits:
        raise ValueError("need at least one teacher's logits")
    n, m = teacher_logits[0].shape[0], len(teacher_logits)
    device = teacher_logits[0].device
    if weighting == "mean":
        return torch.full((n, m), 1.0 / m, device=device)
    if weighting == "fixed":
        if weights is None or len(weights) != m:
            raise ValueError(f"weighting 'fixed' needs {m} weights, got {weights!r}")
        w = torch.tensor(weights, dtype=torch.float32, device=device)
        if (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"teacher weights must be non-negative and not all zero, got {weights!r}")
        return (w / w.sum()).expand(n, m)
    if weighting == "confidence":
        if labels is None:
            raise ValueError("weighting 'confidence' needs the labels")
        if m == 1:
            return torch.ones(n, 1, device=device)
        ce = torch.stack([F.cross_entropy(z.float(), labels, reduction="none") for z in teacher_logits], dim=1)
        return (1 - torch.softmax(ce, dim=1)) / (m - 1)
    raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")


teacher_weights = teacher_mixture_weights  # the earlier name


# several teachers: pass teacher=["a/logits", "b/logits"] (the teachers' names in Distiller(teacher={...}))
@register_loss("multi_kd", labels=True, softmax=True)
def multi_teacher_kd_loss(student_logits: torch.Tensor, teacher_logits: list[torch.Tensor],
                          labels: torch.Tensor | None = None, temperature: float = 4.0, weighting: str = "mean",
                          weights: list[float] | None = None) -> torch.Tensor:
    r"""KD from ``M`` teachers: the student matches the weighted mixture of their soft targets.

    .. math::
        \bar p_n = \sum_m w_{nm}\,\mathrm{softmax}(z^m_n / T),\qquad
        \mathcal{L} = T^2 \frac1N \sum_n \mathrm{KL}\big(\bar p_n \,\|\, \mathrm{softmax}(z^s_n / T)\big)

    with weights from :func:`teacher_mixture_weights` (``"mean"``, ``"fixed"``, or CA-MKD's per-sample
    ``"confidence"``). The weighted sum of per-teacher KL terms that CA-MKD writes,
    :math:`\sum_m w_m \mathrm{KL}(p^m \| q)`, differs from this by a constant in the student,
    so both give the same gradients.

    Scale against CA-MKD's reference code: that code sums :math:`w_{nm}\,\mathrm{KL}(p^m_n \| q_n)`
    over samples and teachers and divides by :math:`N \cdot M`, although its weights already sum
    to 1 over the teachers; so its distillation gradient is :math:`1/M` of this loss's (this loss
    is :math:`M` times it in the gradient, e.g. 3× with three teachers). This loss keeps the plain
    KD scale (with one teacher, or identical teachers, it is :func:`~distill.losses.kd_loss`), so a
    weight :math:`\lambda` copied from the reference code with :math:`M` teachers is
    :math:`\lambda / M` here.

    Args:
        student_logits: ``(N, C)``.
        teacher_logits: a list of ``M`` tensors ``(N, C)``.
        labels: ``(N,)`` class indices, for ``"confidence"`` only.

    The target is a constant: no gradient reaches the teachers' logits.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    for z in teacher_logits:
        _check_logits(student_logits, z)
    w = teacher_mixture_weights(teacher_logits, labels, weighting, weights).detach()
    probs = torch.stack([torch.softmax(z.detach().float() / temperature, dim=-1) for z in teacher_logits], dim=1)
    target = (w[:, :, None] * probs).sum(1)
    log_q = F.log_softmax(student_logits.float() / temperature, dim=-1)
    return F.kl_div(log_q, target, reduction="batchmean") * temperature**2
