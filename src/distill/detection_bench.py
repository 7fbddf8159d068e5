"""``distill bench dense``: a CenterDet teacher distilled into a CenterDet several times cheaper.

Data (:mod:`distill.zoo.scenes`): 96 x 96 scenes of 1-6 Fashion-MNIST / MNIST objects (20 classes) on
procedural textures; fixed train / validation / test scenes, test objects from the sources' test splits.

| arm | loss besides the detector's own (focal heatmap + DFL + GIoU) |
|---|---|
| ``scratch`` | none |
| ``heatmap-kd`` | binary KL of the class heatmaps, every location |
| ``fine-grained`` | neck imitation at near-object locations (Wang et al. 2019) |
| ``fgd`` | focal and global distillation of the neck (Yang et al. 2022) |
| ``pkd`` | Pearson-correlation imitation of the whole neck (Cao et al. 2022) |
| ``ld`` | KL of the box-edge distributions at the objects (Zheng et al. 2022) |
| ``gid`` | neck + heatmap + box distillation over general instances: where teacher and student disagree, with
  or without an annotation, and the ground truth (Dai et al. 2021) |
| ``transfer`` | first, 2 epochs on 6,000 new **unlabelled** scenes: heatmap KD + LD at every location (no labels
  read); then the detector's own loss alone on the labelled scenes |
| ``scratch-long`` | none, 10 epochs: as many image steps as ``transfer``'s two stages (the control for it) |

The teacher is trained once and cached; its outputs on the training scenes are cached per run
(``cache_teacher``: the heatmap, box distributions and neck of 3,000 scenes, about 1 GB in memory); each
(arm, seed) result is a file under the output folder, so an interrupted benchmark resumes; the seed-0 student
of each arm is kept beside its row for the figure.
Speed: milliseconds per 96 x 96 image on one CPU thread, batch 1 and batch 32 (median of repeats).
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from distill.cache import weights_digest
from distill.fileio import (bench_rows, cache_dir, cached_model, chosen_arms, row_key, settings_key,
                           write_bench_results)

DATA = {"train_size": 3000, "val_size": 300, "test_size": 1000}
TRAIN = {"lr": 3e-3, "batch_size": 32, "schedule": "cosine", "warmup_epochs": 0.3, "optimizer": "adamw",
         "weight_decay": 1e-4, "clip_grad_norm": 10.0, "eval_every": 2}
TEACHER = {"model": "centerdet_teacher", "epochs": 20}
STUDENT = {"model": "centerdet_student", "epochs": 6}
# arm -> (method, options). The distillation weights are the validation sweep's best (distill bench
# detection-weights: x0.1 / 0.3 / 1 / 3 of weights first set so each term starts near the detector's own loss;
# docs/detection.md); every arm was best at x0.1 or x0.3.
ARMS = {
    "scratch": ("detection", {}),
    "heatmap-kd": ("det_heatmap_kd", {"weight": 0.1, "temperature": 1.0}),
    "fine-grained": ("det_fine_grained", {"weight": 0.005}),
    "fgd": ("det_fgd", {"weight": 0.3}),
    "pkd": ("det_pkd", {"weight": 0.2}),
    "ld": ("det_ld", {"weight": 0.025, "temperature": 10.0}),
    "gid": ("det_gid", {"weight": 0.3, "feature_weight": 0.05, "response_weight": 1.0, "box_weight": 0.25}),
    # the teacher's responses on unlabelled scenes first (TRANSFER), then the detector's own loss on the labels
    "transfer": ("detection", {"transfer": True}),
    # scratch with as many image steps as transfer's two stages (6,000 x 2 + 3,000 x 6 = 3,000 x 10)
    "scratch-long": ("detection", {"epochs": 10}),
}
# the transfer arm's first stage: new scenes of the training objects (another generator seed), boxes withheld,
# taught the teacher's heatmaps (binary KL) and box distributions (LD at every location); no labels are read
TRANSFER = {"scenes": 6000, "seed": 1, "epochs": 2, "terms": {"heatmap_kd": {"weight": 1.0},
                                                             "ld": {"weight": 0.25, "temperature": 10.0}}}
# the weights the sweep scales (each term near the detector's own loss at the start; the arms' first weights)
SWEEP_BASE = {"heatmap-kd": 1.0, "fine-grained": 0.05, "fgd": 1.0, "pkd": 2.0, "ld": 0.25, "gid": 1.0}
QUICK = {"data": {"train_size": 300, "val_size": 60, "test_size": 100}, "teacher_epochs": 4, "student_epochs": 2}


def _train(model, teacher, terms, train, val, settings: dict, seed: int) -> list[dict]:
    from distill.engine import TrainConfig
    from distill.stages import as_stages, fit_stages
    from distill.tasks import get_task

    # the inputs are the same every epoch: the teacher's outputs are computed once per run, not once per epoch
    cfg = TrainConfig(**settings, seed=seed, eval_batch_size=100, progress=False, cache_teacher=teacher is not None)
    return fit_stages(model, teacher, as_stages(terms), train, val, config=cfg, task=get_task("detection"),
                      say=lambda *_: None)["history"]


def build(name: str, seed: int):
    from distill.zoo import build_model
    from distill.zoo.scenes import CLASSES

    torch.manual_seed(seed)
    return build_model(name, in_shape=(1, 96, 96), num_classes=len(CLASSES))


def cached_teacher(data, data_key: str, quick: bool, say=print, train: bool = True):
    """The teacher trained with the detection loss on the training scenes, kept as safetensors (``train=False``:
    a ``FileNotFoundError`` instead of training it when it is not there)."""
    from distill.methods import METHODS
    from distill.zoo import detection

    epochs = QUICK["teacher_epochs"] if quick else TEACHER["epochs"]
    # the preset's shape is part of the key, so a changed preset trains a new teacher instead of failing to load
    settings = {"model": TEACHER["model"], "shape": detection.TEACHER, "train": {**TRAIN, "epochs": epochs},
                "data": data_key, "version": 1}
    folder = cache_dir() / "teachers" / f"detection-{settings_key(settings)}"
    model = build(TEACHER["model"], 0)
    if not train and not (folder / "teacher.json").is_file():
        raise FileNotFoundError(f"no trained detection teacher in {folder}: run distill bench dense first")
    return cached_model(folder, model, lambda: {
        "settings": settings,
        "history": _train(model, None, METHODS["detection"](), data.train, data.val, settings["train"], 0)},
        f"training the CenterDet teacher on {len(data.train):,} scenes, {epochs} epochs", say)


def scores(model, split) -> dict:
    """COCO mAP@[.5:.95] and mAP@.5 (%) on ``split``."""
    from distill.evaluation import evaluate

    found = evaluate(model, split, 100, task="detection")
    return {"map": found["map"], "map50": found["map50"]}


def milliseconds(model, batch: int, repeats: int = 10) -> float:
    """Median forward time per 96 x 96 image on one CPU thread, ``batch`` images at a time."""
    from distill.evaluation import inference_time

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return 1000 * inference_time(model, torch.rand(batch, 1, 96, 96), repeats=repeats) / batch
    finally:
        torch.set_num_threads(old)


def arm_key(arm: str, quick: bool, teacher: tuple[str, str], spec: tuple | None = None) -> str:
    """The key of ``arm``'s rows (``spec``: its ``(method, options)`` when not :data:`ARMS`'s): the settings, the
    teacher's settings key and, for an arm the teacher takes part in, its weights (``teacher``: both;
    :func:`distill.fileio.row_key`)."""
    from distill.zoo import detection

    spec = spec or ARMS[arm]
    taught = spec[0] != "detection" or spec[1].get("transfer", False)
    return row_key({"arm": spec, "student": STUDENT, "shape": detection.STUDENT, "train": TRAIN,
                    "quick": quick, "teacher": teacher[0],
                    **({"transfer": TRANSFER} if spec[1].get("transfer") else {})}, teacher[1] if taught else None)


def transfer_scenes(quick: bool):
    """:data:`TRANSFER`'s unlabelled scenes (cached like the benchmark's own; one validation and test scene are
    generated beside them and not used)."""
    from distill.zoo.scenes import UnlabelledScenes, load_scenes

    count = QUICK["data"]["train_size"] if quick else TRANSFER["scenes"]
    return UnlabelledScenes(load_scenes(count, 1, 1, seed=TRANSFER["seed"], say=lambda *_: None).train)


def fit_arm(arm: str, seed: int, data, teacher, quick: bool, weight: float | None = None):
    """One student trained by ``arm`` (with this distillation ``weight`` when given): ``(student, history,
    seconds)``."""
    from distill.methods import METHODS
    from distill.terms import Term

    method, options = ARMS[arm]
    options = dict(options)
    transfer = options.pop("transfer", False)
    epochs = options.pop("epochs", QUICK["student_epochs"] if quick else STUDENT["epochs"])
    if weight is not None:
        options["weight"] = weight
    student = build(STUDENT["model"], seed)
    start, history = time.perf_counter(), []
    if transfer:
        terms = [Term(name, **params) for name, params in TRANSFER["terms"].items()]
        history += _train(student, teacher, terms, transfer_scenes(quick), data.val,
                          {**TRAIN, "epochs": 1 if quick else TRANSFER["epochs"]}, seed)
    history += _train(student, teacher if method != "detection" else None, METHODS[method](**options), data.train,
                      data.val, {**TRAIN, "epochs": epochs}, seed)
    return student, history, time.perf_counter() - start


def run_arm(arm: str, seed: int, data, teacher, quick: bool, weights: Path | None) -> dict:
    from safetensors.torch import save_file

    from distill.evaluation import count_parameters

    student, history, seconds = fit_arm(arm, seed, data, teacher, quick)
    if weights is not None:
        weights.parent.mkdir(parents=True, exist_ok=True)
        save_file(student.state_dict(), weights)
    return {"arm": arm, "seed": seed, **scores(student, data.test), "val_map": history[-1]["val/map"],
            "params": count_parameters(student), "train_seconds": round(seconds, 1)}


def _set_up(only: list[str] | None, quick: bool, say):
    """The arms asked for (unknown ones refused), the scenes, the cached teacher, its info, and its settings key
    and weights digest."""
    from distill.zoo.scenes import load_scenes

    arms = chosen_arms(only, ARMS)
    data = load_scenes(**{**DATA, **(QUICK["data"] if quick else {})}, say=say)
    teacher, info = cached_teacher(data, settings_key(data.settings), quick, say)
    teacher_id = (settings_key(info["settings"]), weights_digest(teacher))
    return arms, data, teacher, info, teacher_id


def run_detection_benchmark(seeds: int = 3, quick: bool = False, only: list[str] | None = None,
                            out_dir: str | Path = "bench-results/dense/detection", train_only: bool = False,
                            say=print) -> dict:
    """Run (or resume) the benchmark; writes ``results.json``, ``table.md`` and ``detections.png`` in
    ``out_dir``. ``train_only``: train the missing rows and stop before the speed measurements and the table."""
    from distill.evaluation import count_macs, count_parameters

    arms, data, teacher, info, teacher_id = _set_up(only, quick, say)
    # its mAP on scenes it was trained on: how much of the labels its outputs there already are
    seen = scores(teacher, torch.utils.data.Subset(data.train, range(min(1000, len(data.train)))))
    teacher_row = {**scores(teacher, data.test), "val_map": info["history"][-1]["val/map"],
                   "train_map": seen["map"], "train_map50": seen["map50"],
                   "params": count_parameters(teacher), "train_seconds": info["seconds"]}
    say(f"teacher: test mAP {teacher_row['map']:.1f}, mAP@.5 {teacher_row['map50']:.1f}; on 1,000 of its training "
        f"scenes {teacher_row['train_map']:.1f} / {teacher_row['train_map50']:.1f}")
    out = Path(out_dir)
    results = bench_rows(out, arms, seeds, lambda arm: arm_key(arm, quick, teacher_id),
                         lambda arm, seed: run_arm(arm, seed, data, teacher, quick,
                                                   out / arm / "seed-0.safetensors" if seed == 0 else None),
                         lambda row: f"test mAP {row['map']:.1f}  mAP@.5 {row['map50']:.1f}", say)
    if train_only:
        return {"teacher": teacher_row, "rows": results}
    student = build(STUDENT["model"], 0)
    image = torch.rand(1, 1, 96, 96)
    speed = {name: {"ms_batch1": milliseconds(m, 1), "ms_batch32": milliseconds(m, 32, repeats=3),
                    "macs": count_macs(m, image), "params": count_parameters(m)}
             for name, m in (("teacher", teacher), ("student", student))}
    summary = {"teacher": teacher_row, "rows": results, "speed": speed, "seeds": seeds, "quick": quick,
               "settings": {"data": data.settings, "teacher": info["settings"], "student": STUDENT, "train": TRAIN,
                            "arms": ARMS}}
    table = format_table(summary)
    write_bench_results(out, summary, table)
    figure = draw_detections(out, data.test, teacher, quick=quick)
    say(table)
    if figure is not None:
        say(f"detections drawn in {figure}")
    return summary


WEIGHT_SCALES = (0.1, 0.3, 1.0, 3.0)


def run_weight_sweep(seeds: int = 1, quick: bool = False, only: list[str] | None = None,
                     out_dir: str | Path = "bench-results/detection-weights", train_only: bool = False,
                     say=print, scales: tuple[float, ...] = WEIGHT_SCALES) -> dict:
    """``distill bench detection-weights``: each distillation arm's weight in :data:`SWEEP_BASE` times each of
    ``scales`` (``scratch`` once; the other arms without a distillation weight are left out of the table),
    seed 0 (``seeds`` > 1: more seeds), scored by the last epoch's **validation** mAP; the test scenes are never
    scored. The evidence for the weights in :data:`ARMS`. Each (arm, scale, seed) is a file
    ``out_dir/ARM/xSCALE-seed-K.json`` (resumable); writes ``table.md`` unless ``train_only``."""
    from distill.bench import mean_std
    from distill.fileio import bench_row

    arms, data, teacher, info, teacher_id = _set_up(only or ["scratch", *SWEEP_BASE], quick, say)
    out, results = Path(out_dir), {}
    for arm in arms:
        method, options = ARMS[arm]
        base = SWEEP_BASE.get(arm)
        for scale in (1.0,) if base is None else scales:  # scratch: no distillation weight to scale
            weight = None if base is None else base * scale
            spec = (method, options if base is None else {**options, "weight": base})
            for seed in range(seeds):
                def make():
                    _, history, seconds = fit_arm(arm, seed, data, teacher, quick, weight)
                    return {"arm": arm, "scale": scale, "weight": weight, "seed": seed,
                            "val_map": history[-1]["val/map"], "val_map50": history[-1]["val/map50"],
                            "train_seconds": round(seconds, 1)}

                row, _ = bench_row(out / arm / f"x{scale:g}-seed-{seed}.json",
                                   settings_key({"arm": arm_key(arm, quick, teacher_id, spec), "scale": scale}), make)
                say(f"{arm} x{scale:g} seed {seed}: val mAP {row['val_map']:.1f}")
                results.setdefault(arm, {}).setdefault(scale, []).append(row["val_map"])
    if train_only:
        return results
    lines = []
    if "scratch" in results:
        lines += [f"scratch (the detector's own loss alone): validation mAP {mean_std(results['scratch'][1.0])[0]:.1f}",
                  ""]
    lines += ["| arm | first weight | " + " | ".join(f"× {s:g}" for s in scales) + " |",
              "|---|---:|" + "---:|" * len(scales)]
    for arm, by_scale in results.items():
        if arm not in SWEEP_BASE:
            continue
        means = {s: mean_std(by_scale[s])[0] for s in scales if by_scale.get(s)}
        best = max(means, key=means.get)
        cells = ["–" if s not in means else f"**{means[s]:.1f}**" if s == best else f"{means[s]:.1f}" for s in scales]
        lines.append(f"| {arm} | {SWEEP_BASE[arm]:g} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    write_bench_results(out, {"val_map": {a: {str(k): v for k, v in r.items()} for a, r in results.items()},
                              "scales": scales, "seeds": seeds, "first_weights": SWEEP_BASE}, table)
    say(table)
    return results


def format_table(summary: dict) -> str:
    from distill.bench import group_rows, mean_std

    teacher, speed = summary["teacher"], summary["speed"]

    def cell(values):
        mean, std = mean_std(values)
        return f"{mean:.1f} ± {std:.1f}"

    t, s = speed["teacher"], speed["student"]
    lines = [f"COCO mAP (%) on {summary['settings']['data']['test']} test scenes (pycocotools); one CPU thread: teacher "
             f"{t['params']:,} params, {t['macs'] / 1e6:.0f}M MACs, {t['ms_batch1']:.1f} / {t['ms_batch32']:.1f} ms per "
             f"image (batch 1 / 32); student {s['params']:,} params, {s['macs'] / 1e6:.0f}M MACs, "
             f"{s['ms_batch1']:.1f} / {s['ms_batch32']:.1f} ms ({t['ms_batch1'] / s['ms_batch1']:.1f}x / "
             f"{t['ms_batch32'] / s['ms_batch32']:.1f}x faster).", "",
             "| model | arm | mAP@[.5:.95] | mAP@.5 | val mAP | seeds | train s |",
             "|---|---|---:|---:|---:|---:|---:|",
             f"| teacher | scratch | {teacher['map']:.1f} | {teacher['map50']:.1f} | {teacher['val_map']:.1f} | 1 | "
             f"{teacher['train_seconds']:.0f} |"]
    for arm, rows in group_rows(summary["rows"]).items():
        lines.append(f"| student | {arm} | {cell([r['map'] for r in rows])} | {cell([r['map50'] for r in rows])} | "
                     f"{cell([r['val_map'] for r in rows])} | {len(rows)} | "
                     f"{sum(r['train_seconds'] for r in rows) / len(rows):.0f} |")
    return "\n".join(lines)


def draw_benchmark(out_dir: str | Path = "bench-results/dense/detection", quick: bool = False,
                   arms: tuple[str, ...] = ("scratch", "gid")) -> Path | None:
    """``detections.png`` of a benchmark already run in ``out_dir`` (its scenes and cached teacher; for
    ``distill report``): :func:`draw_detections`."""
    from distill.zoo.scenes import load_scenes

    data = load_scenes(**{**DATA, **(QUICK["data"] if quick else {})}, say=lambda *_: None)
    teacher, _ = cached_teacher(data, settings_key(data.settings), quick, train=False)
    return draw_detections(out_dir, data.test, teacher, arms, quick=quick)


def draw_detections(out_dir: str | Path, scenes, teacher, arms: tuple[str, ...] = ("scratch", "gid"),
                    images: int = 4, threshold: float = 0.3, quick: bool = False) -> Path | None:
    """``detections.png`` in ``out_dir``: for the first ``images`` test scenes, the ground truth, the teacher's
    detections and those of each arm's seed-0 student (kept by the benchmark) above ``threshold``. Arms whose
    weights are missing are left out; returns the file, or ``None`` when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Rectangle
    except ImportError:
        return None
    from safetensors.torch import load_file

    from distill.losses.detection import decode

    out = Path(out_dir)
    models = [("teacher", teacher)]
    for arm in arms:
        path = out / arm / "seed-0.safetensors"
        if path.is_file():
            student = build(STUDENT["model"], 0)
            student.load_state_dict(load_file(path))
            models.append((f"student: {arm}", student.eval()))
    items = [scenes[i] for i in range(min(images, len(scenes)))]
    batch = torch.stack([it["image"] for it in items])
    columns = [("ground truth", [{"boxes": it["boxes"], "classes": it["classes"], "scores": None} for it in items])]
    with torch.inference_mode():
        for name, model in models:
            output = model.eval()(batch)
            found = decode(output["logits"], output["box"], model.stride)
            columns.append((name, [{k: v[d["scores"] > threshold] for k, v in d.items()} for d in found]))
    fig, axes = plt.subplots(len(items), len(columns), figsize=(2.6 * len(columns), 2.6 * len(items)), squeeze=False)
    for row, item in enumerate(items):
        for col, (name, found) in enumerate(columns):
            ax = axes[row, col]
            ax.imshow(item["image"][0].numpy(), cmap="gray", vmin=0, vmax=1)
            det = found[row]
            scores = det["scores"] if det["scores"] is not None else [None] * len(det["boxes"])
            for box, cls, score in zip(det["boxes"].tolist(), det["classes"].tolist(), scores):
                colour = "lime" if score is None else "orange"
                ax.add_patch(Rectangle((box[0] - 0.5, box[1] - 0.5), box[2] - box[0], box[3] - box[1], fill=False,
                                       edgecolor=colour, linewidth=1.2))
                label = str(cls) if score is None else f"{cls} {float(score):.2f}"
                ax.text(box[0], box[1] - 1, label, color=colour, fontsize=6)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name, fontsize=8)
    fig.suptitle(f"test scenes: detections above {threshold}{' (quick run)' if quick else ''}; class ids 0-9 "
                 "Fashion-MNIST, 10-19 digits", fontsize=8)
    fig.tight_layout()
    path = out / "detections.png"
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
