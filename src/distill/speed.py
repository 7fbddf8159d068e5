"""``distill bench speed``: what a teacher costs per training step.

For each teacher -> student pair, three ways of training the student are timed
over the same data and batches:

* ``student``: the plain student step (cross-entropy on the labels), the floor;
* ``kd-live``: CE + KD with the teacher run on every batch;
* ``kd-cached``: CE + KD with the teacher's outputs computed once (``cache_teacher``);
  the one-off cost of filling the cache is reported on its own;
* ``raw`` and ``raw-kd-cached``: the same model, optimiser, schedule, batches and losses in a hand-written
  PyTorch loop (tensors indexed by a permutation, no engine): the limit the engine's ``student`` and
  ``kd-cached`` steps are measured against (the table's "vs hand-written" column).

Each measurement runs in a fresh process, so its peak resident memory is its
own, and is the fastest of the epochs after the first (which warms up allocators and caches;
on a shared machine the fastest is the least disturbed by other work).
Throughput is training samples per second; the table gives each mode's time per
step relative to the plain student step. The teachers are untrained: only their
cost matters here.
"""
from __future__ import annotations

import json
import multiprocessing
import resource
import statistics
import time
from pathlib import Path

import torch

from distill.recipe import RecipeError, apply_overrides, load_recipe, parse_recipe, read_recipe_tree

DESCRIPTION = ("samples per second and peak memory of the plain student step, KD with a live teacher and KD "
               "with a cached teacher (--pair, --recipe, --repeats)")
MODES = ("raw", "student", "kd-live", "raw-kd-cached", "kd-cached")
HAND_WRITTEN = {"student": "raw", "kd-cached": "raw-kd-cached"}  # engine mode -> its hand-written limit

# name -> recipe overrides on the default demo recipe (Fashion-MNIST)
PAIRS: dict[str, list[str]] = {
    "cnn-smallcnn": ["teacher.model=cnn", "teacher.options={channels: [32, 64], hidden: 128}",
                     "student.model=cnn", "student.options={channels: [8, 16], hidden: 32}"],
    # an MLP step is short: more samples per timed epoch
    "cnn-mlp": ["teacher.model=cnn", "teacher.options={channels: [32, 64], hidden: 128}",
                "student.model=mlp", "student.options={hidden: [256]}", "data.train_size=16384"],
    # the default demo's pair and settings (its CNN teacher, the MLP 784-256-10, AdamW, batch 128); an epoch is
    # half a second, so eight: the fastest of seven steady epochs (with two, whole runs of one mode spread by 15%)
    "demo": ["data.train_size=20000", "train.epochs=8"],
    # the demo exactly as `distill run` trains it (whole training split, its validation split), for its epoch times
    "demo-whole": ["data.train_size=null", "data.val_size=5000", "train.epochs=4"],
    # the vision benchmark's ResNet pair with its student's optimiser, batch (SGD, batch 64) and channels-last
    # layout, in float32: bf16 is fast only on CPUs with bf16 units (AVX512-BF16), and these machines vary
    "resnet32x4-resnet8x4": ["teacher.model=resnet32x4", "teacher.options={}", "student.model=resnet8x4",
                             "student.options={}", "data.train_size=256", "train.batch_size=64",
                             "train.channels_last=true",
                             "train.optimizer=sgd", "train.lr=0.05", "train.momentum=0.9", "train.nesterov=true",
                             "train.weight_decay=0.0005"],
    "wrn_40_2-wrn_16_2": ["teacher.model=wrn_40_2", "teacher.options={}", "student.model=wrn_16_2",
                          "student.options={}"],
}
SETTINGS = ["data.train_size=4096", "data.val_size=1000", "train.batch_size=128", "train.epochs=3"]


def _measure(recipe_tree: dict, mode: str, threads: int, queue) -> None:
    """In a child process: train in ``mode``; put the fastest epoch after the first on ``queue``."""
    try:
        torch.set_num_threads(threads)
        from distill.engine import Distiller, seed_everything
        from distill.evaluation import count_parameters, inference_time
        from distill.terms import Term
        from distill.zoo import build_model, load_dataset

        recipe = parse_recipe(recipe_tree)
        data = load_dataset(recipe.data.dataset, recipe.data.val_size, train_size=recipe.data.train_size)
        seed_everything(0)
        teacher = build_model(recipe.teacher.model, data.input_shape, data.num_classes, **recipe.teacher.options)
        student = build_model(recipe.student.model, data.input_shape, data.num_classes, **recipe.student.options)
        terms = [Term("ce")] if mode in ("student", "raw") else [Term("ce", 0.5), Term("kd", 0.5, temperature=4)]
        config = recipe.train.model_copy(update={"cache_teacher": mode == "kd-cached", "progress": False,
                                                 "teacher_cache_dir": None, "teacher_top_k": None})
        baseline = _reset_peak_memory()
        started = time.perf_counter()
        fill = {}
        if mode.startswith("raw"):
            times = _hand_written(student, teacher if mode == "raw-kd-cached" else None, data.train, config)
        else:
            outputs = None
            if mode == "kd-cached":  # the cache filled first, timed against the teacher's plain inference
                outputs, fill = _fill_cache(teacher, data.train, config.eval_batch_size, config.channels_last)
            d = Distiller(student, None if mode == "student" else teacher, terms, config=config,
                          teacher_outputs=outputs)
            d.fit(data.train)
            times = [h["time"] for h in d.history]
        total = time.perf_counter() - started
        epoch = min(times[1:] or times)  # the least disturbed epoch after the first
        batches = -(-len(data.train) // config.batch_size)
        sample = data.train.__getitems__(list(range(config.batch_size)))["input"]
        queue.put({"mode": mode, "samples_per_second": len(data.train) / epoch, "epoch_seconds": epoch,
                   "setup_seconds": total - sum(times),
                   "peak_mb": _peak_memory_mb(), "baseline_mb": baseline,
                   "teacher_forward_seconds": batches * inference_time(teacher, sample, repeats=5),
                   "teacher_params": count_parameters(teacher), "student_params": count_parameters(student),
                   "samples": len(data.train), "batch_size": config.batch_size, **fill})
    except BaseException as err:  # the parent reports it
        queue.put({"mode": mode, "error": f"{type(err).__name__}: {err}"})


def _fill_cache(teacher, train, batch_size: int, channels_last: bool):
    """The teacher's outputs over ``train`` stored as a run's cache (:class:`~distill.cache.CachedTeacher`, in
    channels-last layout when the recipe trains in it, as the engine fills it), and the seconds that took beside
    the teacher's plain inference over the same samples and batch size in the default layout."""
    from distill.cache import CachedTeacher, TeacherOutputs
    from distill.teacher import LiveTeacher, freeze, thaw

    outputs = TeacherOutputs()
    freeze(teacher)
    try:
        with torch.inference_mode():  # one batch first: neither timing pays the allocator's warm-up
            teacher(train.inputs[:batch_size])
        started = time.perf_counter()
        with torch.inference_mode():
            for i in range(0, len(train), batch_size):
                teacher(train.inputs[i:i + batch_size])
        inference = time.perf_counter() - started
        if channels_last:
            teacher.to(memory_format=torch.channels_last)
        started = time.perf_counter()
        CachedTeacher(LiveTeacher(teacher, ["logits"]), train, batch_size=batch_size, outputs=outputs,
                      channels_last=channels_last)
        filled = time.perf_counter() - started
    finally:
        thaw(teacher)
    return outputs, {"cache_fill_seconds": filled, "teacher_inference_seconds": inference}


def _hand_written(student, teacher, train, config) -> list[float]:
    """Seconds per epoch of a hand-written loop: the engine's optimiser and per-step schedule, batches
    indexed from the in-memory tensors by a permutation (``x[idx]``, as such loops are written), the recipe's
    bf16 autocast and channels-last layout when it asks for them, CE (and, with a ``teacher``, 0.5 CE + 0.5 KD at
    T = 4 from its logits computed once beforehand, as ``kd-cached``)."""
    import torch.nn.functional as F

    from distill.engine.config import build_optimizer, lr_factor
    from distill.losses import kd_loss

    x, y, n, size = train.inputs, train.labels, len(train), config.batch_size
    layout = torch.channels_last if config.channels_last and x.dim() == 4 else torch.contiguous_format
    student.to(memory_format=layout)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.mixed_precision == "bf16")
    optimizer = build_optimizer(student.parameters(), config)
    steps = -(-n // size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(config, step, steps))
    stored = None
    if teacher is not None:
        teacher.eval()
        with torch.inference_mode():
            stored = torch.cat([teacher(x[i:i + 1000]) for i in range(0, n, 1000)]).clone()
    student.train()
    generator = torch.Generator().manual_seed(config.seed)
    times = []
    for _ in range(config.epochs):
        started = time.perf_counter()
        order = torch.randperm(n, generator=generator)
        for i in range(0, n, size):
            idx = order[i:i + size]
            with autocast:
                logits = student(x[idx].contiguous(memory_format=layout))
            loss = F.cross_entropy(logits.float(), y[idx])
            if stored is not None:
                loss = 0.5 * loss + 0.5 * kd_loss(logits, stored[idx], temperature=4)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        times.append(time.perf_counter() - started)
    return times


def _reset_peak_memory() -> float:
    """Reset this process's peak resident memory (Linux: ``/proc/self/clear_refs``); return the current MB."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _status_mb("VmRSS")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise OSError(field)


def _peak_memory_mb() -> float:
    """Peak resident memory since :func:`_reset_peak_memory` (the process's peak where that is not possible)."""
    try:
        return _status_mb("VmHWM")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(recipe_tree: dict, mode: str, threads: int) -> dict:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_measure, args=(recipe_tree, mode, threads, queue))
    proc.start()
    result = queue.get()
    proc.join()
    if "error" in result:
        raise RecipeError(f"speed benchmark, mode {mode}: {result['error']}")
    return result


def run_speed_benchmark(pairs: list[str] | None = None, recipes: list[str] | None = None, repeats: int = 3,
                        out_dir: str | Path = "bench-results/speed", threads: int | None = None) -> dict:
    """Time the three modes for each pair (built in, or each recipe's teacher and student), ``repeats`` times
    each, interleaved, and write ``results.json`` and ``table.md`` to ``out_dir``."""
    threads = threads or torch.get_num_threads()
    chosen = {}
    for name in (pairs if pairs is not None else ([] if recipes else list(PAIRS))):
        if name not in PAIRS:
            raise RecipeError(f"unknown speed pair {name!r}; pairs: {', '.join(PAIRS)}")
        chosen[name] = apply_overrides(read_recipe_tree("default"), SETTINGS + PAIRS[name])
    for path in recipes or []:
        recipe = load_recipe(path)
        if recipe.teacher is None:
            raise RecipeError(f"{path}: the speed benchmark needs a recipe with one teacher (teacher:)")
        chosen[recipe.name] = read_recipe_tree(path)
    results = {}
    for name, tree in chosen.items():
        runs = {mode: [] for mode in MODES}
        for r in range(repeats):
            for mode in MODES:
                runs[mode].append(measure(tree, mode, threads))
                print(f"{name} {mode} run {r + 1}/{repeats}: {runs[mode][-1]['samples_per_second']:.0f} samples/s",
                      flush=True)
        results[name] = _summarise(runs)
    command = ("distill bench speed" + "".join(f" --pair {p}" for p in pairs or [])
               + "".join(f" --recipe {r}" for r in recipes or []) + f" --repeats {repeats}")
    table = format_speed_table(results)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"command": command, "threads": threads, "pairs": results},
                                                 indent=2))
    plural = "s" if threads != 1 else ""
    (out / "table.md").write_text(f"`{command}` ({threads} thread{plural}; mean ± std over {repeats} runs)\n\n{table}\n")
    print(f"\n{table}", flush=True)
    return results


def _summarise(runs: dict[str, list[dict]]) -> dict:
    def ms(values):
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    plain = statistics.fmean(r["epoch_seconds"] for r in runs["student"])
    teacher_share = statistics.fmean(r["teacher_forward_seconds"] for r in runs["kd-live"]) / plain
    out = {}
    for mode, rs in runs.items():
        filled = "cache_fill_seconds" in rs[0]
        limit = runs.get(HAND_WRITTEN.get(mode, ""))
        # fastest run against fastest run: on a shared machine a whole process can run 10-20% slower than the
        # next one, so the least disturbed run of each mode estimates its own cost best
        vs_raw = (min(r["epoch_seconds"] for r in rs) / min(r["epoch_seconds"] for r in limit) if limit else None)
        out[mode] = {"time_vs_hand_written": vs_raw, "samples_per_second": ms([r["samples_per_second"] for r in rs]),
                     "epoch_seconds": [r["epoch_seconds"] for r in rs],
                     "time_vs_student": ms([r["epoch_seconds"] / plain for r in rs]),
                     "teacher_forward_vs_student": teacher_share,
                     "peak_mb": max(r["peak_mb"] for r in rs),
                     "training_mb": max(r["peak_mb"] - r["baseline_mb"] for r in rs),
                     "setup_seconds": statistics.fmean(r["setup_seconds"] for r in rs),
                     "cache_fill_seconds": statistics.fmean(r["cache_fill_seconds"] for r in rs) if filled else None,
                     "cache_fill_vs_inference": (statistics.fmean(r["cache_fill_seconds"] / r["teacher_inference_seconds"]
                                                                  for r in rs) if filled else None),
                     "teacher_params": rs[0]["teacher_params"], "student_params": rs[0]["student_params"],
                     "batch_size": rs[0]["batch_size"]}
    return out


def format_speed_table(results: dict) -> str:
    lines = ["| pair | teacher / student params | mode | samples / s | time per step vs student | "
             "expected: 1 + teacher forward / student step | vs hand-written (fastest runs) | training memory (MB) | set-up s | "
             "cache fill s (vs teacher inference) |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, modes in results.items():
        for mode, r in modes.items():
            sps, ratio = r["samples_per_second"], r["time_vs_student"]
            expected = f"{1 + r['teacher_forward_vs_student']:.2f}x" if mode == "kd-live" else "1.00x"
            lines.append(f"| {name} | {r['teacher_params']:,} / {r['student_params']:,} | {mode} | "
                         f"{sps[0]:,.0f} ± {sps[1]:,.0f} | {ratio[0]:.2f}x ± {ratio[1]:.2f} | {expected} | "
                         f"{'-' if r.get('time_vs_hand_written') is None else format(r['time_vs_hand_written'], '.2f') + 'x'} | "
                         f"{r['training_mb']:,.0f} | {r['setup_seconds']:.1f} | "
                         + ("-" if r.get("cache_fill_seconds") is None else
                            f"{r['cache_fill_seconds']:.1f} ({r['cache_fill_vs_inference']:.2f}x)") + " |")
    return "\n".join(lines) + ("\n\nvs hand-written: the fastest run's epoch against the fastest hand-written run's "
                               "(a whole process can run 10-20% slower than the next on a shared machine). "
                               "training memory: peak resident memory while training, above the process's "
                               "memory once data and models were loaded. set-up: model building, the engine's "
                               "probe batch and, for kd-cached, the timed cache fill and the teacher's plain "
                               "inference beside it. cache fill: the teacher run over the training set into the cache "
                               "(paid once per run, shared by a recipe's students), against its plain inference "
                               "over the same samples.")
