import os

import pytest
import torch

os.environ.setdefault("DISTILL_CACHE", "/tmp/distill-test-cache")


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)
    yield


@pytest.fixture(scope="session")
def digits():
    from distill import load_dataset

    return load_dataset("digits", val_size=200)


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"
