"""Benchmarks: a bundled recipe run over several seeds, summarised as mean ± std.

``distill bench NAME`` writes ``bench-results/NAME/`` with one run directory
per seed, ``results.json`` and ``table.md``. Seeds already finished there are
reused, and an interrupted seed resumes from its checkpoints, so a long
benchmark can be stopped and started again.
"""
from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from distill import distributed
from distill.experiment import run_recipe, student_settings_key
from distill.stages import as_stages
from distill.recipe import RecipeError, apply_overrides, parse_recipe, read_recipe_tree


@dataclass
class Benchmark:
    recipe: str
    description: str
    seeds: int = 3
    quick: list[str] = field(default_factory=list)
    reference: dict[str, float] = field(default_factory=dict)  # label -> published test errors
    reference_name: str = ""
    # several teacher -> student pairs: pair name -> recipe overrides, and the method labels each pair skips
    pairs: dict[str, list[str]] = field(default_factory=dict)
    skip: dict[str, list[str]] = field(default_factory=dict)


_TEACHER_LR_05 = ["teacher.train.lr=0.05", "teacher.train.warmup_epochs=0"]
_INTERCHANGE = ["interchange", "interchange-stage2"]

BENCHMARKS: dict[str, Benchmark] = {
    "hinton-mnist": Benchmark(
        recipe="hinton-mnist",
        description="Hinton et al. 2015 on MNIST: 2x1200 teacher, 2x800 student from scratch and with T=20 soft targets",
        quick=["data.train_size=3000", "teacher.train.epochs=1", "train.epochs=1"],
        reference={"teacher": 67, "scratch": 146, "kd": 74},
        reference_name="Hinton et al. 2015",
    ),
    "digits": Benchmark(
        recipe="digits",
        description="the seconds-long digits recipe over seeds (checks the benchmark machinery)",
        quick=["teacher.train.epochs=1", "train.epochs=1"],
    ),
    "function-matching": Benchmark(
        recipe="function-matching",
        description="Beyer et al. 2022 on digits: scratch, KD and function matching at one patient schedule",
        quick=["teacher.train.epochs=1", "train.epochs=2"],
    ),
    "demo": Benchmark(
        recipe="default",
        description="the default demo (CNN -> MLP on Fashion-MNIST, scratch vs KD) over seeds",
        quick=["data.train_size=3000", "teacher.train.epochs=1", "train.epochs=1"],
    ),
    "vision": Benchmark(
        recipe="vision",
        description="the vision method zoo: four teacher -> student pairs on Fashion-MNIST, every method",
        quick=["data.train_size=1000", "data.val_size=500", "data.test_size=1000", "teacher.train.epochs=3",
               "teacher.train.optimizer=adamw", "teacher.train.lr=0.003", "train.epochs=2",
               "evaluation.latency_repeats=2", "evaluation.cam_agreement_images=100"],
        pairs={
            # KD's weight chosen on validation (seed 0): alpha 0.5 86.95, 0.9 85.85, scratch 86.10; so interchange's.
            # NST, SP and RKD at the WRN pair's weights fell 5-6 points below scratch; on validation (docs/vision.md)
            # NST 10, SP 1000 and RKD 0.1 came out above it
            "resnet32x4-resnet8x4": ["teacher.model=resnet32x4", "student.model=resnet8x4", "methods.1.alpha=0.5",
                                     "methods.7.beta=10", "methods.8.beta=1000", "methods.9.beta=0.1",
                                     "methods.18.alpha=0.5", "methods.19.alpha=0.5"],
            # the other teachers train well at lr 0.05 without the recipe's warm-up epoch, and were measured so
            "wrn_40_2-wrn_16_2": ["teacher.model=wrn_40_2", "student.model=wrn_16_2", *_TEACHER_LR_05],
            # VGG's last stage is 2x2 here (five poolings of 28 px): its Grad-CAM++ maps are compared at stage3, 7x7
            # like the other pairs' last stages
            "vgg13-vgg8": ["teacher.model=vgg13", "student.model=vgg8", "evaluation.cam_layer=stage3",
                           *_TEACHER_LR_05],
            "cnn-mlp": ["teacher.model=cnn", "student.model=mlp", "student.options.hidden=[256]",
                        *_TEACHER_LR_05,
                        "train.optimizer=adamw", "train.lr=0.003", "train.weight_decay=0.01", "train.epochs=30",
                        "evaluation.cam_agreement_images=0",
                        # the MLP trains fast: 30 epochs, and the KD setting chosen on validation (as for the
                        # demo: 84.5 vs 84.2 for scratch, 83.3 for alpha 0.9 / T 4); hints on the embedding
                        "methods.1.alpha=0.5", "methods.1.temperature=2",
                        "methods.4.student_layer=embedding", "methods.4.teacher_layer=embedding",
                        "methods.5.student_layer=embedding", "methods.5.teacher_layer=embedding"],
        },
        # an MLP has no feature maps: the methods that compare them have nothing to compare
        # interchange is measured on the ResNet pair only (with `distill analyze`; the other pairs' rows predate it)
        skip={"cnn-mlp": ["at", "nst", "sp", "fsp", "ft", "ab", "vid", "gradcam", *_INTERCHANGE],
              "wrn_40_2-wrn_16_2": _INTERCHANGE, "vgg13-vgg8": _INTERCHANGE},
    ),
    "vision-full": Benchmark(
        recipe="default",
        description="the methods the CIFAR tables rank highest at the demo's full budget: CNN -> MLP on the whole "
                    "Fashion-MNIST training split, 30 epochs, one shared teacher",
        quick=["data.train_size=1000", "teacher.train.epochs=1", "train.epochs=1"],
        # the demo's pair and schedule (chosen on validation, README), one teacher for every seed; KD as in the demo,
        # hints between the embeddings (an MLP has no feature maps), the other methods at their defaults, as in the
        # vision benchmark's cnn-mlp column
        pairs={"cnn-mlp": ["teacher.seed=0",
                           "methods=[{method: scratch}, {method: kd, alpha: 0.5, temperature: 2}, {method: dkd}, "
                           "{method: crd}, {method: fitnets, student_layer: embedding, teacher_layer: embedding}, "
                           "{method: dist}]"]},
    ),
    "schemes": Benchmark(
        recipe="schemes",
        description="teacher assistants, several teachers, online, born-again, transfer sets, mixup, jitter and "
                    "data-free KD on Fashion-MNIST (teachers on the whole training split, students on 5,000 images)",
        quick=["data.train_size=1000", "data.val_size=500", "data.test_size=1000", "teachers.resnet32.train.epochs=2",
               "teachers.cnn.train.epochs=2", "teachers.resnet32.train_size=1000", "teachers.cnn.train_size=1000",
               "train.epochs=2", "evaluation.latency_repeats=2", "methods.18.data_free.steps=5",
               "methods.18.data_free.images=64"],
        pairs={"fashion-mnist": []},
    ),
}


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def group_rows(rows: list[dict], key: str = "arm") -> dict[str, list[dict]]:
    """Benchmark rows (one per arm and seed) grouped by ``row[key]``, in first-seen order."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row[key], []).append(row)
    return groups


def missing_note(summary: dict) -> list[str]:
    """The line under a table made from stored rows (``--stored``) naming the rows not trained yet, if any."""
    return [f"\nNot trained yet: {', '.join(summary['missing'])}."] if summary.get("missing") else []


def aggregate(summaries: list[dict]) -> list[dict]:
    """Per model label: mean and std of test accuracy and errors over the seeds' summaries."""
    labels = [row["label"] for row in summaries[0]["rows"]]
    out = []
    for label in labels:
        rows = [next(r for r in s["rows"] if r["label"] == label) for s in summaries]
        acc = mean_std([r["test_accuracy"] for r in rows])
        err = mean_std([r["test_errors"] for r in rows])
        val = mean_std([r["val_accuracy"] for r in rows])
        item = {"label": label, "model": rows[0]["model"], "params": rows[0]["params"], "seeds": len(rows),
                "test_accuracy": acc, "test_errors": err, "val_accuracy": val,
                "per_seed_errors": [r["test_errors"] for r in rows],
                "ms_per_batch": statistics.fmean(r["seconds_per_batch"] for r in rows) * 1000}
        if all("macs" in r for r in rows):
            item["macs"] = rows[0]["macs"]
        if all("train_seconds" in r for r in rows):
            item["train_seconds"] = statistics.fmean(r["train_seconds"] for r in rows)
        if all("speedup" in r for r in rows):
            item["speedup"] = statistics.fmean(r["speedup"] for r in rows)
        if all(r.get("epoch_seconds") for r in rows):
            item["epoch_seconds"] = statistics.fmean(statistics.fmean(r["epoch_seconds"]) for r in rows)
        if all("cam_agreement" in r for r in rows):
            item["cam_agreement"] = mean_std([r["cam_agreement"] for r in rows])
        if all("ensemble_test_accuracy" in r for r in rows):  # born-again generations, a cohort's peers
            item["ensemble_test_accuracy"] = mean_std([r["ensemble_test_accuracy"] for r in rows])
        out.append(item)
    scratch = next((r for r in out if r["label"] == "scratch" and "epoch_seconds" in r), None)
    for item in out:
        if scratch is not None and "epoch_seconds" in item:
            item["epoch_time_vs_scratch"] = item["epoch_seconds"] / scratch["epoch_seconds"]
    return out


def format_bench_table(rows: list[dict], bench: Benchmark) -> str:
    ref = bool(bench.reference)
    head = ("| model | params | MACs / image | test errors | test accuracy (%) | val accuracy (%) | CPU ms / batch "
            "| speed-up |")
    sep = "|---|---:|---:|---:|---:|---:|---:|---:|"
    timed = any("epoch_time_vs_scratch" in r for r in rows)
    cams = any("cam_agreement" in r for r in rows)
    ensembles = any("ensemble_test_accuracy" in r for r in rows)
    if ensembles:
        head += " ensemble test accuracy (%) |"
        sep += "---:|"
    if timed:
        head += " time / epoch vs scratch |"
        sep += "---:|"
    if cams:
        head += " Grad-CAM++ agreement with teacher |"
        sep += "---:|"
    if ref:
        head += f" {bench.reference_name} errors |"
        sep += "---:|"
    lines = [head, sep]
    for r in rows:
        macs = f"{r['macs']:,}" if "macs" in r else "-"
        line = (f"| {r['label']} ({r['model']}) | {r['params']:,} | {macs} | "
                f"{r['test_errors'][0]:.1f} ± {r['test_errors'][1]:.1f} | "
                f"{r['test_accuracy'][0]:.2f} ± {r['test_accuracy'][1]:.2f} | "
                f"{r['val_accuracy'][0]:.2f} ± {r['val_accuracy'][1]:.2f} | {r['ms_per_batch']:.2f} | "
                f"{r.get('speedup', 1.0):.1f}x |")
        if ensembles:
            line += (f" {r['ensemble_test_accuracy'][0]:.2f} ± {r['ensemble_test_accuracy'][1]:.2f} |"
                     if "ensemble_test_accuracy" in r else " - |")
        if timed:
            line += f" {r['epoch_time_vs_scratch']:.2f}x |" if "epoch_time_vs_scratch" in r else " - |"
        if cams:
            line += (f" {r['cam_agreement'][0]:.3f} ± {r['cam_agreement'][1]:.3f} |" if "cam_agreement" in r
                     else " - |")
        if ref:
            line += f" {bench.reference.get(r['label'], '-')} |"
        lines.append(line)
    return "\n".join(lines)


def format_pairs_table(results: dict[str, list[dict]]) -> str:
    """Methods by pairs: test accuracy mean ± std; bold where a student beats the pair's KD student."""
    pairs = list(results)
    labels = list(dict.fromkeys(r["label"] for rows in results.values() for r in rows))
    lines = ["| method | " + " | ".join(pairs) + " |", "|---|" + "---:|" * len(pairs)]
    for label in labels:
        cells = []
        for pair in pairs:
            rows = {r["label"]: r for r in results[pair]}
            if label not in rows:
                cells.append("n/a")
                continue
            mean, std = rows[label]["test_accuracy"]
            kd = rows.get("kd")
            better = (kd is not None and label != "kd" and not label.startswith("teacher")
                      and mean > kd["test_accuracy"][0])
            cells.append(f"**{mean:.2f} ± {std:.2f}**" if better else f"{mean:.2f} ± {std:.2f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\nTest accuracy (%), mean ± std over seeds; **bold**: above KD on that pair; n/a: not applicable."


def run_benchmark(name: str, seeds: int | None = None, quick: bool = False, overrides: list[str] | None = None,
                  out_dir: str | Path | None = None, pairs: list[str] | None = None,
                  only_seed: int | None = None) -> dict:
    """Run benchmark ``name`` over ``seeds`` seeds (and each of its teacher -> student pairs).

    ``only_seed``: run just that seed of each pair and return its summaries, writing no table; separate
    processes can run separate seeds this way, and a later full run reuses what they finished.
    """
    if name not in BENCHMARKS:
        raise RecipeError(f"unknown benchmark {name!r}; available: {', '.join(BENCHMARKS)}")
    bench = BENCHMARKS[name]
    seeds = seeds or bench.seeds
    if seeds < 1:
        raise RecipeError("--seeds must be at least 1")
    chosen = pairs or list(bench.pairs) or [""]
    unknown = [p for p in chosen if p and p not in bench.pairs]
    if unknown:
        raise RecipeError(f"benchmark {name!r} has no pair {unknown[0]!r}; pairs: {', '.join(bench.pairs)}")
    out = Path(out_dir or Path("bench-results") / (name + ("-quick" if quick else "")))
    if only_seed is not None:
        if not 0 <= only_seed < seeds:
            raise RecipeError(f"--only-seed must be between 0 and {seeds - 1} (the benchmark has {seeds} seeds)")
        return {pair: _run_seed(bench, pair, only_seed, quick, overrides, (out / pair if pair else out)
                                / f"seed-{only_seed}", name, seeds) for pair in chosen}
    command = (f"distill bench {name}" + (f" --seeds {seeds}" if seeds != bench.seeds else "")
               + (" --quick" if quick else "") + "".join(f" --pair {p}" for p in (pairs or [])))
    results, tables = {}, []
    for pair in chosen:
        pair_out = out / pair if pair else out
        summaries = [_run_seed(bench, pair, seed, quick, overrides, pair_out / f"seed-{seed}", name, seeds)
                     for seed in range(seeds)]
        rows = aggregate(summaries)
        table = format_bench_table(rows, bench)
        results[pair] = rows
        tables.append((f"### {pair}\n\n" if pair else "") + table)
        distributed.say(f"\n{name} {pair}: {seeds} seeds, mean ± std\n{table}")
    if len(chosen) > 1:
        tables.insert(0, format_pairs_table(results))
    table = "\n\n".join(tables)
    payload = {"benchmark": name, "command": command, "rows": results[""]} if chosen == [""] else \
        {"benchmark": name, "command": command, "pairs": results}

    def write() -> None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(payload, indent=2))
        (out / "table.md").write_text(f"`{command}` ({seeds} seeds, mean ± std)\n\n{table}\n")

    distributed.on_main(write)
    return {"rows": results[""] if chosen == [""] else results, "table": table}


def _up_to_date(summary: dict, recipe) -> bool:
    """Whether a finished seed's students were trained with the recipe's current methods and settings."""
    trained = {row["label"]: row.get("key") for row in summary["rows"] if row["role"] == "student"}
    current = {m.name: student_settings_key(recipe, m, as_stages(m.build())) for m in recipe.methods}
    return trained == current


def pair_tree(bench: Benchmark, pair: str, quick: bool) -> dict:
    """The recipe tree one pair of ``bench`` runs: the recipe with the pair's (and quick) overrides, without the
    methods the pair skips."""
    # pair and quick overrides address methods by their position in the recipe, before skipped ones are dropped
    tree = apply_overrides(read_recipe_tree(bench.recipe), bench.pairs.get(pair, []) + (bench.quick if quick else []))
    skipped = set(bench.skip.get(pair, []))
    tree["methods"] = [m for m in tree["methods"] if (m.get("label") or m.get("method")) not in skipped]
    return tree


def _run_seed(bench: Benchmark, pair: str, seed: int, quick: bool, overrides, run_dir: Path, name: str,
              seeds: int) -> dict:
    tree = apply_overrides(pair_tree(bench, pair, quick), list(overrides or []) + [f"seed={seed}"])
    recipe = parse_recipe(tree)
    done = run_dir / "summary.json"
    # under several processes rank 0 looks at the files and every process follows its answer
    summary, started = distributed.on_main(
        lambda: (json.loads(done.read_text()) if done.is_file() else None, run_dir.is_dir()))
    if summary is not None:
        if _up_to_date(summary, recipe):
            distributed.say(f"{pair or name} seed {seed}: reusing {done}")
            return summary
        distributed.say(f"{pair or name} seed {seed}: methods changed since {done}; updating them")
    distributed.say(f"== {name} {pair}: seed {seed + 1} of {seeds}")
    return run_recipe(recipe, run_dir, resume=started)
