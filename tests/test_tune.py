"""distill tune: Optuna over each method's settings on validation, resumable, then test over seeds."""
import pytest
import torch

from distill.cli import main

pytest.importorskip("optuna")

QUICK = ["train.progress=false", "teacher.train.progress=false", "teacher.train.epochs=2", "train.epochs=4",
         "teacher.options={channels: [8, 16], hidden: 32}", "evaluation.latency_repeats=1"]


def test_search_space_reads_the_methods_signature():
    from distill.recipe import load_recipe
    from distill.tune import search_space

    recipe = load_recipe("digits")
    scratch, kd = recipe.methods
    assert set(search_space(scratch, recipe)) == {"train.lr", "train.epochs"}
    space = search_space(kd, recipe)
    assert space["alpha"] == ("float", 0.0, 1.0) and space["temperature"] == ("log", 1.0, 16.0)
    assert space["train.lr"] == ("log", pytest.approx(0.001), pytest.approx(0.1))
    assert space["train.epochs"] == ("int", 5, 20)


def test_tune_three_trials_on_digits_writes_best_recipes_and_resumes(tmp_path, cache_dir, capsys):
    import optuna

    from distill.recipe import load_recipe

    out = tmp_path / "tune"
    args = ["tune", "digits", "--trials", "3", "--out", str(out)] + [a for s in QUICK for a in ("--set", s)]
    assert main(args) == 0
    for label in ("scratch", "kd"):
        best = load_recipe(str(out / f"best-{label}.yaml"))
        assert [m.name for m in best.methods] == [label]
        study = optuna.load_study(study_name=label, storage=f"sqlite:///{out / 'optuna.db'}")
        assert len(study.trials) == 3
        assert best.train.lr == pytest.approx(study.best_trial.params["train.lr"])
    kd = load_recipe(str(out / "best-kd.yaml")).methods[0]
    assert 0 <= kd.model_extra["alpha"] <= 1 and 1 <= kd.model_extra["temperature"] <= 16
    # the trials never score the test split: their own tables show validation; the best recipes score it again
    import json
    trial = json.loads((out / "kd" / "trial-0" / "summary.json").read_text())
    assert trial["test_scored"] is False and all(r["test_accuracy"] != r["test_accuracy"] for r in trial["rows"])
    assert "validation acc (%)" in (out / "kd" / "trial-0" / "summary.md").read_text()
    assert best.evaluation.score_test is True
    table = (out / "trials.md").read_text()
    assert table.count("| scratch |") == 3 and table.count("| kd |") == 3
    # a larger budget adds trials to the stored studies instead of starting again
    assert main(["tune", "digits", "--trials", "4", "--method", "kd", "--final-seeds", "2", "--out", str(out)]
                + [a for s in QUICK for a in ("--set", s)]) == 0
    assert len(optuna.load_study(study_name="kd", storage=f"sqlite:///{out / 'optuna.db'}").trials) == 4
    final = (out / "final.md").read_text()
    final_run = json.loads((out / "kd" / "final-seed-1" / "summary.json").read_text())
    assert "test_scored" not in final_run and all(0 < r["test_accuracy"] <= 100 for r in final_run["rows"])
    assert "| kd | 4 |" in final and " ± " in final and "| scratch |" not in final
    capsys.readouterr()
    assert main(["tune", "digits", "--trials", "0", "--out", str(out)]) == 2
    assert "--trials must be a positive whole number" in capsys.readouterr().err
    assert main(["tune", "digits", "--method", "nope", "--out", str(out)]) == 2
    assert "no method 'nope'" in capsys.readouterr().err


def test_a_run_without_test_scoring_never_reads_the_test_split(tmp_path, cache_dir, monkeypatch):
    import json

    from distill import run_models

    class Sealed(torch.utils.data.Dataset):  # the test split: its size may be asked, never its samples
        def __init__(self, dataset):
            self.dataset, self.num_classes = dataset, dataset.num_classes  # the class count is no score

        def __len__(self):
            return len(self.dataset)

        def __getitem__(self, index):
            raise AssertionError("the test split was read")

    load = run_models.sources.load

    def sealed_load(*args, **kwargs):
        data = load(*args, **kwargs)
        data.test = Sealed(data.test)
        return data

    monkeypatch.setattr(run_models.sources, "load", sealed_load)
    run = tmp_path / "run"
    sets = QUICK + ["evaluation.cam_agreement_images=4"]
    assert main(["run", "digits", "--run-dir", str(run), "--set", "evaluation.score_test=false"]
                + [a for s in sets for a in ("--set", s)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test_scored"] is False
    for row in summary["rows"]:
        assert 0 < row["val_accuracy"] <= 100 and "test_errors" not in row and "cam_agreement" not in row
    table = (run / "summary.md").read_text()
    assert "validation acc (%)" in table and "points of validation accuracy" in table and "nan" not in table
    # the same run scored on test afterwards: its students are measured again, not trained again
    monkeypatch.setattr(run_models.sources, "load", load)
    before = (run / "students" / "kd" / "student.safetensors").stat().st_mtime_ns
    from distill.experiment import run_recipe
    from distill.recipe import load_recipe

    run_recipe(load_recipe("digits", sets), run, resume=True)
    summary = json.loads((run / "summary.json").read_text())
    assert "test_scored" not in summary
    assert all(0 < row["test_accuracy"] <= 100 and "test_errors" in row for row in summary["rows"])
    assert (run / "students" / "kd" / "student.safetensors").stat().st_mtime_ns == before
