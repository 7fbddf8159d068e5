"""``distill tune RECIPE``: search the settings that decide whether distillation pays, on validation.

For every method of the recipe (``scratch`` included, so the baseline gets the same budget), an Optuna study
(TPE sampler, median pruning on the per-epoch validation curve) over

- the training's ``lr`` (log-uniform, a tenth to ten times the recipe's) and ``epochs`` (half to twice);
- the method's own numeric parameters, read from its signature: ``alpha``-like weights in ``[0, 1]``
  (uniform), ``temperature`` in ``[1, 16]`` (log), any other positive float ``d`` in ``[d / 10, 10 d]`` (log).

Each trial is one ``distill run`` of the recipe reduced to that method, in ``OUT/<label>/trial-<n>``; the
teacher is trained once and cached as usual. The studies live in ``OUT/optuna.db`` (SQLite), so an
interrupted ``distill tune`` resumes where it stopped and a larger ``--trials`` adds trials. After the search,
``OUT/best-<label>.yaml`` is each method's recipe with its best settings, ``OUT/trials.md`` every trial, and
with ``final_seeds`` the best settings of each method are run again over that many seeds and scored on the
**test** split once (``OUT/final.md``). Selection is on validation only, and the trials never read the
test split at all: they run with ``evaluation.score_test: false``, so their own tables show validation scores.
"""
from __future__ import annotations

import inspect
import json
import math
import statistics
from pathlib import Path

from distill.errors import DistillError


class TuneError(DistillError):
    """A recipe or budget ``distill tune`` cannot work with (one line)."""


def _optuna():
    try:
        import optuna
    except ImportError:
        raise TuneError("distill tune needs Optuna: pip install 'distill[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def search_space(method, recipe) -> dict[str, tuple]:
    """``{name: (kind, low, high)}`` with kind ``"float"``, ``"log"`` or ``"int"``; ``train.*`` entries are
    training settings, the others the method's parameters (see the module docstring)."""
    from distill.methods import METHODS

    lr, epochs = recipe.train.lr, recipe.train.epochs
    space = {"train.lr": ("log", lr / 10, lr * 10), "train.epochs": ("int", max(1, epochs // 2), max(2, 2 * epochs))}
    if method.method is None:
        return space
    given = method.model_extra or {}
    for name, param in inspect.signature(METHODS[method.method]).parameters.items():
        default = given.get(name, param.default)
        if isinstance(default, bool) or not isinstance(default, float | int) or default is inspect.Parameter.empty:
            continue
        if name in ("alpha", "beta") and 0 <= default <= 1 or name.endswith("_weight") and 0 <= default <= 1:
            space[name] = ("float", 0.0, 1.0)
        elif name in ("temperature", "tau") and default > 0:
            space[name] = ("log", 1.0, 16.0) if name == "temperature" else ("log", default / 10, default * 10)
        elif isinstance(default, float) and default > 0:
            space[name] = ("log", default / 10, default * 10)
    return space


def _suggest(trial, space: dict) -> dict:
    out = {}
    for name, (kind, low, high) in space.items():
        if kind == "int":
            out[name] = trial.suggest_int(name, low, high)
        else:
            out[name] = trial.suggest_float(name, low, high, log=kind == "log")
    return out


def _recipe_with(recipe, method, params: dict, seed: int | None = None, score_test: bool = True):
    """The recipe reduced to ``method`` with ``params`` (``train.*`` keys set the training section);
    ``score_test=False`` for a trial, which must not read the test split."""
    train = {k.split(".", 1)[1]: v for k, v in params.items() if k.startswith("train.")}
    extra = {k: v for k, v in params.items() if not k.startswith("train.")}
    import yaml

    from distill.recipe import dump_recipe, parse_recipe

    tree = yaml.safe_load(dump_recipe(recipe))  # the recipe as its run directory keeps it, every default filled
    tree["methods"] = [method.model_dump(mode="json", exclude_unset=True) | extra]
    tree["train"] |= train
    if seed is not None:
        tree["seed"] = seed
    if not score_test:
        tree["evaluation"]["score_test"] = False
    return parse_recipe(tree)


def _score(row: dict, metric: str):
    value = row.get(f"val_{metric}")
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def tune_recipe(recipe, out: str | Path, trials: int = 20, final_seeds: int = 0, methods: list[str] | None = None,
                say=print) -> dict:
    """Tune every method of ``recipe`` (or the ``methods`` labels) with ``trials`` trials each into ``out``;
    see the module docstring. Returns ``{label: {"best": params, "value": val, "final": [test scores]}}``."""
    from distill.engine import on_epoch
    from distill.experiment import run_recipe
    from distill.fileio import atomic_write_text
    from distill.recipe import dump_recipe

    optuna = _optuna()
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise TuneError(f"--trials must be a positive whole number, got {trials!r}")
    chosen = [m for m in recipe.methods if methods is None or m.name in methods]
    unknown = sorted(set(methods or []) - {m.name for m in recipe.methods})
    if unknown or not chosen:
        raise TuneError(f"the recipe has no method {unknown[0] if unknown else ''!r}; it has "
                        f"{', '.join(m.name for m in recipe.methods)}")
    task = recipe.build_task()
    metric, mode = task.select, task.mode
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{out / 'optuna.db'}"
    results = {}
    for method in chosen:
        space = search_space(method, recipe)
        study = optuna.create_study(study_name=method.name, storage=storage, load_if_exists=True,
                                    direction="maximize" if mode == "max" else "minimize",
                                    sampler=optuna.samplers.TPESampler(seed=recipe.seed),
                                    pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1))
        done = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE,
                                                       optuna.trial.TrialState.PRUNED)]

        def objective(trial):
            params = _suggest(trial, space)
            run_dir = out / method.name / f"trial-{trial.number}"

            def report(record: dict, distiller) -> None:
                students = run_dir / "students"  # not the teacher, trained (once) inside the first trial
                value = record.get(f"val/{metric}")
                if value is not None and distiller.run_dir is not None and students in distiller.run_dir.parents:
                    trial.report(float(value), record["epoch"])
                    if trial.should_prune():
                        raise optuna.TrialPruned()

            with on_epoch(report):
                summary = run_recipe(_recipe_with(recipe, method, params, score_test=False), run_dir)
            row = next(r for r in summary["rows"] if r.get("role") == "student")
            value = _score(row, metric)
            if value is None:
                raise TuneError(f"the trial's student has no validation {metric}: tuning needs a validation split")
            return value

        if len(done) < trials:
            say(f"{method.name}: {trials - len(done)} trials over {', '.join(space)}")
            study.optimize(objective, n_trials=trials - len(done), catch=())
        best = study.best_trial
        results[method.name] = {"best": best.params, "value": best.value, "trials": len(study.trials)}
        atomic_write_text(out / f"best-{method.name}.yaml", dump_recipe(_recipe_with(recipe, method, best.params)))
        say(f"{method.name}: best validation {metric} {best.value:.4g} with "
            + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.params.items()))
        if final_seeds:
            scores = []
            for seed in range(final_seeds):
                summary = run_recipe(_recipe_with(recipe, method, best.params, seed=recipe.seed + seed),
                                     out / method.name / f"final-seed-{seed}")
                row = next(r for r in summary["rows"] if r.get("role") == "student")
                scores.append(row[f"test_{metric}"])
            results[method.name]["final"] = scores
    atomic_write_text(out / "trials.md", _trials_table(optuna, storage, [m.name for m in chosen], metric))
    if final_seeds:
        atomic_write_text(out / "final.md", final_table(results, metric, recipe.name))
    atomic_write_text(out / "tune.json", json.dumps(results, indent=2))
    return results


def _trials_table(optuna, storage: str, labels: list[str], metric: str) -> str:
    lines = [f"| method | trial | state | validation {metric} | settings |", "|---|---:|---|---:|---|"]
    for label in labels:
        for t in optuna.load_study(study_name=label, storage=storage).trials:
            last = t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else float("nan")
            value = t.value if t.value is not None else last  # a pruned trial: its last validation score
            settings = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items())
            lines.append(f"| {label} | {t.number} | {t.state.name.lower()} | {value:.4g} | {settings} |")
    return "\n".join(lines) + "\n"


def final_table(results: dict, metric: str, name: str) -> str:
    """Each method's best settings re-run over seeds, scored on the test split: mean ± std."""
    lines = [f"# {name}: tuned on validation, scored on test", "",
             f"| method | trials | best validation {metric} | test {metric} (mean ± std) | seeds |",
             "|---|---:|---:|---:|---:|"]
    for label, r in results.items():
        scores = r.get("final", [])
        cell = (f"{statistics.fmean(scores):.2f} ± {statistics.stdev(scores):.2f}" if len(scores) > 1 else
                f"{scores[0]:.2f}" if scores else "–")
        lines.append(f"| {label} | {r['trials']} | {r['value']:.2f} | {cell} | {len(scores)} |")
    return "\n".join(lines) + "\n"
