"""Running a recipe: get a teacher, train each method's student, measure everything.

The run directory::

    RUN_DIR/recipe.yaml            the resolved recipe
    RUN_DIR/teacher/               the teacher's training run (when trained here)
    RUN_DIR/students/<label>/      one Distiller run per method
    RUN_DIR/summary.json, summary.md
"""
from __future__ import annotations

import json
import shutil
import time
from datetime import datetime
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model
from torch.utils.data import Subset

from distill import distributed, sources
from distill.cache import TeacherOutputs, weights_digest
from distill.data import ArrayDataset, unlabelled
from distill.datafree import SyntheticSet, deep_inversion, input_statistics
from distill.engine import TrainConfig, seed_everything
from distill.evaluation import count_macs, count_parameters, evaluate, inference_time
from distill.explain import CamReference, ExplainError
from distill.fileio import atomic_save_model, atomic_save_tensors, atomic_write_text, settings_key
from distill.lock import RunDirLocked, RunLock
from distill.recipe import Recipe, RecipeError, dump_recipe, parse_recipe, read_recipe_file
# get_teacher, cache_dir, teacher_seed, TeacherNotTrained: also reachable here, as before they moved
from distill.run_models import (NOT_TRAINING, TeacherNotTrained, augment_from_spec, build_from_spec, cache_dir,  # noqa: F401
                                check_model_specs, data_task, deployable, get_teacher, load_data, say, task_key,
                                teacher_key, teacher_seed)
from distill.stages import as_stages, fit_stages
from distill.terms import Term
from distill.zoo import build_model


def student_settings_key(recipe: Recipe, method, stages) -> str:
    """What a student's training depends on: a finished student is reused only if this is unchanged."""
    def describe(term: Term) -> str:
        return repr(term) + repr(getattr(term.fn, "kwargs", "")) + repr(term.connector)

    payload = {"method": method.model_dump(mode="json", exclude_defaults=True),
               "student": recipe.student.model_dump(mode="json", exclude_defaults=True),
               "stages": [[describe(t) for t in stage.terms] + [repr((stage.epochs, stage.train_up_to))]
                          for stage in stages],
               "train": recipe.train.model_dump(mode="json", exclude_defaults=True,
                                                exclude=NOT_TRAINING - {"cache_teacher"}),
               "data": recipe.data.model_dump(mode="json", exclude_defaults=True, exclude={"test_size"}),
               "seed": recipe.seed, "teacher": _teachers_key(recipe, method), **task_key(recipe)}
    return settings_key(payload, 16)


def _teachers_key(recipe: Recipe, method):
    if recipe.teacher is not None:
        return [teacher_key(recipe), str(recipe.teacher.checkpoint)]
    if recipe.teachers is None:
        return None
    used = [method.teacher] if method.teacher is not None else list(recipe.teachers)
    return [[name, teacher_key(recipe, name), str(recipe.teachers[name].checkpoint)] for name in used]


def teacher_digest(teacher, method=None, stages=None, known: dict[int, str] | None = None) -> str | None:
    """A hash of the weights a student learns from (one teacher, or a mapping of several), or None when
    there is no teacher or ``method`` (built into ``stages``) never asks it anything. ``known`` maps
    ``id(model)`` to a digest already computed for it (a run hashes each teacher once).

    Kept in each student's info and row: a teacher retrained to other weights under the same settings (on
    another machine or thread count, where CPU kernels round differently) makes its students stale."""
    asks = stages is None or bool(method.via) or any(t.teacher is not None for st in stages for t in st.terms)
    if teacher is None or not asks:
        return None

    def digest(model):
        return (known or {}).get(id(model)) or weights_digest(model)

    if isinstance(teacher, dict):
        return ",".join(f"{name}:{digest(model)}" for name, model in teacher.items())
    return digest(teacher)


def _same_teacher(info: dict, digest: str | None, unrecorded: bool = True) -> bool:
    """Whether a finished student (its info or row) learnt from the teacher whose :func:`teacher_digest` is
    ``digest``. The digest is kept under the JSON key ``teacher_weights``. Rows written before teacher digests
    were recorded carry none: ``unrecorded`` says whether to trust them."""
    if "teacher_weights" not in info:
        return digest is None or unrecorded
    return info["teacher_weights"] == digest


def _teachers_unchanged(run_dir: Path, rows: list[dict]) -> bool:
    """Whether the teachers measured now (``rows``) score as the run's earlier summary recorded: the check
    for students whose rows predate teacher weight hashes."""
    try:
        earlier = {r["label"]: r for r in json.loads((run_dir / "summary.json").read_text())["rows"]}
    except (OSError, ValueError, KeyError):
        return True  # no earlier summary: nothing to compare with

    def same(old: dict | None, new: dict) -> bool:
        if old is None:
            return False
        keys = ("weights",) if "weights" in old else ("test_accuracy", "val_accuracy")
        return all(old.get(k) == new[k] for k in keys)

    return all(same(earlier.get(r["label"]), r) for r in rows)


def method_teacher(recipe: Recipe, method, teachers: dict):
    """What ``method`` learns from: the one teacher, the teacher it picks, or all of them as a mapping."""
    if not teachers:
        return None
    if recipe.teacher is not None:
        return teachers["teacher"]
    return teachers[method.teacher] if method.teacher is not None else dict(teachers)


def train_student(recipe: Recipe, method, data, teacher, run_dir: Path, resume: bool = False,
                  trust_pickle: bool = False, teacher_outputs: TeacherOutputs | None = None,
                  digest: str | None = None):
    """Train one method's student; returns (student, info). A finished run in ``run_dir`` is reused.
    ``teacher_outputs`` shares the cached teacher outputs (``train.cache_teacher``) between students;
    ``digest``, the :func:`teacher_digest` of ``teacher`` when the caller has it already.

    With ``via`` (teacher assistants) or ``generations`` (born-again networks) the method trains a
    chain: the teacher teaches the first model, each model the next, the last one teaches the
    student; each step is an ordinary run in ``students/<label>/step-K``, reported in ``info["chain"]``.
    """
    stages = as_stages(method.build())
    own = run_dir / "students" / method.name
    key = student_settings_key(recipe, method, stages)
    digest = digest or teacher_digest(teacher, method, stages)
    saved = own / "summary.json"
    info = distributed.on_main(
        lambda: json.loads(saved.read_text()).get("info", {}) if resume and saved.is_file() else {})
    if info.get("key") == key and _same_teacher(info, digest):
        return _saved_student(recipe, method, data, own), info
    if "key" in info:  # a finished run with other settings (without a key it was cut off before its bookkeeping)
        changed = "settings" if info["key"] != key else "teacher's weights"
        say(f"student [{method.name}]: its {changed} changed since the finished run in {own}; training it again")
        distributed.on_main(lambda: shutil.rmtree(own))
    spec = method.student or recipe.student
    chain, models, steps = [], [], [*method.via] + [spec] * (method.generations - 1)
    started = time.perf_counter()
    for k, step in enumerate(steps, start=1):
        seed_everything(recipe.seed * 1000 + k)  # each generation starts from its own initialisation
        model = build_from_spec(step, data)
        say(f"student [{method.name}]: chain step {k}/{len(steps) + 1}, {step.model}")
        if method.generations > 1 and k == 1:  # born-again: the first generation learns from the labels
            _fit(recipe, method, as_stages([Term("ce")]), model, None, data, own / "step-1", resume, trust_pickle,
                 None, f"{key}-step1")
        elif k == 1:  # the recipe's teacher teaches the first step: its shared outputs
            _fit(recipe, method, stages, model, teacher, data, own / "step-1", resume, trust_pickle,
                 teacher_outputs, f"{key}-step1")
        else:  # the step before teaches: outputs of its own, apart from the recipe teacher's
            _fit(recipe, method, stages, model, teacher, data, own / f"step-{k}", resume, trust_pickle,
                 None, f"{key}-step{k}", cache=(method.name, key, f"step-{k}"))
        chain.append({"model": step.model, "params": count_parameters(model), **_scores(model, data, teacher)})
        models.append(model)
        teacher = model
    seed_everything(recipe.seed)  # every method starts from the same student initialisation
    student = build_from_spec(spec, data)
    described = [", ".join(f"{t.weight:g}*{t.name}" if isinstance(t.weight, (int, float)) else f"{t.weight}*{t.name}"
                           for t in stage.terms) for stage in stages]
    say(f"student [{method.name}]: {' | then '.join(described)}")
    result = _fit(recipe, method, stages, student, teacher, data, own, resume, trust_pickle,
                  None if chain else teacher_outputs, key, cache=(method.name, key, "student") if chain else ())
    info = {"train_seconds": time.perf_counter() - started, "epoch_seconds": result["epoch_seconds"], "key": key}
    if digest is not None:
        info["teacher_weights"] = digest  # the JSON key predates the name teacher_digest; old runs keep resuming
    if chain:
        info["chain"] = chain
        if method.generations > 1 and len(data.test):  # born-again networks: the generations' ensemble too
            info["ensemble_test_accuracy"] = ensemble_accuracy(models[len(method.via):] + [student], data.test)
    distributed.on_main(lambda: atomic_write_text(saved, json.dumps({**result["summary"], "info": info}, indent=2)))
    return student, info


def _saved_student(recipe: Recipe, method, data, own: Path) -> torch.nn.Module:
    """The finished student of ``method`` in the run directory ``own``."""
    seed_everything(recipe.seed)
    student = build_from_spec(method.student or recipe.student, data)
    load_model(student, str(own / "student.safetensors"))
    return student


def teacher_outputs_dir(directory: str | Path | None, *parts: str) -> str | None:
    """Where one teacher's cached outputs go: ``directory/parts...`` (``train.teacher_cache_dir``), or None.
    (Under several processes rank 0 writes it and the others read it: :class:`~distill.cache.CachedTeacher`.)"""
    return None if directory is None else str(Path(directory).joinpath(*parts))


def _fit(recipe: Recipe, method, stages, model, teacher, data, own: Path, resume: bool, trust_pickle: bool,
         outputs, key: str, cache: tuple[str, ...] = ()) -> dict:
    """Train ``model`` through ``stages`` in ``own``, or load it when a finished run there has ``key``.

    ``outputs``: the teacher's shared cached outputs (``train.cache_teacher``); without them, a
    ``train.teacher_cache_dir`` is used at ``teacher_cache_dir/cache...`` (a chain step's teacher is not
    the recipe's, so its outputs live apart)."""
    done = own / "summary.json"
    finished = distributed.on_main(lambda: json.loads(done.read_text()) if resume and done.is_file() else {})
    if finished.get("info", {}).get("key") == key:
        load_model(model, str(own / "student.safetensors"))
        return {"epoch_seconds": [], "summary": finished}
    config: TrainConfig = recipe.train.model_copy(update={"seed": recipe.seed})
    if outputs is None and config.teacher_cache_dir is not None:
        config = config.model_copy(update={"teacher_cache_dir": teacher_outputs_dir(config.teacher_cache_dir, *cache)})
    train, augment = _student_data(recipe, method, model, teacher, data, own)
    if train is not data.train or augment is not None:
        outputs = None  # the shared teacher outputs belong to the plain training set
        if augment is not None or getattr(train, "synthetic", False):  # inputs change every batch
            config = config.model_copy(update={"cache_teacher": False, "teacher_cache_dir": None,
                                               "teacher_top_k": None})
    result = fit_stages(model, teacher, stages, train, data.val, config=config, run_dir=own, augment=augment,
                        resume=resume, trust_pickle=trust_pickle, teacher_outputs=outputs, say=say,
                        task=data_task(data), hyperparameters={"recipe": recipe.model_dump(mode="json"),
                                                               "student": method.name})
    distributed.broadcast_module(model)  # rank 0's BatchNorm statistics, as saved

    def record() -> dict:  # rank 0 wrote the run's files (the engine's summary.json too); the others wait here
        if hasattr(train, "samples"):  # a generator's images, for distill report
            atomic_save_tensors({"images": train.samples(64)}, own / "samples.safetensors")
        if len(stages) > 1:
            atomic_save_model(model, own / "student.safetensors")
            summary = {"stages": len(stages), "final": result["history"][-1] if result["history"] else {}}
        else:
            summary = json.loads(done.read_text())
        atomic_write_text(done, json.dumps({**summary, "info": {"key": key}}, indent=2))
        return summary

    return {**result, "summary": distributed.on_main(record)}


def _student_data(recipe: Recipe, method, student, teacher, data, own: Path):
    """The training set and augmentation of ``method``'s student: the recipe's, the method's own
    (``augment``, ``student_labels``), or made without real images (``data_free``)."""
    augment = augment_from_spec(recipe.student_data(method, "augment"))
    labels = recipe.student_data(method, "student_labels")
    text_augment = recipe.student_data(method, "text_augment")
    if text_augment is not None:  # the texts and their rewrites, unlabelled; made once (by rank 0), then read
        from distill.augment import augmented_texts
        from distill.zoo.text import TokenizedTexts

        settings = {**text_augment.model_dump(), "seed": recipe.seed}

        def make():  # the rewrites go to the cache, not through the broadcast
            augmented_texts(data.train.texts, **settings, say=say)

        distributed.on_main(make)
        texts = data.train.texts + augmented_texts(data.train.texts, **settings)
        return TokenizedTexts(texts, None, data.tokenizer, name=f"{data.train.name}+{text_augment.kind}"), augment
    spec = method.data_free
    if spec is None:
        return (data.train if labels else unlabelled(data.train)), augment
    params = spec.params
    if spec.objective == "deep_inversion":
        pool = own / "deep_inversion.safetensors"  # synthesised once: a resumed run reuses it

        def synthesise():  # by rank 0; every process then reads the same pool
            if pool.is_file():
                return None
            competing = student if params.get("competition_weight") else None
            made = deep_inversion(teacher, spec.images or spec.size, data.input_shape, data.num_classes,
                                  student=competing, seed=recipe.seed, say=say, **params)
            own.mkdir(parents=True, exist_ok=True)
            atomic_save_tensors({"images": made[0], "labels": made[1]}, pool)
            return made if distributed.world_size() == 1 else None

        made = distributed.on_main(synthesise)
        if made is not None:
            images, targets = made
        else:
            saved = load_file(str(pool))
            images, targets = saved["images"], saved["labels"]
        repeats = -(-spec.size // len(images))  # the pool, repeated to size samples per epoch
        images, targets = images.repeat(repeats, 1, 1, 1)[: spec.size], targets.repeat(repeats)[: spec.size]
        return ArrayDataset(images, targets if labels else None, "deep-inversion"), augment
    torch.manual_seed(recipe.seed * 1000 + 999)  # the generator's initialisation, apart from the student's
    options = spec.generator
    if spec.objective != "noise" and not {"mean", "std"} <= set(options) and hasattr(data.val, "inputs"):
        options = input_statistics(data.val.inputs) | options  # the two moments of the teacher's inputs
    generator = None if spec.objective == "noise" else build_model("generator", data.input_shape, **options)
    return SyntheticSet(teacher, spec.objective, generator, student, input_shape=data.input_shape, size=spec.size,
                        seed=recipe.seed, **params), augment


def ensemble_accuracy(models, dataset) -> float:
    """Test accuracy (%) of the average of ``models``' logits."""
    class Average(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.members = torch.nn.ModuleList(models)

        def forward(self, x):
            return torch.stack([m(x) for m in self.members]).mean(0)

    return evaluate(Average(), dataset)["accuracy"]


def run_recipe(recipe: Recipe, run_dir: str | Path | None = None, resume: bool = False,
               trust_pickle: bool = False) -> dict:
    """Run a recipe end to end and return its summary (also written to ``RUN_DIR/summary.json``)."""
    # under torchrun / accelerate launch: join the process group now, so the processes agree on one run
    # directory (rank 0's clock names it) and only rank 0 locks it and writes to it
    distributed.init(cpu=not torch.cuda.is_available() or recipe.train.cpu
                     or any(spec.train.cpu for spec in recipe.teacher_specs.values()))
    if run_dir is None:
        stamp = distributed.broadcast(datetime.now().strftime("%Y%m%d-%H%M%S"))
        run_dir = recipe.output_dir / f"{recipe.name}-{stamp}"
    run_dir = Path(run_dir)
    lock = RunLock(run_dir)

    def prepare() -> None:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            lock.acquire()
            atomic_write_text(run_dir / "recipe.yaml", dump_recipe(recipe))
        except OSError as err:
            raise RecipeError(f"cannot write the run directory {run_dir}: {err.strerror}") from None
        except RunDirLocked as err:
            raise RecipeError(str(err)) from None

    distributed.on_main(prepare)
    try:
        return _run_recipe(recipe, run_dir, resume, trust_pickle)
    finally:
        lock.release()


class _WithoutTest:
    """A recipe's data with an empty test split; everything else (the class count too) as loaded."""

    def __init__(self, data):
        self.data, self.test = data, Subset(data.test, [])

    def __getattr__(self, name):
        return getattr(self.data, name)


def _run_recipe(recipe: Recipe, run_dir: Path, resume: bool, trust_pickle: bool) -> dict:
    say(f"run directory: {run_dir}")
    started = time.perf_counter()
    data = load_data(recipe)
    timed_on = data.test
    if not recipe.evaluation.score_test:  # e.g. a tuning trial: nothing below reads the test split
        timed_on, data = data.val, _WithoutTest(data)
        say("the test split is not scored (evaluation.score_test: false)")
    check_model_specs(recipe, data)  # options a model cannot build or run: one line, before anything trains
    rows = []
    sample = sources.first_inputs(timed_on, recipe.evaluation.latency_batch_size, data.task)
    macs_sample = sources.first_inputs(timed_on, 8, data.task)
    timing = dict(repeats=recipe.evaluation.latency_repeats)
    teachers = {}
    digests = {}  # id(teacher) -> hash of its weights, computed once per run
    for name, spec in recipe.teacher_specs.items():
        teachers[name], info = get_teacher(recipe, data, run_dir, resume, trust_pickle, name=name)
        digests[id(teachers[name])] = weights_digest(teachers[name])
        rows.append({"role": "teacher", "label": "teacher" if recipe.teacher is not None else f"teacher:{name}",
                     "model": spec.model, "weights": digests[id(teachers[name])],
                     "params": count_parameters(teachers[name]),
                     "macs": count_macs(teachers[name], macs_sample),
                     **_scores(teachers[name], data, teachers[name]),
                     "seconds_per_batch": inference_time(teachers[name], sample, **timing), **info})
    teacher = next(iter(teachers.values()), None)  # the reference for speed-ups and Grad-CAM++ agreement
    unrecorded = distributed.on_main(lambda: _teachers_unchanged(run_dir, rows)) if resume else True
    cams = None
    if teacher is not None and recipe.evaluation.cam_agreement_images and len(data.test):
        try:
            cams = CamReference("teacher", teacher, recipe.evaluation.cam_layer, data.test,
                                recipe.evaluation.cam_agreement_images)
        except ExplainError as err:  # e.g. a teacher without a feature map to explain
            say(f"Grad-CAM++ agreement not measured: {err}")
    # each teacher runs over the training set once for all students (and, with a cache directory, once for all
    # runs): one store per teacher choice (one teacher, or all of them)
    outputs: dict[str, TeacherOutputs] = {}
    for method in recipe.methods:
        choice = method.teacher or "all"
        directory = teacher_outputs_dir(recipe.train.teacher_cache_dir,
                                        *([choice] if recipe.teachers is not None else []))
        store = outputs.setdefault(choice, TeacherOutputs(directory, recipe.train.teacher_top_k))
        row = _student_row(recipe, method, data, method_teacher(recipe, method, teachers), run_dir, resume,
                           trust_pickle, store, cams, sample, macs_sample, timing, unrecorded, digests)
        if cams is not None and "cam_agreement" not in row and method.student is None:
            cams = None  # this student has no map to compare; neither will the others (same model)
        rows.append(row)
    if teacher is not None:
        for row in rows:
            row["speedup"] = rows[0]["seconds_per_batch"] / row["seconds_per_batch"]
    summary = {"recipe": recipe.name, "seed": recipe.seed, "run_dir": str(run_dir),
               "latency_batch_size": min(recipe.evaluation.latency_batch_size, len(timed_on)),
               "metric": rows[-1].get("metric", data.task.select), "wall_seconds": time.perf_counter() - started,
               "rows": rows}
    if not recipe.evaluation.score_test:
        summary["test_scored"] = False
    table = format_table(summary)

    def write() -> None:
        atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2))
        atomic_write_text(run_dir / "summary.md", f"# {recipe.name} (seed {recipe.seed})\n\n{table}\n")

    distributed.on_main(write)
    say(f"\n{table}\n\nfinished in {summary['wall_seconds'] / 60:.1f} min; run directory: {run_dir}")
    return summary


def _student_row(recipe: Recipe, method, data, teacher, run_dir: Path, resume: bool, trust_pickle: bool,
                 outputs: TeacherOutputs, cams: CamReference | None, sample, macs_sample, timing: dict,
                 unrecorded: bool = True, digests: dict[int, str] | None = None) -> dict:
    """Train (or reuse) one method's student and measure it: its row of the run's table (``sample``: the
    inputs timed per batch; ``macs_sample``: the few inputs its multiply-adds are counted on).

    The row is kept in ``students/<label>/row.json``; a resumed run reuses it while the student's
    settings (:func:`student_settings_key`) are unchanged, even without the student's weights.
    """
    own = run_dir / "students" / method.name
    saved, layer = own / "row.json", recipe.evaluation.cam_layer
    stages = as_stages(method.build())
    digest = teacher_digest(teacher, method, stages, digests)
    row = distributed.on_main(lambda: json.loads(saved.read_text()) if resume and saved.is_file() else None)
    if row is not None:
        same_settings = (row.get("key") == student_settings_key(recipe, method, stages)
                         and row.get("test_scored", True) == recipe.evaluation.score_test)
        if same_settings and not _same_teacher(row, digest, unrecorded):
            say(f"student [{method.name}]: its row in {own} was measured with a teacher of other weights "
                 f"(the same settings, trained elsewhere); training it again")
            distributed.on_main(lambda: shutil.rmtree(own))  # its checkpoints, if any, learnt from the other teacher
        elif same_settings:
            if cams is None or ("cam_agreement" in row and row.get("cam_layer", "last_stage") == layer):
                return row
            if distributed.on_main(lambda: (own / "student.safetensors").is_file()):  # only the agreement is
                # missing or at another layer
                _cam_agreement(row, cams, method.name, deployable(_saved_student(recipe, method, data, own)), layer)
                distributed.on_main(lambda: atomic_write_text(saved, json.dumps(row, indent=2)))
                return row
    student, info = train_student(recipe, method, data, teacher, run_dir, resume, trust_pickle, outputs, digest)
    deployed = deployable(student)  # a cohort's first peer, ONE's first branch: one ordinary network
    row = {"role": "student", "label": method.name, "model": (method.student or recipe.student).model,
           "params": count_parameters(deployed), "macs": count_macs(deployed, macs_sample),
           **_scores(deployed, data, teacher), "seconds_per_batch": inference_time(deployed, sample, **timing),
           **info}
    if not recipe.evaluation.score_test:
        row["test_scored"] = False
    if deployed is not student and len(data.test):
        row["ensemble_test_accuracy"] = evaluate(student, data.test)["accuracy"]
    if cams is not None:
        _cam_agreement(row, cams, method.name, deployed, layer)
    distributed.on_main(lambda: atomic_write_text(saved, json.dumps(row, indent=2)))
    return row


def _cam_agreement(row: dict, cams: CamReference, name: str, student, layer: str) -> None:
    row.pop("cam_agreement", None)
    try:
        row["cam_agreement"] = cams.agreement(name, student, layer)["mean"]
        row["cam_layer"] = layer
    except ExplainError as err:  # e.g. an MLP student has no feature map
        say(f"Grad-CAM++ agreement not measured: {err}")


def _scores(model, data, teacher=None) -> dict:
    """Validation and test scores of a model: accuracy and test errors for classification, the task's
    selecting metric (``val_<metric>``, ``test_<metric>``; without labels, the engine's choice: fidelity to the
    teacher), its name (``metric``) and all test metrics otherwise. A task whose
    metrics compare the model with its teacher (``scored_by_teacher``: vectors learnt from it) is scored
    with ``teacher`` (one model; several teachers leave it unscored)."""
    task = data_task(data)
    teacher = teacher if task.scored_by_teacher and isinstance(teacher, torch.nn.Module) else None
    # an empty split (val_size: 0) has no scores; the table shows "-" for it
    val, test = ({} if len(split) == 0 else evaluate(model, split, task=task, teacher=teacher)
                 for split in (data.val, data.test))
    metric = "accuracy" if task.name == "classification" else _table_metric(task, test or val)
    scores = {f"val_{metric}": val.get(metric, float("nan")), f"test_{metric}": test.get(metric, float("nan"))}
    if task.name == "classification":
        return scores | ({"test_errors": round((100 - test["accuracy"]) * len(data.test) / 100)} if test else {})
    return scores | {"test_metrics": test, "metric": metric}


def _table_metric(task, metrics: dict) -> str:
    """The metric a run's table shows: the task's selecting one, or (data without labels, as the engine selects)
    its fidelity to the teacher."""
    return task.selection(not metrics or task.select in metrics)[0]


def format_table(summary: dict) -> str:
    """A markdown table: parameters, test score, inference time and speed-up of every model (and, when
    measured, training seconds per epoch and Grad-CAM++ agreement with the teacher). A run that did not
    score the test split (``evaluation.score_test: false``) shows validation scores instead."""
    n = summary["latency_batch_size"]
    metric = summary.get("metric", "accuracy")
    split = "test" if summary.get("test_scored", True) else "val"
    score = f"{split}_{metric}"
    accuracy = metric == "accuracy"
    timed = any(row.get("epoch_seconds") for row in summary["rows"])
    cams = any("cam_agreement" in row for row in summary["rows"])
    shown = "validation" if split == "val" else "test"
    heading = f"{shown} acc (%) | test errors" if accuracy else f"{shown} {metric} | -"
    lines = [f"| model | params | MACs / image | {heading} | CPU ms / batch of {n} "
             "| speed-up vs teacher |" + (" train s / epoch |" if timed else "")
             + (" Grad-CAM++ agreement |" if cams else ""),
             "|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if timed else "") + ("---:|" if cams else "")]
    for row in summary["rows"]:
        name = f"{row['label']} ({row['model']})"
        speed = f"{row['speedup']:.1f}x" if "speedup" in row else "-"
        macs = f"{row['macs']:,}" if "macs" in row else "-"
        value = f"{row[score]:.2f}" if accuracy else f"{row[score]:.4g}"
        line = (f"| {name} | {row['params']:,} | {macs} | {value} | {row.get('test_errors', '-')} | "
                f"{row['seconds_per_batch'] * 1000:.2f} | {speed} |")
        if timed:
            epochs = row.get("epoch_seconds")
            line += f" {sum(epochs) / len(epochs):.1f} |" if epochs else " - |"
        if cams:
            line += f" {row['cam_agreement']:.3f} |" if "cam_agreement" in row else " - |"
        lines.append(line)
    for row in summary["rows"]:
        if row.get("chain"):
            steps = " -> ".join(f"{c['model']} ({c[score]:.2f})" for c in row["chain"])
            ensemble = (f"; ensemble of the generations {row['ensemble_test_accuracy']:.2f}"
                        if "ensemble_test_accuracy" in row else "")
            lines.append(f"\n{row['label']}: teacher -> {steps} -> student ({row[score]:.2f}){ensemble}")
    scratch = next((r for r in summary["rows"] if r["label"] == "scratch"), None)
    if scratch is not None:
        for row in summary["rows"]:
            if row["role"] == "student" and row is not scratch:
                delta = row[score] - scratch[score]
                unit = f"points of {shown} accuracy" if accuracy else f"{shown} {metric}"
                lines.append(f"\n{row['label']} vs scratch: {delta:+.2f} {unit}" if accuracy else
                             f"\n{row['label']} vs scratch: {delta:+.4g} {unit}")
    return "\n".join(lines)


def resume_run(run_dir: str | Path, trust_pickle: bool = False) -> dict:
    """Continue an interrupted ``distill run`` from its run directory."""
    run_dir = Path(run_dir)
    recipe_file = run_dir / "recipe.yaml"
    try:
        found = recipe_file.is_file()
    except (OSError, ValueError):  # a name too long, a NUL byte
        found = False
    if not found:
        raise RecipeError(f"--resume: {str(run_dir)[-80:]} is not a run directory (no recipe.yaml)")
    try:  # the same reading and checks as a recipe file: a damaged recipe.yaml is one line
        recipe = parse_recipe(read_recipe_file(recipe_file))
    except RecipeError as err:
        raise RecipeError(f"--resume: {err} (the run's recorded recipe is damaged)") from None
    return run_recipe(recipe, run_dir, resume=True, trust_pickle=trust_pickle)
