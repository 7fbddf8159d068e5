"""``distill bench llm``: language-model distillation on the KJV + Jane Austen, split by book.

A GPT teacher (:data:`TEACHER_SHAPE`) is trained once on the whole training split and cached (with its
tokenizer, ``save_pretrained``); GPT students several times smaller (:data:`STUDENT_SHAPE`) are trained by
each *arm*, each with several seeds:

| arm | what the student learns from |
|---|---|
| ``scratch`` | the text alone (cross-entropy) |
| ``fkl`` / ``rkl`` / ``jsd`` | per-token forward KL / reverse KL / generalized JSD (β = 0.5) to the live teacher on the text |
| ``fkl-offline`` | forward KL to the teacher's top-``k`` logits stored once on disk for the whole student training set (memory-mapped, ragged per token), ``k`` = 32 |
| ``fkl-offline-256`` | the same with ``k`` = 256: how much of the gap to the live teacher the top-``k`` truncation explains |
| ``gkd`` | on-policy GKD: half the batches are the student's own continuations, JSD (β = 0.5) to the teacher |
| ``minillm`` | forward KL for half the epochs, then MiniLLM's reverse-KL policy gradient on its own samples |
| ``seqkd`` | cross-entropy on the teacher's sampled continuations (the transfer set, generated once and kept) |

Every (arm, seed) row is a file under the output folder (an interrupted benchmark resumes where it
stopped; ``--arm`` runs a part, ``--train-only`` skips the table). Columns: held-out (test books)
perplexity, the teacher's NLL per token of the student's samples continuing test prompts (how good its
generations are in the teacher's eyes), training tokens per second (wall time of the whole run: teacher,
generation and student), the student's generation tokens per second, and the offline signal's disk size
and build time. Timings are wall clock on a shared machine: compare them within one run of the benchmark.
"""
from __future__ import annotations

import json
import shutil
import statistics
import time
from pathlib import Path

import torch

from distill.cache import weights_digest
from distill.fileio import bench_row, chosen_arms, row_key, row_path, settings_key, write_bench_results

BLOCK_SIZE, VOCAB_SIZE = 128, 4096
TEACHER_SHAPE = {"layers": 4, "hidden": 256, "heads": 4}
STUDENT_SHAPE = {"layers": 2, "hidden": 128, "heads": 2}
TEACHER = {"epochs": 1, "lr": 2e-3, "batch_size": 32, "schedule": "cosine", "warmup_epochs": 0.05,
           "weight_decay": 0.01, "optimizer": "adamw", "clip_grad_norm": 1.0}
STUDENT = {"epochs": 2, "lr": 3e-3, "batch_size": 32, "schedule": "cosine", "warmup_epochs": 0.05,
           "weight_decay": 0.01, "optimizer": "adamw", "clip_grad_norm": 1.0}
STUDENT_FRACTION = 0.15  # students train on 15% of the training sequences (spread over the split), twice: ~0.5M tokens
TOP_K = 32
GENERATION = {"prompt_tokens": 8, "new_tokens": 32}
EVAL = {"val": 256, "test": 512, "prompts": 64}
ARMS = {
    "scratch": ("scratch", {}),
    "fkl": ("token_kd", {"beta": 0.0}),
    "rkl": ("token_kd", {"beta": 1.0}),
    "jsd": ("token_kd", {"beta": 0.5}),
    "fkl-offline": ("token_kd", {"beta": 0.0, "top_k": TOP_K}),
    "fkl-offline-256": ("token_kd", {"beta": 0.0, "top_k": 256}),
    "gkd": ("gkd", {"lam": 0.5, "beta": 0.5, **GENERATION}),
    "minillm": ("minillm", {"warmup": 0.5, "teacher_mix": 0.2, **GENERATION}),
    # the teacher rewrites each training sequence after its prompt: as many tokens as the text it replaces
    "seqkd": ("seqkd", {"temperature": 1.0, "prompt_tokens": GENERATION["prompt_tokens"],
                        "new_tokens": BLOCK_SIZE - GENERATION["prompt_tokens"]}),
}
QUICK = {"teacher_shape": {"layers": 1, "hidden": 64, "heads": 2},
         "student_shape": {"layers": 1, "hidden": 32, "heads": 1},
         "teacher_train": 1024, "student_train": 128, "val": 32, "test": 32, "prompts": 8, "new_tokens": 8,
         "block": 64, "vocab": 1024}


def _settings(quick: bool) -> dict:
    shapes = ({"teacher": QUICK["teacher_shape"], "student": QUICK["student_shape"]} if quick else
              {"teacher": TEACHER_SHAPE, "student": STUDENT_SHAPE})
    sizes = {"block": QUICK["block"], "vocab": QUICK["vocab"]} if quick else {"block": BLOCK_SIZE, "vocab": VOCAB_SIZE}
    return {**sizes, **shapes, "quick": quick, "teacher_train": TEACHER,
            "student_train": STUDENT, "fraction": STUDENT_FRACTION, "top_k": TOP_K, "eval": EVAL, "version": 1}


def once(marker: Path, lock_dir: Path, build, say=print, what: str = "") -> None:
    """Run ``build()`` unless ``marker`` (the file it writes last) exists. Several benchmark processes may
    start together (``--arm A`` beside ``--arm B``): one builds (holding the lock ``lock_dir``), the others wait
    for it and find it built."""
    from distill.lock import RunDirLocked, RunLock

    if marker.is_file():
        return
    lock, told = RunLock(lock_dir), False
    while True:
        try:
            lock.acquire()
            break
        except RunDirLocked:
            if not told:
                say(f"waiting for another process to build {what or marker.name} ...")
                told = True
            time.sleep(5)
    try:
        if not marker.is_file():
            build()
    finally:
        lock.release()


def _options(arm: str, quick: bool) -> dict:
    """An arm's method options; ``--quick`` generates fewer tokens (seqkd: the quick block less the prompt)."""
    method, options = ARMS[arm]
    if not quick or "new_tokens" not in options:
        return options
    new = QUICK["block"] - options["prompt_tokens"] if method == "seqkd" else QUICK["new_tokens"]
    return {**options, "new_tokens": new}


class Setup:
    """The data, the cached teacher and the folders one benchmark run shares across arms and seeds."""

    def __init__(self, quick: bool, say=print):
        from distill.tasks import get_task
        from distill.zoo.gpt import lm_corpus

        self.quick, self.say = quick, say
        self.settings = _settings(quick)
        corpus = lm_corpus(self.settings["block"], self.settings["vocab"])
        self.tokenizer = corpus.tokenizer
        self.task = get_task("tokens", pad_token_id=self.tokenizer.pad_token_id)
        size = lambda key, default: QUICK[key] if quick else default  # noqa: E731
        self.teacher_train = corpus.train.subset(size("teacher_train", len(corpus.train)))
        self.train = corpus.train.subset(size("student_train", round(len(corpus.train) * STUDENT_FRACTION)))
        self.val = corpus.val.subset(size("val", EVAL["val"]))
        self.test = corpus.test.subset(size("test", EVAL["test"]))
        self.prompts = torch.stack([s[:GENERATION["prompt_tokens"]]
                                    for s in corpus.test.subset(size("prompts", EVAL["prompts"])).sequences])
        self.new_tokens = QUICK["new_tokens"] if quick else GENERATION["new_tokens"]
        from distill.fileio import cache_dir

        self.folder = cache_dir() / "llm-bench" / settings_key(self.settings)
        self.teacher, self.teacher_info = self._teacher()

    def config(self, seed: int, settings: dict | None = None, **extra):
        from distill.engine import TrainConfig

        return TrainConfig(**(settings or STUDENT), seed=seed, eval_batch_size=64, progress=False, **extra)

    def _teacher(self):
        from distill.engine import seed_everything
        from distill.methods import METHODS
        from distill.stages import as_stages, fit_stages
        from distill.zoo.gpt import gpt_lm, load_gpt
        from distill.zoo.text import quiet_transformers

        folder = self.folder / "teacher"

        def build():
            shape = self.settings["teacher"]
            self.say(f"training the teacher {shape} on {len(self.teacher_train):,} sequences "
                     f"({self.teacher_train.tokens():,} tokens; cached in {folder})")
            model = gpt_lm(len(self.tokenizer), **shape, context=self.settings["block"], seed=0)
            seed_everything(0)
            start = time.perf_counter()
            history = fit_stages(model, None, as_stages(METHODS["scratch"]()), self.teacher_train, self.val,
                                 config=self.config(0, TEACHER), task=self.task, say=lambda *_: None)["history"]
            info = {"settings": self.settings, "seconds": round(time.perf_counter() - start, 1),
                    "val_perplexity": history[-1]["val/perplexity"], "history": history}
            tmp = folder.with_name("teacher.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            with quiet_transformers():
                model.save_pretrained(tmp)
                self.tokenizer.save_pretrained(tmp)
            (tmp / "teacher.json").write_text(json.dumps(info, indent=1))
            shutil.rmtree(folder, ignore_errors=True)
            tmp.rename(folder)

        self.folder.mkdir(parents=True, exist_ok=True)
        once(folder / "teacher.json", self.folder / ".teacher.lock", build, self.say, "the teacher")
        return load_gpt(folder).eval(), json.loads((folder / "teacher.json").read_text())

    def transfer_set(self):
        """Sequence-level KD's transfer set: the teacher's continuation of every student training sequence,
        generated once (seeded per sample) and kept on disk; returns ``(TeacherSequences, info)``."""
        from distill.generation import TeacherSequences

        options = _options("seqkd", self.quick)
        stem = f"transfer-{settings_key(options)}"
        file, info_file = self.folder / f"{stem}.npz", self.folder / f"{stem}.json"
        sequences = TeacherSequences(**options, pad_token_id=self.tokenizer.pad_token_id)

        def build():
            self.say(f"generating the transfer set: {len(self.train):,} teacher continuations")
            made = TeacherSequences(**options, pad_token_id=self.tokenizer.pad_token_id, teacher=self.teacher)
            made.fill(self.train, self.task.collate, batch_size=64)
            made.save(file)
            info_file.write_text(json.dumps({"seconds": round(made.generation_seconds, 1),
                                             "tokens_per_second": made.tokens_per_second(),
                                             "bytes": file.stat().st_size}))

        once(info_file, self.folder / f".{stem}.lock", build, self.say, "the transfer set")
        return sequences.load(file), json.loads(info_file.read_text())

    def offline_signal(self, k: int = TOP_K) -> tuple[Path, dict]:
        """The teacher's top-``k`` logits over the student training set, stored once on disk (what
        ``cache_teacher`` with ``teacher_top_k`` reads); returns its folder and ``{"seconds", "bytes"}``."""
        from distill.cache import CachedTeacher, TeacherOutputs
        from distill.teacher import LiveTeacher

        cache, info_file = self.folder / f"teacher-top{k}", self.folder / f"teacher-top{k}.json"

        def build():
            self.say(f"storing the teacher's top-{k} logits over {self.train.tokens():,} training tokens in {cache}")
            start = time.perf_counter()
            CachedTeacher(LiveTeacher(self.teacher, ["logits"]), self.train, batch_size=64,
                          outputs=TeacherOutputs(cache, k), collate_fn=self.task.collate)
            info_file.write_text(json.dumps({"seconds": round(time.perf_counter() - start, 1),
                                             "bytes": sum(f.stat().st_size for f in cache.iterdir())}))

        once(info_file, self.folder / f".top{k}.lock", build, self.say, "the offline teacher signal")
        return cache, json.loads(info_file.read_text())


def student_samples(model, setup: Setup, seed: int = 0):
    """The student's continuations of the test prompts (temperature 1, row seeds fixed) and its tokens/s."""
    from distill.generation import continuation_batch, row_seed, sample

    start = time.perf_counter()
    rows = len(setup.prompts)
    seqs, alive = sample(model, setup.prompts, setup.new_tokens, seeds=[row_seed(seed, i) for i in range(rows)])
    seconds = time.perf_counter() - start
    batch = continuation_batch(list(seqs), [setup.prompts.shape[1]] * rows, list(alive), setup.tokenizer.pad_token_id)
    return batch, seqs.shape[0] * setup.new_tokens / seconds


def score(model, setup: Setup) -> dict:
    """Held-out perplexity, the teacher's NLL per token of the model's samples and its generation speed."""
    from distill.evaluation import count_parameters, evaluate
    from distill.generation import sequence_nll

    batch, speed = student_samples(model, setup)
    nll, count = sequence_nll(setup.teacher, batch)
    return {"test_perplexity": evaluate(model, setup.test, 64, task=setup.task)["perplexity"],
            "val_perplexity": evaluate(model, setup.val, 64, task=setup.task)["perplexity"],
            "teacher_nll": nll / count, "generation_tokens_per_second": speed, "params": count_parameters(model)}


def arm_key(arm: str, quick: bool, teacher_weights: str) -> str:
    """What names an arm's stored rows: its method, every setting and the teacher's weights, for every arm (each
    row's ``teacher_nll`` is the teacher's judgement of the student's samples; :func:`distill.fileio.row_key`)."""
    return row_key({"arm": ARMS[arm], **_settings(quick)}, teacher_weights)


def run_arm(arm: str, seed: int, setup: Setup) -> dict:
    """Train one student by ``arm`` with ``seed``; its row."""
    from distill.engine import seed_everything
    from distill.methods import METHODS
    from distill.stages import as_stages, fit_stages
    from distill.zoo.gpt import gpt_lm

    method, options = ARMS[arm][0], _options(arm, setup.quick)
    extra, row = {}, {}
    if method == "seqkd":
        transfer, info = setup.transfer_set()
        options = {**options, "transfer": transfer}
        row["transfer_set_seconds"], row["transfer_set_bytes"] = info["seconds"], info["bytes"]
    if "top_k" in options:  # the offline signal: the teacher's top-k logits on disk, not the live teacher
        cache, info = setup.offline_signal(options["top_k"])
        extra = {"cache_teacher": True, "teacher_cache_dir": str(cache), "teacher_top_k": options["top_k"]}
        row["offline_build_seconds"], row["offline_bytes"] = info["seconds"], info["bytes"]
    stages = as_stages(METHODS[method](**options))
    student = gpt_lm(len(setup.tokenizer), **setup.settings["student"], context=setup.settings["block"], seed=seed)
    seed_everything(seed)
    start = time.perf_counter()
    history = fit_stages(student, setup.teacher if method != "scratch" else None, stages, setup.train, setup.val,
                         config=setup.config(seed, **extra), task=setup.task, say=lambda *_: None)["history"]
    seconds = time.perf_counter() - start
    steps_tokens = setup.train.tokens() * len(history)
    row |= {"arm": arm, "seed": seed, **score(student.eval(), setup), "train_seconds": round(seconds, 1),
            "train_tokens_per_second": steps_tokens / seconds, "epochs": len(history)}
    samplers = [s.augment for s in stages if hasattr(s.augment, "tokens_per_second") and s.augment.generated_tokens]
    if samplers and method != "seqkd":
        row["on_policy_generation_tokens_per_second"] = samplers[-1].tokens_per_second()
    return row


def run_llm_benchmark(seeds: int = 3, quick: bool = False, only: list[str] | None = None,
                      out_dir: str | Path = "bench-results/llm", train_only: bool = False, say=print) -> dict:
    """Run (or resume) the benchmark; writes ``results.json`` and ``table.md`` in ``out_dir``."""
    out = Path(out_dir)
    arms = chosen_arms(only, ARMS)
    setup = Setup(quick, say)
    teacher_row = {**score(setup.teacher, setup), "train_seconds": setup.teacher_info["seconds"]}
    say(f"teacher: test perplexity {teacher_row['test_perplexity']:.2f}")
    results, teacher_weights = [], weights_digest(setup.teacher)
    for arm in arms:
        for seed in range(seeds):
            def make():
                say(f"{arm} seed {seed} ...")
                return run_arm(arm, seed, setup)

            row, made = bench_row(row_path(out, arm, seed), arm_key(arm, quick, teacher_weights), make)
            if made:
                say(f"  test perplexity {row['test_perplexity']:.2f}  teacher NLL of samples {row['teacher_nll']:.3f}  "
                    f"({row['train_seconds']:.0f} s)")
            results.append(row)
    summary = {"teacher": teacher_row, "rows": results, "seeds": seeds, "quick": quick, "settings": setup.settings,
               "train_tokens": setup.train.tokens(), "arms": ARMS}
    if train_only:
        return summary
    return write_bench_results(out, summary, format_table(summary), say)


def _mean_std(values, digits: int = 2) -> str:
    from distill.bench import mean_std

    values = [v for v in values if v is not None]
    if not values:
        return "—"
    mean, std = mean_std(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def format_table(summary: dict) -> str:
    from distill.bench import group_rows

    teacher = summary["teacher"]
    lines = ["| model | arm | params | test perplexity | teacher NLL of samples | seeds | train tokens/s | "
             "generation tokens/s | offline signal |", "|---|---|---:|---:|---:|---:|---:|---:|---|",
             f"| teacher | text | {teacher['params']:,} | {teacher['test_perplexity']:.2f} | "
             f"{teacher['teacher_nll']:.3f} | 1 | — | {teacher['generation_tokens_per_second']:.0f} | — |"]
    for arm, rows in group_rows(summary["rows"]).items():
        offline = next((r for r in rows if "offline_bytes" in r), None)
        note = "—"
        if offline is not None:
            note = f"{offline['offline_bytes'] / 2**20:.1f} MB, built in {offline['offline_build_seconds']:.0f} s"
        elif any("transfer_set_bytes" in r for r in rows):
            r = next(r for r in rows if "transfer_set_bytes" in r)
            note = f"transfer set {r['transfer_set_bytes'] / 2**20:.1f} MB, {r['transfer_set_seconds']:.0f} s"
        lines.append(f"| student | {arm} | {rows[0]['params']:,} | {_mean_std(r['test_perplexity'] for r in rows)} | "
                     f"{_mean_std((r['teacher_nll'] for r in rows), 3)} | {len(rows)} | "
                     f"{statistics.fmean(r['train_tokens_per_second'] for r in rows):.0f} | "
                     f"{statistics.fmean(r['generation_tokens_per_second'] for r in rows):.0f} | {note} |")
    return "\n".join(lines)
