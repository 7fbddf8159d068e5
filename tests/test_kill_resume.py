"""kill -9 a training run at random moments, resume it, and get bit-identical weights."""
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

ARGS = ["run", "digits", "--set", "teacher.train.epochs=4", "--set", "train.epochs=6", "--no-progress",
        "--set", "train.checkpoint_every=4", "--set", "teacher.train.checkpoint_every=4"]  # mid-epoch checkpoints too


def _start(run_dir: Path, cache: Path) -> subprocess.Popen:
    resume = (run_dir / "recipe.yaml").is_file()
    args = ["run", "--resume", str(run_dir), "--no-progress"] if resume else [*ARGS, "--run-dir", str(run_dir)]
    return subprocess.Popen([sys.executable, "-m", "distill", *args], env=dict(os.environ, DISTILL_CACHE=str(cache)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _weights(run_dir: Path) -> dict[str, bytes]:
    files = [run_dir / "teacher" / "student.safetensors", *sorted(run_dir.glob("students/*/student.safetensors"))]
    return {str(f.relative_to(run_dir)): f.read_bytes() for f in files}


def test_kill_at_random_points_then_resume_gives_identical_weights(tmp_path):
    started = time.perf_counter()
    reference = _start(tmp_path / "reference", tmp_path / "cache-ref")
    assert reference.wait(timeout=300) == 0, reference.stderr.read()
    duration = time.perf_counter() - started

    run_dir, cache = tmp_path / "killed", tmp_path / "cache-killed"
    rng = random.Random(7)
    kills = []
    for _ in range(5):
        proc = _start(run_dir, cache)
        delay = rng.uniform(0.3, 0.95) * duration
        try:
            proc.wait(timeout=delay)
            break  # finished before the kill
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills.append((round(delay, 1), len(list(run_dir.glob("**/checkpoints/step-*")))))
    print(f"reference run {duration:.1f}s; killed after (seconds, checkpoints on disk): {kills}")
    final = _start(run_dir, cache)
    assert final.wait(timeout=300) == 0, final.stderr.read()
    assert len(kills) >= 3 and kills[-1][1] > 0  # killed several times, at least once mid-training
    assert _weights(run_dir) == _weights(tmp_path / "reference")
    assert not (run_dir / ".lock").exists()
