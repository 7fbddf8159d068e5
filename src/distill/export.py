"""Taking a student out of distill: ONNX, safetensors with a loader, ``save_pretrained``; and evaluating
any saved model.

``distill export RUN_DIR`` writes, for each finished student of a run (or the ``--label`` ones), a folder
``RUN_DIR/export/<label>/`` with

- ``model.onnx`` (``torch.onnx.export``, dynamic batch and sequence axes), checked with ``onnxruntime`` on
  the test split: the share of samples where both predict the same class and the largest absolute
  difference of their outputs, and the CPU latency of both on one batch;
- a zoo model: ``model.safetensors`` + ``model.json`` (the zoo name, its options, input shape and classes),
  read back by :func:`load_exported`; a ``transformers`` model: its own ``save_pretrained`` folder
  (config, safetensors, the tokenizer when the run has one), read back by ``from_pretrained``;
- ``export.json``: what was written and measured.

``distill eval TARGET`` gives the task's metrics of a run's teacher and students, of an exported folder or
of a Hugging Face folder, on the run's data or any bundled / ``package.module:function`` dataset.
"""
from __future__ import annotations

import contextlib
import io
import json
import statistics
import time
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from distill.errors import DistillError
from distill.taps import logits_of


class ExportError(DistillError):
    """A model or folder that cannot be exported or read back (one line)."""


def _as_inputs(sample) -> tuple[list[torch.Tensor], list[str]]:
    """``(tensors, their names)`` of a batch's model inputs (a tensor, or a dict of tensors)."""
    if isinstance(sample, torch.Tensor):
        return [sample], ["input"]
    if isinstance(sample, Mapping) and all(isinstance(v, torch.Tensor) for v in sample.values()):
        return list(sample.values()), list(sample)
    raise ExportError(f"ONNX export needs a tensor or a dict of tensors as model input, got {type(sample).__name__}")


def export_onnx(model: nn.Module, sample, path: str | Path) -> Path:
    """Write ``model`` (in eval mode) as ONNX at ``path``, traced on ``sample`` (its usual input: a tensor or
    a dict of tensors) with the batch axis, and the sequence axis of 2-d token inputs, left dynamic. The
    model's first output (``logits``) is the graph's output ``output``."""
    from torch.export import Dim

    tensors, names = _as_inputs(sample)
    keyword = isinstance(sample, Mapping)
    batch, length = Dim("batch"), Dim("length")
    shapes = tuple({0: batch, **({1: length} if t.dim() == 2 and not t.is_floating_point() else {})}
                   for t in tensors)

    class FirstOutput(nn.Module):  # positional tensors in, the first output out (HF models return ModelOutputs)
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *inputs):
            output = self.inner(**dict(zip(names, inputs))) if keyword else self.inner(*inputs)
            return logits_of(output)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the exporter narrates each of its steps
            torch.onnx.export(FirstOutput(model).eval(), tuple(tensors), str(path), input_names=names,
                              output_names=["output"], dynamic_shapes=(shapes,), dynamo=True)
    except Exception as err:  # the exporter raises many kinds; one line says which model and why
        root = err
        while root.__cause__ is not None:  # the exporter wraps torch.export's error, which says what failed
            root = root.__cause__
        lines = [line for line in str(root).strip().splitlines() if line.strip()] or [type(root).__name__]
        raise ExportError(f"torch.onnx.export failed for {type(model).__name__}: {lines[0][:200]}") from None
    finally:
        model.train(was_training)
    return path


def _ort_session(path: Path, threads: int | None = None):
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError("checking the ONNX file needs onnxruntime: pip install 'distill[export]'") from None
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _feed(session, inputs) -> dict:
    names = [i.name for i in session.get_inputs()]
    if isinstance(inputs, torch.Tensor):
        return {names[0]: inputs.cpu().numpy()}
    return {k: v.cpu().numpy() for k, v in inputs.items() if k in names}


def check_onnx(path: str | Path, model: nn.Module, dataset, task, batch_size: int = 256) -> dict:
    """Run the ONNX file with onnxruntime and ``model`` with torch over ``dataset``: ``same_prediction`` (%
    of samples whose argmax agrees), ``max_abs_diff`` (largest absolute output difference) and ``samples``."""
    from torch.utils.data import DataLoader

    from distill.teacher import run_model

    session = _ort_session(Path(path))
    same = count = 0
    worst = 0.0
    model.eval()
    with torch.inference_mode():
        for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=task.collate):
            ours = logits_of(run_model(model, batch["input"])).float()
            theirs = torch.from_numpy(session.run(None, _feed(session, batch["input"]))[0]).float()
            worst = max(worst, float((ours - theirs).abs().max()))
            same += int((ours.argmax(-1) == theirs.argmax(-1)).sum())
            count += ours.shape[:-1].numel()
    return {"same_prediction": 100.0 * same / max(count, 1), "max_abs_diff": worst, "samples": len(dataset)}


def latency(model: nn.Module, path: str | Path, sample, threads: int = 1, repeats: int = 20) -> dict:
    """Median seconds per batch of ``sample`` for the torch model and its ONNX file, both on ``threads``."""
    from distill.evaluation import inference_time

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch_s = inference_time(model, sample, repeats)
    finally:
        torch.set_num_threads(old)
    session = _ort_session(Path(path), threads)
    feed = _feed(session, sample)
    times = []
    for i in range(repeats + 3):
        start = time.perf_counter()
        session.run(None, feed)
        if i >= 3:
            times.append(time.perf_counter() - start)
    return {"torch_seconds": torch_s, "onnx_seconds": statistics.median(times), "threads": threads}


def _is_hf(model: nn.Module) -> bool:
    return hasattr(model, "save_pretrained") and hasattr(model, "config")


def save_model_folder(model: nn.Module, spec, data, folder: str | Path, tokenizer=None) -> Path:
    """``model`` as a folder it can be rebuilt from: ``save_pretrained`` for a ``transformers`` model (plus the
    tokenizer), else ``model.safetensors`` + ``model.json`` for a zoo model (:func:`load_exported`)."""
    from distill.fileio import atomic_save_model, atomic_write_text
    from distill.zoo.models import MODELS

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if _is_hf(model):
        model.save_pretrained(folder)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)
        return folder
    if spec.model not in MODELS:
        raise ExportError(f"{spec.model}: only zoo and transformers models can be saved with a loader; the ONNX "
                          "file, or your own factory with model.safetensors, serves the others")
    atomic_save_model(model, folder / "model.safetensors")
    info = {"model": spec.model, "options": spec.options, "in_shape": list(data.input_shape or []),
            "num_classes": data.num_classes, "format": 1}
    atomic_write_text(folder / "model.json", json.dumps(info, indent=2))
    return folder


def load_exported(folder: str | Path) -> nn.Module:
    """A model from a folder :func:`save_model_folder` wrote (``model.json`` + ``model.safetensors``, or a
    ``transformers`` folder), in eval mode."""
    from safetensors.torch import load_model

    from distill.zoo.models import build_model

    folder = Path(folder)
    if (folder / "model.json").is_file():
        info = json.loads((folder / "model.json").read_text())
        model = build_model(info["model"], tuple(info["in_shape"]), info["num_classes"], **info["options"])
        load_model(model, str(folder / "model.safetensors"))
        return model.eval()
    if (folder / "config.json").is_file():
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification.from_pretrained(folder).eval()
    raise ExportError(f"{folder}: no model.json (a distill export) or config.json (a transformers folder)")


def export_run(run_dir: str | Path, labels: list[str] | None = None, out: str | Path | None = None,
               onnx: bool = True, say=print) -> dict:
    """Export the finished students of ``run_dir`` (``labels``: only these; ``"teacher"`` may be named too)
    into ``out`` (default ``RUN_DIR/export``); see the module docstring. Returns ``export.json``'s content."""
    from distill import sources
    from distill.fileio import atomic_write_text
    from distill.run_models import load_run

    run = load_run(run_dir, teacher=bool(labels) and any(label.startswith("teacher") for label in labels))
    students = {label: m for label, m in run.models.items() if labels is None and not label.startswith("teacher")
                or labels is not None and label in labels}
    missing = sorted(set(labels or []) - set(students))
    if missing or not students:
        raise ExportError(f"{run.run_dir}: no finished model {missing[0] if missing else ''!r} to export; it has "
                          f"{', '.join(run.models) or 'none'}")
    out = Path(out) if out is not None else run.run_dir / "export"
    task = run.data.task
    sample = sources.first_inputs(run.data.test, run.recipe.evaluation.latency_batch_size, task)
    report = {}
    for label, model in students.items():
        folder = save_model_folder(model, run.specs[label], run.data, out / label, getattr(run.data, "tokenizer", None))
        entry = {"folder": str(folder)}
        if onnx:
            path = export_onnx(model, sample, folder / "model.onnx")
            entry |= {"onnx": str(path), "onnx_bytes": path.stat().st_size,
                      **check_onnx(path, model, run.data.test, task), **latency(model, path, sample)}
        report[label] = entry
        say(f"{label}: {folder}" + (f"  (ONNX: same prediction {entry['same_prediction']:.2f}%, max |diff| "
                                    f"{entry['max_abs_diff']:.2e}, {1000 * entry['torch_seconds']:.2f} ms torch / "
                                    f"{1000 * entry['onnx_seconds']:.2f} ms onnxruntime per batch of "
                                    f"{_batch_size(sample)}, one thread)"
                                    if onnx else ""))
    atomic_write_text(out / "export.json", json.dumps(report, indent=2))
    return report


def _batch_size(sample) -> int:
    first = sample if isinstance(sample, torch.Tensor) else next(iter(sample.values()))
    return len(first)


def _load_named_data(name: str, recipe=None):
    """A bundled or ``package.module:function`` dataset for evaluation, tokenised like ``recipe``'s when text."""
    from distill import sources
    from distill.run_models import teacher_tokenizer

    text = name in sources.TEXT_DATASETS
    tokenizer = (teacher_tokenizer(recipe) if recipe is not None else None) if text else None
    try:
        sources.check_data_name(name)
        return sources.load(name, None, seed=0, train_size=None, test_size=None,
                            **({"tokenizer": tokenizer} if text and tokenizer is not None else {}))
    except sources.SourceError as err:
        raise ExportError(f"--data {name}: {err}") from None


def evaluate_target(target: str | Path, data: str | None = None, split: str = "test", task=None,
                    batch_size: int = 256) -> dict[str, dict]:
    """The task's metrics of every model ``target`` holds, on ``split`` (``train``, ``val`` or ``test``):
    a run directory (its teacher(s) and finished students; its own data unless ``data`` names another
    dataset) or an exported / ``transformers`` folder (``data`` needed). Returns ``{label: metrics}``."""
    from distill.evaluation import evaluate
    from distill.run_models import load_run
    from distill.tasks import get_task

    if split not in ("train", "val", "test"):
        raise ExportError(f"--split must be train, val or test, got {split!r}")
    target = Path(target)
    if (target / "recipe.yaml").is_file():
        from distill.recipe import parse_recipe, read_recipe_file

        recipe = parse_recipe(read_recipe_file(target / "recipe.yaml"))
        other = _load_named_data(data, recipe) if data else None
        if other is not None:
            other.task = recipe.build_task()
        run = load_run(target, data=other)
        dataset, task = getattr(run.data, split), task or run.data.task
        models = run.models
    else:
        if not data:
            raise ExportError(f"{target}: give --data (a bundled dataset or package.module:function) to evaluate "
                              "an exported model on")
        loaded = _load_named_data(data)
        models = {target.name: load_exported(target)}
        dataset = getattr(loaded, split)
        task = get_task(task) if task is not None else get_task("classification", pad_token_id=0)
    return {label: evaluate(model, dataset, batch_size, task=task) for label, model in models.items()}
