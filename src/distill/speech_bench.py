"""``distill bench speech``: CTC speech recognition, a bidirectional GRU teacher distilled into streaming students.

Data (:mod:`distill.zoo.speech`): espeak-ng speech of the closed vocabulary (words of the short Asterisk prompts
and digits) for training and validation, held-out espeak voices for the synthetic test, and the real Asterisk
recordings whose words are in the vocabulary for the test that counts.

| arm | student | loss |
|---|---|---|
| ``ctc`` | unidirectional GRU | CTC on the transcripts (the baseline) |
| ``frame-kd`` | unidirectional GRU | CTC + frame-level KL to the teacher, frame ``t`` to frame ``t`` |
| ``frame-kd-shift`` | unidirectional GRU | the same, the student's frame ``t + SHIFT`` to the teacher's ``t`` |
| ``seq-kd`` | unidirectional GRU | CTC + CTC on the teacher's 4-best hypotheses, weighted |
| ``bi-ctc`` | small bidirectional GRU (not streaming) | CTC on the transcripts |
| ``ctc-128``, ``frame-kd-shift-128`` | a wider unidirectional GRU, 12 epochs | as ``ctc``, ``frame-kd-shift`` |
| ``ctc-128-ahead`` | the same with a row convolution over 4 future frames (80 ms) | as ``ctc`` |

The teacher is trained once and cached; its outputs on the training set are cached per run
(``cache_teacher``). Each (arm, seed) result is a file under the output folder, so an interrupted benchmark
resumes. ``delay`` is the student's spike delay behind the teacher on the real recordings (the frame shift that
best lines up their non-blank posteriors; 1 frame = 20 ms). The real-time factor is the model's compute
time over the audio's duration on one CPU thread, one utterance at a time (the features are not included:
the same for every model).
"""
from __future__ import annotations

import json
import shutil
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from distill.cache import weights_digest
from distill.fileio import (bench_row, bench_rows, cache_dir, cached_model, chosen_arms, row_path, row_run_dir,
                            settings_key, write_bench_results)

# espeak-ng and flite voices, resampled to 8 kHz like the recordings (distill.zoo.speech.load_speech)
DATA = {"train_size": 12000, "val_size": 600, "test_size": 800, "flite": True, "telephone": True}
# the Asterisk recordings outside the test set (distill.zoo.speech.asterisk_adaptation) join the training split
# this many times over (0: synthetic speech only); their validation fifth is then the validation split
ADAPT_REPEAT = 8
# ... and the same recordings cut into single words (distill.zoo.speech.word_pieces, at the alignment of the first
# teacher trained without them) join it this many times over, the held-out ones the validation split: the test is
# isolated words, and her sentences alone did not teach them (a 2x96 student on the held-out words, seed 0: CER
# 72.3 without the pieces, 52.6 with them x 4; scripts/speech_student_scan.py)
ADAPT_WORDS = 4
# the teacher of the words is the first teacher fine-tuned on the split with them (not trained anew: 3 epochs
# instead of 10 more)
WORDS_TUNE = {"epochs": 3, "lr": 5e-4, "warmup_epochs": 0.2}
TEACHER = {"model": {"hidden": 160, "layers": 3, "bidirectional": True, "spec_augment": True},
           "train": {"lr": 2e-3, "epochs": 10, "batch_size": 32, "schedule": "cosine", "warmup_epochs": 0.5,
                     "optimizer": "adamw", "weight_decay": 0.01, "clip_grad_norm": 5.0, "group_by_length": True}}
STUDENT = {"model": {"hidden": 96, "layers": 2, "bidirectional": False},
           "train": {"lr": 2e-3, "epochs": 6, "batch_size": 32, "schedule": "cosine", "warmup_epochs": 0.5,
                     "optimizer": "adamw", "weight_decay": 0.01, "clip_grad_norm": 5.0, "group_by_length": True}}
LEXICON_BEAM = 8
# the lexicon beam search's word score (log-probability added per word; negative: fewer words), chosen per model on
# the validation split: the real test is mostly single words, and the models split words apart (WER above 100 %)
WORD_SCORES = (-8.0, -4.0, -2.0, -1.0, 0.0, 1.0)
SHIFT = 2  # frames of 20 ms the streaming student lags the bidirectional teacher's spikes
# arm -> (model overrides, method, method options)
ARMS = {
    "ctc": ({}, "ctc", {}),
    "frame-kd": ({}, "ctc_frame_kd", {"alpha": 0.5, "shift": 0}),
    "frame-kd-shift": ({}, "ctc_frame_kd", {"alpha": 0.5, "shift": SHIFT}),
    "seq-kd": ({}, "ctc_sequence_kd", {"alpha": 0.5, "n_best": 4, "beam": 4}),
    "bi-ctc": ({"hidden": 64, "bidirectional": True}, "ctc", {}),
    "ctc-128": ({"hidden": 128}, "ctc", {}),
    "frame-kd-shift-128": ({"hidden": 128}, "ctc_frame_kd", {"alpha": 0.5, "shift": SHIFT}),
    "ctc-128-ahead": ({"hidden": 128, "lookahead": 4}, "ctc", {}),
}
# arms whose training differs from STUDENT["train"]: the 2x128 students train 12 epochs (validation CER 29.2
# against 37.5 after 6, seed 0: scripts/speech_student_scan.py 128 2 ctc 12)
ARM_TRAIN = dict.fromkeys(("ctc-128", "frame-kd-shift-128", "ctc-128-ahead"), {"epochs": 12})
QUICK = {"data": {"train_size": 240, "val_size": 60, "test_size": 60}, "bases": ["en-us", "en"],
         "teacher": {"hidden": 64, "layers": 2}, "teacher_epochs": 3, "student_epochs": 1}


def _train(model, teacher, terms, train, val, settings: dict, seed: int, run_dir=None):
    """Train ``model`` with CTC ``terms``; with a ``run_dir``, checkpoints every 100 steps there and resumes from
    them (a long run killed half-way continues where it stopped)."""
    from distill.engine import TrainConfig
    from distill.stages import as_stages, fit_stages
    from distill.tasks import get_task

    cfg = TrainConfig(**settings, seed=seed, eval_batch_size=128, progress=False, cache_teacher=teacher is not None,
                      checkpoint_every=100)
    return fit_stages(model, teacher, as_stages(terms), train, val, config=cfg, task=get_task("ctc"),
                      say=lambda *_: None, run_dir=run_dir, resume=True)["history"]


def _teacher_settings(quick: bool) -> dict:
    model = {**TEACHER["model"], **(QUICK["teacher"] if quick else {})}
    train = {**TEACHER["train"], **({"epochs": QUICK["teacher_epochs"]} if quick else {})}
    return {"model": model, "train": train}


def cached_teacher(train, val, data_key: str, quick: bool, say=print, start=None):
    """The bidirectional GRU teacher trained with CTC on ``train``, kept as safetensors; ``start``: a teacher to
    fine-tune instead (with :data:`WORDS_TUNE`), keyed by its weights."""
    from distill.methods import METHODS
    from distill.zoo.speech import RecurrentCTC

    settings = {**_teacher_settings(quick), "data": data_key, "version": 1}
    if start is not None:
        tune = {**WORDS_TUNE, **({"epochs": 1} if quick else {})}
        settings |= {"train": {**settings["train"], **tune}, "from": weights_digest(start)}
    folder = cache_dir() / "teachers" / f"speech-bigru-{settings_key(settings)}"
    torch.manual_seed(0)
    model = RecurrentCTC(**settings["model"])
    if start is not None:
        model.load_state_dict(start.state_dict())
    run_dir = folder.with_name(folder.name + ".run")  # its checkpoints while it trains
    found = cached_model(folder, model, lambda: {
        "settings": settings,
        "history": _train(model, None, METHODS["ctc"](), train, val, settings["train"], seed=0, run_dir=run_dir)},
        f"training the bidirectional GRU teacher on {len(train):,} utterances", say)
    shutil.rmtree(run_dir, ignore_errors=True)
    return found


def scores(model, data, val) -> dict:
    """CER and WER (%) on the held-out voices and on the real recordings, decoded greedily, (``*_lexicon``) by a
    beam search that spells vocabulary words only (the closed vocabulary, :data:`LEXICON_BEAM` prefixes) and
    (``*_lexicon_scored``) by that search with the ``word_score`` of :data:`WORD_SCORES` whose WER on ``val``
    is lowest (``val_wer_by_word_score``; ties go to the score nearest 0)."""
    from distill.evaluation import evaluate
    from distill.tasks import get_task

    def lexicon(word_score):
        return get_task("ctc", decode="beam", beam=LEXICON_BEAM, words=data.vocab, word_score=word_score)

    by_score = {b: evaluate(model, val, 128, task=lexicon(b))["wer"] for b in WORD_SCORES}
    chosen = min(WORD_SCORES, key=lambda b: (by_score[b], abs(b)))
    out = {"word_score": chosen, "val_wer_by_word_score": {str(b): wer for b, wer in by_score.items()}}
    tasks = {"": "ctc", "_lexicon": lexicon(0.0), **({"_lexicon_scored": lexicon(chosen)} if chosen else {})}
    for name, split in (("voices", data.test_voices), ("real", data.test_real)):
        found = {suffix: evaluate(model, split, 128, task=task) for suffix, task in tasks.items()}
        found.setdefault("_lexicon_scored", found["_lexicon"])  # a chosen score of 0 is the plain lexicon search
        for suffix, metrics in found.items():
            out |= {f"{name}_cer{suffix}": metrics["cer"], f"{name}_wer{suffix}": metrics["wer"]}
    return out


def logits_on(model, split, limit: int = 200) -> list[torch.Tensor]:
    """The model's frame logits on the first ``limit`` utterances of ``split``, one ``(T, V)`` tensor each."""
    model.eval()
    with torch.inference_mode():
        return [model(split[i]["features"][None])[0] for i in range(min(limit, len(split)))]


def spike_delay(student: list[torch.Tensor], teacher: list[torch.Tensor], max_shift: int = 8) -> int:
    """The frame shift ``d`` (from ``-max_shift`` to ``max_shift``) at which the student's non-blank posteriors at
    ``t + d`` best match the teacher's at ``t``, summed over utterances: how far the student's spikes lag."""
    best, best_score = 0, -1.0
    for d in range(-max_shift, max_shift + 1):
        total = 0.0
        for s, t in zip(student, teacher):
            ps, pt = s.softmax(-1)[:, 1:], t.softmax(-1)[:, 1:]
            n = len(pt)
            lo, hi = max(0, -d), min(n, n - d)
            if hi > lo:
                total += float((pt[lo:hi] * ps[lo + d: hi + d]).sum())
        if total > best_score:
            best, best_score = d, total
    return best


def real_time_factors(models: dict, split, limit: int = 100, rounds: int = 5) -> dict:
    """Model seconds per second of audio (``"rtf"``) of ``models`` (name -> model; the first is the reference)
    on one thread, one utterance at a time over the first ``limit`` utterances of ``split``, timed in
    interleaved rounds by :func:`distill.evaluation.interleaved_latency` (with its ``speedup`` and range)."""
    from distill.evaluation import interleaved_latency

    utterances = [split[i]["features"][None] for i in range(min(limit, len(split)))]
    audio = sum(split.seconds[: len(utterances)])

    def timer(model, inputs):
        with torch.inference_mode():
            for x in inputs[:3]:  # warm-up
                model(x)
            start = time.perf_counter()
            for x in inputs:
                model(x)
            return time.perf_counter() - start

    return interleaved_latency({name: (model.eval(), {"rtf": (audio, utterances)}) for name, model in models.items()},
                               rounds=rounds, timer=timer)


def arm_key(arm: str, quick: bool, teacher_key: str) -> str:
    train = {"train": ARM_TRAIN[arm]} if arm in ARM_TRAIN else {}  # (absent for the others: their keys stay)
    return settings_key({"arm": ARMS[arm], "student": STUDENT, "quick": quick, "teacher": teacher_key, **train})


def build_student(arm: str, seed: int):
    from distill.zoo.speech import RecurrentCTC

    torch.manual_seed(seed)
    return RecurrentCTC(**{**STUDENT["model"], **ARMS[arm][0]})


def run_arm(arm: str, seed: int, data, train, val, teacher, quick: bool, teacher_logits, run_dir=None) -> dict:
    """Train one student (in ``run_dir``, resuming what a killed process left there) and score it.
    ``train_seconds`` is this process's time (:func:`distill.fileio.bench_row` marks a resumed row)."""
    from distill.evaluation import count_parameters
    from distill.methods import METHODS

    _, method, options = ARMS[arm]
    student = build_student(arm, seed)
    settings = {**STUDENT["train"], **ARM_TRAIN.get(arm, {}), **({"epochs": QUICK["student_epochs"]} if quick else {})}
    start = time.perf_counter()
    history = _train(student, teacher if method != "ctc" else None, METHODS[method](**options), train, val,
                     settings, seed, run_dir)
    seconds = time.perf_counter() - start
    return {"arm": arm, "seed": seed, **scores(student, data, val), "val_cer": history[-1]["val/cer"],
            "params": count_parameters(student), "train_seconds": round(seconds, 1),
            "delay": spike_delay(logits_on(student, data.test_real), teacher_logits)}


def prepare(quick: bool = False, say=print) -> SimpleNamespace:
    """What every arm shares: ``data`` (synthetic speech and the real recordings), the ``train`` / ``val`` splits
    (with the adaptation recordings), the ``teacher`` (trained once, cached; ``info`` its settings and history),
    the held-out recordings cut into words ``val_words`` (also in ``val``), and the ``data_settings``,
    ``adapt_repeat`` and ``adapt_words`` they were made with."""
    from distill.zoo.speech import BASES, SpeechSet, adaptation_prompts, asterisk_adaptation, load_speech, word_pieces

    data_settings = {**DATA, **(QUICK["data"] if quick else {})}
    bases = QUICK["bases"] if quick else BASES
    data = load_speech(**data_settings, bases=bases, say=say)
    repeat = min(ADAPT_REPEAT, 1) if quick else ADAPT_REPEAT
    adapt = {"adapt_repeat": repeat} if repeat else {}  # (absent when off: the older keys stay)
    data_named = {**data_settings, "bases": list(bases), **adapt}
    data_key = settings_key(data_named)
    say(f"real recordings: {len(data.test_real)} of the {data.real_total} Asterisk prompts have all their words in "
        f"the {len(data.vocab)}-word vocabulary")
    train, val = data.train, data.val
    if repeat:
        adapt_train, val = asterisk_adaptation(data.vocab)
        train = SpeechSet.concat([data.train] + [adapt_train] * repeat, "synthetic+asterisk")
        say(f"adaptation: {len(adapt_train)} other Asterisk recordings ({sum(adapt_train.seconds) / 60:.0f} min) "
            f"x {repeat} in training, {len(val)} as the validation split")
    teacher, info = cached_teacher(train, val, data_key, quick, say)
    words = min(ADAPT_WORDS, 1) if quick else ADAPT_WORDS
    val_words = None
    if repeat and words:  # that teacher aligns her sentences; the pieces join, and it is fine-tuned with them
        train_prompts, val_prompts = adaptation_prompts(data.vocab)
        train_words, val_words = word_pieces(train_prompts, teacher), word_pieces(val_prompts, teacher)
        train = SpeechSet.concat([train] + [train_words] * words, "synthetic+asterisk+words")
        val = SpeechSet.concat([val, val_words], "asterisk-adapt/val+words")
        say(f"her recordings cut into words: {len(train_words)} pieces x {words} in training, {len(val_words)} "
            f"in validation")
        data_key = settings_key({**data_named, "adapt_words": words})
        aligner_seconds = info["seconds"]
        teacher, info = cached_teacher(train, val, data_key, quick, say, start=teacher)
        info = {**info, "aligner_seconds": aligner_seconds}
    return SimpleNamespace(data=data, train=train, val=val, val_words=val_words, teacher=teacher, info=info,
                           data_settings=data_settings, adapt_repeat=repeat, adapt_words=words)


def teacher_scores(setup: SimpleNamespace) -> dict:
    """The teacher's row: its :func:`scores`, validation CER, parameters and training time."""
    from distill.evaluation import count_parameters

    teacher, info = setup.teacher, setup.info
    return {**scores(teacher, setup.data, setup.val), "val_cer": info["history"][-1]["val/cer"],
            "params": count_parameters(teacher), "train_seconds": info["seconds"],
            "aligner_seconds": info.get("aligner_seconds", 0.0)}


def run_speech_benchmark(seeds: int = 3, quick: bool = False, only: list[str] | None = None,
                         out_dir: str | Path = "bench-results/speech", train_only: bool = False, stored: bool = False,
                         say=print) -> dict:
    """Run (or resume) the benchmark; writes ``results.json`` and ``table.md`` in ``out_dir``. ``train_only``:
    train the missing rows and stop before the real-time factors and the table. ``stored``: train no student;
    the table has the rows already stored and names the ones missing."""
    arms = chosen_arms(only, ARMS)
    setup = prepare(quick, say)
    data, train, val, teacher, info = setup.data, setup.train, setup.val, setup.teacher, setup.info
    # the rows name the teacher's weights too: a teacher retrained by the same settings elsewhere is not bit-for-bit
    # the same, and every student row depends on it (the data through its alignment, KD through its outputs)
    teacher_key = settings_key({**info["settings"], "weights": weights_digest(teacher)})
    out = Path(out_dir)
    # the teacher's scores kept beside the students' rows, as a row of its own (a new machine retrains the teacher),
    # and scored once for its weights
    teacher_row, _ = bench_row(out / "teacher" / "seed-0.json", teacher_key, lambda: teacher_scores(setup))
    say(f"teacher: real WER {teacher_row['real_wer']:.1f}%, held-out voices WER {teacher_row['voices_wer']:.1f}%")
    teacher_logits = logits_on(teacher, data.test_real)
    missing = [] if stored else None

    def key(arm):
        return arm_key(arm, quick, teacher_key)

    results = bench_rows(out, arms, seeds, key,
                         lambda arm, seed: run_arm(arm, seed, data, train, val, teacher, quick, teacher_logits,
                                                   row_run_dir(row_path(out, arm, seed), key(arm))),
                         lambda row: f"real WER {row['real_wer']:.1f}%  voices WER {row['voices_wer']:.1f}%", say,
                         missing)
    if train_only:
        return {"teacher": teacher_row, "rows": results}
    students = {}  # one student of each shape is timed
    for arm in arms:
        shape = json.dumps(ARMS[arm][0], sort_keys=True)
        if shape not in students:
            students[shape] = build_student(arm, 0)
    rtf = real_time_factors({"teacher": teacher, **students}, data.test_real, rounds=2 if quick else 7)
    summary = {"teacher": teacher_row, "rows": results, "missing": missing or [], "rtf": rtf, "seeds": seeds,
               "quick": quick,
               "real_prompts": len(data.test_real), "real_total": data.real_total, "vocab": len(data.vocab),
               "train_utterances": len(train), "adapt_repeat": setup.adapt_repeat,
               "adapt_words": setup.adapt_words,
               "settings": {"data": setup.data_settings, "teacher": info["settings"], "student": STUDENT, "arms": ARMS,
                            "arm_train": ARM_TRAIN}}
    return write_bench_results(out, summary, format_table(summary), say)


def _mean_std(values: list[float]) -> str:
    from distill.bench import mean_std

    mean, std = mean_std(values)
    return f"{mean:.1f} ± {std:.1f}"


def _model_name(shape: dict) -> str:
    """``BiGRU 3×160``, ``streaming GRU 2×128, look-ahead 4``: a RecurrentCTC's options as the table names it."""
    name = f"{'BiGRU' if shape.get('bidirectional') else 'streaming GRU'} {shape['layers']}×{shape['hidden']}"
    return name + (f", look-ahead {shape['lookahead']}" if shape.get("lookahead") else "")


def _lexicon_cells(rows: list[dict], spread: bool = True) -> str:
    """The two lexicon columns of ``rows`` (one model's seeds; ``spread``: mean ± std): WER without, and with the
    chosen word score and its value per seed; ``-`` where a row predates them."""
    def cell(key):
        if not all(key in x for x in rows):
            return "-"
        return _mean_std([x[key] for x in rows]) if spread else f"{rows[0][key]:.1f}"

    scored = cell("real_wer_lexicon_scored")
    if scored != "-":
        scored += " (" + "/".join(f"{x['word_score']:g}" for x in rows) + ")"
    return f"{cell('real_wer_lexicon')} | {scored}"


def format_table(summary: dict) -> str:
    from distill.bench import group_rows, missing_note

    teacher, rtf = summary["teacher"], summary["rtf"]
    lines = [f"Real recordings: {summary['real_prompts']} of {summary['real_total']} Asterisk prompts (all words in "
             f"the {summary['vocab']}-word vocabulary); greedy decoding, (lexicon) a beam search spelling vocabulary "
             "words only, and (+ word score) that search with a score per word chosen on validation (β, per seed); "
             "RTF on one CPU thread, batch 1, the models timed in interleaved rounds.", "",
             "| model | arm | params | real CER | real WER | real WER vs teacher | real WER, lexicon | "
             "real WER, lexicon + word score (β) | held-out voices CER | held-out voices WER | seeds | "
             "delay (frames) | RTF | speed-up (lowest–highest round) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
             f"| {_model_name(summary['settings']['teacher']['model'])} teacher | ctc | {teacher['params']:,} | "
             f"{teacher['real_cer']:.1f} | {teacher['real_wer']:.1f} | +0% | "
             f"{_lexicon_cells([teacher], spread=False)} | {teacher['voices_cer']:.1f} | {teacher['voices_wer']:.1f} "
             f"| 1 | 0 | {rtf['teacher']['rtf']:.4f} | 1.0× |"]
    for arm, rows in group_rows(summary["rows"]).items():
        model = ARMS[arm][0]
        timed = rtf[json.dumps(model, sort_keys=True)]
        low, high = timed["speedup_range"]["rtf"]
        name = _model_name({**STUDENT["model"], **model})
        cells = [_mean_std([x[k] for x in rows]) for k in ("real_cer", "real_wer", "voices_cer", "voices_wer")]
        wer = statistics.fmean(x["real_wer"] for x in rows)
        relative = f"{100 * (wer / teacher['real_wer'] - 1):+.0f}%" if teacher["real_wer"] > 0 else "-"
        cells = " | ".join([*cells[:2], relative, _lexicon_cells(rows), *cells[2:]])
        delays = "/".join(str(x["delay"]) for x in rows)
        lines.append(f"| {name} | {arm} | {rows[0]['params']:,} | {cells} | {len(rows)} | {delays} | "
                     f"{timed['rtf']:.4f} | {timed['speedup']['rtf']:.1f}× ({low:.1f}–{high:.1f}) |")
    return "\n".join(lines + missing_note(summary))
