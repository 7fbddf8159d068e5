"""How a run is configured: the ``train:`` section of a recipe (:class:`TrainConfig`), the engine's errors,
seeding, and the optimiser, schedule and Accelerator a configuration asks for."""
from __future__ import annotations

import difflib
import importlib.util
import math
import os
import random
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from pydantic import (BaseModel, ConfigDict, Field, StrictBool, StrictFloat, ValidationError, field_validator,
                      model_validator)

from distill.errors import DistillError, excerpt


class NonFiniteLoss(DistillError):
    """A loss term became NaN or infinite; the message names it."""


class _OneLineErrors(type(BaseModel)):
    """Calling the class (``TrainConfig(epochs=0)``) raises a one-line :class:`DistillError` naming the setting.
    Only direct calls: inside a recipe, pydantic validates the section itself and the recipe names the field."""

    def __call__(cls, *args, **kwargs):
        try:
            return super().__call__(*args, **kwargs)
        except ValidationError as err:
            raise DistillError(validation_line(err, cls.__name__)) from None


class TrainConfig(BaseModel, metaclass=_OneLineErrors):
    """How the student is trained. Also the ``train:`` section of a recipe."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(10, ge=1, description="passes over the training set")
    batch_size: int = Field(128, ge=1, description="samples per optimiser micro-batch (per process)")
    eval_batch_size: int = Field(1000, ge=1)
    eval_every: int = Field(1, ge=1, description="evaluate on the validation set every N epochs (and after the last)")
    optimizer: Literal["sgd", "adam", "adamw"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    nesterov: bool = Field(False, strict=True)
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["constant", "cosine", "linear", "step"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0)
    milestones: list[float] = Field(default_factory=list, description="epochs at which 'step' multiplies lr by gamma")
    gamma: float = Field(0.1, gt=0)
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimiser step")
    clip_grad_norm: StrictFloat | None = Field(None, gt=0)
    max_norm: StrictFloat | None = Field(None, gt=0, description="after each optimiser step, rescale every unit's "
                                         "incoming weights (a row of each Linear weight) to an L2 norm of at most "
                                         "this (Srivastava et al. 2014's max-norm constraint for dropout nets)")
    mixed_precision: Literal["no", "bf16", "fp16"] = Field("no", description="autocast the student's forward "
                                                           "(bf16 on CPU and GPU, fp16 on GPU); losses stay float32")
    compile: StrictBool | Literal["fullgraph"] = Field(False, description="torch.compile the student (with its "
                                                       "taps and connectors); 'fullgraph' refuses graph breaks")
    channels_last: bool = Field(False, strict=True, description="channels-last memory format for a CNN student, its "
                                "teacher (and the teacher cache's fill) and their image inputs")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="data order and augmentation (with the epoch)")
    log_every: int = Field(50, ge=1, description="steps between step-level log records")
    keep_checkpoints: int = Field(2, ge=1)
    checkpoint_every: int | None = Field(None, ge=1, description="also checkpoint every N optimiser steps within "
                                         "an epoch (a resumed run then continues from that batch)")
    progress: bool = Field(True, strict=True)
    num_workers: int = Field(0, ge=0)
    cpu: bool = Field(False, strict=True, description="train on the CPU even when an accelerator is present")
    nonfinite: Literal["stop", "skip"] = Field("stop", description="what a NaN or infinite loss does: stop the run "
                                               "(the last checkpoint stays intact) or skip that optimiser step")
    cache_teacher: bool = Field(False, strict=True, description="run the teacher once over the training set and "
                                "reuse its outputs every epoch (only without augmentation)")
    teacher_cache_dir: str | None = Field(None, description="with cache_teacher: keep the teacher's outputs in this "
                                          "directory (memory-mapped), reused while the teacher and data are the same")
    teacher_top_k: int | None = Field(None, ge=1, description="with teacher_cache_dir: keep only the top-k logits "
                                      "and the remaining mass (for large vocabularies)")
    trackers: list[str] | Literal["auto"] = Field("auto", description="experiment trackers through Accelerate "
                                                  "(tensorboard, wandb, mlflow, aim, comet_ml, clearml, dvclive ...), "
                                                  "files under RUN_DIR/tracking; 'auto': TensorBoard when it is "
                                                  "installed and the run has a directory; [] for none")
    group_by_length: bool = Field(False, strict=True, description="batch sequences of similar length together (the "
                                  "training set's 'lengths'): less padding, faster steps; the order is still random")

    @field_validator("trackers")
    @classmethod
    def _known_trackers(cls, v):
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS

        unknown = [t for t in (v if isinstance(v, list) else []) if t not in LOGGER_TYPE_TO_CLASS]
        if unknown:
            raise ValueError(f"unknown tracker {unknown[0]!r}; Accelerate knows {', '.join(LOGGER_TYPE_TO_CLASS)}")
        return v

    @model_validator(mode="after")
    def _cache_needs_caching(self):
        if self.teacher_cache_dir is not None and not self.cache_teacher:
            raise ValueError("teacher_cache_dir needs cache_teacher: true")
        if self.teacher_top_k is not None and self.teacher_cache_dir is None:
            raise ValueError("teacher_top_k needs teacher_cache_dir (top-k logits are kept on disk)")
        return self


def validation_line(err: ValidationError, owner: str) -> str:
    """A pydantic error as one line: the first problem's setting, what is wrong, the value given (an excerpt)."""
    errors = err.errors()
    first = errors[0]
    loc = first["loc"]
    field = "".join([str(loc[0]) if loc else ""] + [f"[{p}]" for p in loc[1:] if isinstance(p, int)])
    if first["type"] == "extra_forbidden":
        close = difflib.get_close_matches(field, TrainConfig.model_fields, n=1) if owner == "TrainConfig" else []
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"{owner} has no setting {excerpt(field)}{hint}"
    # a union (``compile: true, false or 'fullgraph'``) fails once per alternative: one message for them all
    same = [e for e in errors if e["loc"][:1] == loc[:1]]
    message = " or ".join(dict.fromkeys(e["msg"].removeprefix("Value error, ") for e in same))
    if not field:  # a check across settings: its message says it all
        return f"{owner}: {message}"
    more = len({e["loc"][:1] for e in errors}) - 1
    more = f" (and {more} more)" if more else ""
    return f"setting {field!r}: {message}, got {excerpt(first.get('input'))}{more}"


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def chosen_trackers(cfg: TrainConfig, run_dir: Path | None) -> list[str]:
    """The trackers a run logs to: ``cfg.trackers``, or for ``"auto"`` TensorBoard when it is installed and
    there is a run directory to write to."""
    if cfg.trackers != "auto":
        return list(cfg.trackers)
    has_tensorboard = any(importlib.util.find_spec(m) is not None for m in ("tensorboard", "tensorboardX"))
    return ["tensorboard"] if run_dir is not None and has_tensorboard else []


def make_accelerator(cfg: TrainConfig, run_dir: Path | None = None) -> Accelerator:
    # Accelerate keeps one process-wide state; a second Distiller in the same process with another
    # precision (a bf16 student after a float32 teacher) needs that state cleared first.
    # The process group (PartialState) is kept.
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision", cfg.mixed_precision) != cfg.mixed_precision:
        AcceleratorState._reset_state()
        GradientState._reset_state()
    # Several processes without CUDA (torchrun on CPUs) need cpu=True for Accelerate to use gloo.
    multi_cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    trackers = chosen_trackers(cfg, run_dir)
    logging = {"log_with": trackers, **({"project_dir": str(run_dir / "tracking")} if run_dir is not None else {})}
    return Accelerator(cpu=cfg.cpu or multi_cpu, mixed_precision=cfg.mixed_precision,
                       gradient_accumulation_steps=1, step_scheduler_with_optimizer=False,  # the loop accumulates
                       **(logging if trackers else {}))


def build_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The learning-rate multiplier after ``step`` optimiser steps."""
    total = cfg.epochs * steps_per_epoch
    warmup = cfg.warmup_epochs * steps_per_epoch
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1.0, total - warmup)
    if cfg.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    if cfg.schedule == "linear":
        return max(0.0, 1 - progress)
    if cfg.schedule == "step":
        epoch = step / steps_per_epoch
        return cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    return 1.0




def idle_cores(seconds: float = 0.2) -> float | None:
    """How many of the machine's cores were idle over the next ``seconds`` (Linux ``/proc/stat``; ``None``
    elsewhere): unlike the load average, what other processes use right now."""
    import time

    def sample():
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return fields[3] + fields[4], sum(fields)  # idle + iowait, all

    try:
        idle0, total0 = sample()
        time.sleep(seconds)
        idle1, total1 = sample()
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    except (OSError, ValueError, IndexError):
        return None
    return cores * (idle1 - idle0) / max(1, total1 - total0)


def default_threads() -> int:
    """The CPU threads for torch when none were asked for: torch's own choice (one per core), cut to the cores
    other processes leave idle (at least one). On 2 cores one busy neighbour made 2-thread runs 15-25x slower,
    as each step waits for its slowest thread."""
    threads = torch.get_num_threads()
    idle = idle_cores()
    if idle is None or threads <= 1:
        return threads
    return min(threads, max(1, int(idle + 0.25)))  # a core at least three-quarters idle counts as free


def busy_machine_note(threads: int | None = None) -> str | None:
    """A one-line note when torch would run several threads on a machine whose cores are already busy
    (load average over the CPUs available): there each step waits for the slowest thread, and on 2 cores one
    busy neighbour made 2-thread runs 15-25x slower. ``None`` when the machine is free, or on one thread."""
    import os

    threads = torch.get_num_threads() if threads is None else threads
    try:
        load = os.getloadavg()[0]
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    except OSError:
        return None
    if threads <= 1 or load < cores:
        return None
    return (f"note: the machine is busy (load {load:.1f} on {cores} cores) and torch uses {threads} threads, which "
            "then wait on each other; beside other jobs one thread each runs much faster (distill --threads 1, "
            "or torch.set_num_threads(1))")
