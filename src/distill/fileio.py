"""Writes that a kill cannot leave half done: write under a temporary name, then rename."""
from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from safetensors.torch import save_model
from torch import nn


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


def atomic_write_dir(final: Path, write: Callable[[Path], None]) -> None:
    """Fill a directory under a temporary name with ``write(tmp)``, then rename it to ``final``."""
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
