"""Where a recipe's models and data come from.

* a zoo name (``distill list models`` / ``distill list datasets``);
* ``hf:PATH`` — a local Hugging Face folder (``save_pretrained``), loaded with ``transformers``' Auto
  classes, the head chosen by the task: sequence classification for ``classification``, ``regression``
  and ``multilabel``, a causal LM for ``tokens``, the bare encoder for ``embedding``;
* ``package.module:function`` — your own code: a model factory called with the recipe's ``options``,
  or a data function returning ``{"train": ..., "val": ..., "test": ...}`` (or an object with those
  attributes) of any map-style datasets.
"""
from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from distill.errors import DistillError
from distill.data import read_items
from distill.tasks import Task
from distill.zoo import build_model, load_dataset
from distill.zoo.datasets import LOADERS
from distill.zoo.models import MODELS
from distill.zoo.text import TEXT_DATASETS, load_text_dataset

_IMPORT_PATH = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*")
HF_HEADS = {"classification": "AutoModelForSequenceClassification", "regression": "AutoModelForSequenceClassification",
            "multilabel": "AutoModelForSequenceClassification", "tokens": "AutoModelForCausalLM",
            "embedding": "AutoModel"}


class SourceError(DistillError):
    """A model or data source that cannot be used; the message says why in one line."""


def check_model_name(name: str) -> str:
    """``name`` if it names a zoo model, a ``hf:`` folder or an import path; else a one-line error."""
    if name in MODELS:
        return name
    if _IMPORT_PATH.fullmatch(name):
        import_object(name)  # a missing module or function is named when the recipe is read
        return name
    if name.startswith("hf:"):
        folder = Path(name[3:]).expanduser()
        if not (folder / "config.json").is_file():
            raise SourceError(f"{name}: no Hugging Face model folder there (expected {folder / 'config.json'})")
        return name
    raise SourceError(f"unknown model {_short(name)}; {_near(name, MODELS)}give a zoo model (distill list models), "
                      "hf:PATH (a local Hugging Face folder) or package.module:factory")


def check_data_name(name: str) -> str:
    if name in LOADERS or name in TEXT_DATASETS:
        return name
    if _IMPORT_PATH.fullmatch(name):
        import_object(name)
        return name
    raise SourceError(f"unknown dataset {_short(name)}; {_near(name, [*LOADERS, *TEXT_DATASETS])}give a bundled dataset "
                      f"({', '.join([*LOADERS, *TEXT_DATASETS])}) or package.module:function")


def data_inputs(name: str) -> str | None:
    """What a bundled dataset's items are: ``"tokens"`` (text) or ``"images"``; None for a user's data."""
    return "tokens" if name in TEXT_DATASETS else "images" if name in LOADERS else None


def _short(name) -> str:
    text = repr(name)
    return text if len(text) <= 60 else text[:59] + "\u2026"


def _near(name, options) -> str:
    """``did you mean a, b? `` for names close to ``name`` (empty when none is)."""
    import difflib

    near = difflib.get_close_matches(str(name)[:100], sorted(options), n=3)
    return f"did you mean {', '.join(near)}? " if near else ""


def import_object(path: str):
    """The object at ``package.module:name``."""
    module_name, _, attr = path.partition(":")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as err:
        raise SourceError(f"{path}: cannot import {module_name!r} ({err})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise SourceError(f"{path}: module {module_name!r} has no {attr!r} to call")
        obj = getattr(obj, part)
    if not callable(obj):
        raise SourceError(f"{path}: {attr!r} is not a function or class to call")
    return obj


def build(name: str, options: dict, data, task: Task) -> nn.Module:
    """A model from a recipe's ``model`` and ``options`` (a fresh one; weights loaded by the caller)."""
    if name.startswith("hf:"):
        try:
            import transformers
        except ImportError:
            raise SourceError(f"{name}: Hugging Face models need transformers: pip install transformers") from None
        auto = getattr(transformers, HF_HEADS.get(task.name, "AutoModel"))
        return auto.from_pretrained(str(Path(name[3:]).expanduser()), **options)
    if ":" in name:
        model = import_object(name)(**options)
        if not isinstance(model, nn.Module):
            raise SourceError(f"{name} returned {type(model).__name__}, not a torch.nn.Module")
        return model
    return build_model(name, data.input_shape, data.num_classes, **options)


@dataclass
class UserData:
    """Train / validation / test splits from a user's data function."""

    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int | None = None

    @property
    def input_shape(self):
        return None


def load(name: str, val_size: int | None, seed: int, train_size: int | None, test_size: int | None,
         tokenizer=None):
    """A recipe's data: a bundled dataset, or the splits a user's function returns (``val_size`` None: the
    bundled dataset's default for its size). A text dataset is tokenised with ``tokenizer`` (MiniLM's by
    default) and keeps its fixed split (:func:`~distill.zoo.text.load_text_dataset`)."""
    if name in TEXT_DATASETS:
        return load_text_dataset(name, tokenizer, val_size, train_size, test_size)
    if ":" not in name:
        return load_dataset(name, val_size, seed=seed, train_size=train_size, test_size=test_size)
    out = import_object(name)()
    splits = {}
    for split in ("train", "val", "test"):
        value = out.get(split) if isinstance(out, dict) else getattr(out, split, None)
        if value is None or not hasattr(value, "__len__") or not hasattr(value, "__getitem__"):
            raise SourceError(f"{name}() must return train, val and test datasets (a dict or attributes); "
                              f"{split!r} is {type(value).__name__}")
        splits[split] = value
    train, test = splits["train"], splits["test"]
    if train_size is not None:
        train = _first(train, train_size)
    if test_size is not None:
        test = _first(test, test_size)
    num_classes = out.get("num_classes") if isinstance(out, dict) else getattr(out, "num_classes", None)
    return UserData(train, splits["val"], test, num_classes)


def _first(dataset, count: int) -> torch.utils.data.Subset:
    """The first ``count`` samples of ``dataset``, with their ``lengths`` when it has them (group_by_length)."""
    subset = torch.utils.data.Subset(dataset, range(min(count, len(dataset))))
    if getattr(dataset, "lengths", None) is not None:
        subset.lengths = list(dataset.lengths)[:len(subset)]
    return subset


def first_inputs(dataset, count: int, task: Task):
    """The model inputs of the first ``count`` samples of ``dataset`` as one batch (for timing and MACs)."""
    return task.collate(read_items(dataset, range(min(count, len(dataset)))))["input"]
