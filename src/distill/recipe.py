"""Recipes: YAML files validated by a pydantic schema.

A recipe names the data, the teacher (a checkpoint, or how to train one), the
student, one or more methods (each trains the same student from the same
initialisation, so they can be compared) and the training settings. Everything
a recipe does is a few lines of Python with :class:`distill.Distiller`.

Load with :func:`load_recipe`; bad input raises :class:`RecipeError` whose
message is one line naming the field.
"""
from __future__ import annotations

import inspect
import typing
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from distill.datafree import OBJECTIVES, SyntheticSet, deep_inversion
from distill.engine import TrainConfig
from distill.methods import METHODS
from distill.stages import as_stages
from distill.terms import LOSSES, Term
from distill.sources import check_data_name, check_model_name
from distill.tasks import Task, TaskError, get_task


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names the field."""


def error_line(err: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty), for one-line reports."""
    text = str(err).strip().strip("'\"")
    return text.splitlines()[0] if text else type(err).__name__


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check_params(fn, params: dict, what: str) -> None:
    """Every key must be a parameter of ``fn`` and every value must fit its type annotation."""
    accepted = inspect.signature(fn).parameters
    hints = typing.get_type_hints(fn.__init__ if isinstance(fn, type) else fn)
    for key, value in params.items():
        if key not in accepted:
            options = ", ".join(p for p in accepted if p not in ("student_logits", "teacher_logits", "labels",
                                                                   "student_features", "teacher_features"))
            raise ValueError(f"{what} has no parameter {key!r} (accepted: {options or 'none'})")
        if key in hints:
            try:
                TypeAdapter(hints[key]).validate_python(value, strict=True)
            except ValidationError as err:
                raise ValueError(f"{what} parameter {key!r}: {err.errors()[0]['msg']}, got {value!r}") from None


class ModelSpec(_Strict):
    model: str = Field(description="a zoo model name (distill list models), hf:PATH (a local Hugging Face folder, "
                       "its head chosen by the task) or package.module:factory (your own code)")
    options: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the builder")
    checkpoint: Path | None = Field(None, description="safetensors weights to load instead of training")

    @field_validator("model")
    @classmethod
    def _known_model(cls, v: str) -> str:
        return check_model_name(v)

    @field_validator("checkpoint")
    @classmethod
    def _existing(cls, v: Path | None) -> Path | None:
        if v is not None and not Path(v).expanduser().is_file():
            raise ValueError(f"file not found: {v}")
        if v is not None and Path(v).suffix not in (".safetensors", ".pt", ".pth", ".bin"):
            raise ValueError(f"{v}: expected .safetensors (or a torch state dict: .pt, .pth, .bin)")
        return Path(v).expanduser() if v is not None else None


class AugmentSpec(_Strict):
    shift: int = Field(0, ge=0, le=8, description="random shift of up to this many pixels (Hinton's jitter)")
    mixup: float | None = Field(None, gt=0, description="mix images within the batch, Beta(mixup, mixup) "
                                "weights; labels are not mixed (use KD alone)")


class DataSpec(_Strict):
    dataset: str = Field(description="a bundled dataset (distill list datasets) or package.module:function "
                         "returning train, val and test datasets")
    val_size: int = Field(5000, ge=1, description="validation samples carved from the training set")
    train_size: int | None = Field(None, ge=1, description="keep only this many training samples")
    test_size: int | None = Field(None, ge=1, description="keep only the first this many test samples (quick checks)")
    augment: AugmentSpec = Field(default_factory=AugmentSpec, description="augmentation of the student's batches")
    student_labels: bool = Field(True, description="false: students see the training inputs without labels, a "
                                 "transfer set taught by the teacher alone (use label-free terms such as kd)")

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, v: str) -> str:
        return check_data_name(v)


class TeacherSpec(ModelSpec):
    train: TrainConfig = Field(default_factory=TrainConfig, description="how to train it when there is no checkpoint")
    augment: AugmentSpec | None = Field(None, description="augmentation for training the teacher (default: data.augment)")
    cache: bool = Field(True, description="reuse a teacher trained by an earlier run with the same settings")
    seed: int | None = Field(None, description="seed for training the teacher (default: the recipe's seed); fix it "
                                               "to distil one teacher into students of several seeds")


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
            raise ValueError(f"unknown loss {self.loss!r}; available: {', '.join(sorted(LOSSES))}")
        _check_params(LOSSES[self.loss][0], self.model_extra or {}, f"loss {self.loss!r}")
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
    size: int = Field(12800, ge=1, description="synthetic samples per epoch")
    images: int | None = Field(None, ge=1, description="deep_inversion: images synthesised once (default: size), "
                               "repeated to size samples per epoch")
    generator: dict[str, Any] = Field(default_factory=dict, description="options of the zoo 'generator' "
                                      "(latent, width)")

    @model_validator(mode="after")
    def _known(self):
        if self.objective not in DATA_FREE:
            raise ValueError(f"unknown data-free objective {self.objective!r}; available: {', '.join(DATA_FREE)}")
        fn = deep_inversion if self.objective == "deep_inversion" else SyntheticSet
        params = dict(self.model_extra or {})
        for fixed in ("teacher", "objective", "generator", "student", "input_shape", "num_images", "num_classes",
                      "seed", "say"):
            if fixed in params:
                raise ValueError(f"{fixed!r} is set by the recipe, not by data_free")
        _check_params(fn, params, f"data_free {self.objective!r}")
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
    generations: int = Field(1, ge=1, description="born-again networks: the student's architecture trained this "
                             "many times, each generation teaching the next; the last is the student")
    student: ModelSpec | None = Field(None, description="this method's own student model (default: the recipe's), "
                                      "e.g. a cohort of peers for DML; its row reports the deployed network")
    teacher: str | None = Field(None, description="with several 'teachers': the one this method learns from "
                                "(default: all of them, as taps 'NAME/TAP')")
    augment: AugmentSpec | None = Field(None, description="this student's augmentation (default: data.augment)")
    student_labels: bool | None = Field(None, description="false: this student sees the training inputs without "
                                        "labels (default: data.student_labels)")
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
                raise ValueError(f"unknown method {self.method!r}; available: {', '.join(sorted(METHODS))}")
            _check_params(METHODS[self.method], self.model_extra or {}, f"method {self.method!r}")
            try:
                self.build()
            except (TypeError, ValueError) as err:
                raise ValueError(f"method {self.method!r}: {err}") from None
        elif self.model_extra:
            raise ValueError(f"unknown keys {sorted(self.model_extra)} beside 'terms'")
        return self

    @property
    def name(self) -> str:
        return self.label or self.method or "custom"

    def build(self) -> list[Term]:
        if self.terms is not None:
            return [t.build() for t in self.terms]
        return METHODS[self.method](**(self.model_extra or {}))


class EvaluationSpec(_Strict):
    latency_batch_size: int = Field(256, ge=1, description="batch size for CPU inference timing")
    latency_repeats: int = Field(20, ge=1)
    cam_agreement_images: int = Field(0, ge=0, description="test images on which each student's Grad-CAM++ maps "
                                                           "are compared with the teacher's (0: not measured)")
    cam_layer: str = Field("last_stage", description="the layer (tap) whose Grad-CAM++ maps are compared")


class Recipe(_Strict):
    name: str = "run"
    description: str = ""
    seed: int = Field(0, description="seeds data order, initialisation and augmentation of every model")
    task: str | dict[str, Any] = Field("classification", description="what kind of problem (distill.tasks): a name "
                                       "(classification, regression, multilabel, tokens, embedding) or "
                                       "{name: ..., options such as pad_token_id, shift, pooling}")
    data: DataSpec
    teacher: TeacherSpec | None = None
    teachers: dict[str, TeacherSpec] | None = Field(None, description="several teachers by name (instead of "
                                                    "'teacher'); methods read them as 'NAME/TAP' or pick one")
    student: ModelSpec
    methods: list[MethodSpec] = Field(default_factory=lambda: [MethodSpec(method="kd")], min_length=1)
    train: TrainConfig = Field(default_factory=TrainConfig, description="how the students are trained")
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    output_dir: Path = Field(Path("runs"), description="run directories are created under this folder")

    @field_validator("task")
    @classmethod
    def _known_task(cls, v):
        build_task(v)
        return v

    def build_task(self) -> Task:
        """The recipe's task object."""
        return build_task(self.task)

    @model_validator(mode="after")
    def _consistent(self):
        if "seed" in self.train.model_fields_set or any("seed" in spec.train.model_fields_set
                                                         for spec in self.teacher_specs.values()):
            raise ValueError("set the top-level 'seed' (or a teacher's 'seed'), not train.seed")
        names = [m.name for m in self.methods]
        if len(set(names)) != len(names):
            raise ValueError(f"methods need distinct labels, got {names}")
        if self.teacher is not None and self.teachers is not None:
            raise ValueError("give either 'teacher' or 'teachers', not both")
        if self.teachers is not None:
            if not self.teachers:
                raise ValueError("'teachers' needs at least one teacher")
            for name in self.teachers:
                if not name or "/" in name or "." in name:
                    raise ValueError(f"teacher name {name!r}: use a name without '/' or '.'")
        for m in self.methods:
            taps = [tap for stage in as_stages(m.build()) for t in stage.terms for tap in t.teacher_taps]
            if taps and not self.teacher_specs:
                raise ValueError(f"method {m.name!r} needs a teacher, but the recipe has none")
            if m.teacher is not None and m.teacher not in (self.teachers or {}):
                raise ValueError(f"method {m.name!r}: teacher {m.teacher!r} is not one of the recipe's 'teachers' "
                                 f"({', '.join(self.teachers or {}) or 'none'})")
            several = self.teachers is not None and m.teacher is None
            if m.data_free is not None and (several and len(self.teachers) > 1):
                raise ValueError(f"method {m.name!r}: data-free distillation learns from one teacher; "
                                 "pick it with 'teacher: NAME'")
            for tap in taps:
                name, sep, _ = tap.partition("/")
                if several and (not sep or name not in self.teachers):
                    raise ValueError(f"method {m.name!r} reads the teacher tap {tap!r}, but the recipe has several "
                                     f"teachers: pick one with 'teacher: NAME' or read 'NAME/TAP' "
                                     f"(NAME one of {', '.join(self.teachers)})")
        return self

    @property
    def teacher_specs(self) -> dict[str, TeacherSpec]:
        """The recipe's teachers by name (one teacher is called ``teacher``)."""
        if self.teachers is not None:
            return dict(self.teachers)
        return {} if self.teacher is None else {"teacher": self.teacher}


def build_task(spec: str | dict) -> Task:
    """A task from a recipe's ``task:`` (a name, or a mapping with ``name`` and the task's options)."""
    options = dict(spec) if isinstance(spec, dict) else {"name": spec}
    name = options.pop("name", "classification")
    try:
        return get_task(name, **options)
    except TaskError as err:
        raise ValueError(str(err)) from None


def _format_error(err: ValidationError) -> str:
    first = err.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "recipe"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"recipe field '{field}': {message}{more}"


def bundled_recipes() -> dict[str, Path]:
    folder = resources.files("distill") / "recipes"
    return {Path(p.name).stem: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".yaml")}


def _set_key(tree: dict, dotted: str, value) -> None:
    parts = dotted.split(".")
    node = tree
    for i, part in enumerate(parts[:-1]):
        key: Any = int(part) if isinstance(node, list) else part
        try:
            child = node[key]
        except (KeyError, IndexError, TypeError):
            if isinstance(node, dict):
                child = node[key] = {}
            else:
                raise RecipeError(f"--set {dotted}: '{'.'.join(parts[:i + 1])}' does not exist") from None
        node = child
    last = parts[-1]
    if isinstance(node, list):
        try:
            node[int(last)] = value
        except (ValueError, IndexError):
            raise RecipeError(f"--set {dotted}: no list item {last!r}") from None
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise RecipeError(f"--set {dotted}: '{'.'.join(parts[:-1])}' is not a section")


def apply_overrides(tree: dict, overrides: list[str]) -> dict:
    """Apply ``key.sub=value`` strings; values are parsed as YAML (``3``, ``0.5``, ``[64, 32]``, ``null``)."""
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise RecipeError(f"--set expects key=value, got {item!r}")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        _set_key(tree, key.strip(), value)
    return tree


def read_recipe_tree(source: str | Path) -> dict:
    """The raw YAML mapping of a recipe file or bundled recipe name."""
    bundled = bundled_recipes()
    path = bundled[str(source)] if str(source) in bundled else Path(source)
    if not path.is_file():
        raise RecipeError(f"recipe not found: {source} (bundled recipes: {', '.join(sorted(bundled))})")
    try:
        tree = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise RecipeError(f"recipe {path}: invalid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(tree, dict):
        raise RecipeError(f"recipe {path}: expected a mapping at the top level")
    return tree


def parse_recipe(tree: dict) -> Recipe:
    try:
        return Recipe.model_validate(tree)
    except ValidationError as err:
        raise RecipeError(_format_error(err)) from None


def load_recipe(source: str | Path = "default", overrides: list[str] | None = None) -> Recipe:
    """Read a recipe (file path or bundled name), apply ``--set`` overrides and validate it."""
    return parse_recipe(apply_overrides(read_recipe_tree(source), overrides or []))


def dump_recipe(recipe: Recipe) -> str:
    """The recipe with every default filled in, as YAML that :func:`load_recipe` reads back to the same recipe."""
    tree = recipe.model_dump(mode="json")
    tree["methods"] = [m.model_dump(mode="json", exclude_unset=True) for m in recipe.methods]
    tree["train"].pop("seed")
    for spec in [tree["teacher"]] if tree.get("teacher") else (tree.get("teachers") or {}).values():
        spec["train"].pop("seed")
    return yaml.safe_dump(tree, sort_keys=False)
