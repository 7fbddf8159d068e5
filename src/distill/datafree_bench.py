"""``distill bench datafree``: data-free distillation on MNIST, LeNet-5 -> LeNet-5-half, the pair of the DAFL
(Chen et al. 2019) and DFAD (Fang et al. 2019) papers, and DeepInversion (Yin et al. 2020) with a batch-norm
LeNet-5, each over seeds, beside the student taught on the real images.

Arms (``ARMS``; the settings and how they were chosen: docs/schemes.md, "data-free"):

* ``scratch``: LeNet-5-half on the real training images, labels only (what real data gives);
* ``kd-real``: LeNet-5-half taught by the teacher's soft targets alone on the real training images: the same
  loss as the data-free arms with the real inputs, their ceiling;
* ``dafl``, ``dfad``: the student trained only on a generator's images (:class:`~distill.datafree.SyntheticSet`),
  evaluated on the validation split every ``eval_every`` student steps;
* ``deep-inversion``: ``images`` images synthesised once from the batch-norm teacher
  (:func:`~distill.datafree.deep_inversion`; kept in the cache, so runs that change only the student's training
  reuse them), then the student taught by KD on them alone (optionally on shifted, ``shift``, and mixed,
  ``mixup``, views the teacher labels); ``deep-inversion-resnet8`` the same from a ResNet-8 teacher (a deeper
  batch-norm prior).

The teachers (:data:`TEACHERS`: LeNet-5, LeNet-5 with batch norms, ResNet-8; Adam 1e-3, batch 256, 9 epochs, as
DAFL's teacher script)
are trained once with seed 0 and cached; a row's seed sets the student's initialisation, the generator and its
noise. Test accuracy is read once per row, at the end; nothing is chosen on it. A row keeps its validation curve,
minutes, student and generator steps, and the teacher's classes on the last generated batch.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from distill.bench import group_rows, mean_std
from distill.cache import weights_digest
from distill.fileio import (atomic_write_dir, bench_rows, cache_dir, cached_model, chosen_arms, row_key,
                           settings_key, write_bench_results)

TEACHER = {"epochs": 9, "optimizer": "adam", "lr": 1e-3, "batch_size": 256, "schedule": "constant"}
# The papers' student optimisers: DAFL Adam 2e-3; DFAD SGD 0.01, momentum 0.9, weight decay 1e-4. Batch 256 (the
# papers: 512), generators of width 16 (the authors' 64 costs ~16x more per image on a CPU, where the generator, not
# the LeNets, takes the time).
ARMS = {
    "scratch": {"kind": "real", "terms": [("ce", {})]},
    "kd-real": {"kind": "real", "terms": [("kd", {"temperature": 4.0})]},
    "dafl": {"kind": "generator", "objective": "dafl", "steps": 3000, "eval_every": 500, "width": 16,
             "student": {"optimizer": "adam", "lr": 2e-3}, "set": {}},
    "dfad": {"kind": "generator", "objective": "dfad", "steps": 1000, "eval_every": 250, "width": 16,
             "student": {"optimizer": "sgd", "lr": 0.01, "weight_decay": 1e-4}, "set": {}},
    # 10,240 images x 500 steps, then "patient and consistent" KD (Beyer et al. 2022): 300 epochs on shifted and
    # mixed views the teacher labels (seed 0 validation: 83.40 % with plain KD for 50 epochs, 90.60 % with the
    # views, 94.58 % with them for 150 epochs, 95.26 % for 300)
    "deep-inversion": {"kind": "inversion", "images": 10240, "epochs": 300, "temperature": 4.0, "shift": 2,
                       "mixup": 1.0, "inversion": {"steps": 500, "lr": 0.05, "bn_weight": 10.0, "tv_weight": 1e-3,
                                                   "l2_weight": 0.0}},
    "deep-inversion-resnet8": {"kind": "inversion", "teacher": "resnet8", "images": 2560, "epochs": 50,
                               "temperature": 4.0, "inversion": {"steps": 500, "lr": 0.05, "bn_weight": 10.0,
                                                                 "tv_weight": 1e-3, "l2_weight": 0.0}},
}
REAL = {"epochs": 9, "optimizer": "adam", "lr": 1e-3, "batch_size": 256, "schedule": "constant"}
BATCH = 256
# DAFL's MNIST table (Chen et al. 2019, LeNet-5 -> LeNet-5-half): teacher 98.91, the student on real data 98.65,
# KD on real data 98.91, DAFL 98.20
PAPERS = {"scratch": "98.65", "kd-real": "98.91", "dafl": "98.20"}
QUICK = {"train_size": 2048, "val_size": 512, "test_size": 512, "teacher_epochs": 3, "real_epochs": 1, "steps": 4,
         "eval_every": 2, "images": 32, "inversion_steps": 3, "epochs": 2}


def load_data(quick: bool):
    from distill.zoo import load_dataset

    if quick:
        return load_dataset("mnist", QUICK["val_size"], train_size=QUICK["train_size"], test_size=QUICK["test_size"])
    return load_dataset("mnist", 5000)


# The teachers, by name: LeNet-5 (the papers' MNIST teacher), LeNet-5 with a batch norm after each convolution
# (DeepInversion's prior needs batch-norm statistics; LeNet-5 has only these two), and ResNet-8, whose seven batch
# norms give the prior the depth of the paper's ResNets
TEACHERS = {"plain": ("lenet5", {}, "LeNet-5"), "bn": ("lenet5", {"batch_norm": True}, "LeNet-5 with batch norms"),
            "bn-fc": ("lenet5", {"batch_norm": True, "fc_batch_norm": True},
                      "LeNet-5 with batch norms after every hidden layer"),
            "resnet8": ("resnet8", {}, "ResNet-8")}


def teacher(data, which: str, quick: bool, say=print):
    """The ``which`` teacher of :data:`TEACHERS` trained on the real images with :data:`TEACHER`, seed 0, cached.
    Returns ``(model in eval mode, record with its validation and test accuracy)``."""
    from distill import Distiller, evaluate, seed_everything
    from distill.zoo import build_model

    model_name, options, _ = TEACHERS[which]
    settings = {**TEACHER, **({"epochs": QUICK["teacher_epochs"]} if quick else {})}
    variant = "" if which in ("plain", model_name) else f"-{which}"  # lenet5, lenet5-bn, lenet5-bn-fc, resnet8
    name = f"{model_name}{variant}-mnist-{settings_key({'train': settings, 'quick': quick})}"
    seed_everything(0)  # before its initialisation: a fresh process's generator starts from a random seed
    model = build_model(model_name, data.input_shape, **options)

    def train() -> dict:
        Distiller(model, None, None, **settings, progress=False).fit(data.train, data.val)
        return {"settings": settings, "val": evaluate(model, data.val)["accuracy"],
                "test": evaluate(model, data.test)["accuracy"]}

    return cached_model(cache_dir() / "teachers" / name, model, train, f"training the {name} teacher", say)


def _classes(model, images: torch.Tensor) -> list[int]:
    with torch.no_grad():
        return torch.bincount(model(images).argmax(1), minlength=10).tolist()


def run_arm(arm: str, seed: int, data, teachers: dict, quick: bool, settings: dict | None = None,
            samples: Path | None = None) -> dict:
    """Train and score one student of ``arm`` (``settings``: the arm's settings, by default ``ARMS[arm]``);
    ``samples``: where to draw the images it learnt from."""
    from distill import Distiller, Term, evaluate, seed_everything
    from distill.data import ArrayDataset, Compose, MixUp, RandomShift
    from distill.datafree import SyntheticSet
    from distill.report import _plot_samples
    from distill.zoo import build_model

    spec = settings or ARMS[arm]
    kind, start = spec["kind"], time.perf_counter()
    seed_everything(seed)
    student = build_model("lenet5_half", data.input_shape)
    curve, extra = [], {}
    if kind == "real":
        real = {**REAL, **({"epochs": QUICK["real_epochs"]} if quick else {})}
        Distiller(student, teachers["plain"], [Term(name, **opts) for name, opts in spec["terms"]], **real,
                  seed=seed, progress=False).fit(data.train)
    elif kind == "generator":
        steps, every = (QUICK["steps"], QUICK["eval_every"]) if quick else (spec["steps"], spec["eval_every"])
        inputs = data.val.inputs
        generator = build_model("generator", data.input_shape, width=spec["width"], mean=float(inputs.mean()),
                                std=float(inputs.std()))
        synthetic = SyntheticSet(teachers["plain"], spec["objective"], generator, student, size=BATCH * every,
                                 seed=seed, **spec["set"])
        terms = [Term("kd", temperature=1.0)] if spec["objective"] == "dafl" else [Term("logit_l1")]
        d = Distiller(student, teachers["plain"], terms, epochs=1, batch_size=BATCH, schedule="constant",
                      progress=False, seed=seed, **spec["student"])
        done = 0
        while done < steps:
            d.fit(synthetic, resume=False)
            done += every
            curve.append({"steps": done, "generator_steps": synthetic.generator_steps,
                          "minutes": round((time.perf_counter() - start) / 60, 2),
                          "val": evaluate(student, data.val)["accuracy"],
                          "teacher_classes": _classes(teachers["plain"], synthetic.batch)})
        images = synthetic.batch
        extra = {"steps": done, "generator_steps": synthetic.generator_steps}
    else:
        inversion = dict(spec["inversion"], **({"steps": QUICK["inversion_steps"]} if quick else {}))
        count = QUICK["images"] if quick else spec["images"]
        inverted = teachers[teacher_of(spec)]
        before = time.perf_counter()
        images, made = inverted_images(inverted, count, data, seed, inversion)
        start += time.perf_counter() - before  # the row's seconds are the student's; synthesis_minutes the images'
        seed_everything(seed)
        epochs = QUICK["epochs"] if quick else spec["epochs"]
        # the teacher labels the shifted / mixed images the student sees
        views = ([RandomShift(spec["shift"])] if spec.get("shift") else []) + \
            ([MixUp(spec["mixup"])] if spec.get("mixup") else [])
        Distiller(student, inverted, [Term("kd", temperature=spec["temperature"])], epochs=epochs,
                  batch_size=BATCH, optimizer="adam", lr=1e-3, schedule="constant", progress=False,
                  augment=Compose(*views) if views else None, seed=seed).fit(
                      ArrayDataset(images, None, "deep-inversion"))
        extra = {"images": count, "synthesis_minutes": round(made / 60, 2)}
    if kind != "real":
        extra["teacher_classes"] = _classes(teachers[teacher_of(spec)], images)
        if samples is not None:
            samples.parent.mkdir(parents=True, exist_ok=True)
            _plot_samples(images[:64].clamp(0, 1), samples, f"{arm}, seed {seed}: images the student learnt from")
    return {"arm": arm, "seed": seed, "val": evaluate(student, data.val)["accuracy"],
            "test": evaluate(student, data.test)["accuracy"], "train_seconds": round(time.perf_counter() - start, 1),
            **extra, "curve": curve}


def inverted_images(teacher, count: int, data, seed: int, inversion: dict) -> tuple[torch.Tensor, float]:
    """DeepInversion's ``count`` images of ``teacher`` (seeded), kept in the cache under the teacher's weights and
    the settings, so that runs changing only the student's training reuse them. Returns ``(images, seconds the
    synthesis took when it ran)``."""
    from distill.datafree import deep_inversion

    key = settings_key({"teacher": weights_digest(teacher), "count": count, "seed": seed, **inversion})
    folder = cache_dir() / "inversions" / key
    if (folder / "images.pt").is_file():
        return torch.load(folder / "images.pt"), json.loads((folder / "info.json").read_text())["seconds"]
    start = time.perf_counter()
    images, _ = deep_inversion(teacher, count, data.input_shape, data.num_classes, seed=seed, **inversion)
    seconds = time.perf_counter() - start

    def write(tmp: Path) -> None:
        torch.save(images, tmp / "images.pt")
        (tmp / "info.json").write_text(json.dumps({"count": count, "seed": seed, **inversion, "seconds": seconds}))

    atomic_write_dir(folder, write)
    return images, seconds


def teacher_of(spec: dict) -> str:
    """The name in :data:`TEACHERS` of the teacher an arm's ``spec`` learns from."""
    return spec.get("teacher", "bn") if spec["kind"] == "inversion" else "plain"


def arm_key(arm: str, quick: bool, teacher_records: dict) -> str:
    """The settings one arm's rows were made with; for an arm that learns from a teacher, also that teacher's
    weights (:func:`distill.fileio.row_key`)."""
    spec = ARMS[arm]
    which = teacher_of(spec)
    taught = spec["kind"] != "real" or any(name != "ce" for name, _ in spec["terms"])
    return row_key({"arm": spec, "batch": BATCH, "real": REAL if spec["kind"] == "real" else None,
                    "teacher": teacher_records[which]["settings"], "quick": quick},
                   teacher_records[which]["weights"] if taught else None)


def run_datafree_benchmark(seeds: int = 3, quick: bool = False, only: list[str] | None = None,
                           out_dir: str | Path = "bench-results/datafree", train_only: bool = False,
                           say=print) -> dict:
    """Run (or resume) the benchmark; writes ``results.json`` and ``table.md`` in ``out_dir``."""
    arms = chosen_arms(only, ARMS)
    data = load_data(quick)
    teachers, records = {}, {}
    # the papers' LeNet-5 always (its row carries the paper's number), then the teachers the chosen arms use
    for which in dict.fromkeys(["plain", *(teacher_of(ARMS[arm]) for arm in arms)]):
        teachers[which], records[which] = teacher(data, which, quick, say)
        records[which] = {**records[which], "weights": weights_digest(teachers[which])}
        say(f"teacher ({which}): validation {records[which]['val']:.2f}%, test {records[which]['test']:.2f}%")
    out = Path(out_dir)
    rows = bench_rows(out, arms, seeds, lambda arm: arm_key(arm, quick, records),
                      lambda arm, seed: run_arm(arm, seed, data, teachers, quick,
                                                samples=out / arm / f"samples-seed-{seed}.png"),
                      lambda row: f"val {row['val']:.2f}%  test {row['test']:.2f}%", say)
    summary = {"teachers": records, "rows": rows, "seeds": seeds, "quick": quick,
               "settings": {"teacher": TEACHER, "real": REAL, "batch": BATCH, "arms": ARMS}}
    if train_only:
        return summary
    return write_bench_results(out, summary, format_table(summary), say)


def format_table(summary: dict) -> str:
    def cell(values, digits=2):
        mean, std = mean_std(values)
        return f"{mean:.{digits}f} ± {std:.{digits}f}"

    lines = ["| model | student steps | generator steps | minutes per run | val accuracy (%) | test accuracy (%) | "
             "seeds | paper (test %) |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for which, record in summary["teachers"].items():
        name = f"teacher {TEACHERS[which][2]}"
        lines.append(f"| {name} | - | - | {record.get('seconds', 0) / 60:.1f} | {record['val']:.2f} | "
                     f"{record['test']:.2f} | 1 | {'98.91' if which == 'plain' else '-'} |")
    for arm, rows in group_rows(summary["rows"]).items():
        steps = rows[0].get("steps", "-")
        gen = rows[0].get("generator_steps", "-")
        minutes = [r["train_seconds"] / 60 + r.get("synthesis_minutes", 0) for r in rows]  # (cached or not)
        lines.append(f"| {arm} | {steps} | {gen} | {cell(minutes, 1)} | "
                     f"{cell([r['val'] for r in rows])} | {cell([r['test'] for r in rows])} | {len(rows)} | "
                     f"{PAPERS.get(arm, '-')} |")
    return "\n".join(lines)
