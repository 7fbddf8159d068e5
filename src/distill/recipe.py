"""Recipes: YAML files validated by a pydantic schema.

A recipe names the data, the teacher (a checkpoint, or how to train one), the
student, one or more methods (each trains the same student from the same
initialisation, so they can be compared) and the training settings. Everything
a recipe does is a few lines of Python with :class:`distill.Distiller`.

Load with :func:`load_recipe`; bad input raises :class:`RecipeError` whose
message is one line naming the field.
"""
from __future__ import annotations

import codecs
import inspect
import math
import re
import reprlib
import typing
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from annotated_types import Le
from pydantic import (BaseModel, ConfigDict, Field, StrictInt, TypeAdapter, ValidationError, create_model,
                      field_validator, model_validator)

from distill.datafree import OBJECTIVES, SyntheticSet, deep_inversion
from distill.engine import TrainConfig
from distill.losses.registry import STAGES
from distill.methods import METHODS
from distill.methods.registry import METHOD_INPUTS
from distill.stages import as_stages
from distill.terms import LOSSES, Term
from distill.sources import check_data_name, check_model_name, data_inputs
from distill.tasks import Task, TaskError, get_task
from distill.zoo.datasets import DEFAULT_VAL_SIZE


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names the field."""


# Every refusal is one line of at most this many characters (the command line adds "distill: error: ").
MAX_MESSAGE = 280

# a method's inputs kind -> the task it needs: (task, what the method trains, what the task is; where to look)
TASK_OF_INPUTS = {
    "ctc": ("ctc", "trains CTC speech models", "frame logits, transcripts; see recipes/speech.yaml"),
    "detection": ("detection", "trains detectors", "heatmaps, box distributions, boxes per image; see docs/detection.md"),
    "restoration": ("restoration", "trains image-to-image models",
                    "degraded image in, clean image out; see docs/restoration.md"),
}


def error_line(err: BaseException, limit: int = MAX_MESSAGE) -> str:
    """The first line of an exception's message (its type name when the message is empty), for one-line
    reports, cut to ``limit`` characters."""
    try:
        text = str(err).strip().strip("'\"")
    except Exception:  # noqa: BLE001 - a message that cannot even be made (huge int, broken __str__)
        text = ""
    line = text.splitlines()[0].strip() if text else type(err).__name__
    return clip(line, limit)


def clip(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text`` on one line, cut to ``limit`` characters with an ellipsis."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxdict, _SHORT.maxlist, _SHORT.maxtuple, _SHORT.maxset = 3, 4, 6, 6, 4
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlong = 60, 60, 40


def excerpt(value: Any, limit: int = 60) -> str:
    """A bounded ``repr`` of ``value`` for messages: never walks more than a few items of a container (a YAML
    alias bomb is not expanded) and never longer than ``limit`` characters."""
    try:
        text = _SHORT.repr(value)
    except Exception:  # noqa: BLE001 - e.g. an int too long to print
        text = f"<{type(value).__name__}>"
    return clip(text, limit)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


MAX_SEED = 2**32 - 1  # NumPy's seeds

# Upper bounds on the training settings a recipe may ask for (TrainConfig's own bounds are lower bounds):
# far beyond any run on this kind of hardware, and below anything that overflows or allocates without end.
TRAIN_LIMITS = {"epochs": 100_000, "batch_size": 1_000_000, "eval_batch_size": 1_000_000, "eval_every": 100_000,
                "lr": 1e6, "weight_decay": 1e6, "warmup_epochs": 100_000, "gamma": 1e6, "grad_accum": 100_000,
                "clip_grad_norm": 1e12, "max_norm": 1e12, "log_every": 10**9, "keep_checkpoints": 1000, "checkpoint_every": 10**9,
                "num_workers": 256, "teacher_top_k": 10**7}


def _bounded_train_config() -> type[TrainConfig]:
    fields = {name: (typing.Annotated[TrainConfig.model_fields[name].annotation, Le(limit)],
                     TrainConfig.model_fields[name])
              for name, limit in TRAIN_LIMITS.items() if name in TrainConfig.model_fields}
    return create_model("TrainSection", __base__=TrainConfig, **fields)


class TrainSection(_bounded_train_config()):
    """A recipe's ``train:`` section: :class:`~distill.engine.TrainConfig` with upper bounds (TRAIN_LIMITS),
    at most 1,000 milestones, and a ``teacher_cache_dir`` that can be a directory."""

    @field_validator("milestones")
    @classmethod
    def _few_milestones(cls, v):
        if len(v) > 1000 or not all(math.isfinite(m) for m in v):
            raise ValueError("give at most 1,000 finite milestones (epochs)")
        return v

    @field_validator("teacher_cache_dir")
    @classmethod
    def _cache_dir(cls, v):
        _check_path(v, "teacher_cache_dir")
        try:
            taken = v is not None and Path(v).expanduser().exists() and not Path(v).expanduser().is_dir()
        except (OSError, RuntimeError):
            taken = False
        if taken:
            raise ValueError(f"{_show_path(v)} is a file; give a directory (it is created when missing)")
        return v


def _choices(name: Any, options, what: str) -> str:
    """``unknown WHAT 'x'; did you mean 'y'? (N available: distill list ...)`` in a bounded length."""
    import difflib

    near = difflib.get_close_matches(str(name)[:100], sorted(options), n=3) if isinstance(name, str) else []
    hint = f"did you mean {', '.join(near)}? " if near else ""
    listed = ", ".join(sorted(options))
    listed = listed if len(listed) <= 150 else clip(listed, 150)
    return f"unknown {what} {excerpt(name, 40)}; {hint}available: {listed}"


def _check_path(value: Any, what: str = "path") -> Any:
    """A path a run will create or read: no NUL byte, no name longer than the file system allows."""
    if value is None:
        return value
    text = str(value)
    if "\x00" in text:
        raise ValueError(f"{what} contains a NUL byte")
    if len(text) > 4000 or any(len(part.encode()) > 255 for part in Path(text).parts):
        raise ValueError(f"{what} {excerpt(text, 40)} is too long for a file name (at most 255 bytes per part)")
    return value


def _check_label(value: str | None, what: str) -> str | None:
    """A name that becomes a directory of the run (a recipe's ``name``, a method's ``label``)."""
    if value is None:
        return value
    if not value or len(value) > 100 or value in (".", "..") or any(c in value for c in "/\\\x00") \
            or not value.isprintable():
        raise ValueError(f"{what} {excerpt(value, 40)}: use 1-100 printable characters without '/' or '\\' "
                         "(it names a directory)")
    return value


def _check_params(fn, params: dict, what: str) -> None:
    """Every key must be a parameter of ``fn`` and every value must fit its type annotation."""
    accepted = inspect.signature(fn).parameters
    hints = typing.get_type_hints(fn.__init__ if isinstance(fn, type) else fn)
    for key, value in params.items():
        if key not in accepted:
            options = ", ".join(p for p in accepted if p not in ("student_logits", "teacher_logits", "labels",
                                                                   "student_features", "teacher_features"))
            raise ValueError(f"{what} has no parameter {excerpt(key, 40)} (accepted: {clip(options, 120) or 'none'})")
        if key in hints:
            try:
                TypeAdapter(hints[key]).validate_python(value, strict=True)
            except ValidationError as err:
                raise ValueError(f"{what} parameter {excerpt(key, 40)}: {err.errors()[0]['msg']}, "
                                 f"got {excerpt(value)}") from None


# Bounds on a zoo model's options (the zoo's models are small; beyond these a value is a typo that would
# build for minutes or allocate without end). Models from hf:PATH or your own factory are not bounded.
ZOO_MAX_INT, ZOO_MAX_DEPTH, ZOO_MAX_ITEMS = 100_000, 1000, 1000


def _check_zoo_options(options: Any, key: str = "options", level: int = 0) -> None:
    if level > 4:
        raise ValueError(f"{key}: nested too deep for a model option")
    if isinstance(options, dict):
        for k, v in options.items():
            _check_zoo_options(v, f"{excerpt(k, 30).strip(chr(39))}" if level == 0 else key, level + 1)
    elif isinstance(options, list):
        if len(options) > ZOO_MAX_ITEMS:
            raise ValueError(f"{key}: {len(options):,} items is too many for a model option (at most {ZOO_MAX_ITEMS:,})")
        for v in options:
            _check_zoo_options(v, key, level + 1)
    elif isinstance(options, int) and not isinstance(options, bool):
        limit = ZOO_MAX_DEPTH if key == "depth" else ZOO_MAX_INT
        if abs(options) > limit:
            raise ValueError(f"options.{key}: {options:,} is out of range for a zoo model (at most {limit:,})")


class ModelSpec(_Strict):
    model: str = Field(description="a zoo model name (distill list models), hf:PATH (a local Hugging Face folder, "
                       "its head chosen by the task) or package.module:factory (your own code)")
    options: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the builder")
    checkpoint: Path | None = Field(None, description="safetensors weights to load instead of training")

    @field_validator("model")
    @classmethod
    def _known_model(cls, v: str) -> str:
        return check_model_name(v)

    @model_validator(mode="after")
    def _sane_zoo_options(self):
        from distill.zoo.models import MODELS

        if self.model in MODELS:
            _check_zoo_options(self.options)
        return self

    @field_validator("checkpoint")
    @classmethod
    def _existing(cls, v: Path | None) -> Path | None:
        _check_path(v, "checkpoint")
        try:
            found = v is not None and Path(v).expanduser().is_file()
        except (OSError, RuntimeError):  # a name the file system refuses; ~user of no user
            found = False
        if v is not None and not found:
            raise ValueError(f"file not found: {_show_path(v)}")
        if v is not None and Path(v).suffix not in (".safetensors", ".pt", ".pth", ".bin"):
            raise ValueError(f"{_show_path(v)}: expected .safetensors (or a torch state dict: .pt, .pth, .bin)")
        return Path(v).expanduser() if v is not None else None


class AugmentSpec(_Strict):
    shift: int = Field(0, ge=0, le=8, description="random shift of up to this many pixels (Hinton's jitter)")
    mixup: float | None = Field(None, gt=0, le=100, description="mix images within the batch, Beta(mixup, mixup) "
                                "weights; labels are not mixed (use KD alone)")


class TextAugmentSpec(_Strict):
    kind: Literal["word-replace", "refill"] = Field(description="word-replace: TinyBERT's word replacement "
                                                    "(Jiao et al. 2020); refill: CILDA's masked refill (Haidar et "
                                                    "al. 2022); both with the MiniLM teacher's masked-LM head")
    per_text: int = Field(4, ge=1, le=100, description="new sentences per training text")
    prob: float | None = Field(None, gt=0, le=1, description="share of the words replaced (word-replace, default "
                               "0.4) or of the tokens masked (refill, default 0.15)")


class DataSpec(_Strict):
    dataset: str = Field(description="a bundled dataset (distill list datasets) or package.module:function "
                         "returning train, val and test datasets")
    val_size: int = Field(DEFAULT_VAL_SIZE, ge=1, le=10**9, description="validation samples carved from the "
                          f"training set (when not set: {DEFAULT_VAL_SIZE}, or a tenth of a training set under "
                          f"{10 * DEFAULT_VAL_SIZE:,}); a text dataset's split is fixed: its first val_size "
                          "validation samples (when not set: all)")

    @property
    def chosen_val_size(self) -> int | None:
        """``val_size`` when the recipe sets it, else None: the loader's default for the data's size."""
        return self.val_size if "val_size" in self.model_fields_set else None
    train_size: int | None = Field(None, ge=1, le=10**9, description="keep only this many training samples (the "
                                   "first ones)")
    test_size: int | None = Field(None, ge=1, le=10**9, description="keep only the first this many test samples "
                                  "(quick checks)")
    augment: AugmentSpec = Field(default_factory=AugmentSpec, description="augmentation of the student's batches")
    student_labels: bool = Field(True, description="false: students see the training inputs without labels, a "
                                 "transfer set taught by the teacher alone (use label-free terms such as kd)")
    text_augment: TextAugmentSpec | None = Field(None, description="text data: students learn from the training "
                                                 "texts and per_text rewrites of each, all without labels (a "
                                                 "transfer set the teacher alone teaches, as in TinyBERT's and "
                                                 "CILDA's task stages); made once and cached")

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, v: str) -> str:
        return check_data_name(v)


class TeacherSpec(ModelSpec):
    train: TrainSection = Field(default_factory=TrainSection, description="how to train it when there is no "
                                "checkpoint")
    pretrained: bool = Field(False, description="use the model as built, with the weights it comes with (a zoo "
                             "model that loads pretrained weights, e.g. minilm_sentence): nothing is trained")
    augment: AugmentSpec | None = Field(None, description="augmentation for training the teacher (default: data.augment)")
    cache: bool = Field(True, description="reuse a teacher trained by an earlier run with the same settings")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="seed for training the teacher (default: the "
                             "recipe's seed); fix it to distil one teacher into students of several seeds")
    train_size: StrictInt | Literal["all"] | None = Field(
        None, description="training samples the teacher trains on (default: data.train_size, the students'); 'all': "
        "the whole training split, for a teacher that saw more data than its students' subset (which it contains)")

    @field_validator("train_size")
    @classmethod
    def _positive(cls, v):
        if isinstance(v, int) and v < 1:
            raise ValueError(f"train_size must be a positive count or 'all', got {excerpt(v)}")
        return v

    @model_validator(mode="after")
    def _pretrained_or_checkpoint(self):
        if self.pretrained and self.checkpoint is not None:
            raise ValueError("give either 'pretrained: true' (the weights the model comes with) or a 'checkpoint'")
        return self


class TermSpec(BaseModel):
    """One loss term; keys other than these are the loss function's parameters (``temperature: 4``)."""

    model_config = ConfigDict(extra="allow")

    loss: str
    weight: float = 1.0
    student: str | list[str] | None = None
    teacher: str | list[str] | None = "logits"
    labels: bool | None = None
    index: bool | None = None
    connector: str | None = None

    @model_validator(mode="after")
    def _known_loss(self):
        if self.loss not in LOSSES:
            raise ValueError(_choices(self.loss, LOSSES, "loss") + " (distill list losses)")
        _check_params(LOSSES[self.loss][0], self.model_extra or {}, f"loss {excerpt(self.loss, 40)}")
        return self

    def build(self) -> Term:
        bound = {k: getattr(self, k) for k in ("teacher", "labels", "index", "connector")
                 if k in self.model_fields_set}
        return Term(self.loss, self.weight, student=self.student, **bound, **(self.model_extra or {}))


DATA_FREE = (*OBJECTIVES, "deep_inversion")


class DataFreeSpec(BaseModel):
    """Train this method's student without a real training image (see :mod:`distill.datafree`).

    ``objective``: ``dafl``, ``dfad``, ``zskt`` or ``noise`` (a :class:`~distill.datafree.SyntheticSet`
    of ``size`` samples per epoch) or ``deep_inversion`` (``images`` images synthesised once, then
    ordinary distillation on them, repeated to ``size`` samples per epoch). Other keys are the parameters of ``SyntheticSet`` (``lr``,
    ``student_steps``, ``alpha``, ``beta``, ``feature_layer``) or of
    :func:`~distill.datafree.deep_inversion` (``steps``, ``lr``, ``bn_weight``, ``tv_weight``, ...).
    """

    model_config = ConfigDict(extra="allow")

    objective: str
    size: int = Field(12800, ge=1, le=10**8, description="synthetic samples per epoch")
    images: int | None = Field(None, ge=1, le=10**7, description="deep_inversion: images synthesised once (default: size), "
                               "repeated to size samples per epoch")
    generator: dict[str, Any] = Field(default_factory=dict, description="options of the zoo 'generator' "
                                      "(latent, width)")

    @model_validator(mode="after")
    def _known(self):
        if self.objective not in DATA_FREE:
            raise ValueError(_choices(self.objective, DATA_FREE, "data-free objective"))
        fn = deep_inversion if self.objective == "deep_inversion" else SyntheticSet
        params = dict(self.model_extra or {})
        for fixed in ("teacher", "objective", "generator", "student", "input_shape", "num_images", "num_classes",
                      "seed", "say"):
            if fixed in params:
                raise ValueError(f"{fixed!r} is set by the recipe, not by data_free")
        _check_params(fn, params, f"data_free {excerpt(self.objective, 40)}")
        return self

    @property
    def params(self) -> dict:
        return dict(self.model_extra or {})


class MethodSpec(BaseModel):
    """A named method with its parameters (``method: kd, alpha: 0.9``) or an explicit list of terms."""

    model_config = ConfigDict(extra="allow")

    method: str | None = None
    terms: list[TermSpec] | None = None
    label: str | None = Field(None, description="name of this student in tables (default: the method name)")
    via: list[ModelSpec] = Field(default_factory=list, description="teacher assistants (TAKD): the teacher "
                                 "teaches via[0], which teaches via[1] ..., the last teaches the student, each step "
                                 "trained with this method")
    generations: int = Field(1, ge=1, le=100, description="born-again networks: the student's architecture trained this "
                             "many times, each generation teaching the next; the last is the student")
    student: ModelSpec | None = Field(None, description="this method's own student model (default: the recipe's), "
                                      "e.g. a cohort of peers for DML; its row reports the deployed network")
    teacher: str | None = Field(None, description="with several 'teachers': the one this method learns from "
                                "(default: all of them, as taps 'NAME/TAP')")
    augment: AugmentSpec | None = Field(None, description="this student's augmentation (default: data.augment)")
    student_labels: bool | None = Field(None, description="false: this student sees the training inputs without "
                                        "labels (default: data.student_labels)")
    text_augment: TextAugmentSpec | None = Field(None, description="this student's text augmentation (default: "
                                                 "data.text_augment)")
    data_free: DataFreeSpec | None = Field(None, description="train without real training images: a generator, "
                                           "noise or DeepInversion makes the inputs")

    @model_validator(mode="after")
    def _one_of(self):
        if (self.method is None) == (self.terms is None):
            raise ValueError("give either 'method' or 'terms'")
        if self.via and self.generations > 1:
            raise ValueError("give either 'via' (teacher assistants) or 'generations' (born-again), not both")
        if self.data_free is not None and (self.via or self.generations > 1):
            raise ValueError("data-free distillation trains one student from the teacher: no 'via' or 'generations'")
        if self.method is not None:
            if self.method not in METHODS:
                raise ValueError(_choices(self.method, METHODS, "method") + " (distill list methods)")
            _check_params(METHODS[self.method], self.model_extra or {}, f"method {excerpt(self.method, 40)}")
            missing = [p for p in layer_params(self.method) if p not in (self.model_extra or {})]
            if missing:
                raise ValueError(f"method {excerpt(self.method, 40)} needs {' and '.join(missing)} (the layer counts "
                                 "of the student and the teacher): give them, or use models whose counts a recipe "
                                 "reads (bert, minilm, hf:PATH)")
            try:
                self.build()
            except (TypeError, ValueError, KeyError, IndexError, AttributeError, OverflowError) as err:
                raise ValueError(f"method {excerpt(self.method, 40)}: {error_line(err, 200)}") from None
        elif self.model_extra:
            raise ValueError(f"unknown keys {excerpt(sorted(map(str, self.model_extra)), 80)} beside 'terms'")
        return self

    @field_validator("label")
    @classmethod
    def _label_names_a_directory(cls, v):
        return _check_label(v, "label")

    @property
    def name(self) -> str:
        return self.label or self.method or "custom"

    def build(self) -> list[Term]:
        if self.terms is not None:
            return [t.build() for t in self.terms]
        return METHODS[self.method](**(self.model_extra or {}))


class EvaluationSpec(_Strict):
    latency_batch_size: int = Field(256, ge=1, le=100_000, description="batch size for CPU inference timing")
    latency_repeats: int = Field(20, ge=1, le=1000)
    cam_agreement_images: int = Field(0, ge=0, le=100_000, description="test images on which each student's Grad-CAM++ maps "
                                                           "are compared with the teacher's (0: not measured)")
    cam_layer: str = Field("last_stage", description="the layer (tap) whose Grad-CAM++ maps are compared")
    score_test: bool = Field(True, description="score every model on the test split; off, a run reads "
                             "validation only (distill tune's trials: their tables cannot leak test scores)")


class Recipe(_Strict):
    name: str = "run"
    description: str = ""
    seed: int = Field(0, ge=0, le=MAX_SEED, description="seeds data order, initialisation and augmentation of "
                      "every model")
    task: str | dict[str, Any] = Field("classification", description="what kind of problem (distill.tasks): a name "
                                       "(classification, regression, multilabel, tokens, embedding) or "
                                       "{name: ..., options such as pad_token_id, shift, pooling}")
    data: DataSpec
    teacher: TeacherSpec | None = None
    teachers: dict[str, TeacherSpec] | None = Field(None, description="several teachers by name (instead of "
                                                    "'teacher'); methods read them as 'NAME/TAP' or pick one")
    student: ModelSpec
    methods: list[MethodSpec] = Field(default_factory=lambda: [MethodSpec(method="kd")], min_length=1)
    train: TrainSection = Field(default_factory=TrainSection, description="how the students are trained")
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    output_dir: Path = Field(Path("runs"), description="run directories are created under this folder")

    @model_validator(mode="before")
    @classmethod
    def _fill_layer_counts(cls, tree):
        return fill_layer_counts(tree)

    @field_validator("task")
    @classmethod
    def _known_task(cls, v):
        build_task(v)
        return v

    @field_validator("name")
    @classmethod
    def _name_names_a_directory(cls, v):
        return _check_label(v, "name")

    @field_validator("output_dir")
    @classmethod
    def _output_dir(cls, v):
        return _check_path(v, "output_dir")

    def build_task(self) -> Task:
        """The recipe's task object."""
        return build_task(self.task)

    @model_validator(mode="after")
    def _consistent(self):
        if "seed" in self.train.model_fields_set or any("seed" in spec.train.model_fields_set
                                                         for spec in self.teacher_specs.values()):
            raise ValueError("set the top-level 'seed' (or a teacher's 'seed'), not train.seed")
        augmented = self.data.augment.shift or self.data.augment.mixup
        if self.train.cache_teacher and augmented:
            raise ValueError("train.cache_teacher: the students' augmentation (data.augment) changes the teacher's "
                             "inputs every batch, so cached outputs would be stale; drop one of the two (a "
                             "method's own augment: only that student learns from the live teacher)")
        names = [m.name for m in self.methods]
        if len(set(names)) != len(names):
            twice = next(n for n in names if names.count(n) > 1)
            raise ValueError(f"methods need distinct labels: {excerpt(twice, 40)} is used twice "
                             "(give one of them 'label: NAME')")
        if self.teacher is not None and self.teachers is not None:
            raise ValueError("give either 'teacher' or 'teachers', not both")
        if self.teachers is not None:
            if not self.teachers:
                raise ValueError("'teachers' needs at least one teacher")
            for name in self.teachers:
                if not name or "/" in name or "." in name or "\\" in name or len(name) > 100 \
                        or not name.isprintable():
                    raise ValueError(f"teacher name {excerpt(name, 40)}: use 1-100 printable characters "
                                     "without '/', '\\' or '.'")
        kind = data_inputs(self.data.dataset)
        for m in self.methods:
            text_augment = self.student_data(m, "text_augment")
            if text_augment is not None and kind == "images":
                raise ValueError(f"method {excerpt(m.name, 40)}: text_augment rewrites texts, but data "
                                 f"{excerpt(self.data.dataset, 40)} is images")
            labelled = self.student_data(m, "student_labels") and text_augment is None
            uses = [t.name for stage in as_stages(m.build()) for t in stage.terms if t.labels]
            if uses and not labelled:
                raise ValueError(f"method {excerpt(m.name, 40)}: its student sees no labels ("
                                 f"{'text_augment' if text_augment else 'student_labels: false'}), but its term "
                                 f"{excerpt(uses[0], 40)} needs them; use label-free terms (kd with alpha: 1)")
            needs = method_inputs(m)
            if kind is not None and needs not in ("any", kind):
                what = {"tokens": "token sequences (text such as rotten-tomatoes, a language teacher and student)",
                        "images": "images and zoo models (it reads their feature taps such as stage2, last_stage)"}
                raise ValueError(f"method {excerpt(m.name, 40)} needs {what[needs]}, but data "
                                 f"{excerpt(self.data.dataset, 40)} is {'text' if kind == 'tokens' else 'images'}")
            own_task = TASK_OF_INPUTS.get(METHOD_INPUTS.get(m.method)) if m.method is not None else None
            if own_task is not None and self.build_task().name != own_task[0]:
                raise ValueError(f"method {excerpt(m.name, 40)} {own_task[1]} and needs 'task: {own_task[0]}' "
                                 f"({own_task[2]})")
            taps = [tap for stage in as_stages(m.build()) for t in stage.terms for tap in t.teacher_taps]
            if taps and not self.teacher_specs:
                raise ValueError(f"method {excerpt(m.name, 40)} needs a teacher, but the recipe has none")
            if m.teacher is not None and m.teacher not in (self.teachers or {}):
                raise ValueError(f"method {excerpt(m.name, 40)}: teacher {excerpt(m.teacher, 40)} is not one of the "
                                 f"recipe's 'teachers' ({clip(', '.join(self.teachers or {}), 80) or 'none'})")
            several = self.teachers is not None and m.teacher is None
            if m.data_free is not None and (several and len(self.teachers) > 1):
                raise ValueError(f"method {excerpt(m.name, 40)}: data-free distillation learns from one teacher; "
                                 "pick it with 'teacher: NAME'")
            for tap in taps:
                name, sep, _ = tap.partition("/")
                if several and (not sep or name not in self.teachers):
                    raise ValueError(f"method {excerpt(m.name, 40)} reads the teacher tap {excerpt(tap, 40)}, but "
                                     f"the recipe has several teachers: pick one with 'teacher: NAME' or read "
                                     f"'NAME/TAP' (NAME one of {clip(', '.join(self.teachers), 80)})")
        return self

    def student_data(self, method: MethodSpec, name: str):
        """``method``'s own ``augment`` / ``student_labels`` / ``text_augment``, else the recipe's ``data`` one."""
        own = getattr(method, name)
        return getattr(self.data, name) if own is None else own

    @property
    def teacher_specs(self) -> dict[str, TeacherSpec]:
        """The recipe's teachers by name (one teacher is called ``teacher``)."""
        if self.teachers is not None:
            return dict(self.teachers)
        return {} if self.teacher is None else {"teacher": self.teacher}


# Methods of language models take the student's and the teacher's layer counts (``pkd(student_layers=2,
# teacher_layers=6)``). A recipe that leaves them out gets them filled from the models' configs
# (``config.num_hidden_layers`` of the models it builds), before validation: the filled values are part of
# the parsed recipe, so recipe.yaml, the students' settings keys and ``distill bench`` all see them.
LAYER_PARAMS = ("student_layers", "teacher_layers")


def layer_params(method: str) -> list[str]:
    """The layer-count parameters of a language (``tokens``) method that have no default."""
    if METHOD_INPUTS.get(method) != "tokens":  # vision methods' teacher_layers are tap names
        return []
    params = inspect.signature(METHODS[method]).parameters
    return [p for p in LAYER_PARAMS if p in params and params[p].default is inspect.Parameter.empty]


def model_layers(spec: Any) -> int | None:
    """``config.num_hidden_layers`` of the model a recipe's model mapping builds, read without building it:
    ``bert`` (its ``layers`` option), ``minilm`` (MiniLM's config with the options' overrides), ``hf:PATH``
    (the folder's config.json); None for other models or options that are not a mapping."""
    import json

    if not isinstance(spec, dict) or not isinstance(spec.get("model"), str) or not isinstance(
            spec.get("options", {}), dict):
        return None
    name, options = spec["model"], spec.get("options") or {}
    if name == "bert":
        from distill.zoo.bert import bert

        return options.get("layers", inspect.signature(bert).parameters["layers"].default)
    if name == "minilm" or name.startswith("hf:"):
        if "num_hidden_layers" in options:
            return options["num_hidden_layers"]
        if name == "minilm":
            from distill.zoo.text import minilm_path

            config = minilm_path() / "config.json"
        else:
            config = Path(name[3:]).expanduser() / "config.json"
        try:
            return json.loads(config.read_text()).get("num_hidden_layers")
        except (OSError, ValueError, AttributeError):
            return None  # the model's own check names the folder
    return None


def fill_layer_counts(tree: Any) -> Any:
    """A copy of a recipe's mapping in which every language method that leaves out ``student_layers`` /
    ``teacher_layers`` has them from :func:`model_layers` of its student (the method's own, else the recipe's)
    and its teacher (the one it picks, else the recipe's ``teacher``, else the only one of ``teachers``)."""
    if not isinstance(tree, dict) or not isinstance(tree.get("methods"), list):
        return tree
    teachers = tree.get("teachers") if isinstance(tree.get("teachers"), dict) else {}
    methods = []
    for item in tree["methods"]:
        if isinstance(item, dict) and isinstance(item.get("method"), str) and item["method"] in METHODS:
            missing = [p for p in layer_params(item["method"]) if p not in item]
            if missing:
                picked = item.get("teacher")
                teacher = (teachers.get(picked) if isinstance(picked, str) else
                           tree.get("teacher") or (next(iter(teachers.values())) if len(teachers) == 1 else None))
                models = {"student_layers": item.get("student") or tree.get("student"), "teacher_layers": teacher}
                item = dict(item)
                for param in missing:
                    count = model_layers(models[param])
                    if count is not None:
                        item[param] = count
        methods.append(item)
    return {**tree, "methods": methods}


def method_inputs(method: MethodSpec) -> str:
    """What a recipe's method needs of the data: ``"tokens"`` (registered so: a language method), ``"images"``
    (it reads the zoo's feature taps: stage1..3, last_stage, embedding, a cohort's peers) or ``"any"``."""
    if method.method is not None and METHOD_INPUTS.get(method.method) in ("tokens", "causal_lm"):
        return "tokens"
    zoo = {*STAGES, "last_stage", "embedding"}
    for stage in as_stages(method.build()):
        for term in stage.terms:
            for tap in [*term.student_taps, *term.teacher_taps]:
                if not isinstance(tap, str):
                    continue
                base = tap.rpartition("/")[2].removeprefix("gradcam++(").removesuffix(")").partition(":")[0]
                if base in zoo or base.startswith(("peers.", "branches.")):
                    return "images"
    return "any"


def build_task(spec: str | dict) -> Task:
    """A task from a recipe's ``task:`` (a name, or a mapping with ``name`` and the task's options)."""
    options = dict(spec) if isinstance(spec, dict) else {"name": spec}
    name = options.pop("name", "classification")
    try:
        return get_task(name, **options)
    except TaskError as err:
        raise ValueError(str(err)) from None


_TAGS = {"str", "int", "float", "bool", "none", "list", "dict", "[key]", "function-after", "function-before",
         "function-wrap", "function-plain", "literal", "constrained-str", "constrained-int"}


def _is_tag(part) -> bool:
    """Whether a part of a pydantic error location names a union member (``dict[str,any]``), not a key."""
    return isinstance(part, str) and (part in _TAGS or ("[" in part and part.endswith("]")) or part.startswith(
        ("function-", "literal[", "lax-or-strict", "json-or-python", "chain[", "nullable[", "default[")))


def _format_error(err: ValidationError) -> str:
    """One line for pydantic's errors: the first one's field (each part cut short), its message (cut short),
    and how many more there are. Input values are never copied whole into it."""
    errors = err.errors(include_url=False, include_input=False, include_context=False)
    first = errors[0]
    if any(_is_tag(p) for p in first["loc"]):  # a union (int | None, str | dict): the error of the deepest branch
        first = max((e for e in errors if e["loc"][:1] == first["loc"][:1]), key=lambda e: len(e["loc"]))
    field = ".".join(clip(str(p), 40) for p in first["loc"] if not _is_tag(p))
    message = first["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    head = f"recipe field '{clip(field, 80)}': " if field else "recipe: "
    return head + clip(message, MAX_MESSAGE - len(head) - len(more)) + more


def bundled_recipes() -> dict[str, Path]:
    folder = resources.files("distill") / "recipes"
    return {Path(p.name).stem: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".yaml")}


# Bounds on recipe text: a recipe is a page of YAML, so anything far beyond these is a mistake or an attack.
MAX_RECIPE_BYTES = 1_000_000  # a recipe file
MAX_VALUE_CHARS = 100_000  # one --set value
MAX_DEPTH = 32  # nesting of mappings and lists, aliases expanded
MAX_NODES = 100_000  # scalars, mappings and lists, aliases expanded (a "billion laughs" bomb has 10**9)
MAX_INT_DIGITS = 19  # integers beyond int64 reach no setting
MAX_KEY_CHARS = 200  # one --set key
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


class _TooBig(Exception):
    """Recipe text beyond the bounds above."""


class BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with bounds: nesting depth, the size and depth of the document with its aliases
    expanded (checked on the composed node graph, before anything is built or printed), recursive aliases,
    and the length of integers."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _TooBig(f"nested deeper than {MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_document(self):
        node = super().compose_document()
        _check_expanded(node)
        return node

    def construct_yaml_int(self, node):
        text = str(self.construct_scalar(node))
        if len(text.replace("_", "").lstrip("+-")) > MAX_INT_DIGITS:
            raise _TooBig(f"integer {excerpt(text, 24)} is too long (at most {MAX_INT_DIGITS} digits)")
        try:
            return super().construct_yaml_int(node)
        except (ValueError, TypeError):
            raise _TooBig(f"{excerpt(text, 40)} is not an integer") from None

    def construct_yaml_float(self, node):
        text = str(self.construct_scalar(node))
        try:
            return super().construct_yaml_float(node)
        except (ValueError, TypeError):
            raise _TooBig(f"{excerpt(text, 40)} is not a number") from None


BoundedLoader.add_constructor("tag:yaml.org,2002:int", BoundedLoader.construct_yaml_int)
BoundedLoader.add_constructor("tag:yaml.org,2002:float", BoundedLoader.construct_yaml_float)


def _check_expanded(root) -> None:
    """Refuse a node graph whose expansion (every alias replaced by its anchor's content) is too large or too
    deep, or that contains itself; computed once per node, never expanded."""
    if root is None:
        return
    done: dict[int, tuple[int, int]] = {}  # id(node) -> (nodes, height) of its expansion
    path: set[int] = set()

    def measure(node) -> tuple[int, int]:
        key = id(node)
        if key in done:
            return done[key]
        if key in path:
            raise _TooBig("an alias refers to the mapping or list it is in (a loop)")
        path.add(key)
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [item for pair in node.value for item in pair]
        else:
            children = []
        count, height = 1, 0
        for child in children:
            c, h = measure(child)
            count, height = count + c, max(height, h)
            if count > MAX_NODES:
                raise _TooBig(f"more than {MAX_NODES:,} values once its aliases (*name) are expanded")
        path.discard(key)
        if height + 1 > MAX_DEPTH:
            raise _TooBig(f"nested deeper than {MAX_DEPTH} levels once its aliases (*name) are expanded")
        done[key] = (count, height + 1)
        return done[key]

    measure(root)


def _yaml_error(err: yaml.YAMLError) -> str:
    """One line for a YAML error: the problem and where (line, column)."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or getattr(err, "context", None)
    if problem is None:
        return error_line(err, 120)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{clip(problem, 100)}{where}"


def load_yaml_text(text: str, what: str):
    """YAML ``text`` as data, within the bounds above; anything else is a one-line :class:`RecipeError`
    starting with ``what`` (``recipe my.yaml``, ``--set train.epochs``)."""
    try:
        return yaml.load(text, Loader=BoundedLoader)  # noqa: S506 - a SafeLoader with bounds
    except _TooBig as err:
        raise RecipeError(f"{what}: {err}") from None
    except yaml.YAMLError as err:
        raise RecipeError(f"{what}: invalid YAML ({_yaml_error(err)})") from None
    except (ValueError, TypeError, OverflowError, RecursionError, MemoryError) as err:  # a tag's constructor
        raise RecipeError(f"{what}: cannot read a value ({error_line(err, 100)})") from None


def decode_recipe(data: bytes, what: str) -> str:
    """Recipe bytes as text: UTF-8, or UTF-8 / UTF-16 / UTF-32 with a byte-order mark; else one line."""
    if len(data) > MAX_RECIPE_BYTES:
        raise RecipeError(f"{what}: {len(data):,} bytes is too large for a recipe (at most {MAX_RECIPE_BYTES:,})")
    encoding = next((name for bom, name in _BOMS if data.startswith(bom)), "utf-8")
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as err:
        if encoding == "utf-8" and b"\x00" in data[:1000]:
            hint = "it looks like UTF-16 or UTF-32 without a byte-order mark; save it as UTF-8"
        else:
            line = data[: err.start].count(b"\n") + 1
            hint = f"byte 0x{data[err.start]:02x} at line {line} is not {encoding.upper()}; save the file as UTF-8"
        raise RecipeError(f"{what}: not a text file ({hint})") from None


def _show_path(path) -> str:
    """A path for a message: its last 80 characters at most."""
    text = str(path)
    return text if len(text) <= 80 else "…" + text[-79:]


def read_recipe_file(path: str | Path) -> dict:
    """The YAML mapping in the file ``path`` (a recipe, or a run directory's ``recipe.yaml``): bytes, then text
    (byte-order marks understood), then data within the bounds above; every failure a one-line RecipeError."""
    what = f"recipe {_show_path(path)}"
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_RECIPE_BYTES + 1)
    except FileNotFoundError:
        raise RecipeError(f"{what}: file not found") from None
    except IsADirectoryError:
        raise RecipeError(f"{what}: is a directory, not a recipe file") from None
    except (OSError, ValueError) as err:  # a name too long, a NUL byte, no permission, ...
        raise RecipeError(f"{what}: cannot read it ({getattr(err, 'strerror', None) or error_line(err, 80)})") from None
    tree = load_yaml_text(decode_recipe(data, what), what)
    if not isinstance(tree, dict):
        raise RecipeError(f"{what}: expected a mapping (key: value lines) at the top level, "
                          f"got {type(tree).__name__ if tree is not None else 'an empty file'}")
    return tree


_INDEX = re.compile(r"0|[1-9][0-9]{0,5}", re.ASCII)
_KEY_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_+-]*", re.ASCII)


def _set_key(tree: dict, dotted: str, value) -> None:
    """Set ``tree[a][b]...`` for ``dotted`` = ``a.b...``. Grammar: parts separated by single dots, each a
    key (ASCII letters, digits, ``_``, ``-``, ``+``; new keys are made in mappings) or, inside a list, an
    item number (plain ASCII digits, ``0`` to the list's length - 1)."""
    shown = clip(dotted, 60)
    if len(dotted) > MAX_KEY_CHARS:
        raise RecipeError(f"--set {shown}: key longer than {MAX_KEY_CHARS} characters")
    parts = dotted.split(".")
    if len(parts) > MAX_DEPTH:
        raise RecipeError(f"--set {shown}: more than {MAX_DEPTH} parts")
    for part in parts:
        if not part:
            raise RecipeError(f"--set {shown}: empty part in the key (write parts as section.key, e.g. "
                              "train.epochs=5)")
        if not _KEY_PART.fullmatch(part):
            raise RecipeError(f"--set {shown}: {excerpt(part, 40)} is not a key (use ASCII letters, digits, "
                              "'_' and '-')")
    node: Any = tree
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        where = ".".join(parts[:i]) or "the recipe"
        if isinstance(node, list):
            if not _INDEX.fullmatch(part) or int(part) >= len(node):
                raise RecipeError(f"--set {shown}: {clip(where, 40)} is a list of {len(node)}; "
                                  f"{_index_hint(node, part, parts, i)}")
            key: Any = int(part)
        elif isinstance(node, dict):
            key = part
        else:
            raise RecipeError(f"--set {shown}: {clip(where, 40)} is {excerpt(node, 30)}, not a section")
        if last:
            node[key] = value
        else:
            if isinstance(node, dict) and (key not in node or node[key] is None):
                node[key] = {}
            node = node[key]


def _index_hint(items: list, part: str, parts: list[str], i: int) -> str:
    """What to write instead of ``part`` as an item number of ``items`` (a method named ``part``: its number)."""
    named = [k for k, item in enumerate(items) if isinstance(item, dict)
             and part in (item.get("label"), item.get("method"))]
    if named:
        fixed = ".".join([*parts[:i], str(named[0]), *parts[i + 1:]])
        return f"{excerpt(part, 20)} is item {named[0]}: write {clip(fixed, 60)}"
    span = f"0 to {len(items) - 1}" if items else "none: it is empty"
    return f"give an item number ({span}), not {excerpt(part, 20)}"


def apply_overrides(tree: dict, overrides: list[str]) -> dict:
    """Apply ``key.sub=value`` strings; values are parsed as YAML (``3``, ``0.5``, ``[64, 32]``, ``null``), within
    the recipe file's bounds; text that is not YAML is kept as a string."""
    for item in overrides or []:
        key, sep, raw = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            raise RecipeError(f"--set expects key=value, got {excerpt(item, 60)}")
        if len(raw) > MAX_VALUE_CHARS:
            raise RecipeError(f"--set {clip(key, 60)}: value longer than {MAX_VALUE_CHARS:,} characters")
        try:
            value = load_yaml_text(raw, f"--set {clip(key, 60)}")
        except RecipeError as err:
            if "invalid YAML" not in str(err):  # too deep or large, an alias loop, a bad !!int ...
                raise
            value = raw  # not YAML: the text itself (e.g. a description with a colon and a quote)
        _set_key(tree, key, value)
    return tree


def read_recipe_tree(source: str | Path) -> dict:
    """The raw YAML mapping of a recipe file or bundled recipe name."""
    bundled = bundled_recipes()
    if str(source) in bundled:
        return read_recipe_file(bundled[str(source)])
    try:
        exists = Path(source).exists()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte
        exists = False
    if not exists:
        raise RecipeError(f"recipe not found: {_show_path(source)} (a file, or a bundled recipe: "
                          f"{', '.join(sorted(bundled))})")
    return read_recipe_file(source)


def parse_recipe(tree: dict) -> Recipe:
    """Validate a recipe's mapping; any problem is a one-line :class:`RecipeError` naming the field."""
    if not isinstance(tree, dict):
        raise RecipeError(f"a recipe is a mapping (key: value lines), got {type(tree).__name__}")
    try:
        return Recipe.model_validate(tree)
    except ValidationError as err:
        raise RecipeError(_format_error(err)) from None
    except RecipeError:
        raise
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, OverflowError, RecursionError,
            MemoryError) as err:  # raised by a builder a validator called; still the recipe's fault
        raise RecipeError(f"recipe: {type(err).__name__}: {error_line(err, 200)}") from None


def load_recipe(source: str | Path = "default", overrides: list[str] | None = None) -> Recipe:
    """Read a recipe (file path or bundled name), apply ``--set`` overrides and validate it."""
    return parse_recipe(apply_overrides(read_recipe_tree(source), overrides or []))


def dump_recipe(recipe: Recipe) -> str:
    """The recipe with every default filled in, as YAML that :func:`load_recipe` reads back to the same recipe."""
    tree = recipe.model_dump(mode="json")
    tree["methods"] = [m.model_dump(mode="json", exclude_unset=True) for m in recipe.methods]
    tree["train"].pop("seed")
    if recipe.data.chosen_val_size is None:  # the loader's default for the data's size, again on --resume
        tree["data"].pop("val_size")
    for spec in [tree["teacher"]] if tree.get("teacher") else (tree.get("teachers") or {}).values():
        spec["train"].pop("seed")
    return yaml.safe_dump(tree, sort_keys=False)
