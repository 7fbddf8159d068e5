"""distill tune: Optuna over each method's settings on validation, resumable, then test over seeds."""
import pytest

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
    table = (out / "trials.md").read_text()
    assert table.count("| scratch |") == 3 and table.count("| kd |") == 3
    # a larger budget adds trials to the stored studies instead of starting again
    assert main(["tune", "digits", "--trials", "4", "--method", "kd", "--final-seeds", "2", "--out", str(out)]
                + [a for s in QUICK for a in ("--set", s)]) == 0
    assert len(optuna.load_study(study_name="kd", storage=f"sqlite:///{out / 'optuna.db'}").trials) == 4
    final = (out / "final.md").read_text()
    assert "| kd | 4 |" in final and " ± " in final and "| scratch |" not in final
    capsys.readouterr()
    assert main(["tune", "digits", "--trials", "0", "--out", str(out)]) == 2
    assert "--trials must be a positive whole number" in capsys.readouterr().err
    assert main(["tune", "digits", "--method", "nope", "--out", str(out)]) == 2
    assert "no method 'nope'" in capsys.readouterr().err
