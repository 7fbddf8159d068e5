"""``distill bench seq2seq``: sequence-level distillation (Kim & Rush 2016) on English grapheme-to-phoneme.

Data (:mod:`distill.zoo.g2p`): 30,000 lower-case words of Debian ``wamerican`` with espeak-ng's US English
pronunciations, split by word (27,000 train, 1,500 validation, 1,500 test). A Transformer teacher
(:data:`distill.zoo.seq2seq.TEACHER`) is trained once and cached; students about 8x smaller
(:data:`~distill.zoo.seq2seq.STUDENT`) are trained per arm and seed:

| arm | method | the student learns from |
|---|---|---|
| ``scratch`` | ``scratch`` | the references (NLL) |
| ``word-kd`` | ``word_kd`` (alpha 0.5) | the references, half NLL, half per-token KL to the teacher |
| ``seq-kd`` | ``seq_level_kd`` | the teacher's beam-5 outputs (NLL) |
| ``seq-inter`` | ``seq_inter`` | the teacher's beam hypothesis closest to the reference (NLL) |
| ``word-seq-kd`` | ``word_seq_kd`` (alpha 0.5) | the teacher's beam-5 outputs, half NLL, half per-token KL |
| ``nar`` | CTC, a parallel student (:class:`~distill.zoo.seq2seq.ParallelCTC`) | the references |
| ``nar-seq-kd`` | CTC, the same parallel student | the teacher's beam-5 outputs |

The teacher's beam-5 hypotheses on the training words are made once and cached (the transfer set of both
``seq-kd`` and ``seq-inter``). Columns: phoneme error rate and word accuracy on the test words, greedy and beam
5 (length-normalised), and words decoded per second on one CPU thread (batches of 256). Each (arm, seed) row is
a file under the output folder, so an interrupted benchmark resumes. ``--quick``: 2,000 words, small models,
few epochs, to check that everything runs (its numbers mean nothing). The parallel students decode in one
pass (no beam: their greedy and beam columns are the same decoding).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from distill.cache import weights_digest
from distill.fileio import (atomic_write_text, bench_row, cache_dir, cached_model,
                           chosen_arms, row_key, row_path, settings_key, write_bench_results)

DATA = {"size": 30000, "val_size": 1500, "test_size": 1500}
TRAIN = {"lr": 1e-3, "batch_size": 64, "schedule": "cosine", "warmup_epochs": 0.5, "optimizer": "adamw",
         "weight_decay": 0.01, "clip_grad_norm": 1.0}
TEACHER_EPOCHS, STUDENT_EPOCHS = 15, 10
BEAM, MAX_LEN = 5, 32
# arm -> (method, options)
ARMS = {
    "scratch": ("scratch", {}),
    "word-kd": ("word_kd", {"alpha": 0.5}),
    "seq-kd": ("seq_level_kd", {}),
    "seq-inter": ("seq_inter", {}),
    "word-seq-kd": ("word_seq_kd", {"alpha": 0.5}),
    "nar": ("parallel", {}),             # the non-autoregressive CTC student on the references
    "nar-seq-kd": ("parallel", {"teacher": True}),  # ... on the teacher's beam outputs
}
#: the non-autoregressive student (distill.zoo.seq2seq.ParallelCTC)
PARALLEL = {"d_model": 96, "heads": 4, "layers": 3}
QUICK = {"data": {"size": 2000, "val_size": 200, "test_size": 200},
         "teacher": {"d_model": 64, "heads": 4, "encoder_layers": 2, "decoder_layers": 2},
         "student": {"d_model": 32, "heads": 4, "encoder_layers": 1, "decoder_layers": 1},
         "parallel": {"d_model": 32, "heads": 4, "layers": 1}, "teacher_epochs": 3, "student_epochs": 1, "lr": 3e-3}


def _settings(quick: bool) -> dict:
    from distill.zoo.seq2seq import STUDENT, TEACHER

    data = {**DATA, **(QUICK["data"] if quick else {})}
    train = {**TRAIN, **({"lr": QUICK["lr"]} if quick else {})}
    return {"data": data, "train": train, "beam": BEAM, "max_len": MAX_LEN,
            "teacher": {"model": QUICK["teacher"] if quick else TEACHER,
                        "epochs": QUICK["teacher_epochs"] if quick else TEACHER_EPOCHS},
            "student": {"model": QUICK["student"] if quick else STUDENT,
                        "epochs": QUICK["student_epochs"] if quick else STUDENT_EPOCHS},
            "parallel": QUICK["parallel"] if quick else PARALLEL}


def _task():
    from distill.tasks import get_task

    return get_task("tokens", shift=False, pad_token_id=0)


def _model(data, shape: dict, seed: int):
    from distill.zoo.seq2seq import Seq2SeqTransformer

    torch.manual_seed(seed)
    return Seq2SeqTransformer(len(data.letters), len(data.phonemes), **shape)


def _train(model, teacher, stages, train, val, settings: dict, epochs: int, seed: int,
           cache: bool = False, task=None) -> list[dict]:
    from distill.engine import TrainConfig
    from distill.stages import as_stages, fit_stages

    cfg = TrainConfig(**settings["train"], epochs=epochs, seed=seed, eval_batch_size=256, progress=False,
                      cache_teacher=cache)
    return fit_stages(model, teacher, as_stages(stages), train, val, config=cfg, task=task or _task(),
                      say=lambda *_: None)["history"]


class Setup:
    """The data, the cached teacher and its cached beam outputs on the training words."""

    def __init__(self, quick: bool, say=print):
        from distill.zoo.g2p import load_g2p

        self.quick, self.say, self.settings = quick, say, _settings(quick)
        self.data = load_g2p(**self.settings["data"], say=say)
        self.train, self.val, self.test = (self.data.items(s) for s in ("train", "val", "test"))
        self.teacher_key = settings_key({k: self.settings[k] for k in ("data", "train", "teacher")} | {"version": 1})
        self.teacher, self.teacher_info = self._teacher()
        self.teacher_weights = weights_digest(self.teacher)
        self.beams = self._beams()

    def _teacher(self):
        from distill.methods import METHODS

        folder = cache_dir() / "teachers" / f"g2p-transformer-{self.teacher_key}"
        model = _model(self.data, self.settings["teacher"]["model"], 0)
        return cached_model(folder, model, lambda: {
            "history": _train(model, None, METHODS["scratch"](), self.train, self.val, self.settings,
                              self.settings["teacher"]["epochs"], seed=0)},
            f"training the Transformer teacher on {len(self.train):,} words", self.say)

    def _beams(self) -> list:
        """The teacher's beam hypotheses ``[(ids, score), ...]`` on every training word, made once and cached."""
        from distill.seq2seq import beam_decode

        path = cache_dir() / "transfer" / f"g2p-beam{BEAM}-{self.teacher_key}.json"
        if path.is_file():
            return json.loads(path.read_text())
        self.say(f"teacher beam search (beam {BEAM}) on {len(self.train):,} training words (cached in {path})")
        collate, out = _task().collate, []
        for start in range(0, len(self.train), 256):
            source = collate(self.train[start:start + 256])["input"]["input_ids"]
            out.extend(beam_decode(self.teacher, source, BEAM, MAX_LEN))
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(out))
        return out

    def transfer(self, interpolate: bool):
        """The transfer set of sequence-level KD (``interpolate``: of interpolation) from the cached beams."""
        from distill.seq2seq import BeamTargets

        targets = BeamTargets(BEAM, MAX_LEN, interpolate=interpolate)
        for i, (hyps, item) in enumerate(zip(self.beams, self.train)):
            targets.store[i] = targets.choose([(list(h), s) for h, s in hyps], item["label"][:-1].tolist())
        return targets


def scores(model, items) -> dict:
    """Test PER and word accuracy, greedy and beam, and decoding speed (words per second, one thread)."""
    from distill.seq2seq import g2p_scores

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        greedy, beam = g2p_scores(model, items, 1, max_len=MAX_LEN), g2p_scores(model, items, BEAM, max_len=MAX_LEN)
    finally:
        torch.set_num_threads(old)
    return {"greedy_per": greedy["per"], "greedy_acc": greedy["word_acc"], "beam_per": beam["per"],
            "beam_acc": beam["word_acc"], "greedy_wps": greedy["words_per_second"],
            "beam_wps": beam["words_per_second"]}


def build_student(arm: str, setup: Setup, seed: int = 0):
    """The untrained student of ``arm`` (autoregressive or parallel), seeded."""
    from distill.zoo.seq2seq import ParallelCTC

    if ARMS[arm][0] != "parallel":
        return _model(setup.data, setup.settings["student"]["model"], seed)
    torch.manual_seed(seed)
    return ParallelCTC(len(setup.data.letters), len(setup.data.phonemes), **setup.settings["parallel"])


def run_arm(arm: str, seed: int, setup: Setup, weights: Path | None = None) -> dict:
    """Train one (arm, seed) student and score it; its weights are saved to ``weights`` (safetensors) so the
    table can time it later with nothing else running."""
    from safetensors.torch import save_file

    row, student = _run_arm(arm, seed, setup)
    if weights is not None:
        weights.parent.mkdir(parents=True, exist_ok=True)
        save_file(student.state_dict(), weights)
    return row


def _run_arm(arm: str, seed: int, setup: Setup):
    from distill.evaluation import count_parameters
    from distill.methods import METHODS

    method, options = ARMS[arm]
    if method == "parallel":
        return run_parallel(arm, seed, setup, options.get("teacher", False))
    if method in ("seq_level_kd", "seq_inter", "word_seq_kd"):
        options = {**options, "transfer": setup.transfer(method == "seq_inter")}
    student = build_student(arm, setup, seed)
    start = time.perf_counter()
    # word-level KD reads the teacher on the references, the same every epoch: its outputs are computed once
    # (the word + sequence arm's targets come from a transform, so its teacher runs live)
    history = _train(student, setup.teacher if method != "scratch" else None, METHODS[method](**options),
                     setup.train, setup.val, setup.settings, setup.settings["student"]["epochs"], seed,
                     cache=method == "word_kd")
    return {"arm": arm, "seed": seed, **scores(student, setup.test), "val_perplexity": history[-1]["val/perplexity"],
            "params": count_parameters(student), "train_seconds": round(time.perf_counter() - start, 1)}, student


def run_parallel(arm: str, seed: int, setup: Setup, on_teacher: bool) -> dict:
    """The non-autoregressive student trained with CTC on the references or on the teacher's best beam outputs."""
    from distill.evaluation import count_parameters
    from distill.methods import METHODS
    from distill.seq2seq import parallel_items, parallel_task

    student = build_student(arm, setup, seed)
    targets = setup.transfer(False).store if on_teacher else None
    start = time.perf_counter()
    # the same engine, schedule and epochs as the autoregressive students; validation on the references
    history = _train(student, None, METHODS["ctc"](), parallel_items(setup.train, targets), parallel_items(setup.val),
                     setup.settings, setup.settings["student"]["epochs"], seed,
                     task=parallel_task(len(setup.data.phonemes), student.upsample))
    return {"arm": arm, "seed": seed, **scores(student, setup.test), "val_per": history[-1]["val/cer"],
            "params": count_parameters(student), "train_seconds": round(time.perf_counter() - start, 1)}, student


def run_seq2seq_benchmark(seeds: int = 3, quick: bool = False, only: list[str] | None = None,
                          out_dir: str | Path = "bench-results/seq2seq", train_only: bool = False,
                          say=print) -> dict:
    """Run (or resume) the benchmark; writes ``results.json`` and ``table.md`` in ``out_dir``."""
    from distill.evaluation import count_parameters

    arms = chosen_arms(only, ARMS)
    setup = Setup(quick, say)
    teacher = {**scores(setup.teacher, setup.test), "params": count_parameters(setup.teacher),
               "train_seconds": setup.teacher_info["seconds"]}
    say(f"teacher: PER {teacher['greedy_per']:.2f}% greedy, {teacher['beam_per']:.2f}% beam {BEAM}")
    out, rows = Path(out_dir), []
    for arm in arms:
        for seed in range(seeds):
            key = _arm_key(arm, setup)
            weights = _weights(key, arm, seed)
            row, made = bench_row(row_path(out, arm, seed), key, lambda: run_arm(arm, seed, setup, weights))
            say(f"{arm} seed {seed}: PER {row['greedy_per']:.2f}% greedy, {row['beam_per']:.2f}% beam"
                f" ({row['train_seconds']:.0f} s{'' if made else ', stored'})")
            rows.append(row)
    summary = {"teacher": teacher, "rows": rows, "seeds": seeds, "quick": quick, "settings": setup.settings,
               "arms": ARMS, "words": {s: len(getattr(setup.data, s)) for s in ("train", "val", "test")}}
    if not train_only:
        summary["speed_alone"] = time_alone(arms, seeds, setup, say)
        write_bench_results(out, summary, format_table(summary), say)
    return summary


def _arm_key(arm: str, setup: Setup) -> str:
    """What names an arm's stored rows and saved students: its method, the teacher's settings, every setting and,
    for an arm the teacher takes part in, the teacher's weights (:func:`distill.fileio.row_key`)."""
    method, options = ARMS[arm]
    taught = method != "scratch" and (method != "parallel" or options.get("teacher", False))
    return row_key({"arm": ARMS[arm], "teacher": setup.teacher_key, **setup.settings},
                   setup.teacher_weights if taught else None)


def _weights(key: str, arm: str, seed: int) -> Path:
    """Where the (arm, seed) student's weights are kept: in the cache, not the repository (1.6 MB each)."""
    return cache_dir() / "students" / f"g2p-{key}" / f"{arm}-seed-{seed}.safetensors"


def time_alone(arms: list[str], seeds: int, setup: Setup, say=print) -> dict:
    """Words per second of each arm's saved students (one thread), timed one after another when the table is made
    so that no training runs beside them; arms with no saved weights keep the figures measured in their rows."""
    from safetensors.torch import load_file

    speeds = {}
    for arm in arms:
        key = _arm_key(arm, setup)
        found = [seed for seed in range(seeds) if _weights(key, arm, seed).is_file()]
        timed = []
        for seed in found:
            student = build_student(arm, setup, seed)
            student.load_state_dict(load_file(_weights(key, arm, seed)))
            timed.append(scores(student, setup.test))
        if timed:
            speeds[arm] = {k: sum(t[k] for t in timed) / len(timed) for k in ("greedy_wps", "beam_wps")}
            speeds[arm]["seeds"] = found
            say(f"{arm}: {speeds[arm]['greedy_wps']:.0f} words/s greedy, {speeds[arm]['beam_wps']:.0f} beam "
                f"(seeds {found}, timed alone)")
    return speeds


def format_table(summary: dict) -> str:
    from distill.bench import group_rows, mean_std

    def cell(values, digits=2):
        mean, std = mean_std(values)
        return f"{mean:.{digits}f} ± {std:.{digits}f}"

    t = summary["teacher"]
    words = summary["words"]
    lines = [f"Grapheme-to-phoneme, {words['train']:,} training / {words['test']:,} test words; PER and word accuracy "
             f"(%) on the test words; beam {BEAM} with length normalisation; words per second on one CPU thread.", "",
             "| model | arm | params | PER greedy | PER beam | word acc greedy | word acc beam | seeds | "
             "words/s greedy | words/s beam |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
             f"| teacher | scratch | {t['params']:,} | {t['greedy_per']:.2f} | {t['beam_per']:.2f} | "
             f"{t['greedy_acc']:.2f} | {t['beam_acc']:.2f} | 1 | {t['greedy_wps']:.0f} | {t['beam_wps']:.0f} |"]
    alone, in_rows = summary.get("speed_alone", {}), []
    for arm, rows in group_rows(summary["rows"]).items():
        cells = " | ".join(cell([r[k] for r in rows]) for k in ("greedy_per", "beam_per", "greedy_acc", "beam_acc"))
        if arm in alone:
            speed = " | ".join(f"{alone[arm][k]:.0f}" for k in ("greedy_wps", "beam_wps"))
        else:
            in_rows.append(arm)
            speed = " | ".join(f"{sum(r[k] for r in rows) / len(rows):.0f}*" for k in ("greedy_wps", "beam_wps"))
        model = "parallel student" if ARMS[arm][0] == "parallel" else "student"
        lines.append(f"| {model} | {arm} | {rows[0]['params']:,} | {cells} | {len(rows)} | {speed} |")
    lines += ["", "Words per second: the teacher and the students' saved weights timed one after another when the "
              "table was made (nothing else running)."]
    if in_rows:
        lines.append(f"\\* {', '.join(in_rows)}: no saved weights; the speed measured in the rows, during training, "
                     "possibly beside other jobs.")
    return "\n".join(lines)
