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

from distill.experiment import run_recipe
from distill.recipe import RecipeError, apply_overrides, parse_recipe, read_recipe_tree


@dataclass
class Benchmark:
    recipe: str
    description: str
    seeds: int = 3
    quick: list[str] = field(default_factory=list)
    reference: dict[str, float] = field(default_factory=dict)  # label -> published test errors
    reference_name: str = ""


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
    "demo": Benchmark(
        recipe="default",
        description="the default demo (CNN -> MLP on Fashion-MNIST, scratch vs KD) over seeds",
        quick=["data.train_size=3000", "teacher.train.epochs=1", "train.epochs=1"],
    ),
}


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


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
        out.append(item)
    return out


def format_bench_table(rows: list[dict], bench: Benchmark) -> str:
    ref = bool(bench.reference)
    head = ("| model | params | MACs / image | test errors | test accuracy (%) | val accuracy (%) | CPU ms / batch "
            "| speed-up |")
    sep = "|---|---:|---:|---:|---:|---:|---:|---:|"
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
        if ref:
            line += f" {bench.reference.get(r['label'], '-')} |"
        lines.append(line)
    return "\n".join(lines)


def run_benchmark(name: str, seeds: int | None = None, quick: bool = False, overrides: list[str] | None = None,
                  out_dir: str | Path | None = None) -> dict:
    if name not in BENCHMARKS:
        raise RecipeError(f"unknown benchmark {name!r}; available: {', '.join(BENCHMARKS)}")
    bench = BENCHMARKS[name]
    seeds = seeds or bench.seeds
    if seeds < 1:
        raise RecipeError("--seeds must be at least 1")
    out = Path(out_dir or Path("bench-results") / (name + ("-quick" if quick else "")))
    summaries = []
    for seed in range(seeds):
        tree = apply_overrides(read_recipe_tree(bench.recipe),
                               (bench.quick if quick else []) + list(overrides or []) + [f"seed={seed}"])
        recipe = parse_recipe(tree)
        run_dir = out / f"seed-{seed}"
        done = run_dir / "summary.json"
        if done.is_file():
            print(f"seed {seed}: reusing {done}", flush=True)
            summaries.append(json.loads(done.read_text()))
            continue
        print(f"== {name}: seed {seed + 1} of {seeds}", flush=True)
        summaries.append(run_recipe(recipe, run_dir, resume=run_dir.is_dir()))
    rows = aggregate(summaries)
    table = format_bench_table(rows, bench)
    command = f"distill bench {name}" + (f" --seeds {seeds}" if seeds != bench.seeds else "") + (" --quick" if quick else "")
    (out / "results.json").write_text(json.dumps({"benchmark": name, "command": command, "rows": rows}, indent=2))
    (out / "table.md").write_text(f"`{command}` ({seeds} seeds, mean ± std)\n\n{table}\n")
    print(f"\n{name}: {seeds} seeds, mean ± std\n{table}", flush=True)
    return {"rows": rows, "table": table}
