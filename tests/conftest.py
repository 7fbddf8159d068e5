import os

import pytest
import torch

os.environ.setdefault("DISTILL_CACHE", "/tmp/distill-test-cache")


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)
    yield


@pytest.fixture
def one_thread():
    """One torch thread for a test module of small models (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    on a busy 2-core machine intra-op threads only add synchronisation, and spinning workers made such files
    many times slower. Runs after ``_threads``, which gives every other test two threads again."""
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session")
def digits():
    from distill import load_dataset

    return load_dataset("digits", val_size=200)


@pytest.fixture(scope="session")
def teacher(digits):
    """A small CNN trained 4 epochs on the digits (about 90% test accuracy); tests must not train it further."""
    from distill.engine import Distiller, seed_everything
    from distill.terms import Term
    from distill.zoo import build_model

    seed_everything(0)
    model = build_model("cnn", digits.input_shape, channels=[8, 16], hidden=32)
    Distiller(model, terms=[Term("ce")], epochs=4, lr=5e-3, batch_size=64, progress=False).fit(digits.train)
    # handed over frozen, as a trained teacher is: runs put back the state they found (distill.teacher.thaw),
    # so a test that ran it in training mode would otherwise change its BatchNorm statistics for the next
    model.eval().requires_grad_(False)
    return model


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
    """A tiny finished digits run (teacher, scratch and kd students) for the commands that read run
    directories (explain, export, eval); each writes into its own subfolder of it."""
    from distill.experiment import run_recipe
    from distill.recipe import load_recipe

    recipe = load_recipe("digits", [
        "train.epochs=1", "teacher.train.epochs=1", "teacher.cache=false", "train.progress=false",
        "teacher.train.progress=false", "teacher.options={channels: [8, 16], hidden: 32}",
        "student.model=cnn", "student.options={channels: [4, 8], hidden: 16}", "evaluation.latency_repeats=1",
    ])
    path = tmp_path_factory.mktemp("finished") / "run"
    run_recipe(recipe, path)
    return path
