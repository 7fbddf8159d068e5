"""Checkpoints: what a run saves to continue where it stopped, bit for bit on CPU."""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_model, save_model
from torch import nn

from distill.engine.config import DistillError
from distill.fileio import UnsafeFile, atomic_write_dir, atomic_write_text, checkpoints_in, torch_load


def save_checkpoint(run_dir: Path, model: nn.Module, optimizer, scheduler, *, epoch: int, step: int,
                    history: list[dict], keep: int, position: dict | None = None, train_set=None) -> None:
    """Save everything needed to continue after ``epoch`` finished epochs and ``step`` optimiser steps
    (``position``: where inside the next epoch, for checkpoints taken within an epoch), keeping the last
    ``keep`` checkpoints."""
    state = {
        "epoch": epoch, "step": step, "position": position,
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy_rng": _numpy_state_to_builtin(np.random.get_state()),
        "python_rng": _to_lists(random.getstate()),
    }
    if hasattr(train_set, "state_dict"):  # a training set with its own state (a data-free generator)
        state["train_set"] = train_set.state_dict()

    def write(tmp: Path) -> None:
        save_model(model, str(tmp / "model.safetensors"))
        torch.save(state, tmp / "state.pt")
        (tmp / "history.json").write_text(json.dumps(history))

    checkpoints = run_dir / "checkpoints"
    atomic_write_dir(checkpoints / f"step-{step:08d}", write)
    for old in checkpoints_in(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def last_checkpoint(run_dir: Path | None) -> Path:
    if run_dir is None:
        raise DistillError("resume needs a run_dir")
    found = checkpoints_in(run_dir)
    if not found:
        raise DistillError(f"no checkpoint to resume from in {run_dir / 'checkpoints'}")
    return found[-1]


def load_checkpoint(run_dir: Path, model: nn.Module, optimizer, scheduler, device, *, trust_pickle: bool,
                    train_set=None, main_process: bool = True) -> tuple[int, int, dict | None, list[dict]]:
    """Restore the last checkpoint of ``run_dir``: weights, optimiser, schedule, RNG states, the training set's
    state; trims ``metrics.jsonl`` to the records written before it. Returns ``(epoch, step, position, history)``."""
    ckpt = last_checkpoint(run_dir)
    load_model(model, str(ckpt / "model.safetensors"), device=str(device))
    try:
        state = torch_load(ckpt / "state.pt", trust_pickle)
    except UnsafeFile as err:
        raise DistillError(str(err)) from None
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"]:
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    np.random.set_state(_numpy_state_from_builtin(state["numpy_rng"]))
    random.setstate(_to_tuples(state["python_rng"]))
    if "train_set" in state:
        train_set.load_state_dict(state["train_set"])
    history = json.loads((ckpt / "history.json").read_text())
    if main_process:
        metrics = run_dir / "metrics.jsonl"
        lines = metrics.read_text().splitlines() if metrics.exists() else []
        kept = [line for line in lines if line and _before(json.loads(line), state)]
        atomic_write_text(metrics, "".join(line + "\n" for line in kept))
    return state["epoch"], state["step"], state["position"], history


def _before(record: dict, state: dict) -> bool:
    """Whether a metrics record was written before the checkpoint ``state`` was taken."""
    if record.get("event") == "epoch":
        return record["epoch"] <= state["epoch"]
    return record.get("step", 0) <= state["step"] and record.get("epoch", 0) <= state["epoch"] + 1


def _to_lists(value):
    return [_to_lists(v) for v in value] if isinstance(value, (tuple, list)) else value


def _to_tuples(value):
    return tuple(_to_tuples(v) for v in value) if isinstance(value, list) else value


def _numpy_state_to_builtin(state) -> list:
    name, keys, pos, has_gauss, cached = state
    return [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]


def _numpy_state_from_builtin(state) -> tuple:
    name, keys, pos, has_gauss, cached = state
    return name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached
