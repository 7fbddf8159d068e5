import pytest

from distill.recipe import RecipeError, read_recipe_tree
from distill.speed import _summarise, format_speed_table, measure, run_speed_benchmark


def test_measure_runs_in_its_own_process_and_reports_throughput_and_memory():
    tree = read_recipe_tree("digits")
    result = measure(tree, "kd-cached", threads=1)
    assert result["samples_per_second"] > 0 and result["peak_mb"] > 0 and result["setup_seconds"] >= 0
    assert result["teacher_forward_seconds"] > 0 and result["samples"] > 1000


def test_summary_gives_ratios_to_the_plain_student_step():
    def run(seconds, teacher=0.5):
        return {"epoch_seconds": seconds, "samples_per_second": 100 / seconds, "peak_mb": 500.0, "baseline_mb": 400.0,
                "setup_seconds": 1.0, "teacher_forward_seconds": teacher, "teacher_params": 10, "student_params": 2,
                "batch_size": 8}

    summary = _summarise({"student": [run(1.0), run(1.0)], "kd-live": [run(1.5), run(1.7)],
                          "kd-cached": [run(1.1), run(1.1)]})
    assert summary["kd-live"]["time_vs_student"][0] == pytest.approx(1.6)
    assert summary["kd-cached"]["time_vs_student"][0] == pytest.approx(1.1)
    assert summary["kd-live"]["teacher_forward_vs_student"] == pytest.approx(0.5)
    assert summary["student"]["training_mb"] == pytest.approx(100.0)
    table = format_speed_table({"pair": summary})
    assert "| pair | 10 / 2 | kd-live | 63 ± 6 | 1.60x ± 0.14 | 1.50x | - | 100 |" in table


def test_errors_name_the_pair_or_the_recipe(tmp_path):
    with pytest.raises(RecipeError, match="unknown speed pair 'nope'"):
        run_speed_benchmark(pairs=["nope"], out_dir=tmp_path)
    with pytest.raises(RecipeError, match="needs a recipe with one teacher"):
        no_teacher = tmp_path / "r.yaml"
        no_teacher.write_text("name: x\ndata: {dataset: digits, val_size: 100}\nstudent: {model: mlp}\n"
                              "methods: [{method: scratch}]\n")
        run_speed_benchmark(recipes=[str(no_teacher)], out_dir=tmp_path)
