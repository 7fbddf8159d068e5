"""BERT students for the language work, the DistilBERT layer copy, and masked-LM data.

Students are plain ``transformers`` BERT models (``BertForSequenceClassification`` / ``BertForMaskedLM``),
so they save with ``save_pretrained`` and load anywhere. Shapes default to the MiniLM teacher's
(vocabulary 30,522, hidden 384, 12 heads, feed-forward 4 × hidden).
"""
from __future__ import annotations

import re

import torch
from torch import nn
from torch.utils.data import Dataset

from distill.zoo.models import register_model

IGNORE_INDEX = -100
_LAYER = re.compile(r"(^|\.)(layer|layers|h)\.(\d+)\.")


def bert_config(like=None, layers: int = 3, hidden: int | None = None, heads: int | None = None,
                intermediate: int | None = None, num_labels: int = 2, **overrides):
    """A ``BertConfig`` shaped like ``like`` (a config or model; MiniLM's shape when None) with ``layers``
    layers and, when given, another ``hidden`` width (``heads`` default: hidden / 32, feed-forward 4 × hidden)."""
    from transformers import BertConfig

    base = getattr(like, "config", like)
    fields = base.to_dict() if base is not None else {"vocab_size": 30522, "hidden_size": 384,
                                                      "num_attention_heads": 12, "intermediate_size": 1536,
                                                      "max_position_embeddings": 512, "pad_token_id": 0}
    for key in ("architectures", "_name_or_path", "transformers_version", "id2label", "label2id", "model_type",
                "dtype", "torch_dtype"):
        fields.pop(key, None)
    fields.update(overrides)
    hidden = hidden or fields["hidden_size"]
    if hidden != fields["hidden_size"]:
        fields["num_attention_heads"] = heads or max(1, hidden // 32)
        fields["intermediate_size"] = intermediate or 4 * hidden
    else:
        fields["num_attention_heads"] = heads or fields["num_attention_heads"]
        fields["intermediate_size"] = intermediate or fields["intermediate_size"]
    if hidden % fields["num_attention_heads"]:
        raise ValueError(f"hidden {hidden} is not divisible by {fields['num_attention_heads']} heads")
    fields.update(hidden_size=hidden, num_hidden_layers=layers, num_labels=num_labels)
    return BertConfig(**fields)


def bert_student(layers: int = 3, hidden: int | None = None, head: str = "classification", like=None, seed: int = 0,
                 **config):
    """A randomly initialised BERT (seeded) with ``head``: ``"classification"``, ``"mlm"`` or ``"encoder"``."""
    import transformers

    heads = {"classification": transformers.BertForSequenceClassification, "mlm": transformers.BertForMaskedLM,
             "encoder": transformers.BertModel}
    if head not in heads:
        raise ValueError(f"unknown head {head!r}; choose from {', '.join(heads)}")
    cfg = bert_config(like, layers, hidden, **config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return heads[head](cfg)


def layer_index_map(student_layers: int, teacher_layers: int) -> list[int]:
    """DistilBERT's choice of teacher layers to copy: every other one, from the bottom (6 -> 3: 0, 2, 4);
    in general ``round(i * T / S)`` for student layer ``i`` (0-based)."""
    if not 0 < student_layers <= teacher_layers:
        raise ValueError(f"a student of {student_layers} layers cannot copy from a teacher of {teacher_layers}")
    return [int(i * teacher_layers / student_layers) for i in range(student_layers)]


def copy_teacher_layers(student: nn.Module, teacher: nn.Module, layers: list[int] | None = None) -> list[str]:
    """DistilBERT's initialisation (Sanh et al. 2019): the student takes the teacher's embeddings and one of
    every ``T/S`` layers (``layers``: the teacher layer for each student layer; default
    :func:`layer_index_map`). Both models' base models (``model.base_model``) are matched by parameter name
    with the layer index mapped; heads stay as they are. Widths must agree. Returns the copied names."""
    source = teacher.base_model.state_dict()
    target = student.base_model.state_dict()
    s_layers, t_layers = student.config.num_hidden_layers, teacher.config.num_hidden_layers
    layers = layer_index_map(s_layers, t_layers) if layers is None else list(layers)
    if len(layers) != s_layers or not all(0 <= i < t_layers for i in layers):
        raise ValueError(f"layers must give one teacher layer (0..{t_layers - 1}) for each of the student's "
                         f"{s_layers} layers, got {layers}")
    copied = {}
    for name, value in target.items():
        match = _LAYER.search(name)
        src = name if match is None else (name[:match.start(3)] + str(layers[int(match.group(3))])
                                          + name[match.end(3):])
        if src not in source:
            continue
        if source[src].shape != value.shape:
            raise ValueError(f"cannot copy {src} {tuple(source[src].shape)} into the student's {name} "
                             f"{tuple(value.shape)}: layer copy needs the teacher's width")
        copied[name] = source[src]
    student.base_model.load_state_dict(copied, strict=False)
    return sorted(copied)


BERT_INITS = ("random", "teacher-layers")


@register_model("bert", "BERT student with a classification head, MiniLM's vocabulary (layers, hidden, heads, "
                "intermediate, init: random | teacher-layers, teacher_layers)")
def bert(in_shape, num_classes, layers: int = 3, hidden: int = 384, heads: int | None = None,
         intermediate: int | None = None, init: str = "random", teacher_layers: list[int] | None = None):
    """A recipe's BERT student (``in_shape`` is not used): ``init: random`` (from the global seed, as every zoo
    model) or ``teacher-layers``, DistilBERT's initialisation from the pretrained all-MiniLM-L6-v2 weights
    (:func:`copy_teacher_layers`: its embeddings and the layers ``teacher_layers``, default one of every
    ``6 / layers``; needs ``hidden: 384``)."""
    from transformers import BertForSequenceClassification

    if init not in BERT_INITS:
        raise ValueError(f"init must be one of {', '.join(BERT_INITS)}, got {init!r}")
    if teacher_layers is not None and init != "teacher-layers":
        raise ValueError("teacher_layers needs init: teacher-layers")
    student = BertForSequenceClassification(bert_config(None, layers, hidden, heads, intermediate,
                                                        num_labels=num_classes))
    if init == "teacher-layers":
        from distill.zoo.text import load_minilm

        copy_teacher_layers(student, load_minilm("encoder"), teacher_layers)
    return student


class MaskedTexts(Dataset):
    """Masked-LM items from token sequences (BERT's recipe: ``prob`` of the real tokens are chosen; of those
    80% become ``[MASK]``, 10% a random token, 10% stay). The masks are drawn once per item from ``seed``
    (static masking), so every epoch and a resumed run see the same items.

    ``ds[i]`` is ``{"input_ids": LongTensor[L], "labels": LongTensor[L]}`` with ``-100`` where no token is
    predicted. Use with ``get_task("tokens", shift=False, tokenizer=tok)``.
    """

    def __init__(self, input_ids: list[torch.Tensor], tokenizer, prob: float = 0.15, seed: int = 0):
        special = torch.tensor(sorted(tokenizer.all_special_ids), dtype=torch.long)
        gen = torch.Generator().manual_seed(seed)
        self.items = []
        for ids in input_ids:
            ids = torch.as_tensor(ids, dtype=torch.long)
            real = ~torch.isin(ids, special)
            chosen = (torch.rand(len(ids), generator=gen) < prob) & real
            if real.any() and not chosen.any():  # every item predicts at least one token
                chosen[torch.nonzero(real)[torch.randint(int(real.sum()), (1,), generator=gen)]] = True
            labels = ids.masked_fill(~chosen, IGNORE_INDEX)
            roll = torch.rand(len(ids), generator=gen)
            masked = ids.clone()
            masked[chosen & (roll < 0.8)] = tokenizer.mask_token_id
            swap = chosen & (roll >= 0.8) & (roll < 0.9)
            masked[swap] = torch.randint(len(tokenizer), (int(swap.sum()),), generator=gen)
            self.items.append({"input_ids": masked, "labels": labels})

    def __len__(self) -> int:
        return len(self.items)

    @property
    def lengths(self) -> list[int]:
        return [len(item["input_ids"]) for item in self.items]

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


class SparseMaskedLM(nn.Module):
    """A masked LM that scores only the positions to predict: the vocabulary projection (30,522 x hidden for
    MiniLM's vocabulary) costs a 2-layer student about three times its encoder, and only ~15% of the
    positions are predicted, so this is ~3x faster to train and evaluate than scoring every position.

    ``forward(input_ids, attention_mask=None, token_type_ids=None, predict=None)`` returns ``(K, V)``
    logits for the ``K`` positions where the bool ``(B, L)`` ``predict`` is True (every position when None),
    in row-major order — the order of ``labels[predict]`` (:func:`masked_lm_collate` makes both). The
    wrapped model (a ``BertForMaskedLM``) is unchanged; taps on its layers work as on the model itself.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.config = model.config

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, predict=None):
        hidden = self.model.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                       token_type_ids=token_type_ids).last_hidden_state
        chosen = hidden.reshape(-1, hidden.shape[-1]) if predict is None else hidden[predict]
        return self.model.cls(chosen)


def pad_masked_items(items, pad_token_id: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:class:`MaskedTexts` items right-padded: ``(input_ids, attention_mask, labels)``, each ``(B, L)``,
    labels ``-100`` where no token is predicted."""
    length = max(len(it["input_ids"]) for it in items)
    ids = torch.full((len(items), length), pad_token_id, dtype=torch.long)
    labels = torch.full((len(items), length), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(items), length), dtype=torch.long)
    for row, it in enumerate(items):
        n = len(it["input_ids"])
        ids[row, :n], labels[row, :n], attention[row, :n] = it["input_ids"], it["labels"], 1
    return ids, attention, labels


def masked_lm_collate(pad_token_id: int = 0):
    """A ``collate_fn`` for :class:`MaskedTexts` items and :class:`SparseMaskedLM`: right-padded ``input_ids``
    and ``attention_mask``, the ``predict`` positions (labels not -100) and ``labels`` of those positions only,
    ``(K,)``. Use with the ``classification`` task: each predicted position is one sample of the loss."""
    def collate(items):
        ids, attention, labels = pad_masked_items(items, pad_token_id)
        predict = labels != IGNORE_INDEX
        return {"input_ids": ids, "attention_mask": attention, "predict": predict, "labels": labels[predict]}

    return collate
