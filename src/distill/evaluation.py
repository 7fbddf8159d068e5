"""Measuring a model: accuracy, size and inference time."""
from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping
from contextlib import contextmanager

import torch
from accelerate.utils import send_to_device
from torch import nn
from torch.utils.data import DataLoader, Subset

from distill.data import as_dataset
from distill.errors import DistillError, cause, excerpt, samples
from distill.tasks import Task, check_inputs, collator, get_task
from distill.teacher import run_model, teacher_input


@contextmanager
def eval_mode(model: nn.Module):
    """``model.eval()`` inside the block; the model's own train / eval mode restored after, even on error."""
    training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(training)


def evaluate(model: nn.Module, dataset, batch_size: int = 1000, accelerator=None, *, task: str | Task | None = None,
             teacher: nn.Module | None = None, collate_fn=None) -> dict[str, float]:
    """The task's metrics of ``model`` on ``dataset`` (classification: top-1 accuracy in % and mean
    cross-entropy); with a ``teacher``, also its fidelity to the teacher (what an unlabelled set is scored by).

    With an ``accelerator`` and several processes, each process evaluates every ``world``-th sample and the
    metric sums are added up, so every process returns the same numbers.
    """
    task = get_task(task)
    if not isinstance(model, nn.Module):
        raise DistillError(f"evaluate needs a torch.nn.Module, got {excerpt(model)}")
    if teacher is not None and not isinstance(teacher, nn.Module):
        raise DistillError(f"evaluate's teacher must be a torch.nn.Module or None, got {excerpt(teacher)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DistillError(f"evaluate's batch_size must be a whole number >= 1, got {excerpt(batch_size)}")
    dataset = as_dataset(dataset)
    if len(dataset) == 0:
        raise DistillError("cannot evaluate on an empty dataset")
    device = next(iter(model.parameters()), torch.empty(0)).device
    if accelerator is not None and accelerator.num_processes > 1:
        dataset = Subset(dataset, range(accelerator.process_index, len(dataset), accelerator.num_processes))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collator(task, collate_fn))
    models = [m for m in (model, teacher) if m is not None]
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    sums: dict = {}
    number, batch, doing = 0, None, "reading the batch (the dataset's items, the collate function)"
    try:
        with torch.inference_mode():
            for number, batch in enumerate(loader):
                check_inputs(batch, f"evaluation batch {number + 1}")  # NaN inputs would give a meaningless score
                batch = send_to_device(batch, device)
                doing = "the model's forward pass"
                pred = task.prediction(run_model(model, batch["input"]), batch)
                doing = "the teacher's forward pass"
                reference = None if teacher is None else task.prediction(run_model(teacher, teacher_input(batch)), batch)
                doing = "scoring the batch"
                task.add_batch(sums, pred, batch, reference)
                doing = "reading the batch (the dataset's items, the collate function)"
    except Exception as err:
        if isinstance(err, DistillError) and "evaluation batch" in str(err):
            raise
        where = f"evaluation batch {number + 1}" + samples(batch.get("index") if isinstance(batch, Mapping) else None)
        if isinstance(err, DistillError):
            raise type(err)(f"{where}: {err}") from err
        raise DistillError(f"{where}: {doing} failed ({cause(err)}); check the evaluation data against the "
                           "training data (shapes, dtypes, targets)") from err
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)
    if accelerator is not None and accelerator.num_processes > 1:
        sums = _sum_over_processes(sums, accelerator)
    return task.summarize(sums)


def _sum_over_processes(sums: dict, accelerator) -> dict:
    out = {}
    for key in sorted(sums):
        value = torch.as_tensor(sums[key], dtype=torch.float64, device=accelerator.device)
        total = accelerator.reduce(value, "sum").cpu()
        out[key] = total if total.dim() else total.item()
    return out


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, inputs: torch.Tensor) -> int:
    """Multiply-accumulate operations of one forward pass per sample, counted over ``nn.Linear`` and ``nn.Conv*`` layers."""
    total = 0

    def linear(module, args, output):
        nonlocal total
        total += output.numel() * module.in_features

    def conv(module, args, output):
        nonlocal total
        total += output.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(linear))
        elif isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            handles.append(module.register_forward_hook(conv))
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            run_model(model, inputs)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return total // _batch_size(inputs)


def inference_time(model: nn.Module, inputs: torch.Tensor, repeats: int = 20, warmup: int = 3) -> float:
    """Median wall-clock seconds for one forward pass on ``inputs`` (eval mode, inference mode)."""
    was_training = model.training
    model.eval()
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            start = time.perf_counter()
            run_model(model, inputs)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    model.train(was_training)
    return statistics.median(times)


def interleaved_latency(runs: dict, threads: int = 1, rounds: int = 15, repeats: int = 10,
                        timer: Callable | None = None) -> dict:
    """Seconds per sample of several models timed side by side, for honest speed-ups on a noisy machine.

    ``runs`` maps a name to ``(model, batches)``, ``batches`` mapping a batch name to ``(samples, inputs)``
    (every model gets the same batch names; the first model is the reference). The models are timed in
    interleaved rounds on ``threads`` CPU threads (in each round every model runs each batch ``repeats``
    times), so a slow spell of the machine falls on all of them alike. Returns, per name and batch, the median
    over rounds of each round's median time over ``samples``; ``speedup``: the median over rounds of the
    reference's time over the model's in that round; ``speedup_range``: the lowest and highest round.
    ``timer(model, inputs)``, when given, replaces the median of ``repeats`` calls as a round's seconds (for
    inputs that are not one batch, such as a list of utterances of different lengths)."""
    timer = timer or (lambda model, inputs: inference_time(model, inputs, repeats, warmup=2))
    per_round = {name: {b: [] for b in batches} for name, (_, batches) in runs.items()}
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for _ in range(rounds):
            for name, (model, batches) in runs.items():
                for b, (size, inputs) in batches.items():
                    per_round[name][b].append(timer(model, inputs) / size)
    finally:
        torch.set_num_threads(old)
    reference = per_round[next(iter(runs))]
    out = {}
    for name, times in per_round.items():
        ratios = {b: [r / t for r, t in zip(reference[b], times[b])] for b in times}
        out[name] = {**{b: statistics.median(times[b]) for b in times},
                     "speedup": {b: statistics.median(ratios[b]) for b in times},
                     "speedup_range": {b: [min(ratios[b]), max(ratios[b])] for b in times}}
    return out


def _batch_size(inputs) -> int:
    """Samples in a batch of inputs: a tensor's first axis, or that of a dict's first tensor (HF inputs)."""
    if isinstance(inputs, Mapping):
        inputs = next(v for v in inputs.values() if isinstance(v, torch.Tensor))
    return len(inputs)
