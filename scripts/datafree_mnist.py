"""One data-free MNIST run with some of its arm's settings changed: how `distill bench datafree`'s settings were
chosen, on the validation split (docs/schemes.md, data-free section).

    PYTHONPATH=src python scripts/datafree_mnist.py ARM OUT [seed=K] [name=NAME] [key=value ...]

ARM is an arm of distill.datafree_bench.ARMS (dafl, dfad, deep-inversion, ...); each key=value replaces one of
its settings, dotted for nested ones: steps=3000, eval_every=500, width=64, set.lr=0.02, set.kd_weight=1,
student.lr=1e-3, images=5120, epochs=100, teacher=resnet8, inversion.bn_weight=1, inversion.lr=0.1 ... The row (validation curve,
final validation and test accuracy, minutes, steps, the teacher's classes) goes to OUT/NAME.json, the images the
student learnt from to OUT/NAME.png. The teachers are the benchmark's, from the cache.
"""
import ast
import copy
import json
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)
from distill.datafree_bench import ARMS, load_data, run_arm, teacher, teacher_of  # noqa: E402

arm, out = sys.argv[1], Path(sys.argv[2])
options = dict(kv.split("=", 1) for kv in sys.argv[3:])
seed, name = int(options.pop("seed", 0)), options.pop("name", arm)
spec = copy.deepcopy(ARMS[arm])
for key, text in options.items():
    *path, last = key.split(".")
    place = spec
    for part in path:
        place = place[part]
    try:
        place[last] = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        place[last] = text
data = load_data(quick=False)
which = teacher_of(spec)  # only the teacher this arm learns from (training an uncached one costs minutes)
teachers = {which: teacher(data, which, quick=False)[0]}
out.mkdir(parents=True, exist_ok=True)
row = run_arm(arm, seed, data, teachers, quick=False, settings=spec, samples=out / f"{name}.png")
row = {"name": name, "settings": spec, **row}
(out / f"{name}.json").write_text(json.dumps(row, indent=1))
print(json.dumps({k: v for k, v in row.items() if k != "curve"}))
for point in row["curve"]:
    print(json.dumps(point))
