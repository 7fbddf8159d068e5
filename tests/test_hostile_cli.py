"""A generative fuzzer for the command line's promise: every bad recipe, recipe file, ``--set`` override or
damaged run directory stops with ONE line on stderr (at most 300 characters) and exit code 2, never a
traceback and never a hang; good input exits 0.

Unlike ``test_recipe_fuzz.py`` (which mutates valid recipes at known keys) it *generates*: raw bytes, text
in many encodings with and without a byte-order mark, deep nesting, YAML alias bombs, hostile numbers and
tags, ``--set`` keys from a grammar of good and bad parts, hostile values at every key of the schema,
weight files (empty, truncated, foreign) and damaged ``recipe.yaml`` files resumed with ``--resume``.

Each case goes through ``distill.cli.main`` (the command line in-process) under a timer. Nothing trains:
``distill.experiment._run_recipe`` is replaced by the checks a run makes before training (the data, every
model built and run once, teacher checkpoints loaded). Alias bombs and deep nesting at full size also run
in a separate ``python -m distill`` process, under a timeout and a peak-memory check.

    DISTILL_FUZZ_CASES=2000 DISTILL_FUZZ_SUBPROCESS=24 pytest tests/test_hostile_cli.py -s   # by hand
    DISTILL_FUZZ_SEED=7 ...                                                                    # other cases

With ``-s`` each test prints its numbers (cases per family, tracebacks, hangs, longest message, slowest).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import random
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

CASES = int(os.environ.get("DISTILL_FUZZ_CASES", "500"))
SUBPROCESS_CASES = int(os.environ.get("DISTILL_FUZZ_SUBPROCESS", "6"))
SEED = int(os.environ.get("DISTILL_FUZZ_SEED", "0"))
CASE_SECONDS = 20  # one in-process case (they take ~0.05 s; generous for a shared 2-core machine)
PROCESS_SECONDS = 90  # one `python -m distill` process (its start-up imports torch)
PROCESS_MB = 1500  # peak resident memory of that process
MAX_LINE = 300

BASE_TEXT = (Path(__file__).parent.parent / "src/distill/recipes/digits.yaml").read_text()
BASE = yaml.safe_load(BASE_TEXT)


# ---------------------------------------------------------------------------------------------------------
# values: YAML text of hostile (and ordinary) values
# ---------------------------------------------------------------------------------------------------------

NAMES = ["kd", "ce", "scratch", "fitnets", "dkd", "crd", "mlp", "cnn", "resnet8", "digits", "sgd", "adamw", "cosine",
         "step", "bf16", "fp16", "no", "logits", "features.0", "last_stage", "stage1", "classification", "tokens",
         "regression", "embedding", "noise", "dafl", "deep_inversion", "json:dumps", "math:pi", "no_such_mod:f",
         "distill.zoo:nothing", "hf:/no/such/folder", "/no/such/file.safetensors", "../../x", "/etc/passwd", "~nouser/x",
         "/dev/null", "a/b", "."]


def bomb(rng: random.Random, levels: int | None = None, width: int | None = None) -> str:
    """A "billion laughs" in flow style: each level a list of ``width`` aliases of the level before."""
    levels = levels or rng.randint(3, 9)
    width = width or rng.randint(3, 9)
    items = [f"&l0 [{', '.join(['lol'] * width)}]"]
    for k in range(1, levels):
        items.append(f"&l{k} [{', '.join([f'*l{k - 1}'] * width)}]")
    return "[" + ", ".join(items) + "]"


def deep(rng: random.Random, depth: int | None = None) -> str:
    depth = depth or rng.choice([20, 33, 40, 100, 1000, 5000])
    kind = rng.random()
    if kind < 0.5:
        return "[" * depth + "]" * depth
    if kind < 0.8:
        return "{a: " * depth + "1" + "}" * depth
    return "&d [1, " + "[" * depth + "*d" + "]" * depth + "]"  # an alias inside a deep list


def number(rng: random.Random) -> str:
    return rng.choice([
        "0", "-1", "1", "-3", "2", "0.5", "-0.0", "1e9", "1.0e9", "1.0e+308", "1e400", "-1e400", ".nan", ".inf", "-.inf",
        "2147483648", "4294967295", "4294967296", "9223372036854775807", "9223372036854775808", "-9223372036854775809",
        str(rng.randint(-10**6, 10**6)), str(rng.random() * 10 ** rng.randint(-5, 12)),
        "9" * rng.choice([19, 20, 50, 4301, 5000]), "0x1F", "0o17", "0b101", "1_000", "190:20:30", "+12", "1e-320",
        "!!int x", "!!int 1.5", "!!float x", "!!float 1", "!!int '99'", "!!int " + "9" * 30,
    ])


def text(rng: random.Random) -> str:
    pick = rng.random()
    if pick < 0.3:
        return rng.choice(NAMES)
    if pick < 0.45:
        return "'" + rng.choice("yé€😀\u202e\u0301١") * rng.choice([1, 100, 3000, 50000]) + "'"
    if pick < 0.55:
        return json.dumps("".join(chr(rng.randint(0, 0x10FFFF)) for _ in range(rng.randint(0, 20))),
                          ensure_ascii=True)  # any code point, surrogates and controls included, escaped
    if pick < 0.65:
        return '"a\\0b"'  # a NUL byte
    return rng.choice(["", "''", "' '", "~", "null", "true", "no", "yes", "!!binary AAAA", "!!binary '###'",
                       "!!timestamp 2001-13-45", "2001-12-14", "2001-12-14 21:59:43.10 -5", "!!set {a, b}",
                       "!!omap [a: 1, b: 2]", "!!python/object:os.system x", "!!python/name:os.system ''",
                       "!!str", "!custom x", "!!map [1, 2]", "'unterminated", "[1, 2", "{a: 1", "a: b: c",
                       "- 1", "*undefined", "&a", "? [a]", "{[1]: 2}", "{? {a: 1}: 2}", "%YAML 1.1", "---", "...",
                       "@x", "`x", "\t1", "'\\x00'", "!!null x"])


def container(rng: random.Random, depth: int = 0) -> str:
    pick = rng.random()
    if depth > 2 or pick < 0.3:
        return value(rng, depth + 1, scalars_only=True)
    if pick < 0.6:
        return "[" + ", ".join(value(rng, depth + 1) for _ in range(rng.randint(0, 4))) + "]"
    keys = [rng.choice(["a", "hidden", "channels", "loss", "weight", "method", "x" * rng.choice([1, 3000]), "1", "null",
                        "temperature", "alpha", "name", "objective", "model", "options"]) for _ in range(rng.randint(0, 3))]
    return "{" + ", ".join(f"{k}: {value(rng, depth + 1)}" for k in keys) + "}"


def value(rng: random.Random, depth: int = 0, scalars_only: bool = False) -> str:
    """YAML text of one value (on one line, so it can follow ``key=`` or ``key: ``)."""
    pick = rng.random()
    if pick < 0.35:
        return number(rng)
    if pick < 0.7 or scalars_only:
        return text(rng)
    if pick < 0.9:
        return container(rng, depth)
    if pick < 0.95:
        return deep(rng)
    return bomb(rng, rng.randint(3, 7), rng.randint(3, 7))  # at most 7**7 = 823,543 values expanded in-process


# ---------------------------------------------------------------------------------------------------------
# keys: every key of the schema, and a grammar of --set keys
# ---------------------------------------------------------------------------------------------------------

def schema_paths() -> list[str]:
    """Every dotted key of the recipe schema (lists as items 0 and 1, mappings of teachers as 't1'), the
    model options and method parameters the digits recipe uses, and keys that do not exist."""
    import typing

    from pydantic import BaseModel

    from distill.recipe import Recipe

    def models_in(annotation):
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return [(annotation, "")]
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
        found = []
        if origin in (list, tuple):
            found += [(m, f".{i}{rest}") for i in (0, 1) for a in args for m, rest in models_in(a)]
        elif origin is dict:
            found += [(m, f".t1{rest}") for m, rest in models_in(args[-1])]
        else:
            found += [x for a in args for x in models_in(a)]
        return found

    paths: set[str] = set()

    def walk(cls, prefix: str, level: int) -> None:
        for name, field in cls.model_fields.items():
            paths.add(prefix + name)
            if level < 3:
                for sub, rest in models_in(field.annotation):
                    walk(sub, f"{prefix}{name}{rest}.", level + 1)

    walk(Recipe, "", 0)
    return sorted(paths) + ["teacher.options.channels", "teacher.options.hidden", "student.options.hidden",
                            "student.options.dropout", "methods.1.alpha", "methods.1.temperature", "task.name",
                            "task.pad_token_id", "methods.0.terms.0.loss", "methods.1.terms", "nope", "train.nope",
                            "data.augment.nope", "teachers.t1.model", "methods.2.method"]


KEY_PARTS = ["train", "epochs", "methods", "0", "1", "2", "01", "-1", "+1", "0x1", "1e2", "١", "٣", "１", "", " 1", "1 ",
             "999999999999", "seed", "teacher", "options", "alpha", "kd", "scratch", "é", "ключ", "a b", "*", "&a",
             "!!int", "[0]", ":", "hidden", "student", "data", "val_size", "\x00", "\t", "_", "a-b", "k" * 300]


def set_key(rng: random.Random, paths: list[str]) -> str:
    pick = rng.random()
    if pick < 0.5:
        return rng.choice(paths)
    if pick < 0.8:  # a schema key with one part replaced
        parts = rng.choice(paths).split(".")
        parts[rng.randrange(len(parts))] = rng.choice(KEY_PARTS)
        return ".".join(parts)
    parts = [rng.choice(KEY_PARTS) for _ in range(rng.randint(1, 5))]
    return rng.choice([".", "..", "."]).join(parts) if rng.random() < 0.9 else "k" * rng.choice([201, 3000])


# ---------------------------------------------------------------------------------------------------------
# recipe files: bytes in many shapes
# ---------------------------------------------------------------------------------------------------------

def with_value(path: str, snippet: str) -> str:
    """The digits recipe with ``path`` set to the YAML ``snippet`` (made as text, so any snippet fits)."""
    tree = json.loads(json.dumps(BASE))
    node = tree
    parts = path.split(".")
    for part in parts[:-1]:
        if isinstance(node, list):
            index = int(part) if part.isdigit() else 0
            if index >= len(node):
                return BASE_TEXT + f"\n{parts[0]}: __HOSTILE__\n".replace("__HOSTILE__", snippet)
            node = node[index]
        else:
            if not isinstance(node.get(part), (dict, list)):
                node[part] = {}
            node = node[part]
    if isinstance(node, list):
        index = int(parts[-1]) if parts[-1].isdigit() else 0
        node[min(index, len(node) - 1)] = "__HOSTILE__"
    else:
        node[parts[-1]] = "__HOSTILE__"
    return yaml.safe_dump(tree, sort_keys=False, width=10**6).replace("__HOSTILE__", snippet)


ENCODINGS = ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be", "latin-1",
             "cp1252", "shift_jis"]
BOMS = {"utf-16-le": b"\xff\xfe", "utf-16-be": b"\xfe\xff", "utf-32-le": b"\xff\xfe\x00\x00",
        "utf-32-be": b"\x00\x00\xfe\xff"}


def recipe_bytes(rng: random.Random, paths: list[str]) -> tuple[str, bytes]:
    """(family, bytes) of a recipe file."""
    pick = rng.random()
    if pick < 0.12:
        return "bytes", bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 2, 3, 4, 10, 100, 2000])))
    if pick < 0.3:
        body = BASE_TEXT if rng.random() < 0.5 else with_value(rng.choice(paths), value(rng))
        comment = rng.choice(["# café\n", "# 価格 €\n", "# plain\n", ""])
        encoding = rng.choice(ENCODINGS)
        try:
            data = (comment + body).encode(encoding)
        except UnicodeEncodeError:
            data = (comment + body).encode(encoding, errors="replace")
        if encoding in BOMS and rng.random() < 0.5:
            data = BOMS[encoding] + data  # the mark written by hand
        if rng.random() < 0.3:  # cut short: mid-character, mid-mark
            data = data[: rng.randrange(len(data) + 1)]
        if rng.random() < 0.2 and data:  # a damaged byte
            at = rng.randrange(len(data))
            data = data[:at] + bytes([rng.randrange(256)]) + data[at + 1:]
        return "encoding", data
    if pick < 0.4:
        where = rng.choice(["teacher.options", "student.options.hidden", "methods.1.temperature", "train.milestones",
                            "description", "task", "teacher.options.channels", "methods.1"])
        return "deep", with_value(where, deep(rng)).encode()
    if pick < 0.5:
        where = rng.choice(["teacher.options", "student.options.hidden", "methods.1.temperature", "methods.1.alpha",
                            "train.milestones", "description", "methods", "data", "name"])
        return "bomb", with_value(where, bomb(rng, rng.randint(3, 7), rng.randint(3, 7))).encode()
    if pick < 0.55:
        return "huge", (BASE_TEXT + "description: '" + "x" * rng.choice([10**5, 10**6 + 10]) + "'\n").encode()
    return "value", with_value(rng.choice(paths), value(rng)).encode()


# ---------------------------------------------------------------------------------------------------------
# running one case
# ---------------------------------------------------------------------------------------------------------

class Hang(BaseException):
    pass


def _alarm(signum, frame):
    raise Hang()


def checks_before_training(recipe, run_dir, resume, trust_pickle):
    """What a run checks before it trains (replaces ``_run_recipe``: the fuzzer trains nothing)."""
    from distill.run_models import check_model_specs, get_teacher, load_data

    data = load_data(recipe)
    check_model_specs(recipe, data)
    for name, spec in recipe.teacher_specs.items():
        if spec.checkpoint is not None:
            get_teacher(recipe, data, run_dir, trust_pickle=trust_pickle, train=False, name=name)
    return {}


class Tally:
    def __init__(self, name: str):
        self.name = name
        self.cases = self.accepted = self.refused = 0
        self.families: dict[str, int] = {}
        self.failures: list[str] = []
        self.tracebacks = self.hangs = self.long = self.multiline = 0
        self.longest = ""
        self.slowest = 0.0
        self.peak_mb = 0.0

    def record(self, family: str, args: list[str], code, err: str, seconds: float, crash: str | None = None):
        self.cases += 1
        self.families[family] = self.families.get(family, 0) + 1
        self.slowest = max(self.slowest, seconds)
        lines = [line for line in err.splitlines() if line.strip()]
        problem = None
        if crash == "hang":
            self.hangs += 1
            problem = f"hang (> {CASE_SECONDS} s)"
        elif crash is not None or "Traceback" in err or code not in (0, 2):
            self.tracebacks += 1
            problem = f"exit {code}: {crash or err[-300:]}"
        elif len(lines) > 1:
            self.multiline += 1
            problem = f"{len(lines)} lines: {err[:300]!r}"
        elif lines and len(lines[0]) > MAX_LINE:
            self.long += 1
            problem = f"{len(lines[0])} characters: {lines[0][:200]!r}"
        if code == 2 and lines and len(lines[0]) > len(self.longest):
            self.longest = lines[0]
        if code == 0:
            self.accepted += 1
        elif code == 2:
            self.refused += 1
        if problem:
            shown = [a if len(a) < 120 else a[:100] + f"...({len(a)} chars)" for a in args]
            self.failures.append(f"[{family}] {shown}: {problem}")

    def summary(self) -> str:
        return (f"{self.name}: {self.cases} cases ({', '.join(f'{k} {v}' for k, v in sorted(self.families.items()))}); "
                f"accepted {self.accepted}, refused {self.refused}; tracebacks {self.tracebacks}, hangs {self.hangs}, "
                f"multi-line {self.multiline}, over {MAX_LINE} chars {self.long}; longest message "
                f"{len(self.longest)} chars; slowest case {self.slowest:.2f} s"
                + (f"; peak memory {self.peak_mb:.0f} MB" if self.peak_mb else ""))


def run_main(args: list[str]) -> tuple[object, str, float, str | None]:
    """``distill.cli.main(args)`` with stderr captured, under a timer: (exit code, stderr, seconds, crash)."""
    from distill.cli import main

    err, out = io.StringIO(), io.StringIO()
    crash = None
    code: object = None
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, CASE_SECONDS)
    started = time.perf_counter()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                code = main(args)
            except SystemExit as exc:  # argparse
                code = exc.code
    except Hang:
        crash = "hang"
    except BaseException as exc:  # noqa: BLE001 - a traceback the user would have seen
        crash = f"{type(exc).__name__}: {str(exc)[:300]}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    return code, err.getvalue(), time.perf_counter() - started, crash


def weight_file(rng: random.Random, folder: Path) -> Path:
    """A teacher weight file: empty, truncated, random, another model's, or a good one."""
    import torch
    from safetensors.torch import save_file

    from distill.zoo import build_model

    suffix = rng.choice([".safetensors", ".pt", ".pth", ".bin"])
    path = folder / f"w{rng.randrange(10**9)}{suffix}"
    kind = rng.choice(["empty", "truncated", "random", "other-model", "good", "text", "tensor"])
    model = build_model("cnn", (1, 8, 8), 10, channels=[16, 32], hidden=64)
    if kind in ("truncated", "good", "other-model"):
        if kind == "other-model":
            model = build_model("mlp", (1, 8, 8), 10, hidden=[7])
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        if suffix == ".safetensors":
            save_file(state, str(path))
        else:
            torch.save(state, path)
        if kind == "truncated":
            data = path.read_bytes()
            path.write_bytes(data[: rng.randrange(len(data))])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "random":
        path.write_bytes(bytes(rng.randrange(256) for _ in range(rng.choice([1, 8, 100, 5000]))))
    elif kind == "text":
        path.write_text("not weights\n")
    else:
        torch.save(torch.zeros(3), path) if suffix != ".safetensors" else save_file({"x": torch.zeros(3)}, str(path))
    return path


ZOO = ["cnn", "mlp", "resnet", "resnet8", "wrn", "vgg", "vgg8", "one", "cohort", "shufflenetv2", "generator", "resnet8x4",
       "wrn_16_2"]
OPTION_KEYS = ["channels", "hidden", "depth", "widths", "widen_factor", "dropout", "net_size", "peers", "peer", "options",
               "latent", "width", "branches", "zero_init_residual", "input_dropout", "nope"]


def model_option(rng: random.Random) -> str:
    small = lambda: rng.choice(["0", "1", "2", "3", "4", "8", "16", "-1", "0.5", "1.5", "true", "null", "100000",
                                "1000", "999", "'a'"])  # noqa: E731
    pick = rng.random()
    if pick < 0.4:
        return small()
    if pick < 0.8:
        return "[" + ", ".join(small() for _ in range(rng.choice([0, 1, 2, 3, 4, 6]))) + "]"
    return rng.choice(ZOO + ["{}", "{hidden: [8]}", "{channels: [0]}"])


def make_case(rng: random.Random, paths: list[str], folder: Path, k: int) -> tuple[str, list[str]]:
    """(family, command-line arguments after ``--threads 1``) of one generated case."""
    run_dir = str(folder / f"run-{k}")
    pick = rng.random()
    if pick < 0.1:  # a zoo model with options it may not build or run with (8x8 digits)
        who = rng.choice(["student", "teacher", "methods.1.student"])
        options = "{" + ", ".join(f"{rng.choice(OPTION_KEYS)}: {model_option(rng)}"
                                  for _ in range(rng.randint(0, 2))) + "}"
        return "model", ["run", "digits", "--set", f"{who}.model={rng.choice(ZOO)}", "--set",
                         f"{who}.options={options}", "--run-dir", run_dir, "--no-progress"]
    if pick < 0.4:  # --set overrides on a bundled recipe
        sets = []
        for _ in range(rng.randint(1, 3)):
            key = set_key(rng, paths)
            sets += ["--set", f"{key}={value(rng)}" if rng.random() < 0.95 else rng.choice([key, "=1", "=", key + "=="])]
        return "set", ["run", "digits", *sets, "--run-dir", run_dir, "--no-progress"]
    if pick < 0.85:  # a recipe file
        family, data = recipe_bytes(rng, paths)
        path = folder / f"recipe-{k}.yaml"
        path.write_bytes(data)
        return family, ["run", str(path), "--run-dir", run_dir, "--no-progress"]
    if pick < 0.9:  # weight files
        snippet = str(weight_file(rng, folder))
        return "weights", ["run", "digits", "--set", f"teacher.checkpoint={snippet}", "--run-dir", run_dir,
                           "--no-progress"]
    if pick < 0.95:  # --resume of a damaged run directory
        family, data = recipe_bytes(rng, paths)
        resumed = folder / f"resumed-{k}"
        resumed.mkdir()
        if rng.random() < 0.9:
            (resumed / "recipe.yaml").write_bytes(data)
        return "resume", ["run", "--resume", str(resumed), "--no-progress"]
    # recipe paths: too long, not there, a directory, a NUL byte, a device
    path = rng.choice(["a" * 300 + ".yaml", "x/" * 3000 + "r.yaml", str(folder), "no-such.yaml", "/dev/null",
                       "/dev/zero", "digits\x00", "", "-", "é" * 200, "default/../digits"])
    return "path", ["run", path, "--run-dir", run_dir, "--no-progress"]


@pytest.fixture
def no_training(monkeypatch, tmp_path):
    import distill.experiment

    monkeypatch.setattr(distill.experiment, "_run_recipe", checks_before_training)
    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    yield tmp_path


def test_generated_hostile_input_is_one_line_or_runs(no_training):
    import torch

    torch.set_num_threads(1)
    rng = random.Random(SEED)
    paths = schema_paths()
    tally = Tally("in-process")
    for k in range(CASES):
        family, args = make_case(rng, paths, no_training, k)
        code, err, seconds, crash = run_main(["--threads", "1", *args])
        tally.record(family, args, code, err, seconds, crash)
    print("\n" + tally.summary())
    report = os.environ.get("DISTILL_FUZZ_REPORT")
    if report:
        with open(report, "a") as f:
            f.write(json.dumps({"summary": tally.summary(), "longest": tally.longest,
                                "failures": tally.failures[:50]}) + "\n")
    assert not tally.failures, f"{len(tally.failures)} of {tally.cases} cases broke the promise:\n" + \
        "\n".join(tally.failures[:20])
    assert tally.accepted and tally.refused  # the generator reaches both sides


def test_set_grammar_examples(no_training):
    """The --set grammar: list items are plain ASCII digits in range; a method's name points to its number."""
    for key, needle in [("methods.kd.temperature", "write methods.1.temperature"), ("methods..alpha", "empty part"),
                        ("methods.0x1.alpha", "give an item number"), ("methods.-1.alpha", "is not a key"),
                        ("methods.+1.alpha", "is not a key"), ("methods.١.alpha", "is not a key"),
                        ("methods.2.alpha", "give an item number (0 to 1)"), ("methods.01.alpha", "item number")]:
        code, err, _, crash = run_main(["run", "digits", "--set", f"{key}=2"])
        assert crash is None and code == 2 and needle in err and len(err.strip().splitlines()) == 1, (key, err)


def _process(args: list[str], env: dict) -> tuple[int | None, str, float, float]:
    """``python -m distill ARGS`` under a timeout: (exit code or None when killed, stderr, seconds, peak MB)."""
    def limits():
        resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))  # a runaway stops at 8 GB of address space

    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "distill", "--threads", "1", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env, preexec_fn=limits)
    killed = []
    timer = threading.Timer(PROCESS_SECONDS, lambda: (killed.append(True), proc.kill()))
    timer.start()
    try:
        err = proc.stderr.read()  # until the process ends (or is killed)
        # this child's own peak memory (wait4's usage is the child's, not the largest of all earlier children)
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        timer.cancel()
        proc.stderr.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    code = None if killed else proc.returncode
    return code, err.decode(errors="replace"), time.perf_counter() - started, usage.ru_maxrss / 1024


def test_full_size_bombs_and_nesting_in_a_process(tmp_path):
    """The issue's cases at full size, each in its own process: 9 x 9 (and larger) alias bombs in
    teacher.options, student.options.hidden and a method parameter, in a file and in --set; 1,000 and
    5,000 levels of nesting; a 5,000-digit integer. Each stops in one line, in seconds, in little memory."""
    rng = random.Random(SEED + 1)
    env = dict(os.environ, OMP_NUM_THREADS="1", DISTILL_CACHE=str(tmp_path / "cache"), PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).parent.parent / "src"), os.environ.get("PYTHONPATH", "")]))
    fixed = [("bomb", "teacher.options", bomb(rng, 9, 9)), ("bomb", "student.options.hidden", bomb(rng, 9, 9)),
             ("bomb", "methods.1.temperature", bomb(rng, 12, 12)), ("deep", "teacher.options", deep(rng, 5000)),
             ("deep", "student.options.hidden", deep(rng, 1000)), ("number", "train.epochs", "9" * 5000)]
    cases = [fixed[k % len(fixed)] for k in range(max(SUBPROCESS_CASES, 1))]
    tally = Tally("subprocess")
    for k, (family, where, snippet) in enumerate(cases):
        if k % 2 == 0:
            path = tmp_path / f"r{k}.yaml"
            path.write_text(with_value(where, snippet))
            args = ["run", str(path), "--run-dir", str(tmp_path / f"run{k}")]
        else:
            args = ["run", "digits", "--set", f"{where}={snippet}", "--run-dir", str(tmp_path / f"run{k}")]
        code, err, seconds, peak = _process(args, env)
        tally.peak_mb = max(tally.peak_mb, peak)
        tally.record(family, args, code if code is not None else "killed", err, seconds,
                     "hang" if code is None else None)
        assert code == 2, (where, err[-500:])
    print("\n" + tally.summary())
    assert not tally.failures, "\n".join(tally.failures)
    assert tally.peak_mb < PROCESS_MB


ISSUE_23 = [  # (recipe text or None for digits, --set overrides, text the one line must hold)
    (BASE_TEXT.encode("latin-1").replace(b"# A", b"# caf\xe9 A"), [], "not a text file"),
    (BASE_TEXT.encode("utf-16"), ["train.epochs=0"], "'train.epochs'"),
    (BASE_TEXT.encode("utf-32"), ["train.epochs=0"], "'train.epochs'"),
    (BASE_TEXT.encode("utf-8-sig"), ["train.epochs=0"], "'train.epochs'"),
    (None, ["data.val_size=5000"], "'data.val_size'"),
    (None, ["seed=-1"], "'seed'"), (None, ["seed=4294967296"], "'seed'"), (None, ["teacher.seed=-3"], "'teacher.seed'"),
    (None, ["teacher.options.channels=[16, 32, 64, 128]"], "'teacher.options'"),
    (None, ["teacher.options.channels=[]"], "'teacher.options'"),
    (None, ["student.model=cnn", "student.options={channels: [0]}"], "'student.options'"),
    (None, ["train.cache_teacher=true", "train.teacher_cache_dir=" + __file__], "'train.teacher_cache_dir'"),
    (None, ["train.cache_teacher=true", "data.augment.shift=2"], "train.cache_teacher"),
    (None, ["evaluation.latency_repeats=1000000000"], "'evaluation.latency_repeats'"),
    (None, ["methods.1.generations=2147483648"], "'methods.1.generations'"),
    (None, ["train.epochs=!!int x"], "--set train.epochs"),
    (None, ["train.epochs=" + "9" * 5000], "--set train.epochs"),
    (None, ["teacher.options=" + "[" * 1000 + "]" * 1000], "nested deeper"),
    (None, ["methods.1.alpha=" + "y" * 50000], "'methods.1'"),
]


@pytest.mark.parametrize("case", range(len(ISSUE_23)))
def test_issue_23_cases_name_their_field(no_training, case):
    data, sets, needle = ISSUE_23[case]
    recipe = "digits"
    if data is not None:
        recipe = str(no_training / "recipe.yaml")
        Path(recipe).write_bytes(data)
    args = ["run", recipe, *[a for s in sets for a in ("--set", s)], "--run-dir", str(no_training / "run")]
    code, err, _, crash = run_main(args)
    lines = err.strip().splitlines()
    assert crash is None and code == 2 and len(lines) == 1 and len(lines[0]) <= MAX_LINE, err[-500:]
    assert needle in lines[0], lines[0]


def test_small_dataset_without_val_size_carves_a_tenth(no_training):
    """digits has 1,497 training images: without data.val_size, 149 are carved (5,000 would leave none), and
    the run directory's recipe.yaml keeps it unset, so --resume carves the same."""
    from distill.recipe import dump_recipe, load_recipe, parse_recipe, read_recipe_file
    from distill.run_models import load_data

    tree = {k: v for k, v in BASE.items()}
    tree["data"] = {"dataset": "digits"}
    recipe = parse_recipe(tree)
    data = load_data(recipe)
    assert len(data.val) == 149 and len(data.train) == 1497 - 149
    (no_training / "recipe.yaml").write_text(dump_recipe(recipe))
    assert parse_recipe(read_recipe_file(no_training / "recipe.yaml")).data.chosen_val_size is None
    assert load_recipe("default").data.chosen_val_size == 5000  # the bundled recipes say it, unchanged
