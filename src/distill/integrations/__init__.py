"""Integrations with other training loops.

* :class:`DistillationTrainer` — a ``transformers.Trainer`` that also learns from a teacher
  (:mod:`distill.integrations.hf_trainer`).

Each integration is imported when first asked for, so ``import distill.integrations`` imports
no third-party training library.
"""
from __future__ import annotations

__all__ = ["DistillationTrainer", "model_loss", "student_loss"]

_HF_TRAINER = ("DistillationTrainer", "model_loss", "student_loss")


def __getattr__(name: str):
    if name in _HF_TRAINER:
        from distill.integrations import hf_trainer

        return getattr(hf_trainer, name)
    raise AttributeError(f"module 'distill.integrations' has no attribute {name!r}")
