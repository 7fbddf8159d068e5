"""Datasets as the engine reads them.

* :class:`ArrayDataset` keeps tensors in memory and serves whole batches with one
  indexing operation (``__getitems__``), so no per-sample Python loop runs on the
  hot path.
* :class:`IndexedDataset` adapts any map-style ``torch.utils.data.Dataset``: each item is read
  as :class:`Indexed` ``(index, item)``, and the run's task (:mod:`distill.tasks`) turns a list of
  them into a batch, whatever the items hold (pairs, bare inputs, Hugging Face style dicts).
* :class:`RandomShift` is Hinton et al.'s jitter: every image moves by up to
  ``max_shift`` pixels in each direction, applied to a whole batch at once.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from distill.errors import DistillError, describe, excerpt


class Indexed(NamedTuple):
    """A dataset item as read for a batch: its position in the dataset and the item itself."""

    index: int
    item: object


class ArrayDataset(Dataset):
    """In-memory inputs and labels; ``ds[i]`` is one sample, ``ds.__getitems__(idx)`` a batch."""

    def __init__(self, inputs: torch.Tensor, labels: torch.Tensor | None = None, name: str = "array"):
        inputs = _array(inputs, "inputs", convert_float=True)
        labels = None if labels is None else _array(labels, "labels", convert_float=False)
        if inputs.dim() == 0:
            raise DistillError(f"ArrayDataset inputs must have a first axis of samples, got {describe(inputs)}")
        if labels is not None and (labels.dim() == 0 or len(labels) != len(inputs)):
            raise DistillError(f"ArrayDataset has {len(inputs)} inputs but labels {describe(labels)}: give one label "
                               "per input (or labels=None)")
        self.inputs = inputs
        self.labels = labels
        self.name = name

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, i: int) -> dict:
        item = {"input": self.inputs[i], "index": torch.tensor(i)}
        if self.labels is not None:
            item["label"] = self.labels[i]
        return item

    def __getitems__(self, indices) -> dict:
        idx = torch.as_tensor(indices, dtype=torch.long)
        # index_select gathers rows several times faster than x[idx] (on one CPU thread: 33 vs 163 us for 128
        # Fashion-MNIST images), the same values
        batch = {"input": self.inputs.index_select(0, idx), "index": idx}
        if self.labels is not None:
            batch["label"] = self.labels.index_select(0, idx)
        return batch

    def subset(self, indices) -> "ArrayDataset":
        idx = torch.as_tensor(indices, dtype=torch.long)
        labels = None if self.labels is None else self.labels[idx]
        return ArrayDataset(self.inputs[idx], labels, self.name)

    @property
    def num_classes(self) -> int:
        return int(self.labels.max()) + 1 if self.labels is not None else 0


def _array(values, what: str, convert_float: bool) -> torch.Tensor:
    """``values`` as a tensor: numpy arrays and (nested) lists converted; numpy's float64 inputs become torch's
    default float, as models are built in it."""
    if isinstance(values, torch.Tensor):
        return values
    try:
        out = torch.as_tensor(np.asarray(values) if isinstance(values, (list, tuple)) else values)
    except (TypeError, ValueError, RuntimeError) as err:
        raise DistillError(f"ArrayDataset {what}: cannot make a tensor of {describe(values)} "
                           f"({str(err).splitlines()[0][:100]})") from None
    if convert_float and out.is_floating_point() and out.dtype != torch.get_default_dtype():
        out = out.to(torch.get_default_dtype())
    return out


class IndexedDataset(Dataset):
    """Wraps any map-style dataset so each item comes with its index (for cached teacher outputs)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Indexed:
        return Indexed(i, self.dataset[i])

    @property
    def lengths(self):
        """The wrapped dataset's ``lengths`` (``group_by_length``), or None."""
        return getattr(self.dataset, "lengths", None)


def as_dataset(dataset, role: str = "dataset") -> Dataset:
    """``dataset`` as the engine reads it (``role`` names it in errors: ``train``, ``val``)."""
    # a synthetic set (data-free KD) makes whole batches of engine dicts itself
    if isinstance(dataset, (ArrayDataset, IndexedDataset)) or getattr(dataset, "synthetic", False):
        return dataset
    if isinstance(dataset, Mapping):
        raise DistillError(f"{role} is a dict ({excerpt(list(dataset)[:4])}); a dataset is a sequence of samples: "
                           "for columns of inputs and labels use distill.ArrayDataset(inputs, labels)")
    if isinstance(dataset, (torch.Tensor, np.ndarray)):
        if dataset.ndim == 0:
            raise DistillError(f"{role} is a single {describe(dataset)}, not a dataset")
        return ArrayDataset(dataset)  # the rows are the samples (no labels)
    if isinstance(dataset, (str, bytes)) or not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
        raise DistillError(f"{role} must be a map-style torch Dataset, a list of samples or a distill.ArrayDataset, "
                           f"got {excerpt(dataset)}")
    return IndexedDataset(dataset)


def read_items(dataset: Dataset, indices) -> list | dict:
    """The items at ``indices``: a ready batch from ``__getitems__`` when the dataset serves one, else a list."""
    if hasattr(dataset, "__getitems__"):
        return dataset.__getitems__(list(indices))
    return [dataset[i] for i in indices]


class EpochSampler(Sampler):
    """A permutation of ``range(n)`` that depends only on ``(seed, epoch)``, so a resumed run sees the same order.

    With ``lengths`` (one per sample) and ``batch_size``, similar lengths are batched together, as Hugging
    Face's length-grouped sampler does: the permutation is cut into groups of ``50 * batch_size``, each group
    sorted by length (longest first), cut into batches, and the batches shuffled (the one holding the longest
    sample first, so memory runs out on the first step if it does at all).
    """

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True, lengths=None, batch_size: int = 1):
        self.n = n
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        if lengths is not None and len(lengths) != n:
            raise DistillError(f"group_by_length: the dataset gives {len(lengths)} lengths for {n} samples")
        self.lengths, self.batch_size = lengths, batch_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.n))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        if self.lengths is None:
            return iter(order)
        group, size = 50 * self.batch_size, self.batch_size
        batches = []
        for start in range(0, self.n, group):
            chunk = sorted(order[start:start + group], key=lambda i: -self.lengths[i])
            batches += [chunk[i:i + size] for i in range(0, len(chunk), size)]
        longest = max(range(len(batches)), key=lambda b: self.lengths[batches[b][0]])
        batches[0], batches[longest] = batches[longest], batches[0]
        rest = torch.randperm(len(batches) - 1, generator=g).add(1).tolist()
        return iter([i for b in [0, *rest] for i in batches[b]])


class ArrayBatches:
    """The training batches of an :class:`ArrayDataset`, cut from the sampler's order: what a ``DataLoader``
    without workers gives (the same batches, the same draw from torch's random stream when an epoch starts),
    without its per-batch machinery (about 0.1 ms a batch, a twentieth of a small model's step on a CPU)."""

    def __init__(self, dataset: ArrayDataset, sampler: EpochSampler, batch_size: int, collate_fn, skip: int = 0):
        self.dataset, self.sampler, self.batch_size, self.collate_fn = dataset, sampler, batch_size, collate_fn
        self.skip = skip

    def __len__(self) -> int:
        return -(-len(self.dataset) // self.batch_size) - self.skip

    def skip_first(self, batches: int) -> "ArrayBatches":
        """These batches from the ``batches``-th on (resuming inside an epoch)."""
        return ArrayBatches(self.dataset, self.sampler, self.batch_size, self.collate_fn, self.skip + batches)

    def __iter__(self):
        torch.empty((), dtype=torch.int64).random_()  # a DataLoader's iterator draws its workers' base seed
        order = torch.as_tensor(list(self.sampler), dtype=torch.long)
        for start in range(self.skip * self.batch_size, len(order), self.batch_size):
            yield self.collate_fn(self.dataset.__getitems__(order[start:start + self.batch_size]))


class RandomShift:
    """Shift each image in a ``(N, C, H, W)`` (or ``(N, H, W)``) batch by up to ``max_shift`` pixels, zero-filled.

    Hinton et al. 2015 jitter MNIST digits "by up to two pixels in any direction".
    """

    def __init__(self, max_shift: int = 2):
        if isinstance(max_shift, bool) or not isinstance(max_shift, (int, np.integer)) or not 0 <= max_shift <= 1024:
            raise DistillError(f"RandomShift max_shift must be a whole number of pixels from 0 to 1024, "
                               f"got {excerpt(max_shift)}")
        self.max_shift = int(max_shift)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        p = self.max_shift
        if p == 0:
            return x
        squeeze = x.dim() == 3
        if squeeze:
            x = x.unsqueeze(1)
        n, c, h, w = x.shape
        shifts = torch.randint(-p, p + 1, (2, n), generator=generator, device=generator.device if generator else "cpu")
        shifts = shifts.to(x.device)
        padded = torch.nn.functional.pad(x, (p, p, p, p))
        rows = torch.arange(h, device=x.device)[None, :] + p - shifts[0][:, None]  # (N, H)
        cols = torch.arange(w, device=x.device)[None, :] + p - shifts[1][:, None]  # (N, W)
        batch = torch.arange(n, device=x.device)[:, None, None]
        out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (N, H, W, C)
        out = out.permute(0, 3, 1, 2).contiguous()
        return out.squeeze(1) if squeeze else out

    def __repr__(self) -> str:
        return f"RandomShift({self.max_shift})"


class MixUp:
    """Mix each image with another of the batch: ``x' = lam * x + (1 - lam) * x[perm]``, one
    ``lam ~ Beta(alpha, alpha)`` per sample (Zhang et al. 2018, *mixup*).

    For distillation the labels are *not* mixed: the teacher labels the mixed image (its soft
    targets are the only target worth having there, as in Beyer et al. 2022's function matching),
    so a method trained on mixed batches uses KD without the label term (``kd`` with ``alpha=1``).
    """

    def __init__(self, alpha: float = 1.0):
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.number)) or not 0 < alpha < float("inf"):
            raise DistillError(f"MixUp alpha must be a positive number (the Beta distribution's), got {excerpt(alpha)}")
        self.alpha = float(alpha)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        n = x.shape[0]
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        lam = torch.as_tensor(np.random.default_rng(seed).beta(self.alpha, self.alpha, size=n), dtype=x.dtype)
        perm = torch.randperm(n, generator=generator).to(x.device)
        lam = lam.to(x.device).view(n, *([1] * (x.dim() - 1)))
        return lam * x + (1 - lam) * x[perm]

    def __repr__(self) -> str:
        return f"MixUp({self.alpha})"


class TokenMixUp:
    """Mixup of token sequences in embedding space, for MixKD (Liang et al. 2021, *MixKD: Towards Efficient
    Distillation of Large-scale Language Models*, ICLR).

    Token ids cannot be interpolated, their embeddings can: each batch of ``N`` sequences gains ``N`` mixed
    rows whose word embeddings are ``e'_i = lam_i * E(x_i) + (1 - lam_i) * E(x_perm(i))`` with
    ``lam_i ~ Beta(alpha, alpha)``, attending over the union of the two sequences' real tokens. Every
    attached model (student and teacher) mixes its *own* embeddings with the same ``lam`` and pairs, so the
    teacher labels the same interpolation the student sees (MixKD's teacher-mixup loss: a soft-target term
    on all ``2N`` rows). The mixed rows' labels are ``-100``, so the label term counts the originals only
    (MixKD's student-mixup loss with interpolated labels is not included).

    The engine calls :meth:`attach` with the student and teachers (a forward hook on each model's
    ``get_input_embeddings()``, or the module at ``embeddings``) and calls the object on whole batches
    (``whole_batch``). Only batches this object made are mixed, so evaluation is untouched. For the
    classification task (one class label per sample, or unlabelled).
    """

    whole_batch = True

    def __init__(self, alpha: float = 0.4, embeddings: str | None = None):
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.number)) or not 0 < alpha < float("inf"):
            raise DistillError(f"TokenMixUp alpha must be a positive number (the Beta distribution's), "
                               f"got {excerpt(alpha)}")
        self.alpha = float(alpha)
        self.embeddings = embeddings
        self._plan = None  # (the input_ids made, pairs (N, 2), lam (N,)) of the last batch made

    def attach(self, *models) -> list:
        """Hook each model's input embeddings; returns the hook handles (``handle.remove()`` detaches)."""
        handles = []
        for model in models:
            if self.embeddings is not None:
                module = dict(model.named_modules()).get(self.embeddings)
                if module is None:
                    raise DistillError(f"TokenMixUp: {type(model).__name__} has no module {self.embeddings!r}")
            elif hasattr(model, "get_input_embeddings"):
                module = model.get_input_embeddings()
            else:
                raise DistillError(f"TokenMixUp: {type(model).__name__} has no get_input_embeddings(); give the "
                                   "embedding module's path (TokenMixUp(embeddings='...'))")
            handles.append(module.register_forward_hook(self._mix))
        return handles

    def _mix(self, module, inputs, output):
        plan = self._plan
        if plan is None or not inputs or inputs[0] is not plan[0]:  # the very tensor it made, not a copy
            return None
        pairs, lam = plan[1].to(output.device), plan[2].to(output.device, output.dtype)
        n = len(pairs)
        lam = lam.view(n, *([1] * (output.dim() - 1)))
        mixed = lam * output[pairs[:, 0]] + (1 - lam) * output[pairs[:, 1]]
        return torch.cat([output[:n], mixed])

    def __call__(self, batch: dict, generator: torch.Generator | None = None) -> dict:
        inputs = batch["input"]
        if not isinstance(inputs, Mapping) or "input_ids" not in inputs:
            raise DistillError("TokenMixUp mixes token sequences: batches need an 'input_ids' input")
        if batch.get("mask") is not None:
            raise DistillError("TokenMixUp is for one label per sample; per-position tasks (tokens) are not "
                               "supported")
        ids = inputs["input_ids"]
        n = len(ids)
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        lam = torch.as_tensor(np.random.default_rng(seed).beta(self.alpha, self.alpha, size=n), dtype=torch.float32)
        perm = torch.randperm(n, generator=generator)
        pairs = torch.stack([torch.arange(n), perm], dim=1)
        out = {}
        for key, value in inputs.items():
            if isinstance(value, torch.Tensor) and value.dim() >= 1 and len(value) == n:
                extra = value.maximum(value[perm.to(value.device)]) if key == "attention_mask" else value
                value = torch.cat([value, extra])
            out[key] = value
        made = dict(batch, input=out)
        label = batch.get("label")
        if isinstance(label, torch.Tensor):
            if label.is_floating_point() or label.dim() != 1:
                raise DistillError("TokenMixUp needs one class label per sample (task 'classification'), got "
                                   f"{describe(label)}")
            made["label"] = torch.cat([label, torch.full_like(label, -100)])
        if isinstance(batch.get("index"), torch.Tensor):
            made["index"] = torch.cat([batch["index"], batch["index"]])
        self._plan = (out["input_ids"], pairs, lam)
        return made

    def __repr__(self) -> str:
        return f"TokenMixUp({self.alpha})"


class Compose:
    """Batch transforms applied in order (e.g. a shift, then mixup)."""

    def __init__(self, *transforms):
        self.transforms = transforms

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        for t in self.transforms:
            x = t(x, generator)
        return x

    def __repr__(self) -> str:
        return "Compose(" + ", ".join(map(repr, self.transforms)) + ")"


def unlabelled(dataset: ArrayDataset) -> ArrayDataset:
    """The same inputs without their labels: a transfer set, where only the teacher's outputs teach (a dataset
    with an ``unlabelled()`` method of its own, such as a zoo text set, makes it)."""
    if hasattr(dataset, "unlabelled"):
        return dataset.unlabelled()
    return ArrayDataset(dataset.inputs, None, dataset.name + "-unlabelled")


def carve_validation(dataset: ArrayDataset, val_size: int, seed: int = 0) -> tuple[ArrayDataset, ArrayDataset]:
    """Split ``dataset`` into (train, validation) with a fixed-seed permutation."""
    if not 0 <= val_size < len(dataset):
        raise DistillError(f"val_size must be in [0, {len(dataset)}), got {excerpt(val_size)}")
    perm = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    return dataset.subset(perm[val_size:]), dataset.subset(perm[:val_size])


def channels_last_input(batch: dict) -> dict:
    """``batch`` with a 4-D image input in channels-last memory format (the same values; convolutions on CPU
    and GPU run faster over it); other inputs as they are."""
    x = batch.get("input")
    if isinstance(x, torch.Tensor) and x.dim() == 4:
        return dict(batch, input=x.contiguous(memory_format=torch.channels_last))
    return batch
