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

import difflib
import json
import math
import os
import time
from collections.abc import Callable, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.utils import DistributedType, send_to_device
from safetensors.torch import load_model
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from distill import distributed
from distill.cache import CacheMismatch, CachedTeacher, TeacherOutputs
from distill.data import ArrayBatches, ArrayDataset, EpochSampler, as_dataset, channels_last_input, read_items
from distill.engine.checkpoint import last_checkpoint, load_checkpoint, save_checkpoint
from distill.engine.config import (DistillError, busy_machine_note, NonFiniteLoss, TrainConfig, build_optimizer, lr_factor,
                                   make_accelerator)
from distill.engine.probe import StudentWithTaps, check_inputs, forward, modules_before, probe
from distill.errors import cause, describe, excerpt, samples
from distill.evaluation import evaluate
from distill.fileio import atomic_save_model, atomic_write_text
from distill.lock import RunDirLocked, RunLock
from distill.tasks import Task, TaskError, class_label_message, class_label_problem, collator, get_task
from distill.teacher import LiveTeacher, TeacherEnsemble, freeze, run_model, thaw
from distill.terms import Term, unique_names, update_groups


@dataclass
class _Training:
    """What one ``fit`` steps: the (prepared) student, optimiser, schedule, loader, term groups and step count."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loader: DataLoader
    groups: list[list[Term]]
    step: int = 0
    # no loss scaler and plain data parallelism: backward and the optimiser step go straight to torch, past
    # Accelerate's wrappers (which look up optional packages on every step: ~0.4 ms, a fifth of a small step)
    plain: bool = False


class Distiller:
    """Train ``student`` to minimise a weighted sum of :class:`~distill.terms.Term` s.

    Args:
        student: any ``nn.Module``; left unmodified (taps use forward hooks).
        teacher: a trained ``nn.Module`` (frozen here), several as ``{name: module}`` (terms then
            name teacher taps ``"name/tap"``), a teacher signal, or ``None`` for terms that need
            no teacher (training from scratch).
        terms: the loss terms; default: the task's own loss (``[Term("ce")]`` for classification).
        task: what kind of problem this is (:mod:`distill.tasks`): a name (``"classification"``, the default,
            ``"regression"``, ``"multilabel"``, ``"tokens"``, ``"embedding"``) or a ``Task`` object (to give it
            options: ``get_task("tokens", tokenizer=tok)``). It collates and pads batches, gives the
            student's own loss and the validation metrics.
        collate_fn: your own function from a list of dataset items to a batch (a dict of tensors, HF style
            or ``{"input", "label"}``), used for training, evaluation and the teacher cache.
        augment: an optional batch transform ``f(inputs, generator) -> inputs``
            applied before teacher and student see the batch, so both see the same view. One with
            ``whole_batch = True`` is called on the whole batch (labels too) and one with
            ``attach(*models)`` hooks the student and teachers while ``fit`` runs (:class:`TokenMixUp`).
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
                 task: str | Task | None = None, collate_fn: Callable | None = None,
                 augment: Callable | None = None, run_dir: str | os.PathLike | None = None,
                 config: TrainConfig | None = None, trust_pickle: bool = False, train_up_to: str | None = None,
                 teacher_outputs: TeacherOutputs | None = None, hyperparameters: Mapping | None = None,
                 **overrides):
        self.config = _config(config, overrides)
        _check_arguments(student, teacher, terms, collate_fn=collate_fn, augment=augment, run_dir=run_dir,
                         trust_pickle=trust_pickle, train_up_to=train_up_to)
        self.student = student
        self.task = get_task(task)
        self.collate = collator(self.task, collate_fn)
        self.terms = unique_names(list(terms) if terms else self.task.default_terms())
        for term in self.terms:
            if term.softmax and not self.task.distribution:
                raise DistillError(f"term {term.name!r} reads the outputs as a softmax distribution over classes, but "
                                   f"the {self.task.name} task's outputs are not one (independent sigmoids, values or "
                                   "vectors): use a loss for them (e.g. MSE to the teacher) or task='classification'")
        self.augment = augment
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.trust_pickle = trust_pickle
        self.train_up_to = train_up_to
        self.teacher_outputs = teacher_outputs
        self.hyperparameters = dict(hyperparameters or {})  # for the trackers, beside the settings and terms
        self.history: list[dict] = []
        self.model: StudentWithTaps | None = None
        self._train_set = None
        self._move_batches = False
        self._counts_items = {t.name: "num_items" in t.batch_keywords for t in self.terms}
        teacher_taps = [tap for t in self.terms for tap in t.teacher_taps]
        if teacher_taps and teacher is None:
            names = ", ".join(t.name for t in self.terms if t.teacher is not None)
            raise DistillError(f"terms {names} need a teacher, but teacher=None")
        self.reference = None  # the teacher model that unlabelled validation is compared with
        if isinstance(teacher, (nn.Module, Mapping)):
            several = isinstance(teacher, (Mapping, nn.ModuleDict))
            student_params = {id(p) for p in student.parameters()}
            models = list(teacher.values()) if several else [teacher]
            if any(id(p) in student_params for m in models for p in m.parameters()):
                raise DistillError("teacher and student share parameters; pass a separate (copied) teacher")
            self.reference = models[0]
            teacher = TeacherEnsemble(teacher, teacher_taps) if several else LiveTeacher(teacher, teacher_taps)
        self.teacher = teacher
        self.accelerator = make_accelerator(self.config, self.run_dir)

    # ----------------------------------------------------------------- set-up
    def restore(self, train) -> None:
        """Load the finished training of this run (its last checkpoint) without training again.

        Builds connectors and loss-term modules on one batch of ``train`` as :meth:`fit` would,
        then loads their weights and the student's from ``run_dir``'s last checkpoint.
        """
        checkpoint = last_checkpoint(self.run_dir)
        device = self.accelerator.device
        self.student.to(device)
        if self.teacher is not None:
            self.teacher.to(device)
        first = self._first_batch(as_dataset(train, "train"), device)
        self.model = probe(self.student, self.terms, self.teacher, first, device)
        load_model(self.model, str(checkpoint / "model.safetensors"), device=str(device))
        self.history = json.loads((checkpoint / "history.json").read_text())

    def _collate_for(self, dataset) -> Callable:
        # a synthetic set (data-free) serves index batches and makes their inputs itself (make_batch)
        return _index_batch if getattr(dataset, "synthetic", False) else self.collate

    def _first_batch(self, train, device) -> dict:
        with _reading("the first training batch"):
            first = self._collate_for(train)(read_items(train, range(min(len(train), self.config.batch_size))))
            if hasattr(train, "make_batch"):  # a synthetic set makes its batches when they are used
                first = self.task.prepare(train.make_batch(first))
        if not isinstance(first, Mapping) or "input" not in first:
            raise DistillError(f"the first training batch is {describe(first)}, not a batch of inputs: check the "
                               "dataset's items and collate_fn")
        return send_to_device(first, device)

    def _loader(self, dataset, batch_size: int, shuffle: bool, check=None) -> DataLoader | ArrayBatches:
        cfg = self.config
        lengths = None
        if shuffle and cfg.group_by_length:
            lengths = getattr(dataset, "lengths", None)
            if lengths is None:
                raise DistillError(f"group_by_length needs a training set with a 'lengths' attribute (one length per "
                                   f"sample); {type(dataset).__name__} has none")
        sampler = EpochSampler(len(dataset), seed=cfg.seed, shuffle=shuffle, lengths=lengths, batch_size=batch_size)
        collate = self._collate_for(dataset)
        if check is not None:  # class labels checked per batch, on the CPU, where the loader collates
            collate = _CheckedLabels(collate, *check)
        if isinstance(dataset, ArrayDataset) and cfg.num_workers == 0 and self.accelerator.num_processes == 1:
            return ArrayBatches(dataset, sampler, batch_size, collate)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate,
                          num_workers=cfg.num_workers, pin_memory=torch.cuda.is_available())

    def _check_data(self, train, val, first: dict):
        """The data checked against the student before training: NaN inputs and class labels over the whole
        of an in-memory set (cheap), the first validation batch as evaluation will read it. Returns what the
        training loader must still check per batch, ``(width, per_position)``, or ``None``."""
        width = None
        if self.task.class_labels and isinstance(first.get("label"), torch.Tensor):
            was_training = self.student.training
            self.student.eval()
            try:
                with torch.no_grad():
                    output = forward(lambda: run_model(self.student, first["input"]), self.student, first,
                                     "the student")
                    pred = self.task.prediction(output, first)
            finally:
                self.student.train(was_training)
            width = pred.shape[-1] if isinstance(pred, torch.Tensor) and pred.dim() else None
        checked = None
        for dataset, role in ((train, "training set"), (val, "validation set")):
            if dataset is None:
                continue
            if isinstance(dataset, ArrayDataset):
                check_inputs({"input": dataset.inputs}, role, indices=range(len(dataset)))
                if width is not None and dataset.labels is not None:
                    problem = class_label_problem(self.task.check_labels(dataset.labels), width)
                    if problem is not None:
                        row, value = problem
                        raise TaskError(f"{role}: " + class_label_message(value, row, width, self.task.per_position))
            elif width is not None and role == "training set":
                checked = (width, self.task.per_position)
        if val is not None:
            self._check_first_val_batch(val)
        return checked

    def _check_first_val_batch(self, val) -> None:
        """The first validation batch scored as :meth:`evaluate` will score it, so its mistakes show before
        training rather than after the first epoch."""
        device = self.accelerator.device
        with _reading("the validation set's first batch"):
            batch = send_to_device(self.collate(read_items(val, range(min(len(val), self.config.batch_size)))),
                                   device)
        check_inputs(batch, "validation set")
        if "label" not in batch:
            return
        was_training = self.student.training
        self.student.eval()
        try:
            with _one_line("validation set", "validation set: scoring its first batch failed",
                           "check its inputs and targets against the training set's"), torch.no_grad():
                try:
                    pred = self.task.prediction(run_model(self.student, batch["input"]), batch)
                    self.task.add_batch({}, pred, batch, None)
                except NotImplementedError:  # a task without labelled metrics of its own
                    pass
        finally:
            self.student.train(was_training)

    def _cached_teacher(self, train, device) -> CachedTeacher:
        cfg = self.config
        if self.augment is not None:
            raise DistillError("cache_teacher needs the same inputs every epoch, but augmentation changes them; "
                               "drop the augmentation or set cache_teacher to false")
        if getattr(train, "synthetic", False):
            raise DistillError("cache_teacher needs the same inputs every epoch, but a synthetic training set "
                               "makes new ones every batch; set cache_teacher to false")
        temperatures: dict[str, set] = {}
        logit_taps = set()  # taps some term reads at a temperature: logits, kept as top-k when asked
        for term in self.terms:
            temperature = term.param("temperature", None)
            for tap in term.teacher_taps:
                temperatures.setdefault(tap, set()).add(float(temperature if temperature is not None else 1.0))
                if temperature is not None:
                    logit_taps.add(tap)
        outputs = self.teacher_outputs
        if outputs is None:
            outputs = TeacherOutputs(cfg.teacher_cache_dir, cfg.teacher_top_k)
        if outputs.top_k is not None:
            if not logit_taps:
                raise DistillError(f"teacher_top_k keeps the top-{outputs.top_k} teacher logits, but no term reads "
                                   "teacher logits at a temperature; drop teacher_top_k")
            for tap, ts in temperatures.items():
                if len(ts) > 1:
                    raise DistillError(f"top-{outputs.top_k} cached {tap!r} values are rebuilt for one temperature, "
                                       f"but the terms read them at {sorted(ts)}")
        try:
            return CachedTeacher(self.teacher, train, cfg.eval_batch_size, device, cfg.progress, outputs=outputs,
                                 temperatures={tap: min(ts) for tap, ts in temperatures.items()},
                                 collate_fn=self.collate, top_k_taps=logit_taps, channels_last=cfg.channels_last)
        except CacheMismatch as err:
            raise DistillError(str(err)) from None

    # ---------------------------------------------------------------- training
    def fit(self, train, val=None, *, resume: bool = False) -> list[dict]:
        """Train for ``config.epochs`` epochs; evaluate on ``val`` after each. Returns the per-epoch history.

        With a ``run_dir``, the directory is locked for this process while it trains.
        """
        if not isinstance(resume, bool):
            raise DistillError(f"resume must be True or False, got {excerpt(resume)}")
        with self._teacher_frozen(), self._augment_attached(), self._trackers_closed():
            if self.run_dir is None:
                return self._fit(train, val, resume)
            locks = []  # rank 0 holds the lock; a failure to take it stops every process, not only rank 0
            distributed.on_main(lambda: locks.append(self._lock()))
            try:
                return self._fit(train, val, resume)
            finally:
                for lock in locks:
                    lock.release()

    @contextmanager
    def _trackers_closed(self):
        """The experiment trackers flushed and closed after ``fit``, also when it fails. Not
        ``Accelerator.end_training()``, which also destroys the process group that the run's next training
        (the students, after the teacher) still needs."""
        try:
            yield
        finally:
            if self.accelerator.log_with and self.accelerator.is_main_process:
                for tracker in self.accelerator.trackers:
                    tracker.finish()

    @contextmanager
    def _augment_attached(self):
        """An augmentation that acts inside the models (``attach``: hooks, e.g. :class:`TokenMixUp`) hooked to
        the student and the live teachers while ``fit`` runs."""
        attach = getattr(self.augment, "attach", None)
        handles = attach(self.student, *(t.model for t in _live_teachers(self.teacher))) if attach else []
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    @contextmanager
    def _teacher_frozen(self):
        """The live teachers frozen while ``fit`` runs; their ``requires_grad`` and training mode put back after,
        also when the run fails, so a teacher can be trained again later."""
        models = [t.model for t in _live_teachers(self.teacher)]
        for model in models:
            freeze(model)
        try:
            yield
        finally:
            for model in models:
                thaw(model)

    def _lock(self) -> RunLock:
        try:
            return RunLock(self.run_dir).acquire()
        except RunDirLocked as err:
            raise DistillError(str(err)) from None
        except OSError as err:
            raise DistillError(f"cannot write the run directory {self.run_dir}: {err.strerror}") from None

    def _check_validation(self, val) -> None:
        if len(val) == 0:
            raise DistillError("the validation set is empty: pass a validation set with samples, or val=None")
        if not self._labelled(val) and self.reference is None:
            raise DistillError("the validation set has no targets and there is no teacher to compare the student "
                               "with: pass a labelled validation set, a teacher, or val=None")

    def _labelled(self, dataset) -> bool:
        with _reading("the validation set's first item"):
            return "label" in self.collate(read_items(dataset, [0]))

    def _fit(self, train, val, resume: bool) -> list[dict]:
        cfg, acc = self.config, self.accelerator
        train = self._train_set = as_dataset(train, "train")
        val = as_dataset(val, "val") if val is not None else None
        if len(train) == 0:
            raise DistillError("the training set is empty")
        if val is not None:
            self._check_validation(val)
        run = self._prepare(train, val)
        busy = busy_machine_note() if cfg.progress and acc.is_local_main_process and acc.device.type == "cpu" else None
        if busy:
            tqdm.write(busy)
        start_epoch, position = 0, None
        if resume:
            start_epoch, run.step, position, self.history = load_checkpoint(
                self.run_dir, self.model, run.optimizer, run.scheduler, acc.device, trust_pickle=self.trust_pickle,
                train_set=train, main_process=acc.is_main_process)
        elif self.run_dir is not None and acc.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "metrics.jsonl").write_text("")
        if acc.log_with:
            acc.init_trackers("distill", config=self._hyperparameters())
        for epoch in range(start_epoch, cfg.epochs):
            record = self._train_epoch(run, train, epoch, position)
            position = None
            if val is not None and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
                record |= {f"val/{k}": v for k, v in self.evaluate(val).items()}
            self.history.append(record)
            self._log(record)
            for hook in list(_EPOCH_HOOKS):
                hook(record, self)
            if cfg.progress and acc.is_local_main_process:
                tqdm.write(f"  epoch {epoch + 1}/{cfg.epochs}  loss {record['train/loss']:.4f}{self._val_text(record)}"
                           f"  ({record['time']:.1f}s, {torch.get_num_threads()} thread"
                           f"{'s' if torch.get_num_threads() != 1 else ''})")
            self._save_checkpoint(epoch + 1, run.step, run.optimizer, run.scheduler)
        if acc.num_processes > 1:  # every process keeps what rank 0 saves (BatchNorm statistics differ per process)
            distributed.broadcast_module(self.student)
        if self.run_dir is not None and acc.is_main_process:
            self.save(self.run_dir / "student.safetensors")
            summary = {"epochs": cfg.epochs, "terms": [repr(t) for t in self.terms], "task": self.task.name,
                       "final": self.history[-1] if self.history else {}}
            best = self.best()
            if best is not None:
                summary["best"] = best
            atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2))
        acc.wait_for_everyone()  # the run's files are complete for every process
        return self.history

    def _prepare(self, train, val=None) -> _Training:
        """Everything a run needs before its first step: the teacher's cache, the probed student with its
        connectors (the data checked against it), the optimiser, the loader and the schedule, prepared by
        Accelerate."""
        cfg, acc = self.config, self.accelerator
        device = acc.device
        self._move_batches = device.type != "cpu" and acc.num_processes == 1  # (a prepared loader moves them)
        self.student.to(device)
        if self.teacher is not None:
            self.teacher.to(device)
        if cfg.channels_last:  # the teacher too: its forward passes (and the cache fill) take the same inputs
            self.student.to(memory_format=torch.channels_last)
            if isinstance(self.teacher, (LiveTeacher, TeacherEnsemble)):
                self.teacher.model.to(memory_format=torch.channels_last)
        if cfg.cache_teacher and isinstance(self.teacher, (LiveTeacher, TeacherEnsemble)):
            try:
                self.teacher = self._cached_teacher(train, device)
            except DistillError:
                raise
            except Exception as err:  # the teacher run over the training set: its forward pass or the data
                raise DistillError(f"caching the teacher's outputs over the training set failed ({cause(err)}); "
                                   "check the teacher against the training inputs (shape, dtype)") from err
        if not any(p.requires_grad for p in self.student.parameters()) and not any(
                t.connector or isinstance(t.fn, nn.Module) for t in self.terms):
            raise DistillError("nothing to train: the student has no parameters that require gradients; pass a model "
                               "with trainable parameters (or set requires_grad back on)")
        first = self._first_batch(train, device)
        model = self.model = probe(self.student, self.terms, self.teacher, first, device)
        for term in self.terms:  # a weight function that cannot give a number fails now, not mid-run
            term.weight_at(0.0, cfg.epochs)
        checked = self._check_data(train, val, first)
        params = [p for p in model.parameters() if p.requires_grad]
        if self.train_up_to is not None:
            frozen = {id(p) for p in self.student.parameters()} - modules_before(self.student, self.train_up_to, first)
            params = [p for p in params if id(p) not in frozen]
        if not params:
            raise DistillError("nothing to train: the student (with its connectors and loss modules) has no "
                               "parameters that require gradients; pass a model with trainable parameters")
        optimizer = build_optimizer(params, cfg)
        groups = update_groups(self.terms)
        if len(groups) > 1 and cfg.grad_accum > 1:
            raise DistillError("terms in several update groups (alternating updates, e.g. DML) step the optimiser "
                               "once per group and batch: use grad_accum 1")
        loader = self._loader(train, cfg.batch_size, shuffle=True, check=checked)
        if cfg.compile:  # taps are forward hooks registered before compiling, which dynamo traces through
            model = torch.compile(model, fullgraph=cfg.compile == "fullgraph")
        if acc.num_processes > 1:  # each process steps through its share of the batches
            model, optimizer, loader = acc.prepare(model, optimizer, loader)
        else:  # one process: the plain loader (Accelerate's shard wrapper costs ~0.1 ms per batch); _ready moves
            model, optimizer = acc.prepare(model, optimizer)  # its batches to the device
        # after prepare: under several processes each one steps through its share of the batches
        steps_per_epoch = max(1, math.ceil(len(loader) / cfg.grad_accum))
        plain = acc.scaler is None and acc.distributed_type in (DistributedType.NO, DistributedType.MULTI_CPU,
                                                                 DistributedType.MULTI_GPU)
        # the schedule follows the optimiser that steps (the wrapped one shares its parameter groups)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer.optimizer if plain else optimizer,
                                                      lambda step: lr_factor(cfg, step, steps_per_epoch))
        return _Training(model, optimizer, scheduler, loader, groups, plain=plain)

    def _train_epoch(self, run: _Training, train, epoch: int, position: dict | None) -> dict:
        """One pass over the training set (from ``position`` when resuming inside it); its log record."""
        cfg, acc = self.config, self.accelerator
        loader = run.loader
        run.model.train()
        (loader if hasattr(loader, "set_epoch") else loader.sampler).set_epoch(epoch)
        aug_gen = torch.Generator(device="cpu").manual_seed(cfg.seed * 1_000_003 + epoch + 7)
        make_batch = getattr(train, "make_batch", None)
        sums = {t.name: 0.0 for t in self.terms} | {"loss": 0.0}
        count, skipped, started, first = 0, 0, time.perf_counter(), 0
        batches, rng_to_restore = loader, None
        if position is not None:  # resuming inside this epoch
            first, sums, count, skipped = position["batch"], position["sums"], position["count"], position["skipped"]
            aug_gen.set_state(position["aug_rng"])
            skipped_to = loader.skip_first(first) if isinstance(loader, ArrayBatches) else acc.skip_first_batches(
                loader, first)
            batches, rng_to_restore = skipped_to, position["torch_rng"]
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, initial=first, total=len(loader),
                   disable=not (cfg.progress and acc.is_local_main_process), dynamic_ncols=True)
        # what the loop is doing, for a one-line report of a failure (plain attributes: no cost per step)
        reading = "reading the batch (the dataset's items, the collate function)"
        self._doing, self._where = reading, (first, None)
        try:
            for window in _windows(enumerate(bar, start=first), cfg.grad_accum):
                if rng_to_restore is not None:
                    # Creating the data iterator draws from the torch RNG; an uninterrupted run drew that at the
                    # start of the epoch, before the saved state, so the state is put back only now.
                    torch.set_rng_state(rng_to_restore)
                    rng_to_restore = None
                self._where = (window[0][0], window[0][1].get("index") if isinstance(window[0][1], Mapping) else None)
                self._doing = "the augmentation" if self.augment is not None else "making the batch"
                window = [(i, self._ready(batch, make_batch, aug_gen)) for i, batch in window]
                last = window[-1][0]
                result = self._step(run, window, epoch, len(loader))
                self._doing, self._where = reading, (last + 1, None)
                if result is None:  # a non-finite loss, skipped (train.nonfinite: skip)
                    skipped += 1
                    continue
                parts, loss = result
                run.scheduler.step()
                run.step += 1
                for name, value in parts.items():
                    sums[name] += value
                sums["loss"] += loss
                count += len(window)
                self._doing = "writing a checkpoint or log"
                if cfg.checkpoint_every and run.step % cfg.checkpoint_every == 0 and last + 1 < len(loader):
                    self._save_checkpoint(epoch, run.step, run.optimizer, run.scheduler, position={
                        "batch": last + 1, "sums": sums, "count": count, "skipped": skipped,
                        "aug_rng": aug_gen.get_state(), "torch_rng": torch.get_rng_state()})
                if run.step % cfg.log_every == 0:
                    self._log({"event": "step", "epoch": epoch + 1, "step": run.step,
                               "lr": run.scheduler.get_last_lr()[0], "loss": loss / len(window),
                               **{f"loss/{k}": v / len(window) for k, v in parts.items()}})
                if not bar.disable and run.step % 10 == 0:  # formatting the bar's text every step costs
                    bar.set_postfix(loss=f"{sums['loss'] / count:.4f}", refresh=False)
                self._doing = reading
        except (NonFiniteLoss, KeyboardInterrupt):
            raise
        except Exception as err:
            raise self._failure(err, epoch) from err
        finally:
            bar.close()
        record = {"event": "epoch", "epoch": epoch + 1, "step": run.step,
                  "lr": run.scheduler.get_last_lr()[0], "time": time.perf_counter() - started,
                  **{("train/loss" if k == "loss" else f"train/{k}"): v / max(1, count) for k, v in sums.items()}}
        if skipped:
            record["skipped_steps"] = skipped
        return record

    def _failure(self, err: Exception, epoch: int) -> DistillError:
        """An exception raised while training, as one line: where (epoch, batch, samples), what failed, what to
        check. The original exception is chained (``--debug`` and ``__cause__`` show its traceback)."""
        batch, indices = self._where
        where = f"epoch {epoch + 1}, batch {batch + 1}{samples(indices)}"
        if isinstance(err, DistillError):
            return type(err)(f"{where}: {err}")
        doing = self._doing
        hint = {"reading": "check the dataset's items there and the collate function",
                "the student": "check the model against these inputs (shape, dtype)",
                "the teacher": "check the teacher against these inputs (shape, dtype)",
                "term": "check the loss function against these inputs",
                "the augmentation": "check the augment function",
                "the backward": "check the loss terms' operations",
                "the optimiser": "check the optimiser settings"}
        advice = next((v for k, v in hint.items() if doing.startswith(k)), "")
        return DistillError(f"{where}: {doing} failed ({cause(err)}); {advice}")

    def _ready(self, batch, make_batch, aug_gen) -> dict:
        """A loaded batch as the models see it: on the device, synthetic inputs made, augmented, in the memory
        format asked."""
        if self._move_batches:
            batch = send_to_device(batch, self.accelerator.device, non_blocking=True)
        if make_batch is not None:
            batch = self.task.prepare(make_batch(batch))
        if getattr(self.augment, "whole_batch", False):  # it changes labels too (TokenMixUp adds mixed rows)
            batch = self.augment(batch, aug_gen)
        elif self.augment is not None:
            batch = dict(batch, input=self.augment(batch["input"], aug_gen))
        return channels_last_input(batch) if self.config.channels_last else batch

    def _val_text(self, record: dict) -> str:
        metric, _ = self.task.selection("val/" + self.task.select in record)
        value = record.get(f"val/{metric}")
        if value is None:
            return ""
        return f"  val acc {value:.2f}%" if metric == "accuracy" else f"  val {metric} {value:.4g}"

    def best(self) -> dict | None:
        """The epoch record with the best validation score (the task's selecting metric and direction)."""
        scored = [r for r in self.history if any(k.startswith("val/") for k in r)]
        if not scored:
            return None
        metric, mode = self.task.selection(f"val/{self.task.select}" in scored[-1])
        key = f"val/{metric}"
        scored = [r for r in scored if key in r]
        if not scored:
            return None
        pick = max if mode == "max" else min
        record = pick(scored, key=lambda r: r[key])
        return {"epoch": record["epoch"], "metric": metric, "mode": mode, "value": record[key]}

    def _step(self, run: _Training, window: list, epoch: int, batches_per_epoch: int):
        """One optimiser step over a window of ``grad_accum`` micro-batches, for each update group of terms.

        Per-position terms that take ``num_items`` are normalised by the positions counted over the whole
        window (and every process), so accumulated and unaccumulated runs give the same gradients (TRL's
        ``num_items_in_batch``); the other terms are averaged over the window's micro-batches. Returns the
        terms' values and the total loss summed over the window, or ``None`` when a non-finite loss was skipped.
        """
        cfg, acc = self.config, self.accelerator
        model, optimizer = run.model, run.optimizer
        # past Accelerate's per-call wrappers where they do nothing (~0.3 ms a step on a small student)
        stepped = optimizer.optimizer if run.plain else optimizer
        autocast = acc.autocast if acc.mixed_precision != "no" else nullcontext
        accum, world = cfg.grad_accum, acc.num_processes
        num_items = self._num_items([batch for _, batch in window])
        extra = {"epoch": epoch} if num_items is None else {"epoch": epoch, "num_items": num_items}
        window = [(i, dict(batch, **extra)) for i, batch in window]  # batch keywords of the terms
        self._doing = "the teacher's forward pass"
        teacher_values = [self.teacher(batch) if self.teacher is not None else {} for _, batch in window]
        parts: dict[str, float] = {}
        total = 0.0
        for terms in run.groups:  # one group unless a method updates parts of the student in turn (DML)
            for n, ((i, batch), t_values) in enumerate(zip(window, teacher_values)):
                progress = epoch + i / batches_per_epoch
                last = n == len(window) - 1
                self._where = (i, batch.get("index"))
                with acc.no_sync(model) if not last else nullcontext():
                    self._doing = "the student's forward pass"
                    with autocast():
                        s_values = model(batch["input"])
                    values = {}
                    for t in terms:
                        self._doing = f"term {t.name!r}"
                        values[t.name] = t(s_values, t_values, batch)
                    # per-position terms are already divided by the window's count; DDP averages over processes
                    scale = {t.name: (world if num_items is not None and self._counts_items[t.name] else 1 / accum)
                             for t in terms}
                    loss = None
                    for t in terms:  # (a factor of exactly 1 skipped: the same numbers, fewer operations)
                        weight, value = t.weight_at(progress, cfg.epochs), values[t.name]
                        value = value * weight if weight != 1 else value
                        value = value * scale[t.name] if scale[t.name] != 1 else value
                        loss = value if loss is None else loss + value
                    # the step's one read of device values on the host: the loss and each term, for the
                    # finite check and the logged numbers
                    read = torch.stack([loss.detach().float(), *(values[t.name].detach().float() for t in terms)])
                    read = read.tolist()
                    if not self._finite(loss, read[0]):
                        self._nonfinite(values, loss, epoch, i, run.step, batch)
                        stepped.zero_grad(set_to_none=True)
                        return None
                    self._doing = "the backward pass"
                    if run.plain:
                        loss.backward()
                    else:
                        acc.backward(loss)
                # logged values: each term as a per-sample (per-position) mean of this micro-batch
                for t, value in zip(terms, read[1:]):
                    parts[t.name] = parts.get(t.name, 0.0) + value * (scale[t.name] * accum)
                total += read[0] * accum
            self._doing = "the optimiser step"
            if cfg.clip_grad_norm:
                acc.clip_grad_norm_(model.parameters(), cfg.clip_grad_norm)
            # parameters without a gradient (other groups') are left alone
            stepped.step()
            stepped.zero_grad(set_to_none=True)
            if cfg.max_norm:
                apply_max_norm(model, cfg.max_norm)
        return parts, total

    def _num_items(self, batches: list[dict]):
        """Positions that count in a window of micro-batches, over every process (None: no per-position mask)."""
        masks = [b.get("mask") for b in batches]
        if any(m is None for m in masks):
            return None
        count = torch.tensor(float(sum(int(m.sum()) for m in masks)), device=self.accelerator.device)
        if self.accelerator.num_processes > 1:
            count = self.accelerator.reduce(count, "sum")
        return max(1.0, float(count))

    def _finite(self, loss: torch.Tensor, value: float) -> bool:
        """Whether the loss (``value`` on this process) is finite on every process."""
        if self.accelerator.num_processes == 1:
            return math.isfinite(value)
        bad = (~torch.isfinite(loss.detach())).float()
        return not bool(self.accelerator.reduce(bad, "sum"))  # every process must skip or stop together

    def _nonfinite(self, parts: dict, loss: torch.Tensor, epoch: int, batch: int, step: int, data: dict) -> None:
        """Stop with the offending term's name (or the sample whose inputs hold NaN), or (``nonfinite: skip``)
        log the skipped step."""
        culprits = [f"{name} = {float(v.detach())}" for name, v in parts.items() if not torch.isfinite(v.detach())]
        what = "term " + ", ".join(culprits) if culprits else f"the weighted sum of the terms = {float(loss.detach())}"
        where = f"epoch {epoch + 1}, batch {batch + 1}"
        try:  # only on this rare path: are the inputs themselves at fault?
            check_inputs(data, where)
            bad_inputs = None
        except DistillError as err:
            bad_inputs = err
        if self.config.nonfinite == "skip":
            reason = str(bad_inputs) if bad_inputs is not None else what
            self._log({"event": "skipped", "epoch": epoch + 1, "batch": batch + 1, "step": step, "reason": reason})
            return
        if bad_inputs is not None:
            raise NonFiniteLoss(f"non-finite loss because {bad_inputs}") from None
        kept = "; the last checkpoint is kept" if self.run_dir is not None else ""
        raise NonFiniteLoss(f"non-finite loss at {where}: {what}{kept} (lower the learning rate, clip gradients, "
                            "or set nonfinite: skip)")

    def evaluate(self, dataset, batch_size: int | None = None) -> dict[str, float]:
        """The task's metrics of the student on ``dataset`` (classification: accuracy and cross-entropy);
        on a dataset without targets, its fidelity to the teacher."""
        dataset = as_dataset(dataset)
        if len(dataset) == 0:
            raise DistillError("cannot evaluate on an empty dataset")
        teacher = None if self._labelled(dataset) else self.reference
        return evaluate(self.student, dataset, batch_size or self.config.eval_batch_size, self.accelerator,
                        task=self.task, teacher=teacher, collate_fn=self.collate)

    # ------------------------------------------------------- logs and state
    def _log(self, record: dict) -> None:
        if self.run_dir is not None and self.accelerator.is_main_process:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
        if self.accelerator.log_with:  # the trackers get the numbers: losses per term, lr, validation metrics
            numbers = {k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                       and k not in ("step", "epoch")}
            self.accelerator.log(numbers, step=record.get("step"))

    def _hyperparameters(self) -> dict:
        """What the trackers record as the run's hyper-parameters: the training settings, the terms and the
        caller's ``hyperparameters`` (a recipe), nested keys joined by ``/``."""
        flat: dict = {}

        def add(prefix: str, value) -> None:
            if isinstance(value, Mapping):
                for k, v in value.items():
                    add(f"{prefix}/{k}" if prefix else str(k), v)
            elif value is not None:
                flat[prefix] = value if isinstance(value, (int, float, str, bool)) else str(value)

        add("", {"train": self.config.model_dump(), "term": {t.name: repr(t) for t in self.terms},
                 **self.hyperparameters})
        return flat

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
        if self.run_dir is None or not self.accelerator.is_main_process:
            return
        save_checkpoint(self.run_dir, self.model, optimizer, scheduler, epoch=epoch, step=step, history=self.history,
                        keep=self.config.keep_checkpoints, position=position, train_set=self._train_set)


def _check_arguments(student, teacher, terms, **options) -> None:
    """One line for an argument of the wrong kind, before anything is built from it."""
    if not isinstance(student, nn.Module):
        what = "a function" if callable(student) else excerpt(student)
        raise DistillError(f"student must be a torch.nn.Module (a model with parameters), got {what}")
    if teacher is not None and not isinstance(teacher, (nn.Module, Mapping)) and not callable(teacher):
        raise DistillError(f"teacher must be an nn.Module, a dict of them, a teacher signal or None, "
                           f"got {excerpt(teacher)}")
    if teacher is not None and not isinstance(teacher, (nn.Module, Mapping)) and not hasattr(teacher, "to"):
        raise DistillError("a teacher signal is a callable batch -> {tap: tensor} with a .to(device) method (like "
                           f"distill.teacher.LiveTeacher); got {excerpt(teacher)}: pass the teacher model itself")
    if isinstance(teacher, Mapping) and not isinstance(teacher, nn.ModuleDict):
        bad = [k for k, m in teacher.items() if not isinstance(m, nn.Module) or not isinstance(k, str)]
        if not teacher or bad:
            raise DistillError("several teachers are a dict {name: nn.Module} with at least one entry"
                               + (f"; {excerpt(bad[0])} is not" if bad else ""))
    if isinstance(terms, Term):
        raise DistillError("terms must be a list of Term objects; got one Term: pass terms=[Term(...)]")
    if terms is not None:
        if isinstance(terms, (str, bytes, Mapping)) or not isinstance(terms, (list, tuple)):
            raise DistillError(f"terms must be a list of Term objects (e.g. [Term('ce'), Term('kd')]), "
                               f"got {excerpt(terms)}")
        for n, term in enumerate(terms):
            if not isinstance(term, Term):
                hint = f": Term({term!r})" if isinstance(term, str) else ""
                raise DistillError(f"terms[{n}] must be a Term{hint}, got {excerpt(term)}")
    for key in ("collate_fn", "augment"):
        if options[key] is not None and not callable(options[key]):
            raise DistillError(f"{key} must be a function (or None), got {excerpt(options[key])}")
    if options["run_dir"] is not None and not isinstance(options["run_dir"], (str, os.PathLike)):
        raise DistillError(f"run_dir must be a path (str or pathlib.Path) or None, got {excerpt(options['run_dir'])}")
    if not isinstance(options["trust_pickle"], bool):
        raise DistillError(f"trust_pickle must be True or False, got {excerpt(options['trust_pickle'])}")
    if options["train_up_to"] is not None and not isinstance(options["train_up_to"], str):
        raise DistillError(f"train_up_to must be a student tap name (or None), got {excerpt(options['train_up_to'])}")


def _config(config: TrainConfig | None, overrides: dict) -> TrainConfig:
    """The run's settings: ``config`` with keyword overrides; a mistyped keyword is named in one line."""
    fields = TrainConfig.model_fields
    for key in overrides:
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise DistillError(f"Distiller got an unknown keyword {excerpt(key)}{hint} (settings: distill.TrainConfig)")
    if config is not None and not isinstance(config, TrainConfig):
        raise DistillError(f"config must be a distill.TrainConfig (or None), got {type(config).__name__}; "
                           "or pass the settings as keywords: Distiller(..., epochs=5)")
    return TrainConfig(**{**(config or TrainConfig()).model_dump(), **overrides})  # one-line DistillError


class _CheckedLabels:
    """A collate function whose batches' class labels are checked against the student's output width
    (on the CPU, in the loader: no device synchronisation in the training step)."""

    def __init__(self, collate: Callable, width: int, per_position: bool):
        self.collate, self.width, self.per_position = collate, width, per_position

    def __call__(self, items) -> dict:
        batch = self.collate(items)
        problem = class_label_problem(batch.get("label"), self.width)
        if problem is not None:
            row, value = problem
            index = batch.get("index")
            sample = int(index[row]) if isinstance(index, torch.Tensor) and len(index) > row else row
            raise TaskError(class_label_message(value, sample, self.width, self.per_position))
        return batch


_EPOCH_HOOKS: list[Callable[[dict, "Distiller"], None]] = []


@contextmanager
def on_epoch(hook: Callable[[dict, "Distiller"], None]):
    """Call ``hook(record, distiller)`` after every epoch of every :class:`Distiller` that trains inside the block
    (the epoch's record: ``epoch``, ``train/...``, ``val/...``; the distiller says which model, e.g. by its
    ``run_dir``); an exception it raises stops that training. How
    ``distill tune`` prunes a trial whose validation curve falls behind, without threading a callback
    through recipes and stages."""
    _EPOCH_HOOKS.append(hook)
    try:
        yield
    finally:
        _EPOCH_HOOKS.remove(hook)


@contextmanager
def _one_line(where: str, failed: str, hint: str):
    """Errors inside as one line: a distill error prefixed with ``where``; any other exception as
    ``"{failed} (its cause); {hint}"``, the original chained."""
    try:
        yield
    except DistillError as err:
        raise type(err)(f"{where}: {err}") from err
    except Exception as err:
        raise DistillError(f"{failed} ({cause(err)}); {hint}") from err


def _reading(what: str):
    """Errors of a dataset's ``__getitem__`` or a collate function as one line naming what was read."""
    return _one_line(what, f"reading {what} failed", "check the dataset's items and collate_fn")


def _live_teachers(teacher) -> list[LiveTeacher]:
    if isinstance(teacher, LiveTeacher):
        return [teacher]
    if isinstance(teacher, TeacherEnsemble):
        return list(teacher.teachers.values())
    return []


@torch.no_grad()
def apply_max_norm(model: nn.Module, max_norm: float) -> None:
    """The max-norm constraint (Srivastava et al. 2014, §5.1): each unit's incoming weight vector ``w`` (a row
    of every ``nn.Linear`` weight) is projected onto the ball ``||w||_2 <= max_norm``; rows inside it are left
    as they are."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            module.weight.copy_(torch.renorm(module.weight, 2, 0, max_norm))


def _windows(batches, size: int):
    """Consecutive groups of ``size`` items (the last may be shorter): one optimiser step's micro-batches."""
    window = []
    for item in batches:
        window.append(item)
        if len(window) == size:
            yield window
            window = []
    if window:
        yield window


def _index_batch(items):
    if isinstance(items, Mapping):
        return dict(items)
    return {"index": torch.as_tensor([int(it["index"]) for it in items], dtype=torch.long)}
