"""``torchrun --nproc_per_node 2 -m distill run digits`` end to end: the teacher, two students and the
table, compared with the same recipe in one process.

What equality is honest. Each process trains on ``train.batch_size`` samples per step, so the
two-process run halves ``batch_size`` (32 + 32 = the one-process 64) and keeps 1280 training samples
(a multiple of 64: no short last batch that Accelerate would pad with repeated samples). The
process-sharded batches of one step are then the one-process batch, and DDP's average of the two
half-batch mean gradients is the whole-batch mean gradient:

* the MLP student trained from scratch (no BatchNorm) ends with the same weights up to float
  rounding (the gradient is summed in another order), so the same accuracies;
* the CNN teacher has BatchNorm, whose batch statistics are per process (32 samples, not 64: DDP
  does not synchronise them), so it ends with other weights; it and the KD student that learns
  from it are only *close*: within a few test images on 300.
* the rows, models, parameter and MAC counts are identical.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file

SRC = str(Path(__file__).resolve().parents[1] / "src")
SMALL = ["--set", "train.epochs=3", "--set", "teacher.train.epochs=3", "--set", "data.train_size=1280"]
HALF_BATCH = ["--set", "train.batch_size=32", "--set", "teacher.train.batch_size=32"]


def _env(cache: Path) -> dict:
    path = os.pathsep.join(p for p in [SRC, os.environ.get("PYTHONPATH", "")] if p)
    return dict(os.environ, PYTHONPATH=path, DISTILL_CACHE=str(cache), OMP_NUM_THREADS="1")


def _run(launcher: list[str], run_dir: Path, cache: Path, extra=()) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, *launcher, "-m", "distill", "--threads", "1", "run", "digits",
                           "--run-dir", str(run_dir), "--no-progress", *SMALL, *extra],
                          capture_output=True, text=True, env=_env(cache), timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _rows(run_dir: Path) -> dict[str, dict]:
    return {r["label"]: r for r in json.loads((run_dir / "summary.json").read_text())["rows"]}


def test_torchrun_two_processes_match_one_process(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    _run([], one, tmp_path / "cache-one")
    out = _run(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"], two,
               tmp_path / "cache-two", HALF_BATCH)

    # one process wrote, and every file every process needed was there
    assert "error" not in out.stderr.lower(), out.stderr[-3000:]
    for name in ("recipe.yaml", "summary.json", "summary.md", "teacher/student.safetensors",
                 "students/scratch/row.json", "students/kd/row.json", "students/kd/summary.json"):
        assert (two / name).is_file(), name
    assert not (two / ".lock").exists()
    assert out.stdout.count("| scratch (mlp) |") == 1  # the table is printed once, by rank 0
    assert len(list((tmp_path / "cache-two" / "teachers").iterdir())) == 1  # the teacher cached once

    rows1, rows2 = _rows(one), _rows(two)
    assert list(rows1) == list(rows2) == ["teacher", "scratch", "kd"]
    for label in rows1:
        for key in ("role", "model", "params", "macs"):
            assert rows1[label][key] == rows2[label][key], (label, key)
    # no BatchNorm, whole batches: the same training up to the order of float sums
    a, b = load_file(one / "students/scratch/student.safetensors"), load_file(two / "students/scratch/student.safetensors")
    assert all((a[k] - b[k]).abs().max() < 1e-4 for k in a)
    for key in ("val_accuracy", "test_accuracy"):
        assert rows1["scratch"][key] == rows2["scratch"][key]
    # BatchNorm statistics per process: close, not equal (300 test images: 1 image = 0.33 points)
    for label in ("teacher", "kd"):
        assert abs(rows1[label]["test_accuracy"] - rows2[label]["test_accuracy"]) <= 3.0, label
    # the KD student learnt from the teacher this run trained (the same weights on every process)
    assert rows2["kd"]["teacher_weights"] == rows2["teacher"]["weights"]

    # a second two-process run without --run-dir: one directory for both processes, the cached teacher reused
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "distill", "--threads", "1", "run", "digits", "--no-progress", *SMALL, *HALF_BATCH,
                          "--set", f"output_dir={tmp_path / 'out'}", "--set", "train.cache_teacher=true",
                          "--set", f"train.teacher_cache_dir={tmp_path / 'outputs'}"],
                         capture_output=True, text=True, env=_env(tmp_path / "cache-two"), timeout=400)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "teacher: reusing" in out.stdout
    runs = list((tmp_path / "out").iterdir())
    assert len(runs) == 1 and (runs[0] / "summary.json").is_file()
    # the teacher's outputs on disk: written once, by rank 0, and read by both processes
    assert list((tmp_path / "outputs").rglob("meta.json"))
    assert not any(p.name.startswith(".rank") for p in (tmp_path / "outputs").rglob("*"))
