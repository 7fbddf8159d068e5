"""Text augmentation for distillation transfer sets, driven by a masked language model.

Two ways to make new sentences that the teacher then labels (so the student sees more of the teacher's
function than the labelled set shows):

:func:`mlm_augment` — TinyBERT's word replacement (Jiao et al. 2020, *TinyBERT*, Algorithm 1, settings
``p_t = 0.4``, ``N = 20``, ``K = 15``). For every word ``w`` of a sentence, a candidate set ``C(w)``:

- ``w`` is one WordPiece: mask it (the rest of the sentence as it is) and take the masked LM's ``top_k``
  most probable whole words at that position;
- ``w`` is several pieces: TinyBERT takes its ``K`` nearest GloVe words. No GloVe is available offline, so
  here: the ``top_k`` whole-word vocabulary entries nearest (cosine) to the mean of ``w``'s pieces in the
  masked LM's *input* word-embedding space. Rougher than GloVe (sub-word embeddings are not trained to be
  word vectors); see the examples below.

Then each of the ``n_per_text`` new sentences replaces each word, independently with probability
``replace_prob``, by a uniformly chosen member of ``C(w)``.
Conventions and differences from TinyBERT's released ``data_augmentation.py``:

- words are the tokenizer's pre-tokens (whitespace and punctuation split). Only words with a letter are
  replaced; punctuation and numbers stay. The original code also skips a stop-word list; pass
  ``keep_words`` for that (default: none, as in Algorithm 1).
- candidates are whole words: no ``##`` pieces, no special or ``[unused]`` tokens, never the word itself
  (so a replaced word always changes and about ``replace_prob`` of the words change).
- the released code feeds the MLM the masked sentence followed by the original one as a second segment;
  we feed the masked sentence alone, as the paper's text describes.
- the output keeps the input's text: a replacement is spliced into the word's character span, its first
  letter capitalised when the original's was (the MiniLM vocabulary is lower case). The original code
  joins lower-cased basic tokens with spaces, includes the original sentence and drops duplicates; we
  return exactly ``n_per_text`` sentences per input (duplicates possible), text-major.

:func:`masked_refill` — the mask-and-refill augmentation of CILDA (Haidar et al. 2022, *CILDA: Contrastive
Data Augmentation using Intermediate Layer Knowledge Distillation*, COLING), which builds on MATE-KD
(Rashid et al. 2021): a fraction of the tokens of a training sentence is masked and a masked-LM generator
fills them in, giving a new sentence for the teacher to label. In those papers the generator is trained
adversarially (to maximise teacher-student divergence, through a Gumbel-softmax) and CILDA adds a contrastive
loss on intermediate layers; that training belongs to a method. What is implemented here is only the
augmentation step with a fixed pretrained MLM: each real token is masked with probability ``mask_prob``
(at least one per sentence), all masks of a sentence are predicted in one forward pass, and each is refilled
by *sampling* from the MLM's distribution at ``temperature``, optionally restricted to its ``top_k``. A
refilled piece keeps its position's kind (a word-start piece is refilled by a whole-word token, a ``##``
continuation by a continuation), never the original token, never a special token; so word boundaries,
spacing and punctuation outside the refilled pieces stay exactly as in the input. We could not read the
papers' full text offline, so the masking rate is not taken from them: ``mask_prob=0.15`` is BERT's.

Both are deterministic given ``seed`` (per text, independent of batching), run the model in ``eval()``
under ``torch.inference_mode()``, batch by length, and need a fast (``tokenizers``-backed) tokenizer for
word and character offsets. No network.

Measured (all-MiniLM-L6-v2 with its trained head, :func:`distill.mlm.cached_minilm_mlm`, top-1 16.5%; one
CPU thread beside another job), Rotten Tomatoes training snippets: ``mlm_augment`` (20 per snippet, p 0.4,
K 15) 19.4 s per 100 snippets, so ~3.2 min per 1,000 (the cost is one MLM pass per single-piece word,
whatever ``n_per_text``); ``masked_refill`` (1 per snippet, 15%) 13.6 s per 1,000. With this weak head the
replacements lean to frequent words, e.g.

- "Really dumb but occasionally really funny." -> "Don dumb never occasionally really funny." (TinyBERT)
- "The plot twists give I Am Trying to Break Your Heart an attraction it desperately needed." ->
  "Is will twists give I Am Trying to For Your Heart an attraction it desperately needed." (TinyBERT)
- "Clumsy, obvious, preposterous, ..." -> "Clumsy, obvious, prep, ..." (multi-piece word: embedding
  neighbour)
- "Every time you look, Sweet Home Alabama is taking another bummer of a wrong turn." ->
  "Every get you look, Sweet Home Hold is but another bummer of a bacon be." (refill)
- "Really dumb but occasionally really funny." -> "Really dumb but and really funny." (refill)
"""
from __future__ import annotations

import random
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from distill.errors import DistillError, excerpt
from distill.evaluation import eval_mode

class AugmentError(DistillError):
    """A bad argument to an augmentation (one line)."""


# ---------------------------------------------------------------------------------------------------------
# shared pieces


def _check_texts(texts) -> list[str]:
    if isinstance(texts, str) or not hasattr(texts, "__iter__"):
        raise AugmentError(f"texts must be a list of strings, got {excerpt(texts)}")
    texts = list(texts)
    bad = [t for t in texts if not isinstance(t, str)]
    if bad:
        raise AugmentError(f"texts must be strings, got {excerpt(bad[0])}")
    return texts


def _check_prob(name: str, value, low_open: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (0 < value <= 1 if low_open
                                                                              else 0 <= value <= 1)
    if not ok:
        raise AugmentError(f"{name} must be a probability in {'(0, 1]' if low_open else '[0, 1]'}, got "
                           f"{excerpt(value)}")
    return float(value)


def _check_count(name: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise AugmentError(f"{name} must be a positive int, got {excerpt(value)}")
    return value


def _encode(tokenizer, texts: list[str], max_length: int):
    if not getattr(tokenizer, "is_fast", False):
        raise AugmentError(f"{type(tokenizer).__name__} gives no word or character offsets; pass a fast "
                           "(tokenizers-backed) tokenizer, e.g. AutoTokenizer.from_pretrained(..., use_fast=True)")
    return tokenizer(texts, truncation=True, max_length=max_length, return_offsets_mapping=True)


def _vocabulary_kinds(tokenizer, model) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean masks over ``model``'s vocabulary: ``(whole words, continuation pieces)`` that may be
    produced: never special tokens or ``[unused..]``-style entries; whole words hold a letter."""
    vocab = tokenizer.get_vocab()
    size = max(len(tokenizer), max(vocab.values()) + 1)
    words, pieces = torch.zeros(size, dtype=torch.bool), torch.zeros(size, dtype=torch.bool)
    special = set(tokenizer.all_special_ids)
    for token, i in vocab.items():
        if i in special or (token.startswith("[") and token.endswith("]")):
            continue
        if token.startswith("##"):
            pieces[i] = len(token) > 2
        else:
            words[i] = any(c.isalpha() for c in token)
    vocab_size = model.get_input_embeddings().weight.shape[0]
    return words[:vocab_size], pieces[:vocab_size]


def _logits_at(model, rows: list[list[int]], positions: list[list[int]], pad_id: int, batch_size: int,
               reduce: Callable[[int, torch.Tensor], object]) -> list:
    """For each sequence ``rows[i]``, ``reduce(i, logits)`` of the MLM's vocabulary logits at ``positions[i]``
    (a ``(len, V)`` tensor in the order of ``positions[i]``), batched by length; the head runs only on those
    positions. Each batch's logits are reduced before the next is computed: kept whole, the logits of every
    word of ten thousand snippets fill tens of GB."""
    from distill.mlm import _logits_at as at

    out: list = [None] * len(rows)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        width = max(len(rows[i]) for i in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(chunk), width), dtype=torch.bool)
        keep = torch.zeros((len(chunk), width), dtype=torch.bool)
        for r, i in enumerate(chunk):
            ids[r, :len(rows[i])] = torch.tensor(rows[i])
            attention[r, :len(rows[i])] = True
            keep[r, positions[i]] = True
        logits = at(model, ids, attention, keep).float()
        counts = keep.sum(1).tolist()
        for r, part in zip(chunk, logits.split(counts)):
            # keep's rows list positions in increasing order; put them back in the caller's order
            sorted_pos = sorted(positions[r])
            out[r] = reduce(r, part[[sorted_pos.index(p) for p in positions[r]]])
    return out


def _cased_like(original: str, word: str) -> str:
    if original.isupper() and len(original) > 1:
        return word.upper()
    if original[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


def _splice(text: str, spans_and_words: list[tuple[int, int, str]]) -> str:
    out, last = [], 0
    for start, end, word in sorted(spans_and_words):
        out += [text[last:start], word]
        last = end
    return "".join(out + [text[last:]])


def _text_rng(seed: int, index: int) -> random.Random:
    return random.Random(f"{seed}:{index}")  # str seeds hash with sha512: stable across runs and processes


def _model_ready(model):
    if not hasattr(model, "base_model") or not hasattr(model, "get_input_embeddings"):
        raise AugmentError(f"mlm_model must be a Hugging Face masked LM (e.g. BertForMaskedLM), got "
                           f"{type(model).__name__}")
    return getattr(model.config, "pad_token_id", None) or 0


# ---------------------------------------------------------------------------------------------------------
# TinyBERT


def _words(encoding, i: int) -> list[list[int]]:
    """Token positions of each word of text ``i`` (special tokens have no word)."""
    groups: dict[int, list[int]] = {}
    for pos, w in enumerate(encoding.word_ids(i)):
        if w is not None:
            groups.setdefault(w, []).append(pos)
    return list(groups.values())


@torch.inference_mode()
def mlm_augment(texts, mlm_model, tokenizer, n_per_text: int = 20, replace_prob: float = 0.4, top_k: int = 15,
                seed: int = 0, keep_words=(), max_length: int = 128, batch_size: int = 64) -> list[str]:
    """TinyBERT's word-replacement augmentation (see the module docstring): ``n_per_text`` new sentences
    per text, text-major (``out[i * n_per_text + j]`` is text ``i``'s ``j``-th). Words past ``max_length``
    tokens, words without a letter and ``keep_words`` (compared lower case) stay as they are."""
    texts = _check_texts(texts)
    n_per_text, top_k = _check_count("n_per_text", n_per_text), _check_count("top_k", top_k)
    replace_prob = _check_prob("replace_prob", replace_prob)
    keep = {str(w).lower() for w in keep_words}
    pad_id = _model_ready(mlm_model)
    with eval_mode(mlm_model):
        enc = _encode(tokenizer, texts, max_length)
        whole, _ = _vocabulary_kinds(tokenizer, mlm_model)
        # every replaceable word: (text, char span, original string, its token positions)
        words, mlm_rows, mlm_pos, mlm_of, multi_of = [], [], [], {}, {}
        for i, text in enumerate(texts):
            ids, offsets = enc["input_ids"][i], enc["offset_mapping"][i]
            for positions in _words(enc, i):
                start, end = offsets[positions[0]][0], offsets[positions[-1]][1]
                original = text[start:end]
                if not any(c.isalpha() for c in original) or original.lower() in keep:
                    continue
                w = len(words)
                words.append((i, start, end, original, [ids[p] for p in positions]))
                if len(positions) == 1:
                    masked = list(ids)
                    masked[positions[0]] = tokenizer.mask_token_id
                    mlm_of[w] = len(mlm_rows)
                    mlm_rows.append(masked)
                    mlm_pos.append(positions)
                else:
                    multi_of[w] = len(multi_of)
        candidates: dict[int, list[int]] = {}
        if mlm_rows:  # single-piece words: the MLM's top-k at the masked position
            word_of = {row: w for w, row in mlm_of.items()}

            def top_words(row: int, logits: torch.Tensor) -> list[int]:
                scores = logits[0].masked_fill(~whole, float("-inf"))
                scores[words[word_of[row]][4][0]] = float("-inf")  # never the word itself
                best = scores.topk(min(top_k, len(scores)))
                return best.indices[best.values > float("-inf")].tolist()

            for row, found in enumerate(_logits_at(mlm_model, mlm_rows, mlm_pos, pad_id, batch_size, top_words)):
                candidates[word_of[row]] = found
        if multi_of:  # several pieces: nearest whole words in the input-embedding space
            table = F.normalize(mlm_model.get_input_embeddings().weight.float(), dim=-1)
            ws = list(multi_of)
            for first in range(0, len(ws), 1024):  # (blocks: a (words, V) similarity matrix of them all is GBs)
                block = ws[first:first + 1024]
                queries = F.normalize(torch.stack([table[words[w][4]].mean(0) for w in block]), dim=-1)
                sims = (queries @ table.T).masked_fill(~whole, float("-inf"))
                for w, row in zip(block, sims):
                    best = row.topk(min(top_k + 1, len(row)))
                    own = words[w][3].lower()
                    candidates[w] = [c for c in best.indices[best.values > float("-inf")].tolist()
                                     if tokenizer.convert_ids_to_tokens(c) != own][:top_k]
        names = {c: tokenizer.convert_ids_to_tokens(c) for cs in candidates.values() for c in cs}
        by_text: dict[int, list[int]] = {}
        for w, (i, *_rest) in enumerate(words):
            by_text.setdefault(i, []).append(w)
        out = []
        for i, text in enumerate(texts):
            rng = _text_rng(seed, i)
            for _ in range(n_per_text):
                changes = []
                for w in by_text.get(i, []):
                    if not candidates[w]:  # a tiny vocabulary can leave a word without candidates
                        continue
                    pick, p = rng.choice(candidates[w]), rng.random()  # Algorithm 1: choose, then test p
                    if p < replace_prob:
                        _, start, end, original, _ = words[w]
                        changes.append((start, end, _cased_like(original, names[pick])))
                out.append(_splice(text, changes))
        return out


# ---------------------------------------------------------------------------------------------------------
# CILDA / MATE-KD mask and refill


@torch.inference_mode()
def masked_refill(texts, mlm_model, tokenizer, n_per_text: int = 1, mask_prob: float = 0.15,
                  temperature: float = 1.0, top_k: int | None = None, seed: int = 0, max_length: int = 128,
                  batch_size: int = 64) -> list[str]:
    """Mask ``mask_prob`` of each text's tokens and refill them by sampling from ``mlm_model`` (see the
    module docstring): ``n_per_text`` new sentences per text, text-major. Tokens past ``max_length`` stay."""
    texts = _check_texts(texts)
    n_per_text = _check_count("n_per_text", n_per_text)
    mask_prob = _check_prob("mask_prob", mask_prob, low_open=True)
    if top_k is not None:
        top_k = _check_count("top_k", top_k)
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not temperature > 0:
        raise AugmentError(f"temperature must be a positive number, got {excerpt(temperature)}")
    pad_id = _model_ready(mlm_model)
    with eval_mode(mlm_model):
        enc = _encode(tokenizer, texts, max_length)
        whole, pieces = _vocabulary_kinds(tokenizer, mlm_model)
        rows, chosen, owner = [], [], []
        for i in range(len(texts)):
            ids = enc["input_ids"][i]
            real = [p for p, w in enumerate(enc.word_ids(i)) if w is not None]
            if not real:
                continue
            rng = _text_rng(seed, i)
            for j in range(n_per_text):
                picked = [p for p in real if rng.random() < mask_prob] or [real[rng.randrange(len(real))]]
                masked = list(ids)
                for p in picked:
                    masked[p] = tokenizer.mask_token_id
                rows.append(masked)
                chosen.append(picked)
                owner.append((i, j))

        def refill(k: int, scores: torch.Tensor) -> str:  # the k-th masked copy, refilled by sampling
            (i, j), picked = owner[k], chosen[k]
            gen = torch.Generator().manual_seed(random.Random(f"{seed}:{i}:{j}:refill").getrandbits(63))
            ids, offsets, text = enc["input_ids"][i], enc["offset_mapping"][i], texts[i]
            changes = []
            for p, row in zip(picked, scores):
                start, end = offsets[p]
                continuation = tokenizer.convert_ids_to_tokens(ids[p]).startswith("##")
                allowed = (pieces if continuation else whole).clone()
                allowed[ids[p]] = False  # never the original token
                row = (row / temperature).masked_fill(~allowed, float("-inf"))
                if top_k is not None:
                    kth = row.topk(min(top_k, int(allowed.sum()))).values[-1]
                    row = row.masked_fill(row < kth, float("-inf"))
                new = int(torch.multinomial(row.softmax(-1), 1, generator=gen))
                word = tokenizer.convert_ids_to_tokens(new).removeprefix("##")
                if not continuation:
                    word = _cased_like(text[start:end], word)
                    if not any(c.isalnum() for c in text[start:end]):  # a word refilling glued punctuation
                        word = " " * (start > 0 and text[start - 1].isalnum()) + word  # "rug." -> "rug old"
                        word += " " * (end < len(text) and text[end].isalnum())
                changes.append((start, end, word))
            return _splice(text, changes)

        results = {(i, j): texts[i] for i in range(len(texts)) for j in range(n_per_text)}
        if rows:
            results |= dict(zip(owner, _logits_at(mlm_model, rows, chosen, pad_id, batch_size, refill)))
        return [results[(i, j)] for i in range(len(texts)) for j in range(n_per_text)]


# what a recipe's ``text_augment.kind`` names, and the keyword of each function's probability
TEXT_AUGMENTATIONS = {"word-replace": (mlm_augment, "replace_prob"), "refill": (masked_refill, "mask_prob")}


def augmented_texts(texts, kind: str, per_text: int, prob: float | None = None, seed: int = 0, mlm_model=None,
                    tokenizer=None, say=print) -> list[str]:
    """``per_text`` rewrites of each of ``texts`` by ``kind`` (``"word-replace"``: :func:`mlm_augment`,
    ``"refill"``: :func:`masked_refill`; ``prob`` their ``replace_prob`` / ``mask_prob``, None for the default),
    text-major. The masked LM is the MiniLM teacher's trained head (:func:`distill.mlm.cached_minilm_mlm`) with
    its tokenizer unless ``mlm_model`` and ``tokenizer`` are given. Made once and kept in the cache folder
    (``augmented/``), named by the texts, the settings and the masked LM's weights."""
    import json

    from distill.cache import weights_digest
    from distill.fileio import atomic_write_text, cache_dir, settings_key

    if kind not in TEXT_AUGMENTATIONS:
        raise AugmentError(f"unknown text augmentation {excerpt(kind, 40)}; choose from "
                           f"{', '.join(TEXT_AUGMENTATIONS)}")
    texts = _check_texts(texts)
    if mlm_model is None:
        from distill.mlm import cached_minilm_mlm
        from distill.zoo.text import minilm_tokenizer

        mlm_model, tokenizer = cached_minilm_mlm(), minilm_tokenizer()
    fn, prob_name = TEXT_AUGMENTATIONS[kind]
    options = {"n_per_text": per_text, "seed": seed, **({prob_name: prob} if prob is not None else {})}
    key = settings_key({"kind": kind, **options, "texts": settings_key(texts, 32),
                        "mlm": weights_digest(mlm_model)}, 16)
    path = cache_dir() / "augmented" / f"{kind}-{key}.json"
    if path.is_file():
        return json.loads(path.read_text())
    start = time.perf_counter()
    made = fn(texts, mlm_model, tokenizer, **options)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(made))
    say(f"{kind}: {len(made):,} new sentences from {len(texts):,} in {time.perf_counter() - start:.0f} s "
        f"(kept in {path.parent})")
    return made
