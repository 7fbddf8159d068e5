"""English-Spanish parallel sentences for multilingual sentence embeddings (Reimers & Gurevych 2020).

| name | source | install |
|---|---|---|
| Bible verses, 30,796 pairs | KJV + Reina-Valera 1909 SWORD modules (:func:`distill.zoo.sword.parallel_verses`) | ``sudo apt-get install sword-text-kjv sword-text-sparv`` |
| Django interface strings | the Spanish translation catalogues (``.po``) inside the PyPI ``Django`` wheel | ``pip install django`` (the ``nlp`` extra) |

The verses are split **by book**, so no verse of a validation or test book is seen in training: test =
Ruth, Ecclesiastes, Joel, Mark and James (narrative, wisdom, prophecy, gospel, epistle: 1,166 pairs);
validation = Esther, Song of Solomon, Habakkuk, Galatians, Hebrews and 1 John (897 pairs); train = the
other 55 books (28,733 pairs). The Django strings are the out-of-domain test set: short interface
messages, nothing like 17th-century scripture.

Items are ``{"input_ids": English, "target_input_ids": Spanish}`` (LongTensors, truncated to ``max_length``
tokens), for the ``parallel_embedding`` task (``get_task("parallel_embedding", tokenizer=tok)``).
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch
from torch.utils.data import Dataset

from distill.zoo.datasets import DataMissing

TEST_BOOKS = ("Ruth", "Eccl", "Joel", "Mark", "Jas")
VAL_BOOKS = ("Esth", "Song", "Hab", "Gal", "Heb", "1John")
MAX_LENGTH = 256  # MiniLM's max_seq_length: no verse is cut (the longest: 112 MiniLM tokens in English, 159 in Spanish)


def split_by_book(pairs, test_books=TEST_BOOKS, val_books=VAL_BOOKS) -> dict[str, list]:
    """``pairs`` of :func:`~distill.zoo.sword.parallel_verses` (``(key, en, es)``, key ``(book, chapter,
    verse)``) as ``{"train", "val", "test"}``: the verses of ``test_books``, of ``val_books``, and the rest."""
    if set(test_books) & set(val_books):
        raise ValueError(f"books {sorted(set(test_books) & set(val_books))} are in both test and validation")
    out: dict[str, list] = {"train": [], "val": [], "test": []}
    for pair in pairs:
        book = pair[0][0]
        out["test" if book in test_books else "val" if book in val_books else "train"].append(pair)
    return out


class ParallelTexts(Dataset):
    """Sentence pairs tokenised once; ``ds[i]`` is ``{"input_ids": LongTensor, "target_input_ids": LongTensor}``.
    ``sources`` / ``targets`` keep the texts, ``keys`` each pair's key (a verse's ``(book, chapter, verse)``).
    With a ``teacher_tokenizer`` (the student reads with another one, e.g. an extended vocabulary), items
    also hold ``teacher_input_ids``: the source in the teacher's tokens, for the teacher alone."""

    def __init__(self, sources: list[str], targets: list[str], tokenizer, max_length: int = MAX_LENGTH,
                 keys: list | None = None, name: str = "parallel", teacher_tokenizer=None):
        if len(sources) != len(targets):
            raise ValueError(f"{len(sources)} source sentences but {len(targets)} translations")
        self.sources, self.targets, self.name = list(sources), list(targets), name
        self.keys = list(keys) if keys is not None else list(range(len(sources)))

        def encode(texts, tok=tokenizer):
            ids = tok(list(texts), truncation=True, max_length=max_length)["input_ids"] if texts else []
            return [torch.tensor(x, dtype=torch.long) for x in ids]

        self.source_ids, self.target_ids = encode(self.sources), encode(self.targets)
        self.teacher_ids = encode(self.sources, teacher_tokenizer) if teacher_tokenizer is not None else None

    def __len__(self) -> int:
        return len(self.source_ids)

    def __getitem__(self, i: int) -> dict:
        item = {"input_ids": self.source_ids[i], "target_input_ids": self.target_ids[i]}
        if self.teacher_ids is not None:
            item["teacher_input_ids"] = self.teacher_ids[i]
        return item

    @property
    def lengths(self) -> list[int]:
        """The longer side of each pair in tokens (``group_by_length``)."""
        return [max(len(a), len(b)) for a, b in zip(self.source_ids, self.target_ids)]


@dataclass
class ParallelSplits:
    train: ParallelTexts
    val: ParallelTexts
    test: ParallelTexts
    tokenizer: object


def load_parallel_verses(tokenizer=None, max_length: int = MAX_LENGTH, teacher_tokenizer=None) -> ParallelSplits:
    """The KJV / Reina-Valera verse pairs split by book (module docstring), tokenised with ``tokenizer``
    (MiniLM's by default); with ``teacher_tokenizer`` the English side also in the teacher's tokens."""
    from distill.zoo.sword import parallel_verses
    from distill.zoo.text import minilm_tokenizer

    tokenizer = tokenizer or minilm_tokenizer()
    parts = split_by_book(parallel_verses())
    made = {name: ParallelTexts([en for _, en, _ in rows], [es for _, _, es in rows], tokenizer, max_length,
                                [key for key, _, _ in rows], f"verses/{name}", teacher_tokenizer)
            for name, rows in parts.items()}
    return ParallelSplits(made["train"], made["val"], made["test"], tokenizer)


# ------------------------------------------------------------------------------- Django's catalogues

DJANGO_INSTALL = "pip install django"
_FORMAT = re.compile(r"%(\([^)]*\))?[#0\- +]*\d*(\.\d+)?[sdifgrxXeE%]|\{[^}]*\}")  # %(name)s, %s, %d, {name}
_MARKUP = re.compile(r"<[^>]+>")


def read_po(path: str | Path) -> list[tuple[str, str]]:
    """The ``(msgid, msgstr)`` pairs of a gettext catalogue, in file order: the header, untranslated and
    ``fuzzy`` entries and plural forms (``msgid_plural``) left out."""
    entries, entry, field = [], {}, None

    def finish():
        if entry.get("msgid") and entry.get("msgstr") and "plural" not in entry and not entry.get("fuzzy"):
            entries.append((entry["msgid"], entry["msgstr"]))

    for line in Path(path).read_text(encoding="utf-8").splitlines() + [""]:
        line = line.strip()
        if not line:
            finish()
            entry, field = {}, None
        elif line.startswith("#,"):
            entry["fuzzy"] = entry.get("fuzzy") or "fuzzy" in line
        elif line.startswith("#"):
            continue
        elif line.startswith('"'):
            if field:
                entry[field] = entry.get(field, "") + ast.literal_eval(line)
        else:
            keyword, _, value = line.partition(" ")
            field = {"msgid": "msgid", "msgstr": "msgstr", "msgctxt": "msgctxt"}.get(keyword)
            if keyword == "msgid" and "msgid" in entry:  # a new entry without a blank line between
                finish()
                entry = {}
            if keyword.startswith("msgid_plural") or keyword.startswith("msgstr["):
                entry["plural"], field = True, None
            elif field:
                entry[field] = ast.literal_eval(value)
    return entries


def django_catalogues(language: str = "es") -> list[Path]:
    """The installed Django wheel's ``.po`` files for ``language``: the core's and every contrib app's
    (``django.po``, ``djangojs.po``), in path order."""
    try:
        files = metadata.files("django") or []
    except metadata.PackageNotFoundError:
        files = []
    found = sorted(Path(f.locate()) for f in files
                   if f.suffix == ".po" and f"/locale/{language}/LC_MESSAGES/" in f.as_posix())
    if not found:
        raise DataMissing(f"Django's {language} translation catalogues not found; install them with: {DJANGO_INSTALL}")
    return found


def django_ui_pairs(language: str = "es") -> list[tuple[str, str]]:
    """Short English-Spanish interface strings from Django's catalogues: entries whose text has no format
    placeholder (``%(name)s``, ``{name}``) nor markup, whitespace collapsed, keyboard accelerators kept as
    they are; an English or Spanish text seen before is dropped (so every sentence has one translation),
    and so is a pair whose two sides are the same (``"Email"``, ``"No"``: nothing to translate)."""
    pairs, seen_en, seen_es = [], set(), set()
    for path in django_catalogues(language):
        for en, es in read_po(path):
            if _FORMAT.search(en) or _FORMAT.search(es) or _MARKUP.search(en) or _MARKUP.search(es):
                continue
            en, es = " ".join(en.split()), " ".join(es.split())
            if en.lower() == es.lower() or en.lower() in seen_en or es.lower() in seen_es:
                continue
            seen_en.add(en.lower())
            seen_es.add(es.lower())
            pairs.append((en, es))
    return pairs


def load_django_strings(tokenizer=None, max_length: int = MAX_LENGTH) -> ParallelTexts:
    """:func:`django_ui_pairs` tokenised (MiniLM's tokenizer by default): the out-of-domain test set."""
    from distill.zoo.text import minilm_tokenizer

    pairs = django_ui_pairs()
    return ParallelTexts([en for en, _ in pairs], [es for _, es in pairs], tokenizer or minilm_tokenizer(),
                         max_length, name="django-ui")
