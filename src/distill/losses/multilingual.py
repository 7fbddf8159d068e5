"""Multilingual sentence embeddings by distillation (Reimers & Gurevych 2020)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.losses.registry import register_loss


@register_loss("multilingual_mse")  # student and teacher taps: "logits", the sentence vectors
def multilingual_mse(student_pairs: torch.Tensor, teacher_source: torch.Tensor) -> torch.Tensor:
    r"""Reimers & Gurevych 2020, *Making Monolingual Sentence Embeddings Multilingual using Knowledge
    Distillation*: for parallel pairs :math:`(s_j, t_j)` (a sentence and its translation) the student learns
    to put both where the frozen, monolingual teacher puts the source sentence:

    .. math:: \frac{1}{N}\sum_j \lVert \hat M(s_j) - M(s_j)\rVert^2 / D + \lVert \hat M(t_j) - M(s_j)\rVert^2 / D

    i.e. ``MSE(student(s), teacher(s)) + MSE(student(t), teacher(s))``, each a mean over the ``N x D``
    elements, on pooled sentence vectors. The teacher never sees the target language.

    ``student_pairs``: ``(N, 2, D)``, the student's vectors of each source sentence (``[:, 0]``) and of its
    translation (``[:, 1]``); ``teacher_source``: ``(N, D)``, the teacher's vectors of the source sentences.
    """
    if student_pairs.dim() != 3 or student_pairs.shape[1] != 2:
        raise ValueError(f"student vectors must be (N, 2, D) pairs (source, translation), got "
                         f"{tuple(student_pairs.shape)}")
    if teacher_source.shape != student_pairs[:, 0].shape:
        raise ValueError(f"teacher vectors {tuple(teacher_source.shape)} must be (N, D) = "
                         f"{tuple(student_pairs[:, 0].shape)}, one per source sentence")
    target = teacher_source.float()
    return F.mse_loss(student_pairs[:, 0].float(), target) + F.mse_loss(student_pairs[:, 1].float(), target)
