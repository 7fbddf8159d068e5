"""Small GPT-style causal LMs and the English text they learn: the King James Bible and Jane Austen.

Data (:func:`lm_corpus`): the KJV's 66 books and Austen's six novels, split **by book** so no held-out text
shares a book with the training text (deterministic, no shuffling):

| split | KJV books (canonical order ``i``) | Austen novels |
|---|---|---|
| train | the others (54 books) | Sense and Sensibility, Pride and Prejudice, Mansfield Park, Emma |
| val | ``i % 11 == 5`` (Josh, Esth, Hos, Mal, Phil, 2Pet) | Northanger Abbey |
| test | ``i % 11 == 10`` (1Kgs, Song, Mic, Acts, 2Tim, Rev) | Persuasion |

Each book's sentences are tokenised with a byte-level BPE tokenizer trained on the training split only
(:func:`lm_tokenizer`, ``tokenizers``; kept as a ``transformers.PreTrainedTokenizerFast`` under
``distill.fileio.cache_dir()``) and packed in order into sequences of at most ``block_size`` tokens,
each opening with ``<|endoftext|>`` and cut at sentence ends, so lengths vary (ragged). A loader whose
Debian data is missing stops with one line naming the install command (:class:`~distill.zoo.datasets.DataMissing`).

Models (:func:`gpt_lm`): ``transformers.GPT2LMHeadModel`` built offline from a ``GPT2Config`` (tied
embeddings, learnt positions), saved and reloaded with ``save_pretrained`` / ``from_pretrained``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from distill.zoo import corpora
from distill.zoo.models import register_model

EOS = "<|endoftext|>"
PAD = "<pad>"
VAL_BOOK, TEST_BOOK, BOOK_PERIOD = 5, 10, 11
AUSTEN_SPLITS = {"train": ("sensesensibility", "prideprejudice", "mansfieldpark", "emma"),
                 "val": ("northangerabbey",), "test": ("persuasion",)}
SPLITS = ("train", "val", "test")
CORPUS_VERSION = 1


def kjv_split(book_number: int) -> str:
    """The split of the KJV's ``book_number``-th book (0 = Genesis)."""
    r = book_number % BOOK_PERIOD
    return "val" if r == VAL_BOOK else "test" if r == TEST_BOOK else "train"


def split_texts() -> dict[str, list[list[str]]]:
    """``{split: [sentences of one book, ...]}``: KJV books then Austen novels, in order."""
    out: dict[str, list[list[str]]] = {s: [] for s in SPLITS}
    for n, sentences in enumerate(corpora.kjv_sentences_by_book().values()):
        out[kjv_split(n)].append(list(sentences))
    novels = corpora.austen_sentences_by_novel()
    for split, names in AUSTEN_SPLITS.items():
        out[split] += [list(novels[name]) for name in names]
    return out


def lm_tokenizer(vocab_size: int = 4096, texts: dict[str, list[list[str]]] | None = None, folder: Path | None = None):
    """A byte-level BPE tokenizer of ``vocab_size`` tokens (``<|endoftext|>`` = 0, ``<pad>`` = 1) trained on the
    training split, cached under ``cache_dir()/tokenizers`` and loaded from there next time."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    from distill.fileio import cache_dir

    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 300:
        raise ValueError(f"vocab_size must be an integer >= 300 (256 bytes and some merges), got {vocab_size!r}")
    folder = folder or cache_dir() / "tokenizers" / f"kjv-austen-bpe{vocab_size}-v{CORPUS_VERSION}"
    if (folder / "tokenizer.json").is_file():
        return PreTrainedTokenizerFast.from_pretrained(folder)
    texts = texts or split_texts()
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator((" " + s for book in texts["train"] for s in book), vocab_size=vocab_size,
                            min_frequency=2, special_tokens=[EOS, PAD], show_progress=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token=EOS, eos_token=EOS, pad_token=PAD)
    tmp = folder.with_name(folder.name + ".tmp")
    tok.save_pretrained(tmp)
    if not folder.exists():
        tmp.rename(folder)
    return PreTrainedTokenizerFast.from_pretrained(folder)


class TokenBlocks(torch.utils.data.Dataset):
    """Token sequences (1-D ``int64``) as ``{"input_ids": ...}`` items for the ``tokens`` task; ``lengths``
    per sequence (for ``group_by_length``)."""

    def __init__(self, sequences: list[torch.Tensor], name: str = ""):
        self.sequences, self.name = sequences, name

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.sequences[i]}

    @property
    def lengths(self) -> list[int]:
        return [len(s) for s in self.sequences]

    def tokens(self) -> int:
        return sum(self.lengths)

    def subset(self, n: int) -> "TokenBlocks":
        """The first ``n`` sequences spread over the whole split (every ``len / n``-th), not its first book."""
        if n >= len(self):
            return self
        step = len(self) / n
        return TokenBlocks([self.sequences[int(k * step)] for k in range(n)], self.name)


def pack(sentence_ids: list[list[int]], block_size: int, bos: int) -> list[torch.Tensor]:
    """One book's tokenised sentences packed in order into sequences ``[bos, ...]`` of at most ``block_size``
    tokens, cut only between sentences (a sentence longer than a block is cut to it)."""
    blocks, current = [], [bos]
    for ids in sentence_ids:
        ids = ids[: block_size - 1]
        if len(current) + len(ids) > block_size:
            blocks.append(torch.tensor(current, dtype=torch.long))
            current = [bos]
        current += ids
    if len(current) > 1:
        blocks.append(torch.tensor(current, dtype=torch.long))
    return blocks


@dataclass
class LMCorpus:
    train: TokenBlocks
    val: TokenBlocks
    test: TokenBlocks
    tokenizer: object

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)


def lm_corpus(block_size: int = 128, vocab_size: int = 4096) -> LMCorpus:
    """The KJV + Austen corpus split by book, tokenised and packed (cached as ``.npy`` beside the tokenizer)."""
    from distill.fileio import cache_dir, settings_key

    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 8:
        raise ValueError(f"block_size must be an integer >= 8, got {block_size!r}")
    key = settings_key({"block": block_size, "vocab": vocab_size, "v": CORPUS_VERSION})
    folder = cache_dir() / "lm-corpus" / f"kjv-austen-{key}"
    texts = None
    if not (folder / "tokenizer" / "tokenizer.json").is_file():
        texts = split_texts()
    tok = lm_tokenizer(vocab_size, texts, folder / "tokenizer")
    splits = {}
    for split in SPLITS:
        tokens_file, offsets_file = folder / f"{split}.tokens.npy", folder / f"{split}.offsets.npy"
        if not offsets_file.is_file():
            texts = texts or split_texts()
            blocks = []
            for book in texts[split]:
                ids = tok([" " + s for s in book], add_special_tokens=False)["input_ids"]
                blocks += pack(ids, block_size, tok.eos_token_id)
            np.save(tokens_file, torch.cat(blocks).numpy().astype(np.int32))
            np.save(offsets_file, np.cumsum([0] + [len(b) for b in blocks]))
        tokens, offsets = np.load(tokens_file), np.load(offsets_file)
        seqs = [torch.from_numpy(tokens[a:b].astype(np.int64)) for a, b in zip(offsets[:-1], offsets[1:])]
        splits[split] = TokenBlocks(seqs, split)
    return LMCorpus(splits["train"], splits["val"], splits["test"], tok)


def gpt_config(vocab_size: int, layers: int = 2, hidden: int = 128, heads: int = 2, context: int = 128,
               dropout: float = 0.0, eos_token_id: int = 0, pad_token_id: int = 1):
    from transformers import GPT2Config

    if hidden % heads:
        raise ValueError(f"hidden ({hidden}) must be a multiple of heads ({heads})")
    return GPT2Config(vocab_size=vocab_size, n_positions=context, n_embd=hidden, n_layer=layers, n_head=heads,
                      resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout, bos_token_id=eos_token_id,
                      eos_token_id=eos_token_id, pad_token_id=pad_token_id)


def gpt_lm(vocab_size: int, layers: int = 2, hidden: int = 128, heads: int = 2, context: int = 128,
           dropout: float = 0.0, seed: int = 0, **ids):
    """A ``GPT2LMHeadModel`` with fresh weights drawn from ``seed`` (the global RNG left as it was)."""
    from transformers import GPT2LMHeadModel

    config = gpt_config(vocab_size, layers, hidden, heads, context, dropout, **ids)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return GPT2LMHeadModel(config)


def load_gpt(folder):
    """A GPT saved with ``save_pretrained``."""
    from transformers import GPT2LMHeadModel

    from distill.zoo.text import quiet_transformers

    with quiet_transformers():
        return GPT2LMHeadModel.from_pretrained(folder)


@register_model("gpt", "GPT-2-style causal LM (transformers GPT2LMHeadModel) over the data's vocabulary; options: "
                "layers, hidden, heads, context, dropout, seed")
def gpt(in_shape, num_classes, layers: int = 2, hidden: int = 128, heads: int = 2, context: int = 128,
        dropout: float = 0.0, seed: int = 0):
    """A fresh GPT whose vocabulary is the data's ``num_classes`` (``in_shape`` is not used)."""
    return gpt_lm(num_classes, layers, hidden, heads, context, dropout, seed)


def kjv_austen(block_size: int = 128, vocab_size: int = 4096, train_size: int | None = None,
               val_size: int | None = 256, test_size: int | None = 512) -> dict:
    """The corpus as a recipe's data (``data: {dataset: "distill.zoo.gpt:kjv_austen"}``, with ``task: {name:
    tokens, pad_token_id: 1}``): ``{"train", "val", "test", "num_classes" (the vocabulary), "tokenizer"}``;
    ``*_size`` keep that many sequences spread over each split (None: all)."""
    corpus = lm_corpus(block_size, vocab_size)
    cut = {"train": train_size, "val": val_size, "test": test_size}
    splits = {name: getattr(corpus, name).subset(n) if n else getattr(corpus, name) for name, n in cut.items()}
    return {**splits, "num_classes": corpus.vocab_size, "tokenizer": corpus.tokenizer}
