"""A generative fuzzer of the public Python API: hostile arguments and datasets, never a traceback.

Every case calls a public constructor (``Distiller``, ``Term``, ``Ramp``, ``get_task``, ``RandomShift``, ``MixUp``,
``TrainConfig``) or trains / evaluates a tiny model on a generated dataset, with arguments drawn from valid values
and hostile ones (wrong types, NaN, out-of-range numbers, huge strings, functions of the wrong shape ...). A case
passes when it returns normally, or raises a distill error (a ``ValueError`` subclass defined in distill) whose
message is one line of at most 300 characters; a raw ``TypeError`` / ``RuntimeError`` / ``IndexError`` / pydantic
``ValidationError`` fails it. Cases built on data known to be bad (NaN inputs, labels out of range, one-hot or
fractional class labels, empty sets) must be refused, not trained on.

Each case trains 1-2 epochs of a few samples on an MLP of 8 inputs and 3 outputs, so a case takes milliseconds.
``DISTILL_FUZZ_CASES`` (default 500) sets the number of cases, ``DISTILL_FUZZ_SEED`` the seed:

    DISTILL_FUZZ_CASES=2000 OMP_NUM_THREADS=1 pytest tests/test_hostile_api.py -q -s
"""
from __future__ import annotations

import collections
import math
import os
import random
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from distill import ArrayDataset, Distiller, MixUp, RandomShift, Ramp, Term, TrainConfig, evaluate
from distill.tasks import get_task

CASES = int(os.environ.get("DISTILL_FUZZ_CASES", "500"))
SEED = int(os.environ.get("DISTILL_FUZZ_SEED", "0"))
IN, OUT = 8, 3


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------ values
def hostile(r: random.Random):
    """A value of a wrong kind or out of range for most arguments."""
    pool = [
        None, 0, -1, 1, 2.5, -0.0, math.nan, math.inf, -math.inf, True, False, "", "abc", "ce", "logits", "x" * 5000,
        [], [1], [None], [[1.0] * 3] * 2, {}, {"a": 1}, (1, 2), b"bytes", object(), 10**30, -(10**30), 1e-300,
        torch.tensor(1.0), torch.ones(2), torch.tensor(math.nan), np.float64(0.5), np.int64(3), np.ones(3),
        lambda: 1.0, lambda x: x, lambda a, b: a, print, nn.Linear(2, 2), ["logits", 5], "no", "yes", "1e-3",
    ]
    value = r.choice(pool)
    if r.random() < 0.1:  # a deep list
        for _ in range(r.randint(2, 50)):
            value = [value]
    return value


def mlp(inputs=IN, outputs=OUT, hidden=4):
    return nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, outputs))


class Raises(nn.Module):
    """Fails in its forward pass on the call number ``when`` (a model that breaks mid-training)."""

    def __init__(self, when):
        super().__init__()
        self.net, self.calls, self.when = mlp(), 0, when

    def forward(self, x):
        self.calls += 1
        if self.calls >= self.when:
            raise RuntimeError("a forward pass that fails\nover two lines")
        return self.net(x)


class DictOut(nn.Module):
    def __init__(self, key="logits"):
        super().__init__()
        self.net, self.key = mlp(), key

    def forward(self, x):
        return {self.key: self.net(x)}


def frozen_mlp():
    model = mlp()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def students(r: random.Random):
    """A student: mostly the plain 8-to-3 MLP (``plain``), else one that cannot train on such data."""
    if r.random() < 0.5:
        return mlp(), True
    choices = [mlp, lambda: mlp(5), lambda: mlp(IN, 5), lambda: nn.ReLU(), frozen_mlp,
               lambda: Raises(r.randint(1, 6)), lambda: DictOut(), lambda: DictOut("other"), lambda: mlp().double(),
               lambda: nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(4 * IN, OUT))]
    return r.choice(choices)(), False


def teachers(r: random.Random):
    choices = [lambda: None, mlp, mlp, lambda: mlp(IN, 5), lambda: {"a": mlp(), "b": mlp()}, lambda: {},
               lambda: Raises(r.randint(1, 4)), lambda: hostile(r)]
    return r.choice(choices)()


def weights(r: random.Random):
    return r.choice([1.0, 0.5, 0, 2, Ramp(0, 1), Ramp(1, 0, 0.5), lambda epoch: min(1.0, epoch), lambda e: "x",
                     lambda e: math.nan, np.float32(0.3), torch.tensor(0.5), hostile(r)])


def losses(r: random.Random):
    def constant(s):
        return torch.tensor(1.0)

    def returns_float(s):
        return 1.0

    def fails(s):
        raise KeyError("a loss that fails")

    def vector(s):
        return s.sum(1)

    def own(s, t):
        return ((s - t) ** 2).mean()

    return r.choice(["ce", "kd", "kd", "mse", "hint", "dkd", "rkd", "bogus", constant, returns_float, fails, vector,
                     own, hostile(r)])


def terms(r: random.Random):
    """A list of terms (or a hostile value in its place); the terms may themselves refuse to be made."""
    if r.random() < 0.1:
        value = hostile(r)
        return lambda: value
    out = []
    for _ in range(r.randint(1, 3)):
        kwargs = {}
        for key, valid in (("student", ["logits", "0", "2", ["0", "2"]]), ("teacher", ["logits", None, "0"]),
                           ("labels", [True, False]), ("connector", [None, "auto", "linear"]),
                           ("name", ["t1", "t2"]), ("temperature", [1.0, 4.0]), ("group", [0, 1]),
                           ("index", [False]), ("gather", [False])):
            if r.random() < 0.15:
                kwargs[key] = r.choice(valid) if r.random() < 0.6 else hostile(r)
        out.append(lambda fn=losses(r), w=weights(r), kw=kwargs: Term(fn, w, **kw))
    return lambda: [make() for make in out]


def settings(r: random.Random) -> dict:
    """Keyword settings for ``Distiller`` / ``TrainConfig``: a few fields, valid or hostile."""
    valid = {
        "epochs": [1, 1, 2], "batch_size": [1, 3, 4, 64], "eval_batch_size": [2, 100], "lr": [1e-3, 0.1, 1e6],
        "optimizer": ["sgd", "adam", "adamw"], "momentum": [0.0, 0.5], "nesterov": [True, False],
        "weight_decay": [0.0, 0.1], "schedule": ["constant", "cosine", "linear", "step"], "warmup_epochs": [0, 0.5],
        "milestones": [[], [0.5]], "gamma": [0.1], "grad_accum": [1, 2, 3], "clip_grad_norm": [None, 1.0, 1],
        "max_norm": [None, 0.5, 3],
        "mixed_precision": ["no", "bf16"], "channels_last": [False, True], "seed": [0, 1, 2**32 - 1],
        "log_every": [1, 50], "keep_checkpoints": [1, 2], "progress": [False], "nonfinite": ["stop", "skip"],
        "eval_every": [1, 2],
    }
    out = {"progress": False, "epochs": 1, "batch_size": 4}
    for _ in range(r.randint(0, 4)):
        key = r.choice(list(valid) + ["epoch", "learning_rate", "x" * 400])
        if key in valid and r.random() < 0.5:
            out[key] = r.choice(valid[key])
        else:
            value = hostile(r)
            if key == "epochs" and isinstance(value, int) and value > 3:  # valid but endless
                continue
            out[key] = value
    return out


# ---------------------------------------------------------------------------------------- datasets
def inputs(r: random.Random, n: int):
    """Inputs of ``n`` samples: mostly ``(n, 8)`` float32, else another dtype or shape; NaN sometimes."""
    shape = r.choice([(n, IN)] * 6 + [(n, 5), (n, IN, 1), (n,), (n, 2, 4)])
    dtype = r.choice([torch.float32] * 5 + [torch.float64, torch.float16, torch.int64, torch.bool, torch.uint8])
    x = torch.randn(shape)
    x = (x > 0) if dtype == torch.bool else (x * 3).abs().to(dtype) if not dtype.is_floating_point else x.to(dtype)
    bad = False
    if r.random() < 0.12 and x.is_floating_point():
        x[r.randrange(n)].view(-1)[0] = r.choice([math.nan, math.inf])
        bad = True
    return x, bad


def labels(r: random.Random, n: int):
    """Class labels for 3 outputs, or wrong ones; ``bad``: training on them must be refused."""
    y = torch.randint(0, OUT, (n,))
    kind = r.choice(["good"] * 6 + ["high", "negative", "float", "float-int", "onehot", "2d", "short", "none"])
    if kind == "high":
        y[r.randrange(n)] = r.choice([OUT, 10, 2**40])
    elif kind == "negative":
        y[r.randrange(n)] = r.choice([-1, -5])
    elif kind == "float":
        y = y.float() + 0.5
    elif kind == "float-int":
        return y.double(), False
    elif kind == "onehot":
        y = nn.functional.one_hot(y, OUT)
    elif kind == "2d":
        y = y[:, None]
        return y, False  # (n, 1): accepted by some losses; no promise
    elif kind == "short":
        return y[: n // 2], "short"
    elif kind == "none":
        return None, False
    return y, kind not in ("good",)


def dataset(r: random.Random, n: int | None = None):
    """A dataset in one of the forms users pass, and whether training on it must be refused."""
    n = n if n is not None else r.choice([1, 2, 5, 8, 12])
    x, bad_x = inputs(r, n)
    y, bad_y = labels(r, n)
    form = r.choice(["array"] * 4 + ["numpy", "pairs", "pairs-numpy", "lists", "dicts", "columns", "mixed",
                                     "empty", "hostile", "tensor", "bare", "hf"])
    bad = bad_x or bool(bad_y)
    if form == "array":
        return (lambda: ArrayDataset(x, y)), bad
    if form == "numpy":
        return (lambda: ArrayDataset(x.numpy(), None if y is None else y.numpy())), bad
    if bad_y == "short":  # items carry one label each
        y = torch.cat([y, y.new_zeros(n - len(y), *y.shape[1:])])
        bad = bad_x
    rows = [(x[i], None if y is None else y[i]) for i in range(n)]
    if form == "pairs":
        return (lambda: [(a, b) if b is not None else (a,) for a, b in rows]), bad
    if form == "pairs-numpy":
        return (lambda: [(a.numpy(), b.item() if b is not None and b.dim() == 0 else b) if b is not None
                         else (a.numpy(),) for a, b in rows]), bad
    if form == "lists":
        return (lambda: [(a.tolist(), None if b is None else b.tolist()) for a, b in rows]), bad
    if form == "dicts":
        return (lambda: [{"input": a, "label": b} if b is not None else {"input": a} for a, b in rows]), bad
    if form == "columns":
        return (lambda: {"input": x, "label": y}), True
    if form == "mixed":  # items of two shapes, or some without labels
        return (lambda: [(torch.randn(IN if i % 2 else IN + 1),) + ((1,) if i % 3 else ()) for i in range(n)]), False
    if form == "empty":
        empty = r.choice([list, lambda: ArrayDataset(torch.zeros(0, IN), torch.zeros(0, dtype=torch.long))])
        return empty, True
    if form == "tensor":
        return (lambda: x), False
    if form == "hf":  # Hugging Face style items: token ids of different lengths, maybe labels per token
        lengths = [r.randint(1, 6) for _ in range(n)]
        per_token = r.random() < 0.5
        return (lambda: [{"input_ids": list(range(k)), **({"labels": list(range(k)) if per_token else i % OUT}
                                                           if r.random() < 0.9 else {})}
                         for i, k in enumerate(lengths)]), False
    if form == "bare":
        return (lambda: [a for a, _ in rows]), False
    value = hostile(r)
    return (lambda: value), True


# ------------------------------------------------------------------------------------------- cases
def case_distiller(r: random.Random, tmp):
    (student, plain), teacher = students(r), teachers(r)
    made_terms = terms(r) if r.random() < 0.6 else None
    options = settings(r)
    task = r.choice([None, None, None, "classification", "regression", "multilabel", "tokens", "bogus", 5])
    extra = {}
    for key, valid in (("augment", [RandomShift(1), MixUp(1.0), lambda x, g: x, lambda x, g: 1 / 0]),
                       ("collate_fn", [lambda items: items, lambda items: None, lambda items: 1 / 0]),
                       ("run_dir", [str(tmp / f"run{r.randrange(10**9)}"), str(tmp / "a-file")]),
                       ("trust_pickle", [False]), ("train_up_to", ["0", "bogus"]), ("config", [TrainConfig()])):
        if r.random() < 0.1:
            extra[key] = r.choice(valid) if r.random() < 0.6 else hostile(r)
    if r.random() < 0.1:
        options["cache_teacher"] = r.choice([True, hostile(r)])
    train, bad_train = dataset(r)
    val, bad_val = dataset(r) if r.random() < 0.5 else ((lambda: None), False)
    evaluate_too = r.random() < 0.3
    test = dataset(r)[0]

    resume = r.choice([False] * 8 + [True, hostile(r)])

    def run():
        made = made_terms() if made_terms is not None else None
        d = Distiller(student, teacher, made, task=task, **extra, **options)
        d.fit(train(), val(), resume=resume)
        if evaluate_too:
            d.evaluate(test())
    # a refusal is promised when the training set is bad for the default classification set-up
    promised = bad_train and plain and made_terms is None and task in (None, "classification") and teacher is None \
        and options.get("nonfinite") != "skip"
    return f"Distiller({student.__class__.__name__}, {type(teacher).__name__}, task={task!r}, {options}, " \
           f"{sorted(extra)})", run, promised


def case_dataset(r: random.Random, tmp):
    """A valid set-up (plain student, a teacher or none, the usual terms) on hostile training and validation sets."""
    teacher = r.choice([None, mlp()])
    made = [Term("ce", 0.5), Term("kd", 0.5)] if teacher is not None and r.random() < 0.5 else None
    options = {"progress": False, "epochs": r.choice([1, 2]), "batch_size": r.choice([1, 3, 4]),
               "grad_accum": r.choice([1, 1, 2]), "cache_teacher": teacher is not None and r.random() < 0.3}
    train, bad_train = dataset(r)
    val, bad_val = dataset(r) if r.random() < 0.5 else ((lambda: None), False)
    test, bad_test = dataset(r)

    def run():
        d = Distiller(mlp(), teacher, made, **options)
        try:
            d.fit(train(), val())
        finally:
            if teacher is not None:  # the teacher is as it was, whatever happened
                assert teacher.training and all(p.requires_grad for p in teacher.parameters())
        d.evaluate(test())
    return f"Distiller(mlp, {type(teacher).__name__}, {made}, {options}) on hostile data", run, \
        bad_train or bad_val or bad_test


def case_term(r: random.Random, tmp):
    fn, weight = losses(r), weights(r)
    kwargs = {k: hostile(r) for k in r.sample(["student", "teacher", "labels", "index", "gather", "group",
                                               "connector", "name", "temperature"], r.randint(0, 2))}
    bad = isinstance(weight, str) or weight is None or (isinstance(weight, float) and not math.isfinite(weight))
    return f"Term({fn!r}, {weight!r}, {kwargs})", lambda: Term(fn, weight, **kwargs), bad


def case_ramp(r: random.Random, tmp):
    # two or three arguments: a call with too few or too many is Python's own TypeError, as for any function
    args = [r.choice([0, 1, 0.5, hostile(r)]) for _ in range(r.randint(2, 3))]
    return f"Ramp{tuple(args)}", lambda: Ramp(*args).at(0.5, 2), False


def case_task(r: random.Random, tmp):
    name = r.choice(["classification", "regression", "multilabel", "tokens", "embedding", "bogus", hostile(r)])
    options = {k: hostile(r) for k in r.sample(["target", "pad_token_id", "tokenizer", "shift", "pooling",
                                                "normalize", "bogus"], r.randint(0, 2))}
    return f"get_task({name!r}, {options})", lambda: get_task(name, **options), False


def case_augment(r: random.Random, tmp):
    cls = r.choice([RandomShift, MixUp])
    arg = r.choice([1, 2, 0.5, hostile(r)])
    shape = r.choice([(4, 1, 6, 6), (4, 6, 6), (4, IN)])

    def run():
        transform = cls(arg)
        if cls is MixUp or len(shape) > 2:
            transform(torch.randn(shape), torch.Generator().manual_seed(0))
    return f"{cls.__name__}({arg!r}) on {shape}", run, False


def case_config(r: random.Random, tmp):
    options = settings(r)
    return f"TrainConfig({options})", lambda: TrainConfig(**options), False


def case_evaluate(r: random.Random, tmp):
    data, bad = dataset(r)
    model, plain = students(r)
    task = r.choice([None, "classification", "regression"])
    return f"evaluate({type(model).__name__}, task={task})", lambda: evaluate(model, data(), 4, task=task), \
        bad and task in (None, "classification") and plain


CASE_KINDS = [case_distiller] * 5 + [case_dataset] * 5 + [case_term] * 2 + [
    case_ramp, case_task, case_augment, case_config, case_evaluate, case_evaluate]


def outcome(call) -> tuple[str, BaseException | None]:
    """``"ok"``, ``"refused"`` (a distill error on one line of at most 300 characters) or ``"crash"``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            call()
        return "ok", None
    except ValueError as err:
        text = str(err)
        if type(err).__module__.startswith("distill") and "\n" not in text and 0 < len(text) <= 300:
            return "refused", err
        return "crash", err
    except Exception as err:  # noqa: BLE001  (any other exception is what the fuzzer looks for)
        return "crash", err


def test_hostile_calls_train_or_refuse_in_one_line(tmp_path):
    (tmp_path / "a-file").write_text("not a directory")
    r = random.Random(SEED)
    counts: collections.Counter = collections.Counter()
    failures = []
    for number in range(CASES):
        kind = r.choice(CASE_KINDS)
        torch.manual_seed(number)
        description, call, must_refuse = kind(r, tmp_path)
        if os.environ.get("DISTILL_FUZZ_ONLY") == str(number):  # replay one case with its traceback
            print(description)
            call()
        result, err = outcome(call)
        counts[(kind.__name__, result)] += 1
        if result == "crash" or (result == "ok" and must_refuse):
            what = "trained on bad data" if result == "ok" else f"{type(err).__name__}: {str(err)[:300]!r}"
            failures.append(f"case {number} {description[:300]}: {what}")
    total = collections.Counter()
    for (_, result), n in counts.items():
        total[result] += n
    print(f"\nhostile API fuzzer: {CASES} cases (seed {SEED}): {total['ok']} ran, {total['refused']} refused in "
          f"one line, {total['crash']} crashed, {len(failures)} failures")
    assert not failures, f"{len(failures)} of {CASES} cases failed:\n" + "\n".join(failures[:15])
