"""Stages: methods that train in several phases.

Most methods are one list of terms trained for the whole run. Some train in
phases: FitNets first fits the student up to its guided layer to the teacher's
hint, then trains the whole student with KD; factor transfer first trains a
paraphraser on the teacher's features. A method returns a list of
:class:`Stage` for that, and :func:`fit_stages` trains the same student
through them in order, each stage a :class:`~distill.engine.Distiller` run of
its own (``RUN_DIR/stage-1``, ``stage-2``, ...) so each can be resumed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from distill import distributed
from distill.engine import Distiller, TrainConfig, checkpoints_in, seed_everything
from distill.terms import Term


@dataclass
class Stage:
    """One phase of a staged method.

    Args:
        terms: the loss terms of this phase.
        epochs: its length; a float is a fraction of the run's ``train.epochs`` (``0.25``),
            an int a number of epochs, ``None`` the remaining epochs after the other stages.
        train_up_to: only the student parameters used to compute this tap train (FitNets' stage 1).
        name: shown in logs.
        augment: this phase's batch transform, in place of the run's (MixKD's :class:`TokenMixUp`, function
            matching's mixup); the teacher then runs live in this phase even when the run caches it.
    """

    terms: list[Term]
    epochs: int | float | None = None
    train_up_to: str | None = None
    name: str = ""
    augment: object | None = None


def as_stages(built) -> list[Stage]:
    """A method's output as stages: a plain list of terms is one stage."""
    if built and all(isinstance(s, Stage) for s in built):
        return list(built)
    return [Stage(list(built))]


def stage_epochs(stages: list[Stage], total: int) -> list[int]:
    """Each stage's epochs given the run's total: fractions of it (at least 1), whole numbers, and the remainder
    (at least 1 each, so a very short run of a staged method can take a little longer than ``total``)."""
    fixed = [s.epochs if isinstance(s.epochs, int) else max(1, round(s.epochs * total)) if s.epochs is not None
             else None for s in stages]
    if any(e is not None and e < 1 for e in fixed):
        raise ValueError(f"stage epochs must be positive, got {[s.epochs for s in stages]}")
    rest = total - sum(e for e in fixed if e is not None)
    open_ = sum(e is None for e in fixed)
    return [e if e is not None else max(1, rest // max(1, open_)) for e in fixed]


def fit_stages(student: nn.Module, teacher, stages: list[Stage], train, val=None, *, config: TrainConfig,
               run_dir: str | Path | None = None, augment=None, resume: bool = False,
               trust_pickle: bool = False, teacher_outputs=None, say=print, task=None, hyperparameters=None) -> dict:
    """Train ``student`` through ``stages`` in order. Returns ``{"history": [...], "epoch_seconds": [...]}``.
    ``hyperparameters``: what the experiment trackers record besides each stage's settings and terms.

    With a ``run_dir``, a finished stage (its ``summary.json`` exists) is not trained again on
    ``resume``: its last checkpoint (student, connectors, loss modules) is loaded and the next stage starts.
    """
    run_dir = Path(run_dir) if run_dir is not None else None
    epochs = stage_epochs(stages, config.epochs)
    history = []
    for k, (stage, n) in enumerate(zip(stages, epochs), start=1):
        own = None if run_dir is None else (run_dir if len(stages) == 1 else run_dir / f"stage-{k}")
        cfg = config.model_copy(update={"epochs": n})
        if stage.augment is not None:  # the method's own views (mixup ...) change every batch: no teacher cache
            cfg = cfg.model_copy(update={"cache_teacher": False, "teacher_cache_dir": None, "teacher_top_k": None})
        if k > 1:  # later stages start from a known RNG state, so a resumed run builds the same new modules
            seed_everything(cfg.seed * 1000 + k)
        # an augmentation may need the teacher with no term reading it (sequence-level KD generates with it)
        uses_teacher = any(t.teacher is not None for t in stage.terms) or getattr(stage.augment, "needs_teacher", False)
        trainer = Distiller(student, teacher if uses_teacher else None, stage.terms, run_dir=own,
                            augment=stage.augment if stage.augment is not None else augment,
                            config=cfg, trust_pickle=trust_pickle, train_up_to=stage.train_up_to,
                            teacher_outputs=teacher_outputs, task=task, hyperparameters=hyperparameters)
        # rank 0 looks (under several processes every process must take the same branch)
        finished, started = distributed.on_main(
            lambda: (own is not None and (own / "summary.json").is_file(), own is not None and bool(checkpoints_in(own))))
        if resume and finished:
            trainer.restore(train)  # a finished stage: its student and loss modules as it left them
            history += trainer.history
            continue
        if len(stages) > 1:
            say(f"  stage {k}/{len(stages)} {stage.name}: {n} epochs")
        trainer.fit(train, val, resume=resume and started)
        history += trainer.history
    return {"history": history, "epoch_seconds": [h["time"] for h in history]}
