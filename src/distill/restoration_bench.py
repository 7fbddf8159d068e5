"""``distill bench dense``: Gaussian denoising (σ = 25) and ×2 super-resolution of real photographs, a
residual teacher per task distilled into a student about 8× cheaper.

Data (:mod:`distill.zoo.photos`): grayscale patches of 13 photographs shipped in scikit-image and scikit-learn,
split by photograph. Models (:mod:`distill.zoo.restoration`): 3×3 convolution stacks predicting a residual.

| task | teacher | student |
|---|---|---|
| ``denoise`` | ``dncnn`` 10 layers × 32 channels | 6 × 16 |
| ``sr`` | ``srnet`` 10 × 48 (pixel shuffle ×2) | 6 × 24 |

Arms, ``<task>-<method>`` for each task: ``scratch`` (L1 to the clean image for denoising, MSE for SR: see
``OWN``), ``output`` (+ L1 to the teacher's image), ``feature`` (+ FitNets hint on the trunk features, 1×1 conv connector), ``wavelet`` (+ wavelet KD of the
high-frequency Haar bands), ``contrastive`` (+ CSD's contrastive term), ``combined`` (all four).

Each teacher is trained once and cached; each (arm, seed) row is a file ``<arm>/seed-<k>.json`` (with the
student's weights beside it, for the figure), so an interrupted benchmark resumes. Speed is CPU milliseconds per
output megapixel on one thread (a 256×256 output, the fastest of 5 runs).
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from distill.cache import weights_digest
from distill.fileio import (bench_rows, cache_dir, cached_model, chosen_arms, row_key, settings_key,
                           write_bench_results)

DATA = {"train_size": 40, "stride": 24, "eval_size": 64}
MODELS = {"denoise": ("dncnn", {"depth": 10, "channels": 32}, {"depth": 6, "channels": 16}),
          "sr": ("srnet", {"depth": 10, "channels": 48, "init": "he"}, {"depth": 6, "channels": 24, "init": "he"})}
TEACHER_TRAIN = {"lr": 1e-3, "epochs": 12, "batch_size": 32, "schedule": "cosine", "optimizer": "adam"}
STUDENT_TRAIN = {"lr": 1e-3, "epochs": 8, "batch_size": 32, "schedule": "cosine", "optimizer": "adam"}
# weights not tuned on validation: the methods' own defaults here, set per task below (TASK_OPTIONS) by one rule
METHOD_ARMS = {"scratch": ("restore_scratch", {}), "output": ("restore_output", {"alpha": 0.5}),
               "feature": ("restore_feature", {}), "wavelet": ("restore_wavelet", {"gamma": 1.0}),
               "contrastive": ("restore_contrastive", {"lam": 0.1}), "combined": ("restore_combined", {})}
# the student's (and teacher's) own loss on the clean images: L1 left the SR network at bicubic upsampling (validation
# PSNR 37.07 dB, bicubic's 37.07; with He initialisation too), while MSE learns; L1 trains the denoiser well. The
# 10x48 SR teacher needed He initialisation as well (srnet's default; with PyTorch's it stayed at bicubic with MSE).
# An option only where it is not L1, so the denoising rows' settings keys stay as they were made.
OWN = {"denoise": {}, "sr": {"own": "mse"}}
# The distillation weights follow one rule: a term's weight is the own loss over the term at the start (one
# significant figure), measured on the trained teacher and a fresh student. Denoising (L1 0.078): image_kd 0.073,
# wavelet_kd 0.073, hint 0.21 through the plain connector (0.41 through conv1x1's batch norm, where beta 0.1 was
# chosen), hence beta 0.4; SR (MSE 5.6e-4): wavelet_kd 7.6e-3, hint 0.081, csd 2.0, hence gamma 0.07, beta 7e-3,
# lam 3e-4. With the denoising weights SR's hint and CSD outweighed its MSE 180x and 360x. The hint goes through a
# 1x1 convolution without batch norm: through conv1x1's the SR student's trunk features died (the hint is lowest
# there when the teacher's features are small) and it stayed at bicubic (docs/restoration.md).
PLAIN = "conv1x1_nobn"
TASK_OPTIONS = {"denoise": {"feature": {"beta": 0.4, "connector": PLAIN},
                            "combined": {"beta": 0.4, "connector": PLAIN}},
                "sr": {"feature": {"beta": 7e-3, "connector": PLAIN}, "wavelet": {"gamma": 0.07},
                       "contrastive": {"lam": 3e-4},
                       "combined": {"beta": 7e-3, "gamma": 0.07, "lam": 3e-4, "connector": PLAIN}}}
# arm -> (task, method, options)
ARMS = {f"{task}-{name}": (task, method, {**options, **OWN[task], **TASK_OPTIONS[task].get(name, {})})
        for task in MODELS for name, (method, options) in METHOD_ARMS.items()}
QUICK = {"limit": {"train": 192, "val": 16, "test": 24}, "teacher_epochs": 2, "student_epochs": 1}


def load(task: str, quick: bool):
    from distill.zoo.photos import load_photos

    return load_photos(task, **DATA, limit=QUICK["limit"] if quick else None)


def build(task: str, role: str, seed: int = 0):
    from distill.zoo import build_model

    name, teacher, student = MODELS[task]
    torch.manual_seed(seed)
    return build_model(name, (1, DATA["train_size"], DATA["train_size"]), **(teacher if role == "teacher" else student))


def _train(model, teacher, terms, data, settings: dict, seed: int) -> list[dict]:
    from distill.engine import TrainConfig
    from distill.stages import as_stages, fit_stages
    from distill.tasks import get_task

    # the teacher's images are cached when no term reads its features (they would not fit in memory)
    cached = teacher is not None and all(t.teacher in (None, "logits") for t in terms)
    cfg = TrainConfig(**settings, seed=seed, eval_batch_size=128, progress=False, cache_teacher=cached)
    own = next((t.name for t in terms if t.name in ("l1", "mse")), "l1")
    return fit_stages(model, teacher, as_stages(terms), data.train, data.val, config=cfg,
                      task=get_task("restoration", loss=own), say=lambda *_: None)["history"]


def _teacher_settings(task: str, quick: bool) -> dict:
    train = {**TEACHER_TRAIN, **({"epochs": QUICK["teacher_epochs"]} if quick else {})}
    return {"task": task, "model": MODELS[task][:2], "train": train, "data": DATA, "quick": quick, "version": 1,
            **OWN[task]}


def cached_teacher(task: str, data, quick: bool, say=print):
    """The task's teacher trained on the clean images (L1, or MSE where ``OWN`` says), kept as safetensors in the
    cache."""
    from distill.methods import METHODS

    settings = _teacher_settings(task, quick)
    folder = cache_dir() / "teachers" / f"restoration-{task}-{settings_key(settings)}"
    model = build(task, "teacher")
    return cached_model(folder, model, lambda: {
        "settings": settings,
        "history": _train(model, None, METHODS["restore_scratch"](**OWN[task]), data, settings["train"], seed=0)},
        f"training the {task} teacher on {len(data.train):,} patches", say)


def scores(model, split, teacher=None) -> dict:
    """Test PSNR (dB) and SSIM, and with a ``teacher`` the PSNR of the model's images against the teacher's."""
    from distill.evaluation import evaluate

    found = evaluate(model, split, 64, task="restoration", teacher=teacher)
    out = {"psnr": found["psnr"], "ssim": found["ssim"]}
    return out | ({"teacher_psnr": found["teacher_psnr"]} if teacher is not None else {})


def input_scores(split) -> dict:
    """PSNR and SSIM of the degraded inputs themselves (for SR, their bicubic upsampling): the floor."""
    from distill.image_quality import psnr, ssim

    sums = {"psnr": 0.0, "ssim": 0.0}
    for i in range(len(split)):
        item = split[i]
        x, y = item["input"][None], item["label"]
        if x.shape[-1] != y.shape[-1]:
            x = torch.nn.functional.interpolate(x, size=y.shape[-2:], mode="bicubic", align_corners=False)
        sums["psnr"] += psnr(x[0].numpy(), y.numpy())
        sums["ssim"] += ssim(x[0].numpy(), y.numpy())
    return {k: v / len(split) for k, v in sums.items()}


def ms_per_megapixel(model, side: int = 256, repeats: int = 5) -> float:
    """CPU milliseconds per output megapixel on one thread: a ``side``×``side`` output, the fastest of ``repeats``
    (the least disturbed by other jobs on the machine)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    scale = getattr(model, "scale", 1)
    x = torch.rand(1, 1, side // scale, side // scale)
    model.eval()
    try:
        with torch.inference_mode():
            model(x)  # warm-up
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                model(x)
                times.append(time.perf_counter() - start)
        return 1000 * min(times) / (side * side / 1e6)
    finally:
        torch.set_num_threads(old)


def macs_per_pixel(model) -> float:
    """Multiply-accumulates per output pixel (convolutions), from a 64×64 output."""
    from distill.evaluation import count_macs

    side = 64 // getattr(model, "scale", 1)
    return count_macs(model, torch.rand(1, 1, side, side)) / 64 ** 2


def arm_key(arm: str, quick: bool, teacher: tuple[str, str]) -> str:
    """The key of ``arm``'s rows: the settings, the teacher's settings key and, for an arm the teacher takes part
    in, its weights (``teacher``: both; :func:`distill.fileio.row_key`)."""
    taught = ARMS[arm][1] != "restore_scratch"
    return row_key({"arm": ARMS[arm], "student": MODELS[ARMS[arm][0]][2], "train": STUDENT_TRAIN,
                    "quick": quick, "teacher": teacher[0]}, teacher[1] if taught else None)


def run_arm(arm: str, seed: int, data, teacher, quick: bool, weights: Path) -> dict:
    from safetensors.torch import save_file

    from distill.evaluation import count_parameters
    from distill.methods import METHODS

    task, method, options = ARMS[arm]
    student = build(task, "student", seed)
    settings = {**STUDENT_TRAIN, **({"epochs": QUICK["student_epochs"]} if quick else {})}
    terms = METHODS[method](**options)
    start = time.perf_counter()
    history = _train(student, teacher if method != "restore_scratch" else None, terms, data, settings, seed)
    seconds = time.perf_counter() - start
    weights.parent.mkdir(parents=True, exist_ok=True)
    save_file(student.state_dict(), weights)
    return {"arm": arm, "task": task, "seed": seed, **scores(student, data.test, teacher),
            "val_psnr": history[-1]["val/psnr"], "params": count_parameters(student), "train_seconds": round(seconds, 1)}


def run_restoration_benchmark(seeds: int = 3, quick: bool = False, only: list[str] | None = None,
                              out_dir: str | Path = "bench-results/dense/restoration", train_only: bool = False,
                              say=print) -> dict:
    """Run (or resume) the benchmark; writes ``results.json``, ``table.md`` and ``restored.png`` in ``out_dir``.
    ``train_only``: train the missing rows and stop before the speed measurements, the table and the figure."""
    from distill.evaluation import count_parameters

    arms = chosen_arms(only, ARMS)
    out, results, teachers = Path(out_dir), [], {}
    for task in dict.fromkeys(ARMS[a][0] for a in arms):
        data = load(task, quick)
        say(f"{task}: {len(data.train):,} training patches, {len(data.val)} validation and {len(data.test)} test tiles")
        teacher, info = cached_teacher(task, data, quick, say)
        teacher_id = (settings_key(info["settings"]), weights_digest(teacher))
        teachers[task] = {**scores(teacher, data.test), "val_psnr": info["history"][-1]["val/psnr"],
                          "params": count_parameters(teacher), "train_seconds": info["seconds"],
                          "input": input_scores(data.test)}
        say(f"{task} teacher: test PSNR {teachers[task]['psnr']:.2f} dB, SSIM {teachers[task]['ssim']:.4f} (input "
            f"{teachers[task]['input']['psnr']:.2f} dB)")
        results += bench_rows(out, [a for a in arms if ARMS[a][0] == task], seeds,
                              lambda arm: arm_key(arm, quick, teacher_id),
                              lambda arm, seed: run_arm(arm, seed, data, teacher, quick,
                                                        out / arm / f"seed-{seed}.safetensors"),
                              lambda row: f"test PSNR {row['psnr']:.2f} dB  SSIM {row['ssim']:.4f}", say)
    if train_only:
        return {"teachers": teachers, "rows": results}
    speed = {task: {role: ms_per_megapixel(build(task, role)) for role in ("teacher", "student")}
             for task in teachers}
    macs = {task: {role: macs_per_pixel(build(task, role)) for role in ("teacher", "student")} for task in teachers}
    summary = {"teachers": teachers, "rows": results, "speed": speed, "macs": macs, "seeds": seeds, "quick": quick,
               "settings": {"data": DATA, "models": MODELS, "teacher": TEACHER_TRAIN, "student": STUDENT_TRAIN,
                            "arms": ARMS}}
    table = format_table(summary)
    write_bench_results(out, summary, table)
    say(table)
    draw_restorations(out, quick=quick)
    return summary


def format_table(summary: dict) -> str:
    from distill.bench import group_rows, mean_std

    def cell(values, digits):
        mean, std = mean_std(values)
        return f"{mean:.{digits}f} ± {std:.{digits}f}"

    lines = ["Test tiles of held-out photographs (64×64, grayscale); PSNR in dB and SSIM by scikit-image, mean ± std "
             "over seeds; MACs per output pixel; speed: CPU ms per output megapixel, one thread.", "",
             "| task | model | arm | params | MACs / px | PSNR | SSIM | PSNR to teacher | seeds | ms / MP | speed-up |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    groups = group_rows(summary["rows"])
    for task, teacher in summary["teachers"].items():
        speed, macs = summary["speed"][task], summary["macs"][task]
        floor = teacher["input"]
        lines.append(f"| {task} | degraded input | - | - | - | {floor['psnr']:.2f} | {floor['ssim']:.4f} | - | - | - | - |")
        lines.append(f"| {task} | teacher | - | {teacher['params']:,} | {macs['teacher']:,.0f} | {teacher['psnr']:.2f} | "
                     f"{teacher['ssim']:.4f} | - | 1 | {speed['teacher']:.0f} | 1.0× |")
        for arm, rows in groups.items():
            if rows[0]["task"] != task:
                continue
            lines.append(f"| {task} | student | {arm} | {rows[0]['params']:,} | {macs['student']:,.0f} | "
                         f"{cell([r['psnr'] for r in rows], 2)} | "
                         f"{cell([r['ssim'] for r in rows], 4)} | {cell([r['teacher_psnr'] for r in rows], 2)} | "
                         f"{len(rows)} | {speed['student']:.0f} | {speed['teacher'] / speed['student']:.1f}× |")
    return "\n".join(lines)


def draw_restorations(out_dir: str | Path = "bench-results/dense/restoration", quick: bool = False, tiles: int = 3,
                      path: str | Path | None = None) -> Path | None:
    """A PNG of restored test tiles per task: degraded input (nearest-neighbour upsampled for SR), teacher, each
    arm's seed-0 student, clean image.
    Reads the students' weights the benchmark left in ``out_dir`` (arms without them are left out); returns the
    file's path (default ``out_dir/restored.png``), or ``None`` when no student was found."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from safetensors.torch import load_file

    out = Path(out_dir)
    rows = []  # (task, [(title, images (tiles, H, W))])
    for task in MODELS:
        arms = [a for a in ARMS if ARMS[a][0] == task and (out / a / "seed-0.safetensors").is_file()]
        if not arms:
            continue
        data = load(task, quick)
        teacher, _ = cached_teacher(task, data, quick)
        # tiles with detail (flat sky shows little): among the most varied, spread out
        varied = data.test.labels.flatten(1).std(1).argsort(descending=True)
        pick = varied[torch.linspace(0, len(varied) // 3, tiles).long()]
        batch = data.test.__getitems__(pick.tolist())
        x, y = batch["input"], batch["label"]
        columns = [("degraded", torch.nn.functional.interpolate(x, size=y.shape[-2:], mode="nearest"))]
        with torch.inference_mode():
            columns.append(("teacher", teacher(x)))
            for arm in arms:
                student = build(task, "student")
                student.load_state_dict(load_file(out / arm / "seed-0.safetensors"))
                columns.append((arm.removeprefix(f"{task}-"), student.eval()(x)))
        columns.append(("clean", y))
        rows.append((task, columns))
    if not rows:
        return None
    width = max(len(c) for _, c in rows)
    fig, axes = plt.subplots(tiles * len(rows), width, figsize=(1.6 * width, 1.6 * tiles * len(rows)), squeeze=False)
    for r, (task, columns) in enumerate(rows):
        for t in range(tiles):
            for c in range(width):
                ax = axes[r * tiles + t][c]
                ax.axis("off")
                if c < len(columns):
                    title, images = columns[c]
                    ax.imshow(images[t, 0].clamp(0, 1).numpy(), cmap="gray", vmin=0, vmax=1)
                    if t == 0:
                        ax.set_title(f"{task}: {title}" if c == 0 else title, fontsize=7)
    fig.tight_layout()
    target = Path(path) if path else out / "restored.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=110)
    plt.close(fig)
    return target
