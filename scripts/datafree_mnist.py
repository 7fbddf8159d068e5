"""Data-free KD on MNIST, LeNet-5 -> LeNet-5-half (docs/schemes.md, data-free section).

    PYTHONPATH=src OMP_NUM_THREADS=1 python scripts/datafree_mnist.py teacher OUT
    PYTHONPATH=src OMP_NUM_THREADS=1 python scripts/datafree_mnist.py dafl|dfad OUT STEPS [key=value ...]
    PYTHONPATH=src OMP_NUM_THREADS=1 python scripts/datafree_mnist.py deep_inversion OUT IMAGES [steps=.. epochs=..]

The teacher: LeNet-5, Adam 1e-3, batch 256, 9 epochs (as DAFL's teacher-train.py). A student run
trains LeNet-5-half on a SyntheticSet only, evaluating on the validation split every ``eval_every`` steps,
and writes JSON lines (steps, minutes, validation accuracy, class histogram of the teacher's predictions
on a generated batch) to OUT/<name>.jsonl, the final test accuracy once at the end, and a PNG grid.
"""
import json
import math
import sys
import time
from pathlib import Path

import torch

torch.set_num_threads(1)
from distill import Distiller, Term, evaluate, seed_everything  # noqa: E402
from distill.datafree import SyntheticSet  # noqa: E402
from safetensors.torch import load_model, save_model  # noqa: E402
from distill.report import _plot_samples  # noqa: E402
from distill.zoo import build_model, load_dataset  # noqa: E402

data = load_dataset("mnist", 5000)
out = Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
teacher_file = out / "lenet5-teacher.safetensors"


def teacher_model():
    teacher = build_model("lenet5", data.input_shape)
    load_model(teacher, str(teacher_file))
    return teacher.eval()


if sys.argv[1] == "teacher":
    seed_everything(0)
    teacher = build_model("lenet5", data.input_shape)
    start = time.time()
    Distiller(teacher, None, None, epochs=9, optimizer="adam", lr=1e-3, batch_size=256, schedule="constant",
              progress=False).fit(data.train, data.val)
    save_model(teacher, str(teacher_file))
    print(json.dumps({"val": evaluate(teacher, data.val)["accuracy"], "test": evaluate(teacher, data.test)["accuracy"],
                      "minutes": (time.time() - start) / 60}))
    sys.exit()

if sys.argv[1] == "deep_inversion":
    # DeepInversion (Yin et al. 2020) needs batch norms: LeNet-5 with one after each convolution, trained as the
    # plain teacher; IMAGES images synthesised once, then LeNet-5-half taught by KD on them alone
    from distill.data import ArrayDataset  # noqa: E402
    from distill.datafree import deep_inversion  # noqa: E402

    opts = dict(kv.split("=", 1) for kv in sys.argv[4:])
    images_wanted, seed = int(sys.argv[3]), int(opts.pop("seed", 0))
    epochs, temperature = int(opts.pop("epochs", 50)), float(opts.pop("temperature", 4.0))
    name = opts.pop("name", f"deep-inversion-{images_wanted}")
    params = {k: (int(v) if k in ("steps", "batch_size") else float(v)) for k, v in opts.items()}
    bn_file = out / "lenet5-bn-teacher.safetensors"
    teacher = build_model("lenet5", data.input_shape, batch_norm=True)
    if bn_file.is_file():
        load_model(teacher, str(bn_file))
    else:
        seed_everything(0)
        Distiller(teacher, None, None, epochs=9, optimizer="adam", lr=1e-3, batch_size=256, schedule="constant",
                  progress=False).fit(data.train, data.val)
        save_model(teacher, str(bn_file))
    teacher.eval()
    log = (out / f"{name}.jsonl").open("w")
    head = {"name": name, "images": images_wanted, "deep_inversion": params, "epochs": epochs,
            "temperature": temperature, "teacher_val": evaluate(teacher, data.val)["accuracy"],
            "teacher_test": evaluate(teacher, data.test)["accuracy"]}
    print(json.dumps(head), file=log, flush=True)
    print(json.dumps(head), flush=True)
    start = time.time()
    images, targets = deep_inversion(teacher, images_wanted, data.input_shape, 10, seed=seed, **params)
    made = round((time.time() - start) / 60, 2)
    seed_everything(seed)
    student = build_model("lenet5_half", data.input_shape)
    d = Distiller(student, teacher, [Term("kd", temperature=temperature)], epochs=1, batch_size=256,
                  optimizer="adam", lr=1e-3, schedule="constant", progress=False)
    pool = ArrayDataset(images, None, "deep-inversion")
    for epoch in range(1, epochs + 1):
        d.fit(pool, resume=False)
        if epoch % 10 == 0 or epoch == epochs:
            row = {"epoch": epoch, "synthesis_minutes": made, "minutes": round((time.time() - start) / 60, 2),
                   "val": evaluate(student, data.val)["accuracy"]}
            print(json.dumps(row), file=log, flush=True)
            print(json.dumps(row), flush=True)
    row = {"final_epochs": epochs, "minutes": round((time.time() - start) / 60, 2), "val": row["val"],
           "test": evaluate(student, data.test)["accuracy"],
           "teacher_classes": torch.bincount(teacher(images).argmax(1), minlength=10).tolist()}
    print(json.dumps(row), file=log, flush=True)
    print(json.dumps(row), flush=True)
    _plot_samples(images[:64], out / f"{name}-samples.png", f"{name}: {len(images)} images")
    sys.exit()

objective, steps = sys.argv[1], int(sys.argv[3])
opts = dict(kv.split("=", 1) for kv in sys.argv[4:])
num = lambda k, d: type(d)(opts.pop(k, d))  # noqa: E731
batch, eval_every, seed = num("batch", 256), num("eval_every", 500), num("seed", 0)
student_lr, student_opt = num("student_lr", 0.0), opts.pop("student_opt", "")
name = opts.pop("name", f"{objective}-{steps}")
mean, std = float(data.val.inputs.mean()), float(data.val.inputs.std())
gen_opts = {"mean": mean, "std": std, "eps": num("eps", 1e-5), "width": num("width", 64)}
set_opts = {k: float(v) for k, v in opts.items()}
if "student_steps" in set_opts:
    set_opts["student_steps"] = int(set_opts["student_steps"])
seed_everything(seed)
teacher = teacher_model()
student = build_model("lenet5_half", data.input_shape)
generator = build_model("generator", data.input_shape, **gen_opts)
# the papers' student optimisers: DAFL Adam 2e-3; DFAD SGD 0.01, momentum 0.9, weight decay 1e-4
if objective == "dafl":
    terms, train = [Term("kd", temperature=1.0)], dict(optimizer=student_opt or "adam", lr=student_lr or 2e-3)
else:
    terms, train = [Term("logit_l1")], dict(optimizer=student_opt or "sgd", lr=student_lr or 0.01, weight_decay=1e-4)
synthetic = SyntheticSet(teacher, objective, generator, student, size=batch * eval_every, seed=seed, **set_opts)
log = (out / f"{name}.jsonl").open("w")
print(json.dumps({"name": name, "objective": objective, "batch": batch, "generator": gen_opts, "set": set_opts,
                  "student": train}), file=log, flush=True)
start, done = time.time(), 0
d = Distiller(student, teacher, terms, epochs=1, batch_size=batch, schedule="constant", progress=False,
              **train)
while done < steps:
    d.fit(synthetic, resume=False)
    done += eval_every
    with torch.no_grad():  # the teacher's classes on the last batch the student trained on
        hist = torch.bincount(teacher(synthetic.batch).argmax(1), minlength=10).tolist()
    row = {"steps": done, "generator_steps": synthetic.generator_steps, "minutes": round((time.time() - start) / 60, 2),
           "val": evaluate(student, data.val)["accuracy"], "teacher_classes": hist}
    print(json.dumps(row), file=log, flush=True)
    print(json.dumps(row), flush=True)
row = {"final_steps": done, "minutes": round((time.time() - start) / 60, 2), "val": row["val"],
       "test": evaluate(student, data.test)["accuracy"]}
print(json.dumps(row), file=log, flush=True)
print(json.dumps(row), flush=True)
save_model(student, str(out / f"{name}-student.safetensors"))
_plot_samples(synthetic.batch[:64].clamp(0, 1), out / f"{name}-samples.png",
              f"{name}: training images after {done} steps")
