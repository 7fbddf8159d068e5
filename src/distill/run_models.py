"""The models a recipe names: built from their specs, and its teachers got from a checkpoint, the
teacher cache or training.

Below :mod:`distill.experiment` (which trains and measures the students) and :mod:`distill.explain`
(which reads a finished run directory): both use it, it uses neither. (The ``run/teachers.py`` of the
target layout in DESIGN.md.)
"""
from __future__ import annotations

import hashlib
import json
import time
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_model

from distill import distributed
from distill.data import Compose, MixUp, RandomShift
from distill.engine import Distiller, checkpoints_in, seed_everything
from distill.fileio import UnsafeFile, atomic_save_model, atomic_write_text, cache_dir, load_weights  # noqa: F401
from distill.recipe import AugmentSpec, ModelSpec, Recipe, RecipeError, clip, error_line, excerpt
from distill import sources
from distill.tasks import Task, get_task
from distill.teacher import run_model
from distill.zoo.datasets import SplitError

say = distributed.say


def augment_from_spec(spec: AugmentSpec | None):
    """The augmentation a recipe's ``augment`` section describes (None for none)."""
    if spec is None:
        return None
    transforms = ([RandomShift(spec.shift)] if spec.shift else []) + ([MixUp(spec.mixup)] if spec.mixup else [])
    return None if not transforms else transforms[0] if len(transforms) == 1 else Compose(*transforms)


# what a model builder or a first forward pass raises for options it cannot use
MODEL_ERRORS = (TypeError, ValueError, RuntimeError, OSError, IndexError, KeyError, AttributeError, ZeroDivisionError,
                OverflowError, NotImplementedError, AssertionError, MemoryError)


def build_from_spec(spec: ModelSpec, data, field: str | None = None) -> torch.nn.Module:
    """The model ``spec`` names (a zoo model for ``data``'s input shape and classes, ``hf:PATH`` with the head
    of ``data``'s task, or ``package.module:factory``); a bad option is a one-line RecipeError naming
    ``field`` (``student``, ``teacher``, ``methods.1.student``)."""
    try:
        return sources.build(spec.model, spec.options, data, data_task(data))
    except sources.SourceError as err:
        raise RecipeError(f"recipe field '{field or 'model'}': {error_line(err, 200)}") from None
    except MODEL_ERRORS as err:
        raise RecipeError(f"recipe field '{field or 'model'}.options': {excerpt(spec.model, 40)} cannot be built "
                          f"with {excerpt(spec.options, 60)}: {error_line(err, 120)}") from None


def check_model_specs(recipe: Recipe, data) -> None:
    """Build every model the recipe names (teachers, student, a method's own student, teacher assistants) and
    run it once on two test (or validation) inputs, before anything trains: options the model cannot build or
    run on this data (too many pooling stages for 8x8 images, no stages, zero channels) are a one-line
    RecipeError naming the field. The random number generators are left as they were."""
    specs = [("teacher" if recipe.teacher is not None else f"teachers.{name}", spec)
             for name, spec in recipe.teacher_specs.items()]
    specs.append(("student", recipe.student))
    for i, method in enumerate(recipe.methods):
        specs += [(f"methods.{i}.via.{k}", step) for k, step in enumerate(method.via)]
        if method.student is not None:
            specs.append((f"methods.{i}.student", method.student))
    seen = set()
    split = data.test if len(data.test) else data.val  # the test split may be left unread (evaluation.score_test)
    inputs = sources.first_inputs(split, 2, data_task(data)) if len(split) else None
    with _rng_kept(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. torch's "zero-element tensors": refused below, in one line
        for field, spec in specs:
            key = (spec.model, excerpt(spec.options, 200))
            if key in seen:
                continue
            seen.add(key)
            _check_size(spec, data, field)
            model = build_from_spec(spec, data, field)
            empty = next((name for name, p in model.named_parameters() if p.numel() == 0), None) \
                if hasattr(model, "named_parameters") else None
            if empty is not None:
                raise RecipeError(f"recipe field '{field}.options': {excerpt(spec.model, 40)} with "
                                  f"{excerpt(spec.options, 60)} has a layer without weights ({clip(empty, 40)}): a width or channel count of 0, or more "
                                  f"stages than inputs of shape {tuple(getattr(data, 'input_shape', None) or ())} "
                                  "allow?")
            if inputs is None:
                continue
            try:
                with torch.no_grad():
                    model.eval()
                    out = run_model(model, inputs)
            except MODEL_ERRORS as err:
                raise RecipeError(f"recipe field '{field}.options': {excerpt(spec.model, 40)} with "
                                  f"{excerpt(spec.options, 60)} cannot run on inputs of shape "
                                  f"{tuple(getattr(data, 'input_shape', None) or ())}: {error_line(err, 120)}") from None
            if out is None:
                raise RecipeError(f"recipe field '{field}.model': {excerpt(spec.model, 40)} returned nothing")


ZOO_MAX_PARAMETERS = 250_000_000  # 1 GB of float32 weights: far above any zoo model at any sane option


def _check_size(spec: ModelSpec, data, field: str) -> None:
    """A zoo model is first built on the ``meta`` device (no memory, no time): options asking for more than
    ZOO_MAX_PARAMETERS weights are refused before anything is allocated."""
    from distill.zoo.models import MODELS

    if spec.model not in MODELS:
        return
    try:
        with torch.device("meta"):
            model = sources.build(spec.model, spec.options, data, data_task(data))
    except MODEL_ERRORS:
        return  # the real build reports it
    count = sum(p.numel() for p in model.parameters())
    if count > ZOO_MAX_PARAMETERS:
        raise RecipeError(f"recipe field '{field}.options': {excerpt(spec.model, 40)} with {excerpt(spec.options, 60)} "
                          f"has {count:,} parameters (at most {ZOO_MAX_PARAMETERS:,} for a zoo model)")


class _rng_kept:
    """Restore torch's, NumPy's and Python's random states on exit."""

    def __enter__(self):
        import random

        import numpy as np

        self.states = torch.random.get_rng_state(), np.random.get_state(), random.getstate()

    def __exit__(self, *exc):
        import random

        import numpy as np

        torch.random.set_rng_state(self.states[0])
        np.random.set_state(self.states[1])
        random.setstate(self.states[2])
        return False


def data_task(data) -> Task:
    """The recipe's task, which its loaded data carries (classification for data loaded elsewhere)."""
    return getattr(data, "task", None) or get_task()


def load_data(recipe: Recipe):
    """The recipe's train / validation / test splits, carrying the recipe's task (``data.task``)."""
    text = recipe.data.dataset in sources.TEXT_DATASETS
    try:
        data = sources.load(recipe.data.dataset, recipe.data.chosen_val_size, seed=0,
                            train_size=recipe.data.train_size, test_size=recipe.data.test_size,
                            **({"tokenizer": teacher_tokenizer(recipe)} if text else {}))
    except SplitError as err:
        raise RecipeError(f"recipe field 'data.val_size': {error_line(err, 220)}") from None
    except sources.SourceError as err:
        raise RecipeError(f"recipe field 'data.dataset': {error_line(err, 220)}") from None
    data.task = recipe.build_task()
    if text and getattr(data.task, "pad_token_id", 0) is None:  # the tokenizer's padding, unless the recipe says
        data.task.pad_token_id = data.tokenizer.pad_token_id
    return data


def teacher_tokenizer(recipe: Recipe):
    """The tokenizer a text dataset is tokenised with: the (first) teacher's when it is an ``hf:PATH`` folder
    holding one, else MiniLM's (the ``minilm`` teacher's, and the ``bert`` students' vocabulary)."""
    from distill.zoo.text import minilm_tokenizer

    spec = next(iter(recipe.teacher_specs.values()), None)
    if spec is not None and spec.model.startswith("hf:"):
        folder = Path(spec.model[3:]).expanduser()
        if any((folder / name).is_file() for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json")):
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(str(folder))
    return minilm_tokenizer()


def task_key(recipe: Recipe) -> dict:
    """The task's part of the settings keys: only a task other than the default enters them, so earlier
    classification teachers and students stay reusable."""
    return {} if recipe.task == "classification" else {"task": recipe.task}


# TrainConfig fields that do not change the trained weights, so they do not key the teacher cache.
NOT_TRAINING = {"progress", "log_every", "eval_every", "teacher_cache_dir", "keep_checkpoints", "checkpoint_every",
                "num_workers", "eval_batch_size", "cache_teacher", "cpu", "trackers"}

# Keys hash the settings that differ from their defaults, so a field added later (with a default that keeps
# the old behaviour) leaves earlier teachers and students reusable. Changing a default needs a new "format".


def teacher_key(recipe: Recipe, name: str = "teacher") -> str:
    """What a trained teacher depends on: the name of its directory in the teacher cache."""
    teacher = recipe.teacher_specs[name]
    # the teacher's own training has no teacher, so its teacher-cache settings do not matter either
    spec = teacher.model_dump(mode="json", exclude_defaults=True,
                              exclude={"cache": True, "checkpoint": True, "seed": True,
                                       "train": NOT_TRAINING | {"teacher_top_k"}})
    spec["augment"] = (teacher.augment or recipe.data.augment).model_dump(exclude_defaults=True)  # its data
    # the data it trained on: the students' subset unless it has its own (teacher.train_size, then in spec)
    own_size = {"train_size"} if teacher.train_size is not None else set()
    payload = {"teacher": spec, "data": recipe.data.model_dump(mode="json", exclude_defaults=True,
                                                              exclude={"augment", "test_size", "student_labels",
                                                                       *own_size}),
               "seed": teacher_seed(recipe, name), "format": 2, **task_key(recipe)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def teacher_seed(recipe: Recipe, name: str = "teacher") -> int:
    spec = recipe.teacher_specs[name]
    return recipe.seed if spec.seed is None else spec.seed


class TeacherNotTrained(RecipeError):
    """``get_teacher(..., train=False)`` found no trained teacher."""


def get_teacher(recipe: Recipe, data, run_dir: Path, resume: bool = False, trust_pickle: bool = False,
                train: bool = True, name: str = "teacher") -> tuple[torch.nn.Module, dict]:
    """Load the recipe's teacher (with several ``teachers``, the one called ``name``) from its checkpoint
    or the cache, or train it (``train=False``: raise :class:`TeacherNotTrained` instead)."""
    spec = recipe.teacher_specs[name]
    field = "teacher" if recipe.teacher is not None else f"teachers.{name}"
    seed_everything(teacher_seed(recipe, name))
    teacher = build_from_spec(spec, data, field)
    if spec.checkpoint is not None:
        try:
            load_weights(teacher, spec.checkpoint, trust_pickle)
        except UnsafeFile as err:
            raise RecipeError(f"recipe field '{field}.checkpoint': {err}") from None
        except (RuntimeError, OSError, ValueError) as err:
            raise RecipeError(f"recipe field '{field}.checkpoint': cannot load {excerpt(str(spec.checkpoint), 60)} "
                              f"into {excerpt(spec.model, 40)}: {error_line(err, 120)}") from None
        return teacher.eval(), {"source": str(spec.checkpoint)}
    if spec.pretrained:
        return teacher.eval(), {"source": f"pretrained {spec.model}"}
    cached = cache_dir() / "teachers" / teacher_key(recipe, name)
    own = run_dir / "teacher" if recipe.teacher is not None else run_dir / "teachers" / name

    def look() -> str | None:  # rank 0 looks, so every process takes the same branch
        if spec.cache and (cached / "teacher.safetensors").is_file():
            return "cache"
        return "run" if (own / "student.safetensors").is_file() else None

    found = distributed.on_main(look)
    if found == "cache":
        load_model(teacher, str(cached / "teacher.safetensors"))
        say(f"{field}: reusing {cached}")
        return teacher.eval(), {"source": str(cached)}
    if found == "run":
        load_model(teacher, str(own / "student.safetensors"))
        return teacher.eval(), {"source": str(own)}
    if not train:
        raise TeacherNotTrained(f"{run_dir}: the teacher is not trained yet (no teacher/student.safetensors, "
                                f"checkpoint or cached teacher); finish the run first (distill run --resume {run_dir})")
    if spec.train_size is not None:  # the teacher's own (larger) share of the training split
        size = None if spec.train_size == "all" else spec.train_size
        data = load_data(recipe.model_copy(update={"data": recipe.data.model_copy(update={"train_size": size})}))
    say(f"{field}: training {spec.model} for {spec.train.epochs} epochs on {len(data.train):,} samples")
    config = spec.train.model_copy(update={"seed": teacher_seed(recipe, name)})
    started = time.perf_counter()
    task = data_task(data)
    trainer = Distiller(teacher, terms=task.default_terms(), task=task,
                        augment=augment_from_spec(spec.augment or recipe.data.augment),
                        run_dir=own, config=config, trust_pickle=trust_pickle)
    trainer.fit(data.train, data.val, resume=resume and distributed.on_main(lambda: bool(checkpoints_in(own))))
    distributed.broadcast_module(teacher)  # rank 0's BatchNorm statistics, as saved
    info = {"source": str(own), "train_seconds": time.perf_counter() - started}

    def keep() -> None:  # after it, every process sees teacher/ and the cached teacher complete
        if spec.cache:
            cached.mkdir(parents=True, exist_ok=True)
            atomic_save_model(teacher, cached / "teacher.safetensors")
            atomic_write_text(cached / "info.json", json.dumps({"recipe": recipe.name, **info}, indent=2))

    distributed.on_main(keep)
    return teacher.eval(), info  # a teacher is only ever run in eval mode


def deployable(model: torch.nn.Module) -> torch.nn.Module:
    """The single network a trained model deploys as (``model.deployable()``, e.g. a cohort's first peer)."""
    return model.deployable() if hasattr(model, "deployable") else model


class FinishedRun:
    """A finished run directory read back: its recipe, data and models (see :func:`load_run`)."""

    def __init__(self, run_dir: Path, recipe: Recipe, data, models: dict, specs: dict):
        self.run_dir, self.recipe, self.data = run_dir, recipe, data
        self.models = models  # label -> model in eval mode: "teacher" (or "teacher:NAME") first, then students
        self.specs = specs  # label -> the ModelSpec each was built from

    def teacher_and_students(self) -> dict:
        """``{"teacher": the (first) teacher, label: each finished student}``, what explain and analyze compare;
        a one-line :class:`RecipeError` when there is no teacher or no finished student."""
        if not self.recipe.teacher_specs:
            raise RecipeError(f"the recipe of {self.run_dir} has no teacher to compare with")
        models = {"teacher": next(iter(self.models.values()))}
        models |= {label: m for label, m in self.models.items() if label in {m.name for m in self.recipe.methods}}
        if len(models) == 1:
            raise RecipeError(f"{self.run_dir}: no finished students (students/<label>/student.safetensors)")
        return models


def load_run(run_dir, teacher: bool = True, data=None) -> FinishedRun:
    """The models of a run directory: the teacher(s) (``teacher=False``: none) and every finished student
    (``students/<label>/student.safetensors``), built from the run's ``recipe.yaml`` and loaded, with the
    recipe's data (or ``data``: other splits for the same models). A directory that is not a run, or has
    nothing finished, is a one-line :class:`RecipeError`."""
    from distill.recipe import parse_recipe, read_recipe_file

    run_dir = Path(run_dir)
    recipe_file = run_dir / "recipe.yaml"
    if not recipe_file.is_file():
        raise RecipeError(f"{run_dir} is not a run directory (no recipe.yaml)")
    recipe = parse_recipe(read_recipe_file(recipe_file))
    if data is None:
        data = load_data(recipe)
    models, specs = {}, {}
    if teacher:
        for name, spec in recipe.teacher_specs.items():
            label = "teacher" if recipe.teacher is not None else f"teacher:{name}"
            models[label], _ = get_teacher(recipe, data, run_dir, train=False, name=name)
            specs[label] = spec
    for method in recipe.methods:
        path = run_dir / "students" / method.name / "student.safetensors"
        if path.is_file():
            spec = method.student or recipe.student
            student = build_from_spec(spec, data)
            load_model(student, str(path))
            models[method.name], specs[method.name] = deployable(student).eval(), spec
    if not models:
        raise RecipeError(f"{run_dir}: nothing finished yet (no students/<label>/student.safetensors, no teacher)")
    return FinishedRun(run_dir, recipe, data, models, specs)
