"""The one training loop.

:class:`Distiller` trains a student (and its connectors) on a weighted sum of
loss terms, with a frozen teacher providing tap values. It runs on Hugging
Face Accelerate, so the same code trains on one CPU process or, through
``accelerate launch -m distill ...``, on several GPUs or machines.

A run directory holds ``metrics.jsonl`` (one JSON record per log event),
``checkpoints/step-NNNNNNNN/`` (safetensors weights plus optimiser, scheduler and
RNG state), ``student.safetensors`` (the final student) and ``summary.json``.
"""
from __future__ import annotations

import copy
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from pydantic import BaseModel, ConfigDict, Field, model_validator
from safetensors.torch import load_model, save_model
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from distill.cache import CacheMismatch, CachedTeacher, TeacherOutputs
from distill.connectors import build_connector
from distill.data import EpochSampler, as_dataset, collate
from distill.evaluation import evaluate
from distill.fileio import UnsafeFile, atomic_save_model, atomic_write_dir, atomic_write_text, torch_load
from distill.lock import RunDirLocked, RunLock
from distill.taps import TapRecorder, parse_tap
from distill.teacher import LiveTeacher, TeacherEnsemble, run_model
from distill.terms import Term, unique_names, update_groups


class DistillError(ValueError):
    """A problem with the user's set-up (taps, terms, shapes), reported in one line."""


class NonFiniteLoss(DistillError):
    """A loss term became NaN or infinite; the message names it."""


class TrainConfig(BaseModel):
    """How the student is trained. Also the ``train:`` section of a recipe."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(10, ge=1, description="passes over the training set")
    batch_size: int = Field(128, ge=1, description="samples per optimiser micro-batch (per process)")
    eval_batch_size: int = Field(1000, ge=1)
    eval_every: int = Field(1, ge=1, description="evaluate on the validation set every N epochs (and after the last)")
    optimizer: Literal["sgd", "adam", "adamw"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["constant", "cosine", "linear", "step"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0)
    milestones: list[float] = Field(default_factory=list, description="epochs at which 'step' multiplies lr by gamma")
    gamma: float = Field(0.1, gt=0)
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimiser step")
    clip_grad_norm: float | None = Field(None, gt=0)
    mixed_precision: Literal["no", "bf16", "fp16"] = Field("no", description="autocast the student's forward "
                                                           "(bf16 on CPU and GPU, fp16 on GPU); losses stay float32")
    compile: bool | Literal["fullgraph"] = Field(False, description="torch.compile the student (with its taps and "
                                                 "connectors); 'fullgraph' refuses graph breaks")
    channels_last: bool = Field(False, description="channels-last memory format for a CNN student and its inputs")
    seed: int = 0
    log_every: int = Field(50, ge=1, description="steps between step-level log records")
    keep_checkpoints: int = Field(2, ge=1)
    checkpoint_every: int | None = Field(None, ge=1, description="also checkpoint every N optimiser steps within "
                                         "an epoch (a resumed run then continues from that batch)")
    progress: bool = True
    num_workers: int = Field(0, ge=0)
    cpu: bool = Field(False, description="train on the CPU even when an accelerator is present")
    nonfinite: Literal["stop", "skip"] = Field("stop", description="what a NaN or infinite loss does: stop the run "
                                               "(the last checkpoint stays intact) or skip that optimiser step")
    cache_teacher: bool = Field(False, description="run the teacher once over the training set and reuse its "
                                "outputs every epoch (only without augmentation)")
    teacher_cache_dir: str | None = Field(None, description="with cache_teacher: keep the teacher's outputs in this "
                                          "directory (memory-mapped), reused while the teacher and data are the same")
    teacher_top_k: int | None = Field(None, ge=1, description="with teacher_cache_dir: keep only the top-k logits "
                                      "and the remaining mass (for large vocabularies)")

    @model_validator(mode="after")
    def _cache_needs_caching(self):
        if self.teacher_cache_dir is not None and not self.cache_teacher:
            raise ValueError("teacher_cache_dir needs cache_teacher: true")
        if self.teacher_top_k is not None and self.teacher_cache_dir is None:
            raise ValueError("teacher_top_k needs teacher_cache_dir (top-k logits are kept on disk)")
        return self


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class StudentWithTaps(nn.Module):
    """The trainable part of a run: the student and its connectors.

    ``forward`` returns the student's tap values, with each connector applied to
    its term's tap (under the key :attr:`Term.student_key`). Keeping connectors
    inside this module's forward keeps distributed gradient sync correct.

    A loss term whose function is an ``nn.Module`` (a contrastive memory bank, a
    learned projection) is registered here too, so its parameters are trained and
    its parameters and buffers are checkpointed and restored with the student.
    """

    def __init__(self, student: nn.Module, taps):
        super().__init__()
        self.student = student
        self.recorder = TapRecorder(student, taps, model_name="student")
        self.connectors = nn.ModuleDict()
        self.connector_inputs: dict[str, str] = {}
        self.term_modules = nn.ModuleDict()

    def add_connector(self, name: str, tap: str, module: nn.Module) -> None:
        self.connectors[name] = module
        self.connector_inputs[name] = tap

    def forward(self, inputs) -> dict[str, torch.Tensor]:
        values = self.recorder.collect(run_model(self.student, inputs))
        for name, tap in self.connector_inputs.items():
            values[f"{name}<-{tap}"] = self.connectors[name](values[tap])
        return values


def modules_before(model: nn.Module, tap: str, batch) -> set[int]:
    """Ids of the parameters of the modules that run before ``tap``'s module finishes (one forward of ``batch``).

    Parameters of modules that run later cannot affect the tap's value; this is how
    "the student up to the guided layer" is found without knowing the architecture.
    """
    spec = parse_tap(tap, model)
    if spec.kind != "module":
        raise DistillError(f"train_up_to must name a module of the student, got {tap!r}")
    modules = dict(model.named_modules())
    target = modules[spec.target]
    finished: list[nn.Module] = []  # modules in the order their forward returned
    started_at: list[int] = []  # how many had returned when the target's forward began
    handles = [m.register_forward_hook(lambda m, i, o: finished.append(m)) for m in modules.values()]
    handles.append(target.register_forward_pre_hook(lambda m, i: started_at.append(len(finished))))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            run_model(model, batch["input"])
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    if target not in finished:
        raise DistillError(f"train_up_to: module {spec.target!r} did not run in the forward pass")
    # the module's input depends on what returned before it began; its output also on its own submodules
    used = finished[: started_at[0]] if spec.capture == "input" else finished[: finished.index(target) + 1]
    return {id(p) for m in used for p in m.parameters(recurse=False)}


def _make_accelerator(cfg: TrainConfig) -> Accelerator:
    # Accelerate keeps one process-wide state; a second Distiller in the same process with another
    # precision (a bf16 student after a float32 teacher) needs that state cleared first.
    # The process group (PartialState) is kept.
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision", cfg.mixed_precision) != cfg.mixed_precision:
        AcceleratorState._reset_state()
        GradientState._reset_state()
    # Several processes without CUDA (torchrun on CPUs) need cpu=True for Accelerate to use gloo.
    multi_cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    return Accelerator(cpu=cfg.cpu or multi_cpu, mixed_precision=cfg.mixed_precision,
                       gradient_accumulation_steps=cfg.grad_accum, step_scheduler_with_optimizer=False)


def _build_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
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


class Distiller:
    """Train ``student`` to minimise a weighted sum of :class:`~distill.terms.Term` s.

    Args:
        student: any ``nn.Module``; left unmodified (taps use forward hooks).
        teacher: a trained ``nn.Module`` (frozen here), several as ``{name: module}`` (terms then
            name teacher taps ``"name/tap"``), a teacher signal, or ``None`` for terms that need
            no teacher (training from scratch).
        terms: the loss terms; default ``[Term("ce")]``.
        augment: an optional batch transform ``f(inputs, generator) -> inputs``
            applied before teacher and student see the batch, so both see the same view.
        run_dir: where metrics and checkpoints go; ``None`` keeps everything in memory.
        config: a :class:`TrainConfig`; keyword arguments override its fields.
        trust_pickle: load checkpoint state that holds arbitrary Python objects (which can run
            code); off by default, so only tensors and plain containers are read.
        train_up_to: a student tap (module path or alias); only the student parameters used
            to compute it are trained (FitNets' first stage), the rest stay as they are.
            Connectors and loss-term modules always train.
        teacher_outputs: with ``cache_teacher``, a :class:`~distill.cache.TeacherOutputs` shared by
            several runs on the same teacher and training set, so the teacher runs over it once.

    Example::

        d = Distiller(student, teacher, [Term("ce", 0.5), Term("kd", 0.5, temperature=4)], epochs=5)
        d.fit(train, val)
        print(d.evaluate(test))
        d.save("student.safetensors")
    """

    def __init__(self, student: nn.Module, teacher=None, terms: list[Term] | None = None, *,
                 augment: Callable | None = None, run_dir: str | os.PathLike | None = None,
                 config: TrainConfig | None = None, trust_pickle: bool = False, train_up_to: str | None = None,
                 teacher_outputs: TeacherOutputs | None = None, **overrides):
        self.config = TrainConfig(**{**(config or TrainConfig()).model_dump(), **overrides})
        self.student = student
        self.terms = unique_names(list(terms) if terms else [Term("ce")])
        self.augment = augment
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.trust_pickle = trust_pickle
        self.train_up_to = train_up_to
        self.teacher_outputs = teacher_outputs
        self.history: list[dict] = []
        self.model: StudentWithTaps | None = None
        self._train_set = None
        teacher_taps = [tap for t in self.terms for tap in t.teacher_taps]
        if teacher_taps and teacher is None:
            names = ", ".join(t.name for t in self.terms if t.teacher is not None)
            raise DistillError(f"terms {names} need a teacher, but teacher=None")
        if isinstance(teacher, (nn.Module, Mapping)):
            several = isinstance(teacher, (Mapping, nn.ModuleDict))
            student_params = {id(p) for p in student.parameters()}
            models = list(teacher.values()) if several else [teacher]
            if any(id(p) in student_params for m in models for p in m.parameters()):
                raise DistillError("teacher and student share parameters; pass a separate (copied) teacher")
            teacher = TeacherEnsemble(teacher, teacher_taps) if several else LiveTeacher(teacher, teacher_taps)
        self.teacher = teacher
        self.accelerator = _make_accelerator(self.config)

    # ----------------------------------------------------------------- set-up
    def _probe(self, batch) -> StudentWithTaps:
        """Run one batch through both models: check every tap and term, build connectors."""
        model = StudentWithTaps(self.student, [tap for t in self.terms for tap in t.student_taps])
        for term in self.terms:
            if isinstance(term.fn, nn.Module):
                model.term_modules[term.name] = term.fn.to(self.accelerator.device)
        # the probe must not change stateful terms (a queue would hold a probe batch)
        term_states = {name: copy.deepcopy(m.state_dict()) for name, m in model.term_modules.items()}
        was_training = self.student.training
        self.student.eval()
        try:
            with torch.no_grad():
                s_values = model(batch["input"])
                t_values = self.teacher(batch) if self.teacher is not None else {}
                for term in self.terms:
                    if term.connector:
                        source = s_values[term.student]
                        connector = build_connector(source.shape, t_values[term.teacher].shape, term.connector)
                        model.add_connector(term.name, term.student, connector.to(source.device))
                # terms run with autograd on: some differentiate inside (a student's Grad-CAM map)
                with torch.enable_grad():
                    s_values = model(batch["input"])
                    for term in self.terms:
                        self._probe_term(term, s_values, t_values, batch)
        except (ValueError, KeyError) as err:
            if isinstance(err, DistillError):
                raise
            raise DistillError(str(err).strip("'\"")) from err
        finally:
            self.student.train(was_training)
            for name, state in term_states.items():
                # strict=False: a term module that built its layers on the probe batch keeps them
                model.term_modules[name].load_state_dict(state, strict=False)
        return model

    @staticmethod
    def _probe_term(term: Term, s_values: dict, t_values: dict, batch) -> None:
        try:
            value = term(s_values, t_values, batch)
        except Exception as err:  # report which term failed, in one line
            raise DistillError(f"term {term.name!r}: {err}") from err
        if value.dim() != 0:
            raise DistillError(f"term {term.name!r} must return a scalar, got shape {tuple(value.shape)}")

    def restore(self, train) -> None:
        """Load the finished training of this run (its last checkpoint) without training again.

        Builds connectors and loss-term modules on one batch of ``train`` as :meth:`fit` would,
        then loads their weights and the student's from ``run_dir``'s last checkpoint.
        """
        checkpoint = self._last_checkpoint()
        device = self.accelerator.device
        self.student.to(device)
        if self.teacher is not None:
            self.teacher.to(device)
        self.model = self._probe(self._first_batch(as_dataset(train), device))
        load_model(self.model, str(checkpoint / "model.safetensors"), device=str(device))
        self.history = json.loads((checkpoint / "history.json").read_text())

    def _first_batch(self, train, device) -> dict:
        first = collate([train[i] for i in range(min(len(train), self.config.batch_size))])
        if hasattr(train, "make_batch"):  # a synthetic set makes its batches when they are used
            first = train.make_batch(first)
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in first.items()}

    def _last_checkpoint(self) -> Path:
        if self.run_dir is None:
            raise DistillError("resume needs a run_dir")
        found = checkpoints_in(self.run_dir)
        if not found:
            raise DistillError(f"no checkpoint to resume from in {self.run_dir / 'checkpoints'}")
        return found[-1]

    def _loader(self, dataset, batch_size: int, shuffle: bool) -> DataLoader:
        cfg = self.config
        sampler = EpochSampler(len(dataset), seed=cfg.seed, shuffle=shuffle)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate,
                          num_workers=cfg.num_workers, pin_memory=torch.cuda.is_available())

    def _cached_teacher(self, train, device) -> CachedTeacher:
        cfg = self.config
        if self.augment is not None:
            raise DistillError("cache_teacher needs the same inputs every epoch, but augmentation changes them; "
                               "drop the augmentation or set cache_teacher to false")
        if getattr(train, "synthetic", False):
            raise DistillError("cache_teacher needs the same inputs every epoch, but a synthetic training set "
                               "makes new ones every batch; set cache_teacher to false")
        temperatures: dict[str, set] = {}
        for term in self.terms:
            for tap in term.teacher_taps:
                temperatures.setdefault(tap, set()).add(float(term.params.get("temperature", 1.0)))
        outputs = self.teacher_outputs
        if outputs is None:
            outputs = TeacherOutputs(cfg.teacher_cache_dir, cfg.teacher_top_k)
        if outputs.top_k is not None and len(temperatures.get("logits", ())) > 1:
            raise DistillError(f"top-{outputs.top_k} cached logits are rebuilt for one temperature, but the terms read "
                               f"them at {sorted(temperatures['logits'])}")
        try:
            return CachedTeacher(self.teacher, train, cfg.eval_batch_size, device, cfg.progress, outputs=outputs,
                                 temperatures={tap: min(ts) for tap, ts in temperatures.items()})
        except CacheMismatch as err:
            raise DistillError(str(err)) from None

    # ---------------------------------------------------------------- training
    def fit(self, train, val=None, *, resume: bool = False) -> list[dict]:
        """Train for ``config.epochs`` epochs; evaluate on ``val`` after each. Returns the per-epoch history.

        With a ``run_dir``, the directory is locked for this process while it trains.
        """
        if self.run_dir is None or not self.accelerator.is_main_process:
            return self._fit(train, val, resume)
        try:
            lock = RunLock(self.run_dir).acquire()
        except RunDirLocked as err:
            raise DistillError(str(err)) from None
        except OSError as err:
            raise DistillError(f"cannot write the run directory {self.run_dir}: {err.strerror}") from None
        try:
            return self._fit(train, val, resume)
        finally:
            lock.release()

    def _fit(self, train, val, resume: bool) -> list[dict]:
        cfg, acc = self.config, self.accelerator
        train = self._train_set = as_dataset(train)
        val = as_dataset(val) if val is not None else None
        if len(train) == 0:
            raise DistillError("the training set is empty")
        device = acc.device
        self.student.to(device)
        if self.teacher is not None:
            self.teacher.to(device)

        if cfg.cache_teacher and isinstance(self.teacher, (LiveTeacher, TeacherEnsemble)):
            self.teacher = self._cached_teacher(train, device)
        first = self._first_batch(train, device)
        if cfg.channels_last:
            self.student.to(memory_format=torch.channels_last)
        model = self._probe(first)
        params = [p for p in model.parameters() if p.requires_grad]
        if self.train_up_to is not None:
            frozen = {id(p) for p in self.student.parameters()} - modules_before(self.student, self.train_up_to, first)
            params = [p for p in params if id(p) not in frozen]
        optimizer = _build_optimizer(params, cfg)
        groups = update_groups(self.terms)
        if len(groups) > 1 and cfg.grad_accum > 1:
            raise DistillError("terms in several update groups (alternating updates, e.g. DML) step the optimiser "
                               "once per group and batch: use grad_accum 1")
        loader = self._loader(train, cfg.batch_size, shuffle=True)
        raw = model
        if cfg.compile:  # taps are forward hooks registered before compiling, which dynamo traces through
            model = torch.compile(model, fullgraph=cfg.compile == "fullgraph")
        model, optimizer, loader = acc.prepare(model, optimizer, loader)
        # after prepare: under several processes each one steps through its share of the batches
        steps_per_epoch = max(1, math.ceil(len(loader) / cfg.grad_accum))
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(cfg, step, steps_per_epoch))
        self.model = raw

        start_epoch, global_step, position = 0, 0, None
        if resume:
            start_epoch, global_step, position = self._load_checkpoint(optimizer, scheduler)
        elif self.run_dir is not None and acc.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "metrics.jsonl").write_text("")

        aug_gen = torch.Generator(device="cpu")
        make_batch = getattr(train, "make_batch", None)
        for epoch in range(start_epoch, cfg.epochs):
            model.train()
            loader.set_epoch(epoch)
            aug_gen.manual_seed(cfg.seed * 1_000_003 + epoch + 7)
            sums = {t.name: 0.0 for t in self.terms} | {"loss": 0.0}
            count, skipped, started, first = 0, 0, time.perf_counter(), 0
            batches, rng_to_restore = loader, None
            if position is not None:  # resuming inside this epoch
                first, sums, count, skipped = position["batch"], position["sums"], position["count"], position["skipped"]
                aug_gen.set_state(position["aug_rng"])
                batches, rng_to_restore, position = acc.skip_first_batches(loader, first), position["torch_rng"], None
            bar = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, initial=first, total=len(loader),
                       disable=not (cfg.progress and acc.is_local_main_process), dynamic_ncols=True)
            for i, batch in enumerate(bar, start=first):
                if rng_to_restore is not None:
                    # Creating the data iterator draws from the torch RNG; an uninterrupted run drew that at the
                    # start of the epoch, before the saved state, so the state is put back only now.
                    torch.set_rng_state(rng_to_restore)
                    rng_to_restore = None
                if make_batch is not None:
                    batch = make_batch(batch)
                if self.augment is not None:
                    batch = dict(batch, input=self.augment(batch["input"], aug_gen))
                if cfg.channels_last and isinstance(batch["input"], torch.Tensor) and batch["input"].dim() == 4:
                    batch = dict(batch, input=batch["input"].contiguous(memory_format=torch.channels_last))
                progress = epoch + i / len(loader)
                with acc.accumulate(model):
                    t_values = self.teacher(batch) if self.teacher is not None else {}
                    parts, loss = self._step(model, groups, batch, t_values, optimizer, progress, epoch, i,
                                             global_step)
                    if parts is None:  # a non-finite loss, skipped (train.nonfinite: skip)
                        skipped += 1
                        continue
                    if acc.sync_gradients:
                        scheduler.step()
                        global_step += 1
                for name, value in parts.items():
                    sums[name] += float(value.detach())
                sums["loss"] += float(loss.detach())
                count += 1
                if (acc.sync_gradients and cfg.checkpoint_every and global_step % cfg.checkpoint_every == 0
                        and i + 1 < len(loader)):
                    self._save_checkpoint(epoch, global_step, optimizer, scheduler, position={
                        "batch": i + 1, "sums": sums, "count": count, "skipped": skipped,
                        "aug_rng": aug_gen.get_state(), "torch_rng": torch.get_rng_state()})
                if acc.sync_gradients and global_step % cfg.log_every == 0:
                    self._log({"event": "step", "epoch": epoch + 1, "step": global_step,
                               "lr": scheduler.get_last_lr()[0], "loss": float(loss.detach()),
                               **{f"loss/{k}": float(v.detach()) for k, v in parts.items()}})
                bar.set_postfix(loss=f"{sums['loss'] / count:.4f}", refresh=False)
            bar.close()
            record = {"event": "epoch", "epoch": epoch + 1, "step": global_step,
                      "lr": scheduler.get_last_lr()[0], "time": time.perf_counter() - started,
                      **{("train/loss" if k == "loss" else f"train/{k}"): v / max(1, count) for k, v in sums.items()}}
            if skipped:
                record["skipped_steps"] = skipped
            if val is not None and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
                record |= {f"val/{k}": v for k, v in self.evaluate(val).items()}
            self.history.append(record)
            self._log(record)
            if cfg.progress and acc.is_local_main_process:
                val_text = f"  val acc {record['val/accuracy']:.2f}%" if "val/accuracy" in record else ""
                tqdm.write(f"  epoch {epoch + 1}/{cfg.epochs}  loss {record['train/loss']:.4f}{val_text}"
                           f"  ({record['time']:.1f}s)")
            self._save_checkpoint(epoch + 1, global_step, optimizer, scheduler)
        if self.run_dir is not None and acc.is_main_process:
            self.save(self.run_dir / "student.safetensors")
            summary = {"epochs": cfg.epochs, "terms": [repr(t) for t in self.terms],
                       "final": self.history[-1] if self.history else {}}
            atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2))
        return self.history

    def _step(self, model, groups, batch, t_values, optimizer, progress, epoch, i, global_step):
        """Forward, backward and optimiser step for each update group of terms; returns the terms' values
        and the total loss, or ``(None, None)`` when a non-finite loss was skipped."""
        cfg, acc = self.config, self.accelerator
        parts, total = {}, 0.0
        for terms in groups:  # one group unless a method updates parts of the student in turn (DML)
            with acc.autocast():
                s_values = model(batch["input"])
            values = {t.name: t(s_values, t_values, batch) for t in terms}
            loss = sum(t.weight_at(progress, cfg.epochs) * values[t.name] for t in terms)
            if not self._finite(loss):
                self._nonfinite(values, loss, epoch, i, global_step)
                optimizer.zero_grad(set_to_none=True)
                return None, None
            acc.backward(loss)
            if acc.sync_gradients and cfg.clip_grad_norm:
                acc.clip_grad_norm_(model.parameters(), cfg.clip_grad_norm)
            optimizer.step()  # parameters without a gradient (other groups') are left alone
            optimizer.zero_grad(set_to_none=True)
            parts |= values
            total = total + loss.detach()
        return parts, total

    def _finite(self, loss: torch.Tensor) -> bool:
        bad = (~torch.isfinite(loss.detach())).float()
        if self.accelerator.num_processes > 1:  # every process must skip or stop together
            bad = self.accelerator.reduce(bad, "sum")
        return not bool(bad)

    def _nonfinite(self, parts: dict, loss: torch.Tensor, epoch: int, batch: int, step: int) -> None:
        """Stop with the offending term's name, or (``nonfinite: skip``) log the skipped step."""
        culprits = [f"{name} = {float(v.detach())}" for name, v in parts.items() if not torch.isfinite(v.detach())]
        what = "term " + ", ".join(culprits) if culprits else f"the weighted sum of the terms = {float(loss.detach())}"
        where = f"epoch {epoch + 1}, batch {batch + 1}"
        if self.config.nonfinite == "skip":
            self._log({"event": "skipped", "epoch": epoch + 1, "batch": batch + 1, "step": step, "reason": what})
            return
        kept = "; the last checkpoint is kept" if self.run_dir is not None else ""
        raise NonFiniteLoss(f"non-finite loss at {where}: {what}{kept} (lower the learning rate, clip gradients, "
                            "or set nonfinite: skip)")

    def evaluate(self, dataset, batch_size: int | None = None) -> dict[str, float]:
        """Accuracy and cross-entropy of the student's logits on ``dataset``."""
        return evaluate(self.student, dataset, batch_size or self.config.eval_batch_size, self.accelerator)

    # ------------------------------------------------------- logs and state
    def _log(self, record: dict) -> None:
        if self.run_dir is not None and self.accelerator.is_main_process:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def trainable_state(self) -> nn.Module:
        """The module holding the student and its connectors (what checkpoints save)."""
        if self.model is None:
            raise DistillError("nothing trained yet: call fit() first")
        return self.model

    def save(self, path: str | os.PathLike) -> None:
        """Write the student's weights to ``path`` (safetensors) and its connectors beside it."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_save_model(self.accelerator.unwrap_model(self.student), path)
        if self.model is not None and len(self.model.connectors):
            atomic_save_model(self.model.connectors, path.with_name(path.stem + ".connectors.safetensors"))

    def _save_checkpoint(self, epoch: int, step: int, optimizer, scheduler, position: dict | None = None) -> None:
        """Save everything needed to continue after ``epoch`` finished epochs and ``step`` optimiser steps
        (``position``: where inside the next epoch, for checkpoints taken within an epoch)."""
        if self.run_dir is None or not self.accelerator.is_main_process:
            return
        state = {
            "epoch": epoch, "step": step, "position": position,
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy_rng": _numpy_state_to_builtin(np.random.get_state()),
            "python_rng": _to_lists(random.getstate()),
        }
        if hasattr(self._train_set, "state_dict"):  # a training set with its own state (a data-free generator)
            state["train_set"] = self._train_set.state_dict()

        def write(tmp: Path) -> None:
            save_model(self.model, str(tmp / "model.safetensors"))
            torch.save(state, tmp / "state.pt")
            (tmp / "history.json").write_text(json.dumps(self.history))

        checkpoints = self.run_dir / "checkpoints"
        atomic_write_dir(checkpoints / f"step-{step:08d}", write)
        for old in checkpoints_in(self.run_dir)[: -self.config.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)

    def _load_checkpoint(self, optimizer, scheduler) -> tuple[int, int, dict | None]:
        ckpt = self._last_checkpoint()
        load_model(self.model, str(ckpt / "model.safetensors"), device=str(self.accelerator.device))
        try:
            state = torch_load(ckpt / "state.pt", self.trust_pickle)
        except UnsafeFile as err:
            raise DistillError(str(err)) from None
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"]:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        np.random.set_state(_numpy_state_from_builtin(state["numpy_rng"]))
        random.setstate(_to_tuples(state["python_rng"]))
        if "train_set" in state:
            self._train_set.load_state_dict(state["train_set"])
        self.history = json.loads((ckpt / "history.json").read_text())
        if self.accelerator.is_main_process:
            metrics = self.run_dir / "metrics.jsonl"
            lines = metrics.read_text().splitlines() if metrics.exists() else []
            kept = [line for line in lines if line and _before(json.loads(line), state)]
            atomic_write_text(metrics, "".join(line + "\n" for line in kept))
        return state["epoch"], state["step"], state["position"]


def checkpoints_in(run_dir: Path) -> list[Path]:
    """The finished checkpoints of a run directory, oldest first (a ``.tmp`` one was cut off while written;
    one without its files, e.g. emptied by a copy that kept only some files, cannot be resumed from)."""
    return sorted(p for p in (Path(run_dir) / "checkpoints").glob("step-*") if not p.name.endswith(".tmp")
                  and (p / "model.safetensors").is_file() and (p / "state.pt").is_file())


def _before(record: dict, state: dict) -> bool:
    """Whether a metrics record was written before the checkpoint ``state`` was taken."""
    if record.get("event") == "epoch":
        return record["epoch"] <= state["epoch"]
    return record.get("step", 0) <= state["step"] and record.get("epoch", 0) <= state["epoch"] + 1


def _to_lists(value):
    return [_to_lists(v) for v in value] if isinstance(value, (tuple, list)) else value


def _to_tuples(value):
    return tuple(_to_tuples(v) for v in value) if isinstance(value, list) else value


def _numpy_state_to_builtin(state) -> list:
    name, keys, pos, has_gauss, cached = state
    return [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]


def _numpy_state_from_builtin(state) -> tuple:
    name, keys, pos, has_gauss, cached = state
    return name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached
