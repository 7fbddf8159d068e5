import json
import socket
import subprocess
import sys

import pytest

from distill import Distiller, DistillError, build_model
from distill.cli import main
from distill.lock import RunDirLocked, RunLock


def _write_lock(run_dir, pid, host=None):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / ".lock").write_text(json.dumps({"pid": pid, "host": host or socket.gethostname()}))


@pytest.fixture
def live_pid():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc.pid
    proc.kill()
    proc.wait()


@pytest.fixture
def dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_second_process_is_refused(tmp_path, live_pid, digits):
    _write_lock(tmp_path, live_pid)
    with pytest.raises(RunDirLocked, match=f"process {live_pid}"):
        RunLock(tmp_path).acquire()
    d = Distiller(build_model("mlp", digits.input_shape, hidden=[4]), epochs=1, progress=False, run_dir=tmp_path)
    with pytest.raises(DistillError, match="in use"):
        d.fit(digits.train)


def test_stale_lock_is_taken_over_and_released(tmp_path, dead_pid, digits):
    _write_lock(tmp_path, dead_pid)
    d = Distiller(build_model("mlp", digits.input_shape, hidden=[4]), epochs=1, progress=False, run_dir=tmp_path)
    d.fit(digits.train)
    assert not (tmp_path / ".lock").exists()


def test_lock_released_when_training_fails(tmp_path, digits):
    from distill import Term

    d = Distiller(build_model("mlp", digits.input_shape, hidden=[4]), None, [Term("ce", student="nope")],
                  epochs=1, progress=False, run_dir=tmp_path)
    with pytest.raises(DistillError):
        d.fit(digits.train)
    assert not (tmp_path / ".lock").exists()


def test_cli_refuses_a_run_directory_in_use(tmp_path, live_pid, capsys):
    _write_lock(tmp_path / "run", live_pid)
    assert main(["run", "digits", "--run-dir", str(tmp_path / "run")]) == 2
    assert "in use by process" in capsys.readouterr().err


def test_unwritable_run_directory_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["run", "digits", "--run-dir", str(blocker / "run")]) == 2
    assert "cannot write the run directory" in capsys.readouterr().err
