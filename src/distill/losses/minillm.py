"""MiniLLM's reverse-KL policy objective, one on-policy step of it as a differentiable surrogate."""
from __future__ import annotations

import torch

from distill.losses.positions import (IGNORE_INDEX, check_labels, check_logits, check_num_items, counted_positions,
                                      per_position_mean)
from distill.losses.registry import register_loss


def future_mean(values: torch.Tensor, counted: torch.Tensor) -> torch.Tensor:
    """``(B, L)`` -> ``(B, L)``: at each position the mean of ``values`` over the *later* counted positions of its
    row (0 where none is left): MiniLLM's length-normalised future reward :math:`R^{Norm}_{t+1}`."""
    v = torch.where(counted, values, 0.0)
    later_sum = v.flip(-1).cumsum(-1).flip(-1) - v
    later_n = counted.float().flip(-1).cumsum(-1).flip(-1) - counted.float()
    return later_sum / later_n.clamp_min(1.0)


def future_rewards(log_p_y: torch.Tensor, log_q_y: torch.Tensor, counted: torch.Tensor,
                   whiten: bool = False) -> torch.Tensor:
    r"""``(B, L)`` log-probabilities of the sampled tokens under teacher and student -> :math:`R^{Norm}_{t+1}`,
    the mean of :math:`r = \log p - \log q` over each position's later counted positions; ``whiten``:
    standardised over the counted positions (zero mean, unit variance)."""
    reward = future_mean(log_p_y - log_q_y, counted)
    if whiten and int(counted.sum()) > 1:
        kept = reward[counted]
        reward = (reward - kept.mean()) / (kept.std() + 1e-8)
    return reward


@register_loss("minillm", labels=True, softmax=True)
def minillm_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    tokens: torch.Tensor,
    teacher_mix: float = 0.0,
    whiten: bool = False,
    *,
    mask: torch.Tensor | None = None,
    num_items: int | torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    r"""MiniLLM — Gu et al. 2024, *MiniLLM: Knowledge Distillation of Large Language Models* (ICLR), §2.2:
    the sequence-level reverse KL :math:`\mathrm{KL}(q_\theta \,\|\, p)` of the student :math:`q_\theta` from
    the teacher :math:`p`, minimised by policy gradient on the student's own samples :math:`y`.

    With the per-token reward :math:`r_t = \log p(y_t \mid y_{<t}) - \log q_\theta(y_t \mid y_{<t})` and its
    length-normalised future :math:`R^{Norm}_{t+1} = \frac{1}{|\{t' > t\}|}\sum_{t' > t} r_{t'}` (eq. 5), the
    gradient is the single-step part (eq. 3, the exact expectation over the next token, i.e. the gradient of
    the per-token reverse KL over the whole vocabulary) plus the long-term part (REINFORCE on the future
    reward); samples drawn from the teacher-mixed :math:`\tilde p = \alpha p + (1 - \alpha) q_\theta` (eq. 4) are
    re-weighted by the per-token importance weight :math:`w_t = q_\theta(y_t) / \tilde p(y_t)`. This function
    is the surrogate whose gradient that is (stop-gradient :math:`\mathrm{sg}` on rewards and weights):

    .. math::
        \mathcal{L} = \frac{1}{N_{items}} \sum_{t \in \text{counted}} \mathrm{sg}(w_t)\Big[
            \mathrm{KL}\big(q_\theta(\cdot \mid y_{<t}) \,\|\, p(\cdot \mid y_{<t})\big)
            - \mathrm{sg}(R^{Norm}_{t+1}) \log q_\theta(y_t \mid y_{<t}) \Big]

    Simplifications (documented, not the paper's full recipe): one gradient step per sample, so PPO's
    ratio is 1 and its clipping does nothing; no reward baseline unless ``whiten``; the language-modelling
    loss on a pre-training corpus (:math:`\mathcal{L}_{PT}`) is left to other terms / a warm-up stage
    (``distill.methods.minillm``). The authors' code (microsoft/LMOps ``minillm/losses.py``) differs in three
    details: its advantage sums the rewards from :math:`t` itself (not :math:`t + 1`) before dividing by the
    remaining length, it whitens the advantages over the batch (``whiten=True`` here), and it leaves the
    single-step term unweighted by :math:`w_t`; this function follows the paper's equations. Its value is the
    weighted per-token reverse KL plus the REINFORCE surrogate: read it for its gradient, not as a divergence.

    Args:
        student_logits, teacher_logits: ``(B, L, V)``; position ``t`` predicts ``tokens[:, t]``.
        tokens: ``(B, L)`` the sampled tokens (the shifted labels of a generated batch), ``ignore_index`` where a
            position does not count (the prompt, padding).
        teacher_mix: :math:`\alpha \in [0, 1)`, the teacher's share of the sampling distribution (0: pure
            student sampling; the paper uses 0.2). Only the importance weights use it: the sampler must match.
        whiten: standardise the future rewards over the counted positions of the batch (zero mean, unit
            variance: a baseline and a scale, as the authors' code does).
        mask, num_items, ignore_index: as in :func:`~distill.losses.kd_loss`.

    Returns:
        a float32 scalar.
    """
    check_logits(student_logits, teacher_logits)
    check_labels(student_logits, tokens)
    check_num_items(num_items)
    if student_logits.dim() != 3:
        raise ValueError(f"minillm_loss needs (batch, length, vocabulary) logits, got {tuple(student_logits.shape)}")
    if isinstance(teacher_mix, bool) or not isinstance(teacher_mix, (int, float)) or not 0.0 <= teacher_mix < 1.0:
        raise ValueError(f"teacher_mix must be a number in [0, 1), got {teacher_mix!r}")
    counted = tokens != ignore_index
    extra = counted_positions(mask, student_logits, ignore_index)
    if extra is not None:
        counted = counted & extra
    log_q = torch.log_softmax(student_logits.float(), dim=-1)
    log_p = torch.log_softmax(teacher_logits.float(), dim=-1)
    index = tokens.masked_fill(~counted, 0).long()[..., None]
    log_q_y = log_q.gather(-1, index)[..., 0]
    with torch.no_grad():
        log_p_y = log_p.gather(-1, index)[..., 0]
        reward = future_rewards(log_p_y, log_q_y, counted, whiten)
        weight = torch.ones_like(log_q_y)
        if teacher_mix > 0:
            q_y = log_q_y.exp()
            weight = q_y / (teacher_mix * log_p_y.exp() + (1 - teacher_mix) * q_y)
    single = (log_q.exp() * (log_q - log_p)).sum(-1)  # KL(q || p) at each position
    per_position = weight * (single - reward * log_q_y)
    return per_position_mean(per_position[..., None], counted, num_items)
