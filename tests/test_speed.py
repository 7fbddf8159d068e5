import pytest

from distill.recipe import RecipeError, read_recipe_tree
from distill.speed import _summarise, format_speed_table, measure, run_speed_benchmark


def test_measure_runs_in_its_own_process_and_reports_throughput_and_memory():
    tree = read_recipe_tree("digits")
    result = measure(tree, "kd-cached", threads=1)
    assert result["samples_per_second"] > 0 and result["peak_mb"] > 0 and result["setup_seconds"] >= 0
    assert result["teacher_forward_seconds"] > 0 and result["samples"] > 1000
    # the cache is filled before training, timed beside the teacher's plain inference over the same samples
    assert result["cache_fill_seconds"] > 0 and result["teacher_inference_seconds"] > 0


def test_summary_gives_ratios_to_the_plain_student_step():
    def run(seconds, teacher=0.5, **extra):
        return {"epoch_seconds": seconds, "samples_per_second": 100 / seconds, "peak_mb": 500.0, "baseline_mb": 400.0,
                "setup_seconds": 1.0, "teacher_forward_seconds": teacher, "teacher_params": 10, "student_params": 2,
                "batch_size": 8, **extra}

    filled = {"cache_fill_seconds": 3.0, "teacher_inference_seconds": 2.0}
    summary = _summarise({"raw": [run(0.8), run(0.8)], "student": [run(1.0), run(1.0)],
                          "kd-live": [run(1.5), run(1.7)], "raw-kd-cached": [run(1.0), run(1.0)],
                          "kd-cached": [run(1.1, **filled), run(1.3, **filled)]})
    assert summary["kd-live"]["time_vs_student"][0] == pytest.approx(1.6)
    assert summary["kd-cached"]["time_vs_student"][0] == pytest.approx(1.2)
    assert summary["kd-live"]["teacher_forward_vs_student"] == pytest.approx(0.5)
    assert summary["student"]["training_mb"] == pytest.approx(100.0)
    assert summary["student"]["time_vs_hand_written"] == pytest.approx(1.25)
    assert summary["kd-cached"]["time_vs_hand_written"] == pytest.approx(1.1)  # the fastest runs: 1.1 / 1.0
    assert summary["kd-cached"]["cache_fill_vs_inference"] == pytest.approx(1.5)
    table = format_speed_table({"pair": summary})
    assert "| pair | 10 / 2 | kd-live | 63 ± 6 | 1.60x ± 0.14 | 1.50x | - | 100 | 1.0 | - |" in table
    assert "| pair | 10 / 2 | student | 100 ± 0 | 1.00x ± 0.00 | 1.00x | 1.25x |" in table
    assert "| 1.10x | 100 | 1.0 | 3.0 (1.50x) |" in table


def test_errors_name_the_pair_or_the_recipe(tmp_path):
    with pytest.raises(RecipeError, match="unknown speed pair 'nope'"):
        run_speed_benchmark(pairs=["nope"], out_dir=tmp_path)
    with pytest.raises(RecipeError, match="needs a recipe with one teacher"):
        no_teacher = tmp_path / "r.yaml"
        no_teacher.write_text("name: x\ndata: {dataset: digits, val_size: 100}\nstudent: {model: mlp}\n"
                              "methods: [{method: scratch}]\n")
        run_speed_benchmark(recipes=[str(no_teacher)], out_dir=tmp_path)


def test_default_threads_leave_the_busy_cores_to_their_processes(monkeypatch):
    import torch

    from distill.engine import config

    torch.set_num_threads(2)
    monkeypatch.setattr(config, "idle_cores", lambda: 0.9)  # a neighbour keeps one of two cores busy
    assert config.default_threads() == 1
    monkeypatch.setattr(config, "idle_cores", lambda: 1.9)  # a free machine: torch's own choice
    assert config.default_threads() == 2
    monkeypatch.setattr(config, "idle_cores", lambda: 0.0)  # never fewer than one thread
    assert config.default_threads() == 1
    monkeypatch.undo()
    idle = config.idle_cores(0.05)
    assert idle is None or 0 <= idle <= len(__import__("os").sched_getaffinity(0)) + 1e-9
