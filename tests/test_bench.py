import json
import statistics

import pytest

from distill.bench import run_benchmark
from distill.recipe import RecipeError


def test_benchmark_over_seeds_reports_mean_and_std(tmp_path, cache_dir):
    out = tmp_path / "bench"
    result = run_benchmark("digits", seeds=2, quick=True, out_dir=out)
    data = json.loads((out / "results.json").read_text())
    assert [r["label"] for r in data["rows"]] == ["teacher", "scratch", "kd"]
    per_seed = [json.loads((out / f"seed-{s}" / "summary.json").read_text()) for s in range(2)]
    for i, row in enumerate(data["rows"]):
        accs = [s["rows"][i]["test_accuracy"] for s in per_seed]
        assert row["test_accuracy"][0] == statistics.fmean(accs)
        assert row["test_accuracy"][1] == statistics.stdev(accs)
    assert "±" in (out / "table.md").read_text() and "distill bench digits" in (out / "table.md").read_text()
    assert result["table"].count("\n") == 4  # header, separator, three rows
    # finished seeds are reused, not retrained
    again = run_benchmark("digits", seeds=2, quick=True, out_dir=out)
    assert again["rows"] == result["rows"]


def test_only_seed_runs_one_seed_and_a_full_run_reuses_it(tmp_path, cache_dir, capsys):
    out = tmp_path / "bench"
    one = run_benchmark("digits", seeds=2, quick=True, out_dir=out, only_seed=1)
    assert (out / "seed-1" / "summary.json").is_file() and not (out / "seed-0").exists()
    assert not (out / "results.json").exists()
    assert [r["label"] for r in one[""]["rows"]] == ["teacher", "scratch", "kd"]
    capsys.readouterr()
    run_benchmark("digits", seeds=2, quick=True, out_dir=out)
    assert "seed 1: reusing" in capsys.readouterr().out
    with pytest.raises(RecipeError, match="between 0 and 1"):
        run_benchmark("digits", seeds=2, quick=True, out_dir=out, only_seed=2)


def test_benchmark_over_pairs_skips_methods_and_reports_epoch_time(tmp_path, cache_dir, monkeypatch):
    from distill.bench import BENCHMARKS, Benchmark

    monkeypatch.setitem(BENCHMARKS, "two-pairs", Benchmark(
        recipe="digits", description="test", seeds=2, quick=["teacher.train.epochs=1", "train.epochs=1"],
        pairs={"small": ["student.options.hidden=[8]"], "wide": ["student.options.hidden=[64]"]},
        skip={"wide": ["kd"]}))
    out = tmp_path / "bench"
    result = run_benchmark("two-pairs", quick=True, out_dir=out)
    data = json.loads((out / "results.json").read_text())
    assert set(data["pairs"]) == {"small", "wide"} and set(result["rows"]) == {"small", "wide"}
    assert [r["label"] for r in data["pairs"]["small"]] == ["teacher", "scratch", "kd"]
    assert [r["label"] for r in data["pairs"]["wide"]] == ["teacher", "scratch"]
    small = {r["label"]: r for r in data["pairs"]["small"]}
    assert small["scratch"]["epoch_time_vs_scratch"] == 1.0 and small["kd"]["epoch_time_vs_scratch"] > 0
    assert small["scratch"]["params"] < data["pairs"]["wide"][1]["params"]
    table = (out / "table.md").read_text()
    assert "### small" in table and "### wide" in table and "time / epoch vs scratch" in table
    assert "| method | small | wide |" in table and "| kd |" in table and "n/a" in table
    assert (out / "small" / "seed-1" / "summary.json").is_file()
    only = run_benchmark("two-pairs", quick=True, out_dir=tmp_path / "one", pairs=["wide"], seeds=1)
    assert set(only["rows"]) == {"wide"}
    with pytest.raises(RecipeError, match="no pair 'nope'"):
        run_benchmark("two-pairs", quick=True, out_dir=tmp_path / "x", pairs=["nope"])


def test_a_finished_seed_is_updated_when_a_method_changed(tmp_path, cache_dir, monkeypatch):
    from distill.bench import BENCHMARKS, Benchmark

    bench = Benchmark(recipe="digits", description="test", seeds=1, quick=["teacher.train.epochs=1", "train.epochs=1"])
    monkeypatch.setitem(BENCHMARKS, "changing", bench)
    out = tmp_path / "bench"
    first = {r["label"]: r for r in run_benchmark("changing", quick=True, out_dir=out)["rows"]}
    bench.quick = bench.quick + ["methods.1.temperature=2"]
    second = {r["label"]: r for r in run_benchmark("changing", quick=True, out_dir=out)["rows"]}
    assert second["scratch"]["train_seconds"] == first["scratch"]["train_seconds"]  # reused
    assert second["kd"]["train_seconds"] != first["kd"]["train_seconds"]  # trained again with T = 2


def test_finished_students_are_reused_from_their_rows_without_weights(tmp_path, cache_dir, capsys):
    # what a new machine sees of an interrupted benchmark: the rows of finished students, no weights
    out = tmp_path / "bench"
    first = run_benchmark("digits", seeds=1, quick=True, out_dir=out)
    seed = out / "seed-0"
    for path in list(seed.rglob("*")):
        if path.is_file() and path.name != "row.json":
            path.unlink()
    capsys.readouterr()
    again = run_benchmark("digits", seeds=1, quick=True, out_dir=out)
    printed = capsys.readouterr().out
    assert "student [" not in printed  # no student trained again
    for a, b in zip(first["rows"], again["rows"]):
        if a["label"] != "teacher":
            assert a["test_accuracy"] == b["test_accuracy"] and a["train_seconds"] == b["train_seconds"]


def test_a_new_cam_layer_remeasures_the_agreement_without_retraining(tmp_path, cache_dir, monkeypatch):
    import distill.experiment as experiment
    from distill.experiment import run_recipe
    from distill.recipe import apply_overrides, parse_recipe, read_recipe_tree

    def recipe(layer):
        return parse_recipe(apply_overrides(read_recipe_tree("digits"), [
            "student.model=cnn", "student.options={channels: [8, 8], hidden: 16}", "teacher.train.epochs=1",
            "train.epochs=1", "evaluation.cam_agreement_images=20", f"evaluation.cam_layer={layer}"]))

    first = run_recipe(recipe("last_stage"), tmp_path / "run")
    trained = []
    real = experiment.fit_stages
    monkeypatch.setattr(experiment, "fit_stages", lambda *a, **k: trained.append(1) or real(*a, **k))
    again = run_recipe(recipe("stage1"), tmp_path / "run", resume=True)
    assert trained == []
    for a, b in zip(first["rows"][1:], again["rows"][1:]):
        assert (a["cam_layer"], b["cam_layer"]) == ("last_stage", "stage1")
        assert a["test_accuracy"] == b["test_accuracy"] and a["cam_agreement"] != b["cam_agreement"]


def test_rows_of_a_teacher_with_other_weights_are_trained_again(tmp_path, cache_dir, capsys):
    # a new machine retrains the teacher under the same settings, and CPU rounding gives it other weights:
    # rows measured with the old teacher must not be mixed into a table with the new one
    import torch
    from safetensors.torch import load_file, save_file

    out = tmp_path / "bench"
    first = run_benchmark("digits", seeds=1, quick=True, out_dir=out)
    seed = out / "seed-0"
    teacher_row = first["rows"][0]
    summary = json.loads((seed / "summary.json").read_text())
    weights = summary["rows"][0]["weights"]
    assert all(r["teacher_weights"] == weights for r in summary["rows"] if r["label"] == "kd")
    for path in list(seed.rglob("*")):
        if path.is_file() and path.name != "row.json":
            path.unlink()
    [cached] = list((cache_dir / "teachers").glob("*/teacher.safetensors"))
    state = load_file(cached)
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = state[name] + 1e-3 * torch.randn_like(state[name])
    save_file(state, cached)
    capsys.readouterr()
    again = run_benchmark("digits", seeds=1, quick=True, out_dir=out)
    printed = capsys.readouterr().out
    assert "student [kd]: its row" in printed and "teacher of other weights" in printed
    assert "student [scratch]: its row" not in printed  # scratch learns from no teacher: reused
    summary = json.loads((seed / "summary.json").read_text())
    assert summary["rows"][0]["weights"] != weights
    kd = next(r for r in summary["rows"] if r["label"] == "kd")
    assert kd["teacher_weights"] == summary["rows"][0]["weights"]
    assert again["rows"][0]["label"] == teacher_row["label"]


def test_rows_without_teacher_hashes_are_checked_against_the_recorded_teacher(tmp_path, cache_dir, capsys):
    # rows written before teacher hashes existed: trusted while the teacher scores as the seed's summary
    # recorded, trained again (those that ask the teacher) when it does not
    out = tmp_path / "bench"
    methods = "methods=[{method: scratch}, {method: kd}, {method: kd, label: kd2, temperature: %d}]"
    run_benchmark("digits", seeds=1, quick=True, out_dir=out, overrides=[methods % 2])
    seed = out / "seed-0"

    def make_legacy(teacher_accuracy=None):
        for path in seed.rglob("row.json"):
            row = json.loads(path.read_text())
            row.pop("teacher_weights", None)
            path.write_text(json.dumps(row))
        summary = json.loads((seed / "summary.json").read_text())
        for row in summary["rows"]:
            row.pop("weights", None)
            row.pop("teacher_weights", None)
        if teacher_accuracy is not None:
            summary["rows"][0]["test_accuracy"] = teacher_accuracy
        (seed / "summary.json").write_text(json.dumps(summary))
        for path in list(seed.rglob("*")):  # a new machine: the rows and the seed's summary, no weights
            if path.is_file() and path.name != "row.json" and path != seed / "summary.json":
                path.unlink()

    def rerun(temperature):  # kd2's settings change, so the seed runs again and loads the teacher
        capsys.readouterr()
        run_benchmark("digits", seeds=1, quick=True, out_dir=out, overrides=[methods % temperature])
        return capsys.readouterr().out

    make_legacy()
    printed = rerun(3)
    assert "student [kd2]:" in printed
    assert "student [kd]" not in printed and "student [scratch]" not in printed  # the same teacher: reused
    make_legacy(teacher_accuracy=12.5)  # the summary's teacher scored otherwise: another teacher
    printed = rerun(4)
    assert "student [kd]: its row" in printed and "teacher of other weights" in printed
    assert "student [scratch]" not in printed  # asks the teacher nothing: reused
    summary = json.loads((seed / "summary.json").read_text())
    assert all(r["teacher_weights"] == summary["rows"][0]["weights"] for r in summary["rows"][2:])


def test_cached_model_trains_once_and_bench_rows_resume(tmp_path, cache_dir):
    import torch

    from distill.fileio import bench_rows, cached_model, row_path, row_run_dir

    calls = []

    def fit():
        calls.append(1)
        with torch.no_grad():
            model.weight.fill_(3.0)
        return {"settings": {"a": 1}, "history": [{"epoch": 1}]}

    model = torch.nn.Linear(2, 2)
    _, info = cached_model(tmp_path / "t", model, fit, "training", say=lambda *_: None)
    assert info["settings"] == {"a": 1} and info["history"] == [{"epoch": 1}] and len(calls) == 1
    model = torch.nn.Linear(2, 2)
    loaded, again = cached_model(tmp_path / "t", model, fit, "training", say=lambda *_: None)
    assert again == info and len(calls) == 1 and bool((loaded.weight == 3.0).all()) and not loaded.training

    made = []

    def make(arm, seed):  # a row trained in its run folder, as the arm benchmarks do
        made.append((arm, seed))
        run = row_run_dir(row_path(tmp_path / "b", arm, seed), "k")
        (run / "checkpoints").mkdir(parents=True, exist_ok=True)
        return {"arm": arm, "seed": seed, "train_seconds": 0.0}

    killed = row_run_dir(row_path(tmp_path / "b", "x", 1), "k") / "checkpoints" / "step-00000100"
    killed.mkdir(parents=True)  # a process killed after its first checkpoint left this behind
    (killed / "model.safetensors").write_bytes(b"")
    (killed / "state.pt").write_bytes(b"")
    rows = bench_rows(tmp_path / "b", ["x", "y"], 2, lambda arm: "k", make, lambda row: "", say=lambda *_: None)
    assert [(r["arm"], r["seed"]) for r in rows] == made == [("x", 0), ("x", 1), ("y", 0), ("y", 1)]
    assert [r.get("resumed", False) for r in rows] == [False, True, False, False]
    assert row_run_dir(tmp_path / "b" / "x" / "seed-1.json", "k") == cache_dir / "bench-runs" / "b-x-seed-1-k"
    assert not (cache_dir / "bench-runs").exists() or not any((cache_dir / "bench-runs").iterdir())  # written: gone
    bench_rows(tmp_path / "b", ["x", "y"], 2, lambda arm: "k", make, lambda row: "", say=lambda *_: None)
    assert len(made) == 4  # stored rows are reused


@pytest.mark.parametrize("name", ["hinton-mnist", "digits", "function-matching", "demo", "vision", "vision-full",
                                  "schemes"])
def test_every_bundled_benchmark_makes_valid_recipes_for_each_pair(name):
    """Each benchmark's pair and quick overrides, applied to its recipe, give a recipe that parses (the methods a
    pair keeps included): a typo in an override fails here, not hours into a run."""
    from distill.bench import BENCHMARKS, pair_tree
    from distill.recipe import parse_recipe

    bench = BENCHMARKS[name]
    recipes = {}
    for pair in bench.pairs or [""]:
        for quick in (False, True):
            recipes[pair, quick] = parse_recipe(pair_tree(bench, pair, quick))
            assert recipes[pair, quick].methods, (name, pair)
    if name == "vision-full":
        recipe = recipes["cnn-mlp", False]
        assert [m.method for m in recipe.methods] == ["scratch", "kd", "dkd", "crd", "fitnets", "dist"]
        assert recipe.teacher.seed == 0 and recipe.data.train_size is None and recipe.train.epochs == 30


def test_arm_benchmarks_key_a_row_by_the_teachers_weights_only_where_the_teacher_takes_part():
    from types import SimpleNamespace

    from distill import detection_bench, llm_bench, nlp_bench, restoration_bench, seq2seq_bench
    from distill.fileio import row_key, settings_key

    assert row_key({"a": 1}) == settings_key({"a": 1}) != row_key({"a": 1}, "w1") != row_key({"a": 1}, "w2")

    def taught(arms, key):  # the arms whose key changes when only the teacher's weights do
        return {arm for arm in arms if key(arm, "w1") != key(arm, "w2")}

    def seq2seq_key(arm, weights):
        return seq2seq_bench._arm_key(arm, SimpleNamespace(teacher_key="t", settings={}, teacher_weights=weights))

    assert taught(seq2seq_bench.ARMS, seq2seq_key) == set(seq2seq_bench.ARMS) - {"scratch", "nar"}
    # every llm row holds the teacher's NLL of the student's samples
    assert taught(llm_bench.ARMS, lambda arm, w: llm_bench.arm_key(arm, True, w)) == set(llm_bench.ARMS)
    assert taught(nlp_bench.ARMS, lambda arm, w: nlp_bench.arm_key(arm, True, w)) == set(nlp_bench.ARMS) - {
        "scratch", "pt-ft"}
    # a student prepared on unlabelled text is, like a teacher, named by its weights (pt-ft is taught by neither)
    assert nlp_bench.arm_key("pt-ft", True, "w", "p1") != nlp_bench.arm_key("pt-ft", True, "w", "p2")
    assert nlp_bench.prepared_weights("random", "L2-H384", True) is None
    assert taught(detection_bench.ARMS, lambda arm, w: detection_bench.arm_key(arm, True, ("t", w))) == set(
        detection_bench.ARMS) - {"scratch", "scratch-long"}
    assert taught(restoration_bench.ARMS, lambda arm, w: restoration_bench.arm_key(arm, True, ("t", w))) == {
        arm for arm in restoration_bench.ARMS if not arm.endswith("-scratch")}
