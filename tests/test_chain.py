"""Teacher assistants (TAKD) and born-again generations: chains of ordinary distillation runs."""
import json
from pathlib import Path

import pytest

import distill.experiment as experiment
from distill.experiment import run_recipe
from distill.recipe import RecipeError, apply_overrides, parse_recipe, read_recipe_tree


def _recipe(*overrides):
    tree = read_recipe_tree("digits")
    tree["methods"] = [{"method": "kd", "label": "takd", "via": [{"model": "mlp", "options": {"hidden": [64]}}]},
                       {"method": "kd", "label": "ban", "generations": 3}]
    return parse_recipe(apply_overrides(tree, ["teacher.train.epochs=2", "train.epochs=3", *overrides]))


def test_each_step_teaches_the_next_and_is_reported(tmp_path, cache_dir, monkeypatch):
    calls = []
    real = experiment.fit_stages

    def spy(model, teacher, *args, **kwargs):
        calls.append((model, teacher, kwargs["run_dir"]))
        return real(model, teacher, *args, **kwargs)

    monkeypatch.setattr(experiment, "fit_stages", spy)
    summary = run_recipe(_recipe(), tmp_path / "run")
    takd, ban = summary["rows"][1], summary["rows"][2]
    # TAKD: teacher -> assistant -> student; the assistant trained in step-1 is the student's teacher
    (assistant, first_teacher, first_dir), (_, second_teacher, _) = calls[0], calls[1]
    assert second_teacher is assistant and first_teacher is not assistant
    assert first_dir == tmp_path / "run" / "students" / "takd" / "step-1"
    assert (first_dir / "student.safetensors").is_file()
    assert [c["model"] for c in takd["chain"]] == ["mlp"] and takd["chain"][0]["params"] > takd["params"]
    # born-again: two earlier generations, each teaching the next, and their ensemble with the student
    gens = [c[0] for c in calls[2:]]
    assert calls[2][1] is None  # the first generation learns from the labels (Furlanello et al.)
    assert [c[1] for c in calls[3:]] == gens[:-1]
    assert len(ban["chain"]) == 2 and 0 < ban["ensemble_test_accuracy"] <= 100
    assert all(row["test_accuracy"] > 50 for row in [*ban["chain"], ban, *takd["chain"], takd])
    saved = json.loads((tmp_path / "run" / "students" / "ban" / "row.json").read_text())
    assert saved["chain"] == ban["chain"]


def test_a_resumed_chain_reuses_its_finished_steps(tmp_path, cache_dir, monkeypatch):
    first = run_recipe(_recipe(), tmp_path / "run")
    (tmp_path / "run" / "students" / "ban" / "row.json").unlink()
    (tmp_path / "run" / "students" / "ban" / "summary.json").unlink()
    trained = []
    real = experiment.fit_stages
    monkeypatch.setattr(experiment, "fit_stages", lambda model, teacher, *a, **k: trained.append(k["run_dir"])
                        or real(model, teacher, *a, **k))
    again = run_recipe(_recipe(), tmp_path / "run", resume=True)
    # only the last student runs again (from its checkpoint); takd comes from its row, the generations from disk
    assert trained == [tmp_path / "run" / "students" / "ban"]
    assert again["rows"][2]["chain"] == first["rows"][2]["chain"]
    assert again["rows"][2]["test_accuracy"] == first["rows"][2]["test_accuracy"]


def test_via_and_generations_exclude_each_other():
    tree = read_recipe_tree("digits")
    tree["methods"] = [{"method": "kd", "via": [{"model": "mlp"}], "generations": 2}]
    with pytest.raises(RecipeError, match="not both"):
        parse_recipe(tree)


def test_chain_steps_keep_their_teachers_outputs_apart(tmp_path, cache_dir, monkeypatch):
    """With ``train.teacher_cache_dir``, each chain step's teacher (the recipe's teacher, an assistant, a
    generation) is another model: its outputs get a directory of their own, never the recipe teacher's."""
    store = tmp_path / "outputs"
    seen = []
    real = experiment.fit_stages

    def spy(model, teacher, *args, **kwargs):
        outputs = kwargs["teacher_outputs"]
        seen.append((kwargs["run_dir"].name, teacher, outputs.path if outputs is not None else
                     kwargs["config"].teacher_cache_dir))
        return real(model, teacher, *args, **kwargs)

    monkeypatch.setattr(experiment, "fit_stages", spy)
    summary = run_recipe(_recipe("train.cache_teacher=true", f"train.teacher_cache_dir={store}"), tmp_path / "run")
    assert all(row["test_accuracy"] > 50 for row in summary["rows"][1:])
    taught = {str(directory): teacher for _, teacher, directory in seen if teacher is not None}
    # one directory per teacher, and one teacher per directory
    assert len(taught) == len({id(t) for t in taught.values()}) == 4
    assert str(store) in taught and taught[str(store)] is seen[0][1]  # the recipe teacher keeps the shared one
    key = json.loads((tmp_path / "run" / "students" / "takd" / "row.json").read_text())["key"]
    assert str(store / "takd" / key / "student") in taught
    ban = [d for d in taught if d.startswith(str(store / "ban"))]
    assert sorted(Path(d).name for d in ban) == ["step-2", "student"]
    # another run of the same recipe trains the same models again and finds each store as it left them
    again = run_recipe(_recipe("train.cache_teacher=true", f"train.teacher_cache_dir={store}"), tmp_path / "run2")
    assert [r["test_accuracy"] for r in again["rows"]] == [r["test_accuracy"] for r in summary["rows"]]
