"""Writes that a kill cannot leave half done: write under a temporary name, then rename. And where cached
work (trained teachers, tokenizers, corpora) is kept, under a key of its settings."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file, save_model
from torch import nn

from distill.errors import DistillError


def cache_dir() -> Path:
    """Where trained teachers are kept for reuse: ``$DISTILL_CACHE`` or ``~/.cache/distill``."""
    return Path(os.environ.get("DISTILL_CACHE", Path.home() / ".cache" / "distill"))


def settings_key(settings, length: int = 12) -> str:
    """A short stable hash of JSON-able ``settings`` (key order ignored): what names a cached result, so a
    change of any setting makes a new one instead of reusing a stale one."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:length]


def row_key(settings: dict, teacher_weights: str | None = None) -> str:
    """The key of a benchmark's stored rows: ``settings`` and, for rows that depend on a trained teacher, the
    digest of the teacher's weights (:func:`distill.cache.weights_digest`). A teacher trained again by the same
    settings on another machine can be another model (seen with the Hinton and nlp teachers), and the rows of
    two teachers must not share a table; rows no teacher took part in keep their key when it is retrained."""
    return settings_key({**settings, **({"teacher_weights": teacher_weights} if teacher_weights else {})})


def stored_row(path: str | os.PathLike, key: str) -> dict | None:
    """The benchmark row kept at ``path`` when it was made with settings ``key``, else None."""
    path = Path(path)
    stored = json.loads(path.read_text()) if path.is_file() else {}
    return stored if stored.get("key") == key else None


def checkpoints_in(run_dir: str | os.PathLike) -> list[Path]:
    """The finished checkpoints of a run directory, oldest first (a ``.tmp`` one was cut off while written;
    one without its files, e.g. emptied by a copy that kept only some files, cannot be resumed from)."""
    return sorted(p for p in (Path(run_dir) / "checkpoints").glob("step-*") if not p.name.endswith(".tmp")
                  and (p / "model.safetensors").is_file() and (p / "state.pt").is_file())


def bench_row(path: str | os.PathLike, key: str, make: Callable[[], dict], train: bool = True
              ) -> tuple[dict | None, bool]:
    """One benchmark row kept in its own file: the stored row when it was made with settings ``key``, else
    ``make()`` (with ``key`` added) written to ``path`` (or None when not ``train``: a table of the stored rows
    only). Returns ``(row, made)``; an interrupted benchmark resumes at the first row not written, and a row
    whose training continued from a killed process's checkpoints (in :func:`row_run_dir`) says
    ``"resumed": true`` (its own timings count the last process only)."""
    stored = stored_row(path, key)
    if stored is not None or not train:
        return stored, False
    path, run_dir = Path(path), row_run_dir(path, key)
    resumed = bool(checkpoints_in(run_dir))
    row = {**make(), "key": key, **({"resumed": True} if resumed else {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(row, indent=1))
    shutil.rmtree(run_dir, ignore_errors=True)
    return row, True


def row_path(out_dir: str | os.PathLike, arm: str, seed: int) -> Path:
    """Where a benchmark keeps its (arm, seed) row."""
    return Path(out_dir) / arm / f"seed-{seed}.json"


def row_run_dir(path: str | os.PathLike, key: str) -> Path:
    """The run folder (checkpoints) of the training behind the row kept in ``path`` with settings ``key``, under
    :func:`cache_dir`: a benchmark that trains there resumes a row killed half-way (bit-identically, as any run
    does), and :func:`bench_row` removes the folder once the row is written."""
    path = Path(path)
    return cache_dir() / "bench-runs" / f"{path.parent.parent.name}-{path.parent.name}-{path.stem}-{key}"


def chosen_arms(only: list[str] | None, arms) -> list[str]:
    """The arms a benchmark runs: ``only`` (checked against ``arms``), or every arm of ``arms``."""
    unknown = sorted(set(only or []) - set(arms))
    if unknown:
        raise DistillError(f"unknown arms {unknown}; arms: {', '.join(arms)}")
    return list(only or arms)


def bench_rows(out_dir: str | os.PathLike, arms, seeds: int, key: Callable[[str], str],
               make: Callable[[str, int], dict], describe: Callable[[dict], str], say: Callable = print,
               missing: list | None = None) -> list[dict]:
    """Every (arm, seed) row of a benchmark, each kept in ``out_dir/ARM/seed-K.json`` by :func:`bench_row` with
    settings ``key(arm)`` and made by ``make(arm, seed)``; ``describe(row)`` is said after each. Given a list
    ``missing``, nothing is trained: the rows not stored are named in it (a table of the stored rows)."""
    rows = []
    for arm in arms:
        for seed in range(seeds):
            say(f"{arm} seed {seed} ...")
            row, made = bench_row(row_path(out_dir, arm, seed), key(arm), lambda: make(arm, seed),
                                  train=missing is None)
            if row is None:
                missing.append(f"{arm} seed {seed}")
                continue
            say(f"  {describe(row)}  ({row['train_seconds']:.0f} s{'' if made else ', stored'})")
            rows.append(row)
    return rows


def write_bench_results(out_dir: str | os.PathLike, summary: dict, table: str, say: Callable | None = None) -> dict:
    """A benchmark's ``results.json`` (``summary``) and ``table.md`` (``table``) in ``out_dir``; the table is said
    with ``say`` when given. Returns ``summary``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.json", json.dumps(summary, indent=1, default=str))
    atomic_write_text(out / "table.md", table + "\n")
    if say is not None:
        say(table)
    return summary


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    tmp = _tmp(path)
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_save_model(model: nn.Module, path: str | os.PathLike) -> None:
    """``safetensors.torch.save_model`` to ``path``, which always holds either the old or the new file."""
    path = Path(path)
    tmp = _tmp(path)
    save_model(model, str(tmp))
    os.replace(tmp, path)


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """``safetensors.torch.save_file`` to ``path``, which always holds either the old or the new file."""
    path = Path(path)
    tmp = _tmp(path)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


def atomic_write_dir(final: Path, write: Callable[[Path], None]) -> None:
    """Fill a directory under a temporary name with ``write(tmp)``, then rename it to ``final``."""
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    for file in tmp.iterdir():  # on disk before the rename makes the directory visible
        with open(file, "rb") as f:
            os.fsync(f.fileno())
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


def cached_model(folder: Path, model, train: Callable[[], dict], message: str = "", say=print):
    """``model`` with the weights kept in ``folder`` (``model.safetensors`` beside ``teacher.json``); the first
    time, trained by ``train()`` (which returns what to keep beside the weights: settings, history ...), saying
    ``message`` first, and saved there with the seconds it took. Returns ``(model in eval mode, that record)``."""
    from safetensors.torch import load_file

    if (folder / "teacher.json").is_file():
        model.load_state_dict(load_file(folder / "model.safetensors"))
        return model.eval(), json.loads((folder / "teacher.json").read_text())
    if message:
        say(f"{message} (cached in {folder})")
    start = time.perf_counter()
    info = train()
    info = {**info, "seconds": round(time.perf_counter() - start, 1)}

    def write(tmp: Path) -> None:
        save_file(model.state_dict(), tmp / "model.safetensors")
        (tmp / "teacher.json").write_text(json.dumps(info, indent=1))

    atomic_write_dir(folder, write)
    return model.eval(), info


class UnsafeFile(DistillError):
    """A file that would run code when loaded, refused without an explicit opt-in."""


def torch_load(path: str | os.PathLike, trust_pickle: bool = False):
    """``torch.load`` that refuses anything but tensors and plain containers unless ``trust_pickle``."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as err:
        if "weights only" not in str(err).lower():  # not a refused object: a damaged or foreign file
            raise ValueError(f"{path} is not a torch file ({str(err).strip()[:80] or 'cannot unpickle'})") from None
        raise UnsafeFile(f"{path} holds Python objects that could run code when loaded; refused. If you trust "
                         "this file, pass trust_pickle=True (command line: --trust-pickle)") from None


def load_weights(model: nn.Module, path: str | os.PathLike, trust_pickle: bool = False) -> None:
    """Load weights into ``model`` from safetensors, or from a torch file holding a state dict."""
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    if Path(path).stat().st_size == 0:
        raise ValueError(f"{path} is empty (0 bytes); was it written completely?")
    if Path(path).suffix == ".safetensors":
        try:
            load_model(model, str(path))
        except SafetensorError as err:
            raise ValueError(f"{path} is not a readable safetensors file ({str(err).strip() or 'damaged'}); "
                             "was it written completely?") from None
        return
    with open(path, "rb") as f:
        head = f.read(4)
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):  # torch's zip format, or a plain pickle
        raise ValueError(f"{path} is not a torch file (it starts with neither a zip nor a pickle header)")
    try:
        state = torch_load(path, trust_pickle)
    except UnsafeFile:
        raise
    except (EOFError, RuntimeError, OSError, ValueError, KeyError, IndexError, ImportError, AttributeError,
            TypeError) as err:
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path} is not a readable torch file ({text}); was it written completely?") from None
    if isinstance(state, nn.Module):
        state = state.state_dict()
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
    model.load_state_dict(state)
