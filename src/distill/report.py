"""``distill report RUN_DIR``: PNG plots and a markdown summary of a run.

Works on a recipe run directory (``teacher/`` and ``students/<label>/`` inside)
and on a single :class:`~distill.Distiller` run directory (``metrics.jsonl``).
Writes ``RUN_DIR/report/``: ``losses.png`` (per-term training loss curves),
``accuracy.png`` (validation accuracy per epoch and test accuracy of teacher and
students), ``samples-<label>.png`` (a grid of the images a data-free student was
trained on: its generator's at the end of training, or DeepInversion's) and
``report.md``.
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from distill.recipe import RecipeError  # noqa: E402


def read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _runs(run_dir: Path) -> dict[str, list[dict]]:
    runs = {}
    if (run_dir / "metrics.jsonl").is_file():
        runs[run_dir.name] = read_metrics(run_dir / "metrics.jsonl")
    if (run_dir / "teacher" / "metrics.jsonl").is_file():
        runs["teacher"] = read_metrics(run_dir / "teacher" / "metrics.jsonl")
    for teacher in sorted((run_dir / "teachers").glob("*/metrics.jsonl")):
        runs[f"teacher:{teacher.parent.name}"] = read_metrics(teacher)
    for student in sorted((run_dir / "students").glob("*/metrics.jsonl")):
        runs[student.parent.name] = read_metrics(student)
    return runs


def _plot_losses(runs: dict[str, list[dict]], path: Path) -> None:
    fig, axes = plt.subplots(1, len(runs), figsize=(4.5 * len(runs), 3.6), squeeze=False)
    for ax, (name, records) in zip(axes[0], runs.items()):
        steps = [r for r in records if r.get("event") == "step"]
        epochs = [r for r in records if r.get("event") == "epoch"]
        terms = sorted({k.split("/", 1)[1] for r in epochs for k in r if k.startswith("train/")})
        for term in terms:
            if steps and any(f"loss/{term}" in r for r in steps):
                ax.plot([r["step"] for r in steps], [r[f"loss/{term}"] for r in steps], alpha=0.35, lw=0.8)
                color = ax.lines[-1].get_color()
            else:
                color = None
            key = "train/loss" if term == "loss" else f"train/{term}"
            ax.plot([r["step"] for r in epochs], [r[key] for r in epochs], "o-", ms=3, color=color,
                    label=f"{'total' if term == 'loss' else term} (epoch mean)")
        ax.set_title(name)
        ax.set_xlabel("optimiser step")
        ax.set_ylabel("loss")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_accuracy(runs: dict[str, list[dict]], summary: dict | None, path: Path) -> None:
    panels = 2 if summary else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 3.8), squeeze=False)
    ax = axes[0][0]
    for name, records in runs.items():
        epochs = [r for r in records if r.get("event") == "epoch" and "val/accuracy" in r]
        ax.plot([r["epoch"] for r in epochs], [r["val/accuracy"] for r in epochs], "o-", ms=3, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("validation accuracy")
    ax.legend(fontsize=8)
    if summary:
        ax = axes[0][1]
        rows = summary["rows"]
        labels = [r["label"] for r in rows]
        values = [r["test_accuracy"] for r in rows]
        bars = ax.bar(labels, values, color=["#555" if r["role"] == "teacher" else "#3a7" for r in rows])
        for bar, value in zip(bars, values):
            ax.text(bar.get_x() + bar.get_width() / 2, value, f"{value:.2f}", ha="center", va="bottom", fontsize=8)
        low = min(values)
        ax.set_ylim(max(0, low - 3), min(100, max(values) + 1.5))
        ax.set_ylabel("test accuracy (%)")
        ax.set_title("teacher vs students (test)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_samples(images, path: Path, title: str, columns: int = 8) -> None:
    """A grid of ``(N, C, H, W)`` images in [0, 1] (grey for one channel)."""
    n = min(len(images), columns * columns)
    rows = (n + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 0.9, rows * 0.9 + 0.4), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < n:
            image = images[k].clamp(0, 1)
            if image.shape[0] == 1:
                ax.imshow(image[0].numpy(), cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(image.permute(1, 2, 0).numpy())
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _sample_grids(run_dir: Path, out: Path) -> list[str]:
    """Draw the images each data-free student learnt from; returns the PNG names."""
    from safetensors.torch import load_file

    names = []
    for student in sorted(p for p in (run_dir / "students").glob("*") if p.is_dir()):
        for file, what in (("samples.safetensors", "generated"), ("deep_inversion.safetensors", "DeepInversion")):
            if (student / file).is_file():
                images = load_file(str(student / file))["images"][:64]
                name = f"samples-{student.name}.png"
                _plot_samples(images, out / name, f"{student.name}: {what} training images")
                names.append(name)
    return names


def write_report(run_dir: str | Path) -> Path:
    """Write the plots and ``report.md`` into ``RUN_DIR/report`` and return the markdown's path."""
    from distill.experiment import format_table

    run_dir = Path(run_dir)
    runs = _runs(run_dir)
    if not runs:
        raise RecipeError(f"{run_dir} holds no metrics.jsonl (is it a distill run directory?)")
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    if summary is not None and "rows" not in summary:
        summary = None
    out = run_dir / "report"
    out.mkdir(exist_ok=True)
    _plot_losses(runs, out / "losses.png")
    _plot_accuracy(runs, summary, out / "accuracy.png")
    lines = [f"# Report: {run_dir.name}", ""]
    if summary:
        lines += [format_table(summary), ""]
    lines += ["## Last epoch", "", "| run | epochs | train loss | val accuracy (%) | seconds / epoch |",
              "|---|---:|---:|---:|---:|"]
    for name, records in runs.items():
        epochs = [r for r in records if r.get("event") == "epoch"]
        if epochs:
            last = epochs[-1]
            mean_time = sum(r["time"] for r in epochs) / len(epochs)
            lines.append(f"| {name} | {last['epoch']} | {last['train/loss']:.4f} | "
                         f"{last.get('val/accuracy', float('nan')):.2f} | {mean_time:.1f} |")
    lines += ["", "![loss curves](losses.png)", "", "![accuracy](accuracy.png)", ""]
    for name in _sample_grids(run_dir, out):
        lines += [f"![{name[:-4]}]({name})", ""]
    (out / "report.md").write_text("\n".join(lines))
    return out / "report.md"
