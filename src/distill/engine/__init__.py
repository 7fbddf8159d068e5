"""The engine: one training loop for every task and method.

* :mod:`distill.engine.config` — :class:`TrainConfig` (a recipe's ``train:`` section), errors, seeding,
  optimiser, schedule and Accelerator;
* :mod:`distill.engine.probe` — the trainable student with its taps and connectors, checked on one batch;
* :mod:`distill.engine.checkpoint` — saving and resuming, bit for bit on CPU;
* :mod:`distill.engine.loop` — :class:`Distiller`, the loop itself.
"""
from distill.engine.checkpoint import checkpoints_in
from distill.engine.config import DistillError, NonFiniteLoss, TrainConfig, lr_factor, seed_everything
from distill.engine.loop import Distiller, on_epoch
from distill.engine.probe import StudentWithTaps, modules_before

__all__ = ["Distiller", "on_epoch", "DistillError", "NonFiniteLoss", "StudentWithTaps", "TrainConfig", "checkpoints_in",
           "lr_factor", "modules_before", "seed_everything"]
