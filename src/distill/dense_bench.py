"""``distill bench dense``: the dense-prediction benchmarks together — object detection
(:mod:`distill.detection_bench`) and image restoration (:mod:`distill.restoration_bench`, denoising and ×2
super-resolution). Their rows live in ``OUT/detection`` and ``OUT/restoration``; ``--arm`` names an arm of
either (detection: ``scratch``, ``heatmap-kd`` ...; restoration: ``denoise-output``, ``sr-feature`` ...)."""
from __future__ import annotations

from pathlib import Path

PARTS = {"detection": ("distill.detection_bench", "run_detection_benchmark", "draw_benchmark"),
         "restoration": ("distill.restoration_bench", "run_restoration_benchmark", "draw_restorations")}


def _module(part: str):
    import importlib

    return importlib.import_module(PARTS[part][0])


def split_arms(only: list[str] | None) -> dict[str, list[str] | None]:
    """``{part: its arms among only}`` (every arm of every part when ``only`` is empty); unknown arms are an error."""
    if not only:
        return {part: None for part in PARTS}
    arms = {part: [a for a in only if a in _module(part).ARMS] for part in PARTS}
    unknown = sorted(set(only) - {a for chosen in arms.values() for a in chosen})
    if unknown:
        known = [f"{part}: {', '.join(_module(part).ARMS)}" for part in PARTS]
        raise ValueError(f"unknown arms {unknown}; arms of {'; '.join(known)}")
    return {part: chosen for part, chosen in arms.items() if chosen}


def run_dense_benchmark(seeds: int = 3, quick: bool = False, only: list[str] | None = None,
                        out_dir: str | Path = "bench-results/dense", train_only: bool = False, say=print) -> dict:
    """Run (or resume) the detection and restoration benchmarks (or the parts ``only``'s arms belong to)."""
    results = {}
    for part, arms in split_arms(only).items():
        say(f"== dense: {part}")
        run = getattr(_module(part), PARTS[part][1])
        results[part] = run(seeds=seeds, quick=quick, only=arms, out_dir=Path(out_dir) / part, train_only=train_only,
                            say=say)
    return results


def draw_dense(out_dir: str | Path, quick: bool = False) -> list[Path]:
    """The figures of a dense benchmark already run in ``out_dir`` (detections beside the teacher's and the
    ground truth; restored patches beside the teacher's), for ``distill report``."""
    drawn = []
    for part, (_, _, draw) in PARTS.items():
        folder = Path(out_dir) / part
        if (folder / "results.json").is_file():
            path = getattr(_module(part), draw)(folder, quick=quick)
            if path is not None:
                drawn.append(Path(path))
    return drawn
