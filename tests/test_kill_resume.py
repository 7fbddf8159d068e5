"""kill -9 a training run at random moments, resume it, and get bit-identical weights."""
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

ARGS = ["run", "digits", "--set", "teacher.train.epochs=4", "--set", "train.epochs=6", "--no-progress",
        "--set", "train.checkpoint_every=4", "--set", "teacher.train.checkpoint_every=4",  # mid-epoch checkpoints
        "--set", "train.log_every=2", "--set", "teacher.train.log_every=2"]  # a progress signal to aim kills by


def _start(run_dir: Path, cache: Path) -> subprocess.Popen:
    resume = (run_dir / "recipe.yaml").is_file()
    args = ["run", "--resume", str(run_dir), "--no-progress"] if resume else [*ARGS, "--run-dir", str(run_dir)]
    return subprocess.Popen([sys.executable, "-m", "distill", *args], env=dict(os.environ, DISTILL_CACHE=str(cache)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _progress(run_dir: Path) -> int:
    """Metric records written so far, over the teacher's and the students' runs."""
    while True:
        try:  # the run renames checkpoint directories while we walk the tree
            return sum(len(f.read_text().splitlines()) for f in run_dir.glob("**/metrics.jsonl"))
        except FileNotFoundError:
            continue


def _weights(run_dir: Path) -> dict[str, bytes]:
    files = [run_dir / "teacher" / "student.safetensors", *sorted(run_dir.glob("students/*/student.safetensors"))]
    return {str(f.relative_to(run_dir)): f.read_bytes() for f in files}


def test_kill_at_random_points_then_resume_gives_identical_weights(tmp_path):
    reference = _start(tmp_path / "reference", tmp_path / "cache-ref")
    assert reference.wait(timeout=300) == 0, reference.stderr.read()
    total = _progress(tmp_path / "reference")

    run_dir, cache = tmp_path / "killed", tmp_path / "cache-killed"
    rng = random.Random(7)
    targets = sorted(rng.sample(range(1, int(total * 0.9)), 4))  # kill once this much progress is on disk
    kills = []
    for target in targets:
        proc = _start(run_dir, cache)
        deadline = time.monotonic() + 120
        while proc.poll() is None and _progress(run_dir) < target and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.3))
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills.append((target, _progress(run_dir)))
    print(f"{total} metric records in the reference run; killed at (target, records on disk): {kills}")
    final = _start(run_dir, cache)
    assert final.wait(timeout=300) == 0, final.stderr.read()
    assert len(kills) >= 3
    assert _weights(run_dir) == _weights(tmp_path / "reference")
    assert not (run_dir / ".lock").exists()
