import json
import os
import subprocess
import sys

import pytest

from distill.cli import main


def run_cli(*args, env_extra=None, timeout=240):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "distill", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def test_help():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("run", "list", "report", "bench", "explain", "--threads"):
        assert command in result.stdout
    assert run_cli("run", "--help").returncode == 0


def test_list_shows_losses_methods_models_datasets(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("kd_loss", "hint_loss", "scratch", "fitnets", "mlp", "cnn", "resnet20", "fashion-mnist", "mnist",
                 "digits", "hinton-mnist"):
        assert name in out
    assert main(["list", "models"]) == 0
    assert "77,754" in capsys.readouterr().out  # resnet8's parameter count is computed, not typed


def test_list_schemes_shows_every_data_free_objective_and_chain(capsys):
    from distill.recipe import DATA_FREE

    assert main(["list", "schemes"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("    ")}
    for name in (*DATA_FREE, "via", "generations"):
        assert name in lines and len(lines[name].split()) > 3, name  # named, with a description
    assert {"dafl", "dfad", "zskt", "deep_inversion", "noise"} <= set(lines)
    assert main(["list"]) == 0
    assert "deep_inversion" in capsys.readouterr().out


def test_one_epoch_run_and_report(tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    result = run_cli("run", "digits", "--set", "train.epochs=1", "--set", "teacher.train.epochs=1",
                     "--run-dir", str(run_dir), "--no-progress", env_extra={"DISTILL_CACHE": str(cache_dir)})
    assert result.returncode == 0, result.stderr
    assert "| teacher (cnn)" in result.stdout and "| kd (mlp)" in result.stdout and "speed-up" in result.stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [r["label"] for r in summary["rows"]] == ["teacher", "scratch", "kd"]
    for sub in ("recipe.yaml", "teacher/metrics.jsonl", "students/kd/metrics.jsonl", "students/kd/student.safetensors"):
        assert (run_dir / sub).is_file(), sub
    assert list(cache_dir.glob("teachers/*/teacher.safetensors"))
    # a second run reuses the cached teacher
    again = run_cli("run", "digits", "--set", "train.epochs=1", "--set", "teacher.train.epochs=1",
                    "--run-dir", str(tmp_path / "again"), "--no-progress", env_extra={"DISTILL_CACHE": str(cache_dir)})
    assert "teacher: reusing" in again.stdout
    assert main(["report", str(run_dir)]) == 0
    for name in ("losses.png", "accuracy.png", "report.md"):
        assert (run_dir / "report" / name).stat().st_size > 0


@pytest.mark.parametrize(
    "args, needle",
    [
        (["run", "digits", "--set", "train.epochz=1"], "train.epochz"),
        (["run", "digits", "--set", "train.lr=-1"], "train.lr"),
        (["run", "no-such-recipe.yaml"], "recipe not found"),
        (["report", "/nonexistent/run"], "no metrics"),
        (["bench", "nope"], "unknown benchmark"),
    ],
)
def test_input_errors_are_one_line_with_exit_code_2(args, needle, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("distill: error:") and needle in err
    assert "\n" not in err and "Traceback" not in err


def test_wrong_tap_path_in_a_recipe_names_the_nearest_module(tmp_path, cache_dir, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""
name: taps
data: {{dataset: digits, val_size: 200}}
teacher: {{model: cnn, options: {{channels: [8, 16], hidden: 16}}, train: {{epochs: 1, progress: false}}}}
student: {{model: mlp, options: {{hidden: [16]}}}}
methods:
  - label: hint
    terms:
      - {{loss: ce}}
      - {{loss: hint, student: features.2, teacher: head.33, connector: linear}}
train: {{epochs: 1, progress: false}}
output_dir: {tmp_path / 'runs'}
""")
    assert main(["run", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "head.3" in err and "Traceback" not in err


def test_debug_shows_the_traceback():
    result = run_cli("--debug", "run", "digits", "--set", "train.epochz=1")
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_resume_an_interrupted_run(tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    args = ["run", "digits", "--set", "train.epochs=2", "--set", "teacher.train.epochs=1", "--run-dir", str(run_dir),
            "--no-progress"]
    assert run_cli(*args, env_extra={"DISTILL_CACHE": str(cache_dir)}).returncode == 0
    final = (run_dir / "students" / "kd" / "student.safetensors").read_bytes()
    # make it look as if the run was killed during the kd student's second epoch
    kd = run_dir / "students" / "kd"
    for name in ("summary.json", "student.safetensors", "row.json"):
        (kd / name).unlink()
    import shutil

    shutil.rmtree(sorted((kd / "checkpoints").iterdir())[-1])
    (run_dir / "summary.json").unlink()
    result = run_cli("run", "--resume", str(run_dir), "--no-progress", env_extra={"DISTILL_CACHE": str(cache_dir)})
    assert result.returncode == 0, result.stderr
    assert (kd / "student.safetensors").read_bytes() == final
    assert json.loads((run_dir / "summary.json").read_text())["rows"][-1]["label"] == "kd"

    # killed while writing its first checkpoint: only a cut-off .tmp directory; the student starts afresh
    for name in ("summary.json", "student.safetensors", "row.json"):
        (kd / name).unlink()
    shutil.rmtree(kd / "checkpoints")
    (kd / "checkpoints" / "step-00000004.tmp").mkdir(parents=True)
    (run_dir / "summary.json").unlink()
    result = run_cli("run", "--resume", str(run_dir), "--no-progress", env_extra={"DISTILL_CACHE": str(cache_dir)})
    assert result.returncode == 0, result.stderr
    assert (kd / "student.safetensors").read_bytes() == final

    # killed after the engine's summary but before the run's bookkeeping (no settings key): nothing to retrain
    summary = json.loads((kd / "summary.json").read_text())
    (kd / "summary.json").write_text(json.dumps({k: v for k, v in summary.items() if k != "info"}))
    (kd / "row.json").unlink()
    (run_dir / "summary.json").unlink()
    result = run_cli("run", "--resume", str(run_dir), "--no-progress", env_extra={"DISTILL_CACHE": str(cache_dir)})
    assert result.returncode == 0, result.stderr
    assert "training it again" not in result.stdout + result.stderr
    assert (kd / "student.safetensors").read_bytes() == final
    assert json.loads((kd / "summary.json").read_text())["info"]["key"]
    assert main(["run", "--resume", str(tmp_path / "missing")]) == 2


def test_bad_model_options_are_one_line(capsys, tmp_path):
    assert main(["run", "digits", "--set", "student.options.hidden=[-3]", "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "recipe field 'student.options': 'mlp'" in err and len(err.strip().splitlines()) == 1
    assert main(["run", "digits", "--set", "student.options.widths=[3]", "--run-dir", str(tmp_path / "s")]) == 2


def test_threads_option_sets_torch_threads_and_rejects_zero(capsys):
    import torch

    before = torch.get_num_threads()
    try:
        assert main(["--threads", "1", "list", "benchmarks"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(SystemExit) as exit_info:
        main(["--threads", "0", "list"])
    assert exit_info.value.code == 2 and "--threads must be at least 1" in capsys.readouterr().err
