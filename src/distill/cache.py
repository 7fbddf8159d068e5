"""Cached teacher signals: the teacher's tap values computed once per training sample.

When the student's inputs are the same every epoch (no augmentation), the
teacher's outputs are too, so running the teacher every step is wasted work.
:class:`CachedTeacher` runs it once over the training set and looks its
outputs up by ``batch["index"]``; loss terms see the same ``{tap: tensor}``
dict as from a live teacher. With augmentation the inputs change every epoch
and a cache would hand out stale targets, so the engine refuses that
combination instead.

The values live in a :class:`TeacherOutputs` store: in memory, or on disk as
memory-mapped ``.npy`` files (``TeacherOutputs(path)``), which later runs reuse
as long as the teacher's weights and the dataset are the same (checked by a
fingerprint). On disk the ``logits`` tap can be kept as its top ``k`` entries
(:func:`topk_logits`), which is how large-vocabulary teachers are cached.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from accelerate.utils import send_to_device
from tqdm.auto import tqdm

from distill.errors import DistillError
from distill import distributed
from distill.data import IndexedDataset, channels_last_input, read_items
from distill.fileio import atomic_write_text
from distill.losses.topk import dense_from_topk, topk_logits  # noqa: F401 - their home is the losses
from distill.tasks import get_task
from distill.teacher import LiveTeacher, teacher_input


TEMPERATURES = (1.0, 2.0, 3.0, 4.0, 5.0, 8.0, 10.0, 20.0)


class CacheMismatch(DistillError):
    """A teacher cache on disk built for another teacher or dataset."""


def _hash_weights(h, model: torch.nn.Module) -> None:
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())


def weights_digest(model: torch.nn.Module) -> str:
    """A hash of the model's weights (parameters and buffers)."""
    h = hashlib.sha256()
    _hash_weights(h, model)
    return h.hexdigest()[:16]


def fingerprint(model: torch.nn.Module, dataset, collate=None) -> str:
    """A hash of the model's weights and of the dataset's size and first inputs (every tensor of dict inputs)."""
    h = hashlib.sha256()
    _hash_weights(h, model)
    h.update(str(len(dataset)).encode())
    collate = collate or get_task().collate
    inputs = teacher_input(collate(read_items(dataset, range(min(8, len(dataset))))))
    named = sorted(inputs.items()) if isinstance(inputs, Mapping) else [("", inputs)]
    for name, value in named:
        if isinstance(value, torch.Tensor):
            h.update(name.encode())
            h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _same_model(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """The same teacher: the same module, or mappings of several teachers with the same members
    (a teacher ensemble wraps its members in a new ModuleDict for each run)."""
    if a is b:
        return True
    if isinstance(a, torch.nn.ModuleDict) and isinstance(b, torch.nn.ModuleDict):
        return list(a.keys()) == list(b.keys()) and all(a[k] is b[k] for k in a.keys())
    return False


def _file(tap: str, part: str = "") -> str:
    """The ``.npy`` file of a tap (or of one part of a top-k tap: ``values``, ``indices``, ``tail``)."""
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in tap)
    stem = f"{safe}-{hashlib.sha256(tap.encode()).hexdigest()[:6]}"
    return f"{stem}.{part}.npy" if part else f"{stem}.npy"


class TeacherOutputs:
    """Teacher tap values over one training set, filled tap by tap and shared by several students' runs.

    Args:
        path: a directory to keep them in as memory-mapped ``.npy`` files, reused by later runs
            with the same teacher weights and dataset; ``None`` keeps them in memory.
        top_k: keep logit taps (``logits``, or those a run names: every tap a term reads at a temperature) as
            their top ``k`` entries along the class axis (the last) and the log of the remaining mass (on disk
            only; for large vocabularies), at ``temperatures``.
        temperatures: the temperatures whose remaining mass is kept with ``top_k`` (by default the
            usual KD ones, 1 to 20); a term reading the logits at another temperature is refused.

    A recipe trains many students against one frozen teacher on the same data; with one
    ``TeacherOutputs`` passed to each run (``Distiller(..., teacher_outputs=...)``), the teacher
    runs over the training set once per set of new taps instead of once per student.
    """

    def __init__(self, path: str | Path | None = None, top_k: int | None = None, temperatures=TEMPERATURES):
        if top_k is not None and path is None:
            raise ValueError("top_k logits are kept on disk: give a path")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        self.path = Path(path) if path is not None else None
        self.top_k = top_k
        self.temperatures = [float(t) for t in temperatures]
        self.values: dict[str, torch.Tensor | np.ndarray | dict] = {}
        self.model = None
        self.dataset = None

    def bind(self, model, dataset, collate=None) -> None:
        """Tie the store to one teacher and one dataset (on disk: check or record their fingerprint)."""
        base = dataset.dataset if isinstance(dataset, IndexedDataset) else dataset  # a wrapper made per run
        if self.model is not None:
            if not _same_model(self.model, model) or self.dataset is not base:
                raise ValueError("TeacherOutputs holds another teacher's or another dataset's outputs; "
                                 "use one per (teacher, training set)")
            return
        self.model, self.dataset = model, base
        if self.path is None:
            return
        meta_file = self.path / "meta.json"
        mark = fingerprint(model, dataset, collate)
        meta = json.loads(meta_file.read_text()) if meta_file.is_file() else None
        if meta is not None:
            if meta["fingerprint"] != mark:
                raise CacheMismatch(f"teacher cache {self.path} was built for another teacher or dataset "
                                    f"(fingerprint {meta['fingerprint']}, now {mark}); delete it or use another "
                                    "directory")
            if meta.get("top_k") != self.top_k or (self.top_k and meta.get("temperatures") != self.temperatures):
                raise CacheMismatch(f"teacher cache {self.path} keeps top_k={meta.get('top_k')} at temperatures "
                                    f"{meta.get('temperatures')}; asked for top_k={self.top_k} at "
                                    f"{self.temperatures}; delete it or use another directory")
            for tap, entry in meta["taps"].items():
                if entry.get("complete"):
                    self.values[tap] = self._open(entry)
        self.meta = meta or {"fingerprint": mark, "top_k": self.top_k, "temperatures": self.temperatures,
                             "size": len(dataset), "taps": {}}

    def reload(self, taps) -> None:
        """Open ``taps`` from the store on disk, which another process has just completed."""
        self.meta = json.loads((self.path / "meta.json").read_text())
        for tap in taps:
            entry = self.meta["taps"].get(tap, {})
            if not entry.get("complete"):
                raise CacheMismatch(f"teacher cache {self.path}: tap {tap!r} was not completed by rank 0")
            self.values[tap] = self._open(entry)

    def __contains__(self, tap: str) -> bool:
        return tap in self.values

    def _open(self, entry: dict):
        parts = ({part: np.load(self.path / name, mmap_mode="r") for part, name in entry["files"].items()}
                 if "files" in entry else np.load(self.path / entry["file"], mmap_mode="r"))
        if "offsets" in entry:  # ragged: rows of every sample one after another
            return {"ragged": parts, "offsets": np.load(self.path / entry["offsets"]), "classes": entry.get("classes")}
        return parts

    def fill(self, tap_batches, size: int, taps: list[str], top_k_taps=("logits",)) -> None:
        """Store the values of ``taps`` from an iterable of ``(index, {tap: tensor}, lengths)`` covering ``size``
        samples in order. ``top_k_taps``: the taps (logits, class axis last) kept as their top ``k``.

        A value ``(B, L, ...)`` of three or more axes whose second axis is the batch's padded length
        (``lengths``: each sample's unpadded length, from the task's collate) is kept *ragged*: each sample's
        first ``length`` rows only, so batches padded to different lengths share one store."""
        new, classes, ragged, row_counts = {}, {}, {}, {}
        for index, values, lengths in tap_batches:
            for tap in taps:
                value = values[tap].detach()
                is_ragged = (lengths is not None and value.dim() >= 3 and value.shape[1] == int(lengths.max()))
                if ragged.setdefault(tap, is_ragged) != is_ragged:
                    raise ValueError(f"teacher tap {tap!r} is padded to the batch's length in some batches only")
                if is_ragged:
                    value = torch.cat([value[b, : int(n)] for b, n in enumerate(lengths)])
                if self.top_k is not None and tap in top_k_taps:
                    classes[tap] = value.shape[-1]
                    parts = topk_logits(value.float(), min(self.top_k, value.shape[-1]), self.temperatures)
                    parts["indices"] = parts["indices"].int()
                else:
                    parts = {"": value}
                store = new.setdefault(tap, {})
                for part, tensor in parts.items():
                    if is_ragged:
                        chunks = store.setdefault(part, [])
                        chunks.append(tensor.cpu())
                        continue
                    if part not in store:
                        store[part] = self._allocate(tap, part, (size, *tensor.shape[1:]), tensor)
                    if self.path is None:
                        store[part][index.to(tensor.device)] = tensor
                    else:
                        store[part][index.cpu().numpy()] = tensor.cpu().numpy()
                if is_ragged:
                    row_counts.setdefault(tap, []).append(torch.as_tensor(lengths).cpu())
        for tap, parts in new.items():
            offsets = None
            if ragged[tap]:
                lengths = torch.cat(row_counts[tap])
                offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.long().cumsum(0)])
                parts = {part: torch.cat(chunks) for part, chunks in parts.items()}
            if self.path is None:
                if offsets is not None:
                    self.values[tap] = {"ragged": parts if tap in classes else parts[""], "offsets": offsets.numpy(),
                                        "classes": classes.get(tap)}
                else:
                    self.values[tap] = parts[""] if set(parts) == {""} else parts
                continue
            self.path.mkdir(parents=True, exist_ok=True)
            for part, array in parts.items():
                if offsets is not None:
                    np.save(self.path / _file(tap, part), array.numpy())
                else:
                    array.flush()
            entry = ({"file": _file(tap)} if set(parts) == {""} else
                     {"files": {part: _file(tap, part) for part in parts}, "classes": classes[tap]})
            if offsets is not None:
                entry["offsets"] = _file(tap, "offsets")
                np.save(self.path / entry["offsets"], offsets.numpy())
            self.meta["taps"][tap] = {**entry, "complete": True}
            atomic_write_text(self.path / "meta.json", json.dumps(self.meta, indent=2))
            self.values[tap] = self._open(entry)

    def _allocate(self, tap: str, part: str, shape, like: torch.Tensor):
        if self.path is None:
            return torch.empty(shape, dtype=like.dtype, device=like.device)
        self.path.mkdir(parents=True, exist_ok=True)
        return np.lib.format.open_memmap(self.path / _file(tap, part), mode="w+", dtype=like.cpu().numpy().dtype,
                                         shape=tuple(shape))

    def _tail_column(self, temperature: float) -> int:
        if temperature not in self.temperatures:
            raise CacheMismatch(f"the teacher cache keeps the top-{self.top_k} logits' remaining mass at "
                                f"temperatures {self.temperatures}, not {temperature}; rebuild it with that "
                                "temperature")
        return self.temperatures.index(temperature)

    def read(self, tap: str, index: torch.Tensor, device, temperature: float = 1.0) -> torch.Tensor:
        """The stored values of ``tap`` for the samples ``index`` (dense logits for a top-``k`` tap; ragged
        values padded with zeros to the longest of these samples)."""
        stored = self.values[tap]
        if isinstance(stored, torch.Tensor):
            return stored.index_select(0, index.to(stored.device)).to(device)
        if isinstance(stored, dict) and "ragged" in stored:
            return self._read_ragged(stored, index, temperature).to(device)
        rows = np.sort(index.cpu().numpy())
        order = torch.as_tensor(np.searchsorted(rows, index.cpu().numpy()))
        if isinstance(stored, dict):
            t = self._tail_column(temperature)
            part = {k: torch.from_numpy(np.ascontiguousarray(v[rows]))[order] for k, v in stored.items()}
            dense = dense_from_topk(part["values"], part["indices"].long(), part["tail"][..., t],
                                    self.meta["taps"][tap]["classes"], temperature)
            return dense.to(device)
        return torch.from_numpy(np.ascontiguousarray(stored[rows]))[order].to(device)

    def _read_ragged(self, stored: dict, index: torch.Tensor, temperature: float) -> torch.Tensor:
        offsets = stored["offsets"]
        spans = [(int(offsets[i]), int(offsets[i + 1])) for i in index.cpu().tolist()]

        def rows(array):  # a tensor in memory, or a memory-mapped array on disk
            if isinstance(array, torch.Tensor):
                return [array[a:b].clone() for a, b in spans]
            return [torch.from_numpy(np.array(array[a:b])) for a, b in spans]

        if stored["classes"] is None:
            samples = rows(stored["ragged"] if not isinstance(stored["ragged"], dict) else stored["ragged"][""])
        else:
            parts = {k: rows(v) for k, v in stored["ragged"].items()}
            t = self._tail_column(temperature)
            samples = [dense_from_topk(v, i.long(), tail[..., t], stored["classes"], temperature)
                       for v, i, tail in zip(parts["values"], parts["indices"], parts["tail"])]
        return torch.nn.utils.rnn.pad_sequence(samples, batch_first=True)


class CachedTeacher:
    """Teacher tap values for every sample of ``dataset``, looked up by sample index.

    ``outputs``: a :class:`TeacherOutputs` to reuse taps another run computed and to keep the new ones
    (in memory when not given). ``temperatures``: per tap, the temperature a term reads it at
    (needed only for top-``k`` logits).
    """

    def __init__(self, teacher: LiveTeacher, dataset, batch_size: int = 1000, device="cpu", progress: bool = False,
                 outputs: TeacherOutputs | None = None, temperatures: dict[str, float] | None = None,
                 collate_fn=None, top_k_taps=("logits",), channels_last: bool = False):
        self.taps = teacher.taps
        collate_fn = collate_fn or get_task().collate
        self.outputs = outputs if outputs is not None else TeacherOutputs()
        self.outputs.bind(teacher.model, dataset, collate_fn)
        self.temperatures = temperatures or {}
        self.device = device
        missing = [tap for tap in self.taps if tap not in self.outputs]
        if missing:
            teacher.to(device)
            # its own generator: iterating a loader draws a seed, which must not move the global stream (a run
            # that fills the store and one that finds it on disk then train alike)
            loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_fn,
                                generator=torch.Generator())

            def batches():
                for batch in tqdm(loader, desc="caching teacher outputs", leave=False, disable=not progress):
                    batch = send_to_device(batch, device)
                    batch = channels_last_input(batch) if channels_last else batch
                    yield torch.as_tensor(batch["index"]).long(), teacher(batch), batch.get("teacher_lengths", batch.get("lengths"))

            # on disk under several processes, rank 0 alone writes the store and the others open it when it is
            # complete (two processes writing one memory-mapped file would overwrite each other's arrays)
            shared = self.outputs.path is not None and distributed.world_size() > 1
            if not shared or distributed.is_main():
                self.outputs.fill(batches(), len(dataset), missing, top_k_taps)
            if shared:
                distributed.barrier()
                if not distributed.is_main():
                    self.outputs.reload(missing)

    def to(self, device) -> "CachedTeacher":
        self.device = device
        return self

    def __call__(self, batch) -> dict[str, torch.Tensor]:
        if "index" not in batch:
            raise KeyError("a cached teacher needs batch['index'] to look its outputs up")
        index = torch.as_tensor(batch["index"]).long()
        return {tap: self.outputs.read(tap, index, self.device, self.temperatures.get(tap, 1.0)) for tap in self.taps}
