"""Sentence vectors from a transformer encoder, as sentence-transformers makes them for all-MiniLM-L6-v2.

The model folder of all-MiniLM-L6-v2 (``modules.json``) chains three sentence-transformers modules:
``Transformer`` (the BERT encoder, inputs truncated to ``max_seq_length`` = 256 tokens from
``sentence_bert_config.json``), ``Pooling`` (``1_Pooling/config.json``: ``pooling_mode_mean_tokens``, the mean
of the last hidden state over the attention mask) and ``Normalize`` (L2 norm 1). :class:`SentenceEncoder`
does the same around any ``transformers`` encoder, and also encodes parallel pairs for multilingual
distillation (the ``parallel_embedding`` task)::

    teacher = SentenceEncoder(load_minilm("encoder"))          # the task gives it the English side only
    student = SentenceEncoder(copy.deepcopy(teacher.model))    # (N, 2, D): English, Spanish
    vectors = minilm_sentence_embeddings(teacher.model, texts, minilm_tokenizer())
"""
from __future__ import annotations

import json
from collections import Counter

import torch
import torch.nn.functional as F
from torch import nn

from distill.zoo.models import register_model

MINILM_MAX_LENGTH = 256  # sentence_bert_config.json's max_seq_length (minilm_max_length reads it)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """sentence-transformers' mean pooling: ``(B, L, D)`` -> ``(B, D)``, the mean over tokens with mask 1."""
    if attention_mask is None:
        return hidden.mean(1)
    weights = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


class SentenceEncoder(nn.Module):
    """A ``transformers`` encoder (``BertModel`` ...) giving mean-pooled, L2-normalised sentence vectors.

    ``forward(input_ids, attention_mask)`` gives ``(N, D)``. Given a translation of each sentence too
    (``target_input_ids``, ``target_attention_mask``), both sides run in one forward pass (padded to the
    same length) and the result is ``(N, 2, D)``: source, translation. With ``source_only=True`` (a
    monolingual teacher) the translation is ignored and the result is ``(N, D)`` of the source side.
    ``normalize=False`` leaves the pooled vectors as they are; a ``projection`` (``nn.Linear``, e.g.
    :func:`pca_projection`) maps the pooled vectors to a smaller dimension before the normalisation.
    :func:`save_sentence_encoder` writes it as a folder that ``transformers`` and ``sentence-transformers`` load.
    """

    def __init__(self, model: nn.Module, normalize: bool = True, source_only: bool = False,
                 projection: nn.Linear | None = None):
        super().__init__()
        self.model = model
        self.config = model.config
        self.normalize = normalize
        self.source_only = source_only
        self.projection = projection  # a smaller output: sentence-transformers' Dense after the pooling

    def encode(self, input_ids, attention_mask=None):
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        vectors = mean_pool(hidden, attention_mask)
        if self.projection is not None:
            vectors = self.projection(vectors)
        return F.normalize(vectors, dim=-1) if self.normalize else vectors

    @property
    def dimension(self) -> int:
        return self.projection.out_features if self.projection is not None else self.config.hidden_size

    def forward(self, input_ids, attention_mask=None, target_input_ids=None, target_attention_mask=None):
        if target_input_ids is None or self.source_only:
            return self.encode(input_ids, attention_mask)
        n, length = len(input_ids), max(input_ids.shape[1], target_input_ids.shape[1])
        pad = self.config.pad_token_id or 0
        masks = [torch.ones_like(ids) if m is None else m
                 for ids, m in ((input_ids, attention_mask), (target_input_ids, target_attention_mask))]
        ids = torch.cat([F.pad(x, (0, length - x.shape[1]), value=pad) for x in (input_ids, target_input_ids)])
        mask = torch.cat([F.pad(m, (0, length - m.shape[1]), value=0) for m in masks])
        vectors = self.encode(ids, mask)
        return torch.stack([vectors[:n], vectors[n:]], dim=1)


@register_model("minilm_sentence", "all-MiniLM-L6-v2 as a sentence encoder (mean pooling, L2 norm), pretrained; "
                "options: layers (a copy of some of its 6 layers), teacher_layers (which)")
def minilm_sentence(in_shape=None, num_classes=None, layers: int = 6,
                    teacher_layers: list[int] | None = None) -> SentenceEncoder:
    """The pretrained MiniLM as a :class:`SentenceEncoder` (``in_shape`` and ``num_classes`` are not used);
    ``layers`` below 6: a student made of its embeddings and the layers ``teacher_layers`` (default DistilBERT's
    choice, :func:`distill.zoo.bert.layer_index_map`), as :func:`distill.zoo.bert.copy_teacher_layers` copies them."""
    from distill.zoo.bert import bert_student, copy_teacher_layers
    from distill.zoo.text import load_minilm

    model = load_minilm("encoder")
    if layers != model.config.num_hidden_layers or teacher_layers is not None:
        student = bert_student(layers, model.config.hidden_size, head="encoder", like=model.config)
        copy_teacher_layers(student, model, teacher_layers)
        model = student
    return SentenceEncoder(model)


def minilm_max_length() -> int:
    """``max_seq_length`` of all-MiniLM-L6-v2's ``sentence_bert_config.json`` (256)."""
    from distill.zoo.text import minilm_path

    path = minilm_path() / "sentence_bert_config.json"
    return int(json.loads(path.read_text())["max_seq_length"]) if path.exists() else MINILM_MAX_LENGTH


@torch.inference_mode()
def sentence_embeddings(model: nn.Module, texts: list[str], tokenizer, batch_size: int = 64,
                        max_length: int = MINILM_MAX_LENGTH) -> torch.Tensor:
    """``(N, D)`` float vectors of ``texts``: ``model`` (a :class:`SentenceEncoder`, or a bare encoder that is
    wrapped in one) on batches of ``batch_size`` texts truncated to ``max_length`` tokens."""
    encoder = model if isinstance(model, SentenceEncoder) else SentenceEncoder(model)
    mode = encoder.training
    encoder.eval()
    device = next(encoder.parameters()).device
    out = []
    try:
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True,
                              max_length=max_length, return_tensors="pt")
            out.append(encoder.encode(batch["input_ids"].to(device), batch["attention_mask"].to(device)).float())
    finally:
        encoder.train(mode)
    return torch.cat(out) if out else torch.empty(0, encoder.dimension)


def minilm_sentence_embeddings(model: nn.Module, texts: list[str], tokenizer, batch_size: int = 64) -> torch.Tensor:
    """Sentence vectors exactly as ``SentenceTransformer(minilm_path()).encode(texts)`` gives them (to float
    rounding): MiniLM's ``max_seq_length``, mean pooling over the attention mask, L2 normalisation."""
    return sentence_embeddings(model, texts, tokenizer, batch_size, minilm_max_length())


def wordpiece_coverage(texts: list[str], tokenizer) -> dict[str, float]:
    """How far a (fast) WordPiece tokenizer's vocabulary carries a language. Over the words of ``texts``
    (split by the tokenizer's own pre-tokeniser; words with at least one letter): ``pieces_per_word``, the %
    of words split into several pieces (``split_words``) or mapped whole to ``[UNK]`` (``unknown_words``),
    the % of ``[UNK]`` among the pieces (``unknown_pieces``) and the % of words its normaliser changes beyond
    lower case (``changed_words``: MiniLM's strips accents, so ``año`` becomes ``ano``)."""
    backend = tokenizer.backend_tokenizer
    counts: Counter = Counter()
    for text in texts:
        counts.update(w for w, _ in backend.pre_tokenizer.pre_tokenize_str(text) if any(c.isalpha() for c in w))
    unk = tokenizer.unk_token
    words = pieces = split = unknown = unknown_pieces = changed = 0
    for word, n in counts.items():
        normal = backend.normalizer.normalize_str(word) if backend.normalizer else word
        tokens = [t.value for t in backend.model.tokenize(normal)] if normal else [unk]
        words += n
        pieces += n * len(tokens)
        split += n * (len(tokens) > 1)
        unknown += n * (tokens == [unk])
        unknown_pieces += n * tokens.count(unk)
        changed += n * (normal != word.lower())
    words_ = max(words, 1)
    return {"words": words, "unique_words": len(counts), "pieces_per_word": pieces / words_,
            "split_words": 100.0 * split / words_, "unknown_words": 100.0 * unknown / words_,
            "unknown_pieces": 100.0 * unknown_pieces / max(pieces, 1), "changed_words": 100.0 * changed / words_}


def pca_projection(vectors: torch.Tensor, dim: int) -> nn.Linear:
    """A ``Linear(D, dim)`` that projects onto the top ``dim`` principal axes of ``vectors`` ``(N, D)`` (the
    teacher's sentence vectors): ``W (x - mean)``, so its output keeps as much of their variance as ``dim``
    axes can. Used as :class:`SentenceEncoder`'s ``projection`` and then trained with the rest."""
    vectors = torch.as_tensor(vectors).float()
    if vectors.dim() != 2 or not 0 < dim <= min(vectors.shape):
        raise ValueError(f"need (N, D) vectors with N and D >= dim={dim}, got {tuple(vectors.shape)}")
    mean = vectors.mean(0)
    _, _, v = torch.linalg.svd(vectors - mean, full_matrices=False)
    layer = nn.Linear(vectors.shape[1], dim)
    with torch.no_grad():
        layer.weight.copy_(v[:dim])
        layer.bias.copy_(-(v[:dim] @ mean))
    return layer


_ST = "sentence_transformers.models."


def save_sentence_encoder(encoder: SentenceEncoder, tokenizer, folder, max_seq_length: int = MINILM_MAX_LENGTH):
    """Write ``encoder`` as a sentence-transformers model folder, the layout all-MiniLM-L6-v2 ships in: the
    ``transformers`` encoder and ``tokenizer`` at the top (``AutoModel.from_pretrained(folder)`` loads it),
    ``modules.json`` chaining Transformer -> mean Pooling -> Dense (the ``projection``, if any) -> Normalize
    (if ``encoder.normalize``). ``SentenceTransformer(folder).encode(texts)`` then gives the vectors
    :func:`sentence_embeddings` gives inside distill."""
    from pathlib import Path

    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    encoder.model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq_length,
                                                                  "do_lower_case": False}, indent=2))
    modules = [("Transformer", "")]
    pooling = folder / "1_Pooling"
    pooling.mkdir(exist_ok=True)
    (pooling / "config.json").write_text(json.dumps({
        "word_embedding_dimension": encoder.config.hidden_size, "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False}, indent=2))
    modules.append(("Pooling", "1_Pooling"))
    if encoder.projection is not None:
        dense = folder / f"{len(modules)}_Dense"
        dense.mkdir(exist_ok=True)
        layer = encoder.projection
        (dense / "config.json").write_text(json.dumps({
            "in_features": layer.in_features, "out_features": layer.out_features, "bias": layer.bias is not None,
            "activation_function": "torch.nn.modules.linear.Identity"}, indent=2))
        save_file({f"linear.{k}": v.detach().cpu().contiguous() for k, v in layer.state_dict().items()},
                  dense / "model.safetensors")
        modules.append(("Dense", dense.name))
    if encoder.normalize:
        (folder / f"{len(modules)}_Normalize").mkdir(exist_ok=True)
        modules.append(("Normalize", f"{len(modules)}_Normalize"))
    (folder / "modules.json").write_text(json.dumps(
        [{"idx": i, "name": str(i), "path": path, "type": _ST + kind} for i, (kind, path) in enumerate(modules)],
        indent=2))
    return folder


def load_sentence_encoder(folder) -> tuple[SentenceEncoder, object]:
    """``(encoder, tokenizer)`` from a folder :func:`save_sentence_encoder` wrote (or all-MiniLM-L6-v2's own):
    mean pooling, its Dense layer if it has one, normalised if it has a Normalize module."""
    from pathlib import Path

    from safetensors.torch import load_file
    from transformers import AutoModel, AutoTokenizer

    from distill.zoo.text import quiet_transformers

    folder = Path(folder)
    modules = json.loads((folder / "modules.json").read_text())
    kinds = {m["type"].rsplit(".", 1)[-1]: m["path"] for m in modules}
    unknown = set(kinds) - {"Transformer", "Pooling", "Dense", "Normalize"}
    pooling = json.loads((folder / kinds.get("Pooling", "1_Pooling") / "config.json").read_text())
    if unknown or not pooling.get("pooling_mode_mean_tokens"):
        raise ValueError(f"{folder}: only Transformer -> mean Pooling -> [Dense] -> [Normalize] models are "
                         f"supported, got modules {list(kinds)}")
    projection = None
    if "Dense" in kinds:
        dense = folder / kinds["Dense"]
        config = json.loads((dense / "config.json").read_text())
        if not config.get("activation_function", "").endswith("Identity"):
            raise ValueError(f"{dense}: only an Identity activation is supported, got {config.get('activation_function')}")
        projection = nn.Linear(config["in_features"], config["out_features"], bias=config.get("bias", True))
        projection.load_state_dict({k.removeprefix("linear."): v for k, v in load_file(dense / "model.safetensors").items()})
    with quiet_transformers():
        model = AutoModel.from_pretrained(folder)
    return SentenceEncoder(model, normalize="Normalize" in kinds, projection=projection), AutoTokenizer.from_pretrained(folder)
