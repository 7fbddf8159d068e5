"""English grapheme-to-phoneme pairs for seq2seq distillation: words from Debian ``wamerican``, phonemes from
``espeak-ng``.

| data | source | install |
|---|---|---|
| ~64k lower-case alphabetic English words | Debian ``wamerican`` (``/usr/share/dict/american-english``) | ``apt-get install wamerican`` |
| their pronunciations | Debian ``espeak-ng -q -x --sep=' '`` (US English, ASCII phoneme names, stress marks kept on the vowel) | ``apt-get install espeak-ng`` |

:func:`phonemize` runs espeak-ng once per chunk of words (one word a line), not once per word. :func:`load_g2p`
picks ``size`` words deterministically (by a hash of the word, so the choice does not depend on the list's
order), splits them **by word** into train / validation / test (no word in two splits), and caches the pairs
under ``distill.fileio.cache_dir()`` keyed by its settings. Items are ``tokens``-task items for a seq2seq model
(:class:`distill.zoo.seq2seq.Seq2SeqTransformer`): ``input_ids`` (the letters), ``decoder_input_ids``
(``<s>`` + phonemes) and ``label`` (phonemes + ``</s>``), padded with id 0.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import torch

from distill.errors import DistillError
from distill.fileio import atomic_write_text, cache_dir, settings_key
from distill.zoo.datasets import DataMissing
from distill.zoo.speech import program_path

WORDS = Path("/usr/share/dict/american-english")
PAD, BOS, EOS = 0, 1, 2
SPECIALS = ("<pad>", "<s>", "</s>")
LETTERS = "abcdefghijklmnopqrstuvwxyz"


class G2PError(DistillError):
    """Text the grapheme-to-phoneme data cannot use; the message says what to give instead."""


def words_list(path: Path = WORDS) -> list[str]:
    """The word list's lower-case alphabetic words (no capitals, apostrophes or accents), sorted, unique."""
    if not Path(path).is_file():
        raise DataMissing(f"the word list {path} is missing; install it with: sudo apt-get install wamerican")
    words = {w.strip() for w in Path(path).read_text(encoding="utf-8", errors="replace").splitlines()}
    return sorted(w for w in words if w and all(c in LETTERS for c in w))


def phonemize(words: list[str], voice: str = "en-us", chunk: int = 2000) -> list[list[str]]:
    """Each word's phonemes (espeak-ng's ASCII names, such as ``["h", "@", "l", "'oU"]``), ``chunk`` words per
    espeak-ng call. A word espeak-ng says as several lines or none is phonemised alone."""
    bad = [w for w in words if not w or not all(c in LETTERS for c in w)]
    if bad:
        raise G2PError(f"phonemize takes lower-case alphabetic words, got {bad[0]!r}")
    exe, out = program_path("espeak-ng"), []

    def run(text: str) -> list[str]:
        done = subprocess.run([exe, "-q", "-x", "--sep= ", "-v", voice], input=text, capture_output=True, text=True,
                              check=False)
        if done.returncode != 0:
            raise G2PError(f"espeak-ng failed on voice {voice!r}: {done.stderr.strip()}")
        return [line.split() for line in done.stdout.splitlines() if line.strip()]

    for start in range(0, len(words), chunk):
        part = words[start:start + chunk]
        lines = run("\n".join(part) + "\n")
        if len(lines) != len(part):
            lines = [sum(run(w + "\n"), []) for w in part]
        out.extend(lines)
    return out


@dataclass
class G2PData:
    """Splits of ``(word, phonemes)`` pairs and the two vocabularies (ids 0-2 are ``<pad> <s> </s>``)."""

    train: list[tuple[str, list[str]]]
    val: list[tuple[str, list[str]]]
    test: list[tuple[str, list[str]]]
    letters: list[str]
    phonemes: list[str]

    def __post_init__(self):
        self.letter_id = {c: i for i, c in enumerate(self.letters)}
        self.phoneme_id = {p: i for i, p in enumerate(self.phonemes)}

    def encode_word(self, word: str) -> list[int]:
        return [self.letter_id[c] for c in word]

    def encode_phonemes(self, phonemes: list[str]) -> list[int]:
        unknown = [p for p in phonemes if p not in self.phoneme_id]
        if unknown:
            raise G2PError(f"phoneme {unknown[0]!r} is not in the {len(self.phonemes)}-symbol vocabulary")
        return [self.phoneme_id[p] for p in phonemes]

    def decode(self, ids) -> list[str]:
        """Phonemes of target ids, up to the first ``</s>`` (specials dropped)."""
        out = []
        for i in ids:
            if int(i) == EOS:
                break
            if int(i) > EOS:
                out.append(self.phonemes[int(i)])
        return out

    def items(self, split: str) -> list[dict]:
        """The split as ``tokens``-task items (see the module docstring)."""
        pairs = getattr(self, split)
        return [pair_item(self.encode_word(w), self.encode_phonemes(p)) for w, p in pairs]


def pair_item(source: list[int], target: list[int]) -> dict:
    """One seq2seq item: ``input_ids`` = source, ``decoder_input_ids`` = ``<s>`` + target, ``label`` = target +
    ``</s>`` (so position ``t`` predicts the target's token ``t``)."""
    return {"input_ids": torch.tensor(source), "decoder_input_ids": torch.tensor([BOS, *target]),
            "label": torch.tensor([*target, EOS])}


def _bucket(word: str) -> float:
    return int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "big") / 2**64


def load_g2p(size: int = 30000, val_size: int = 1500, test_size: int = 1500, voice: str = "en-us",
             say=print) -> G2PData:
    """``size`` word/pronunciation pairs (the words of lowest hash; all of them when the list is shorter), the
    last ``val_size`` and ``test_size`` by hash held out; generated once and cached."""
    if val_size + test_size >= size:
        raise G2PError(f"val_size + test_size ({val_size + test_size}) must be below size ({size})")
    settings = {"size": size, "val": val_size, "test": test_size, "voice": voice, "version": 1}
    path = cache_dir() / "data" / f"g2p-{settings_key(settings)}.json"
    if path.is_file():
        stored = json.loads(path.read_text())
    else:
        words = sorted(words_list(), key=_bucket)[:size]
        say(f"phonemising {len(words):,} words with espeak-ng (cached in {path})")
        pairs = [(w, p) for w, p in zip(words, phonemize(words, voice)) if p]
        n_test, n_val = test_size, val_size
        stored = {"test": pairs[-n_test:], "val": pairs[-n_test - n_val:-n_test], "train": pairs[:-n_test - n_val]}
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(stored))
    symbols = sorted({p for split in stored.values() for _, ps in split for p in ps})
    return G2PData(**{k: [(w, list(p)) for w, p in v] for k, v in stored.items()},
                   letters=list(SPECIALS) + list(LETTERS), phonemes=list(SPECIALS) + symbols)


def g2p(size: int = 30000, val_size: int = 1500, test_size: int = 1500, train_size: int | None = None) -> dict:
    """The pairs as a recipe's data (``data: {dataset: "distill.zoo.g2p:g2p"}`` with ``task: {name: tokens, shift:
    false, pad_token_id: 0}`` and model ``seq2seq``): ``{"train", "val", "test", "num_classes" (the phonemes)}``;
    ``train_size`` keeps the first training pairs."""
    data = load_g2p(size, val_size, test_size)
    train = data.items("train")
    return {"train": train[:train_size] if train_size else train, "val": data.items("val"),
            "test": data.items("test"), "num_classes": len(data.phonemes)}
