"""Tasks: what kind of problem a run solves.

The engine knows nothing of images, labels or accuracy; a task does. It

* turns dataset items into one batch (:meth:`Task.collate`): every key that is not a target is a
  model input, sequences of different lengths are padded per batch (``input_ids`` with the pad token,
  ``attention_mask`` with 0, token labels with ``-100``), and the engine's batch is
  ``{"input": model inputs, "label": targets, "index": sample indices}`` plus, for per-position tasks,
  ``"mask"`` (the positions that count) and ``"lengths"`` (each sample's unpadded length);
* names the student's own loss on the targets (:meth:`Task.default_terms`);
* measures a model on a dataset (:meth:`Task.add_batch` / :meth:`Task.summarize`): its metrics and the one
  that selects (``select``, ``mode``). A validation set without labels is measured by fidelity to the
  teacher instead (KL or MSE to the teacher, top-1 agreement).

Built in (``TASKS``, ``get_task(name)``): ``classification`` (the default), ``regression``, ``multilabel``,
``tokens`` (per-token logits ``(B, L, V)`` of causal LMs and seq2seq decoders), ``ctc`` (speech: per-frame
logits, CER / WER), ``detection`` (boxes per image, COCO mAP by pycocotools), ``embedding``,
``parallel_embedding`` (sentence pairs across languages) and ``restoration`` (image to image: PSNR, SSIM).
Dataset items may be ``(input, label)`` pairs, bare inputs, or dicts: ``{"input": x, "label": y}`` or
Hugging Face style ``{"input_ids": ..., "attention_mask": ..., "labels": ...}`` passed to the model as
keyword arguments. Keys prefixed ``teacher_`` (``teacher_input_ids``, ``teacher_attention_mask``) are the
teacher's own inputs when it reads the sample differently from the student (another tokenizer): they go to
``batch["teacher_input"]`` without the prefix (the teacher is called on that, the student never sees it),
with ``batch["teacher_lengths"]``.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from accelerate.utils import send_to_device

from distill.data import Indexed
from distill.errors import DistillError, describe, excerpt
from distill.losses.regression import bce_loss, mse_loss
from distill.taps import logits_of
from distill.terms import Term

IGNORE_INDEX = -100
# item keys padded with 0 (besides the pad token of ``input_ids``): masks and segment ids
_ZERO_PADDED = ("attention_mask", "token_type_ids", "decoder_attention_mask", "position_ids")
_PAD_TOKEN_KEYS = ("input_ids", "decoder_input_ids")
# item keys with this prefix are the teacher's own inputs (batch["teacher_input"], the prefix dropped): for a
# teacher with another tokenizer than the student's; padded as the key without the prefix
TEACHER_PREFIX = "teacher_"
# key prefixes that pad like the key without them (a translation's "target_input_ids" is token ids)
_PAD_PREFIXES = (TEACHER_PREFIX, "target_")


def _lengths(inputs: Mapping) -> torch.Tensor | None:
    """Each sequence's unpadded length, from the attention mask (right padding), or ``None`` without token ids."""
    ids = inputs.get("input_ids")
    if not isinstance(ids, torch.Tensor):
        return None
    mask = inputs.get("attention_mask")
    return (mask.sum(1) if isinstance(mask, torch.Tensor) and mask.dim() == 2 else
            torch.full((len(ids),), ids.shape[-1], dtype=torch.long))


class TaskError(DistillError):
    """Items or targets a task cannot use; the message names the key and what to do."""


def _tensor(value, key: str, is_input: bool) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    try:
        out = torch.as_tensor(np.asarray(value) if isinstance(value, (list, tuple)) else value)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TaskError(f"item key {key!r}: cannot make a tensor of {type(value).__name__} ({err})") from None
    # numpy's float64 (its default), float16 and (for a plain input) bool items: models are built in torch's float
    if is_input and out.dtype != torch.get_default_dtype() and (
            out.is_floating_point() or (out.dtype == torch.bool and key == "input")):
        out = out.to(torch.get_default_dtype())
    return out


def check_inputs(batch: dict, where: str, *, indices=None) -> None:
    """Refuse NaN or infinite values in a batch's floating-point inputs, naming the sample (by dataset index)."""
    inputs = batch["input"]
    for key, value in (inputs.items() if isinstance(inputs, Mapping) else [("input", inputs)]):
        if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.dim() == 0:
            continue
        bad = ~torch.isfinite(value).reshape(len(value), -1).all(1)
        if bool(bad.any()):
            row = int(bad.nonzero()[0, 0])
            index = batch.get("index") if indices is None else indices
            sample = int(index[row]) if index is not None and len(index) > row else row
            what = "NaN" if bool(torch.isnan(value[row]).any()) else "infinite values"
            name = "the inputs" if key == "input" else f"input {key!r}"
            raise TaskError(f"{name} hold {what} ({where}, sample index {sample}): clean or drop such samples")


def class_label_problem(labels: torch.Tensor, width: int) -> tuple[int, int] | None:
    """The first label that is not a class index for ``width`` outputs (nor ``-100``, ignored) as
    ``(row, value)``, or ``None``. Cheap: a few element-wise operations, run where the labels are."""
    if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.dtype == torch.bool \
            or labels.numel() == 0 or labels.dim() == 0:
        return None
    bad = (labels != IGNORE_INDEX) & ((labels < 0) | (labels >= width))
    if not bool(bad.any()):
        return None
    where = bad.nonzero()[0]
    return int(where[0]), int(labels[tuple(where)])


def class_label_message(value: int, sample: int, width: int, per_position: bool) -> str:
    ignore = " (or -100 where a position does not count)" if per_position else ""
    return (f"label {value} (sample index {sample}) is out of range for a student with {width} outputs: labels "
            f"must be class indices 0 to {width - 1}{ignore}; fix the labels or build the student with more outputs")


class Task:
    """The base of every task; subclasses set the metrics and the student's own loss.

    Args:
        target: the item key holding the targets (default: ``label`` or ``labels``, whichever is present).
        pad_token_id: pads ``input_ids`` when items have different lengths (or give ``tokenizer``).
        tokenizer: a Hugging Face tokenizer; only its ``pad_token_id`` is used.
    """

    name: ClassVar[str] = "task"
    select: ClassVar[str] = "loss"  # the metric that selects a model on validation
    mode: ClassVar[str] = "min"  # "max": higher is better
    per_position: ClassVar[bool] = False  # logits (B, L, V) scored per position, with a mask
    class_labels: ClassVar[bool] = False  # targets are class indices into the outputs' last axis (range-checked)
    distribution: ClassVar[bool] = True  # outputs are logits of a softmax (fidelity by KL and agreement)
    scored_by_teacher: ClassVar[bool] = False  # its metrics compare a model with the teacher (a recipe passes it)

    def __init__(self, target: str | None = None, pad_token_id: int | None = None, tokenizer=None):
        if pad_token_id is None and tokenizer is not None:
            pad_token_id = getattr(tokenizer, "pad_token_id", None)
        self.target = target
        self.pad_token_id = pad_token_id

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    # ------------------------------------------------------------ batches
    @property
    def target_keys(self) -> tuple[str, ...]:
        return (self.target,) if self.target else ("label", "labels")

    def split_item(self, raw) -> dict:
        """One dataset item as ``{"input": ..., "label": ...}`` (no label when the item has none)."""
        if isinstance(raw, Mapping):
            if "input" in raw:
                out = {"input": raw["input"]}
                found = [k for k in self.target_keys if k in raw]
            else:
                found = [k for k in self.target_keys if k in raw]
                out = {"input": {k: v for k, v in raw.items() if k not in found and k != "index"}}
                if not out["input"]:
                    raise TaskError(f"dataset item has only targets ({', '.join(found)}) and no model input")
            if found and raw[found[0]] is not None:
                out["label"] = raw[found[0]]
            return out
        if isinstance(raw, (tuple, list)):
            if not raw:
                raise TaskError("dataset item is an empty tuple")
            return {"input": raw[0], "label": raw[1]} if len(raw) > 1 else {"input": raw[0]}
        return {"input": raw}

    def collate(self, items) -> dict:
        """Stack (padding where lengths differ) a list of items into the engine's batch.

        ``items``: dataset items, :class:`Indexed` items, or a ready batch (a mapping, as
        ``ArrayDataset.__getitems__`` serves), which is only checked and completed.
        """
        if isinstance(items, Mapping):
            return self.prepare(items)
        if not items:
            raise TaskError("cannot make a batch of no items")
        indices, parts = [], []
        for n, it in enumerate(items):
            if isinstance(it, Indexed):
                indices.append(it.index)
                it = it.item
            elif isinstance(it, Mapping) and "index" in it:
                indices.append(int(it["index"]))
            else:
                indices.append(n)
            parts.append(self.split_item(it))
        labelled = ["label" in p for p in parts]
        if any(labelled) and not all(labelled):
            raise TaskError(f"batch mixes items with and without targets (item {labelled.index(False)} has none)")
        batch: dict = {"index": torch.as_tensor(indices, dtype=torch.long)}
        first = parts[0]["input"]
        if isinstance(first, Mapping):
            keys = list(first)
            for p in parts:
                if not isinstance(p["input"], Mapping) or list(p["input"]) != keys:
                    raise TaskError(f"items have different input keys: {keys} and "
                                    f"{list(p['input']) if isinstance(p['input'], Mapping) else 'a tensor'}")
            inputs, lengths = {}, None
            for key in keys:
                inputs[key], key_lengths = self._stack([p["input"][key] for p in parts], key, True)
                if key_lengths is not None and (lengths is None or key in _PAD_TOKEN_KEYS):
                    lengths = key_lengths
                mask_key = key.removesuffix("input_ids") + "attention_mask"
                if key.endswith("input_ids") and key_lengths is not None and mask_key not in keys:
                    positions = torch.arange(inputs[key].shape[1])
                    inputs[mask_key] = (positions[None, :] < key_lengths[:, None]).long()
            batch["input"] = inputs
        else:
            batch["input"], lengths = self._stack([p["input"] for p in parts], "input", True)
        if lengths is not None:
            batch["lengths"] = lengths
        if all(labelled):
            batch["label"] = self.stack_labels([p["label"] for p in parts])
        return self.prepare(batch)

    def stack_labels(self, labels: list):
        """One batch's targets from the items' (padded with ``-100`` when lengths differ). A task whose
        targets do not stack (boxes per image) returns its own structure, e.g. the list itself."""
        return self._stack(labels, self.target or "label", False)[0]

    def _stack(self, values: list, key: str, is_input: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Stack the values of one key; right-pad along the first axis when lengths differ.
        Returns the stacked tensor and, when padded, each value's length."""
        tensors = [_tensor(v, key, is_input) for v in values]
        shapes = {tuple(t.shape) for t in tensors}
        if len(shapes) == 1:
            return torch.stack(tensors), None
        if any(t.dim() == 0 for t in tensors) or len({t.shape[1:] for t in tensors}) > 1:
            raise TaskError(f"item key {key!r}: values of shapes {sorted(shapes)[:3]} cannot be batched "
                            "(only the first axis may differ, and is then padded)")
        lengths = torch.tensor([t.shape[0] for t in tensors])
        pad = self._pad_value(key, is_input)
        out = tensors[0].new_full((len(tensors), int(lengths.max()), *tensors[0].shape[1:]), pad)
        for i, t in enumerate(tensors):
            out[i, : t.shape[0]] = t
        return out, lengths

    def _pad_value(self, key: str, is_input: bool):
        if not is_input:
            return IGNORE_INDEX
        for prefix in _PAD_PREFIXES:
            key = key.removeprefix(prefix)
        if key in _ZERO_PADDED:
            return 0
        if key in _PAD_TOKEN_KEYS:
            if self.pad_token_id is None:
                raise TaskError(f"items have {key!r} of different lengths: give the task a tokenizer or "
                                "pad_token_id to pad them per batch (e.g. get_task('classification', "
                                "tokenizer=tok)), or pass collate_fn")
            return self.pad_token_id
        return 0

    def prepare(self, batch: Mapping) -> dict:
        """A collated batch in the engine's form: HF-style keys split into inputs and targets,
        targets checked; subclasses add what they need (token tasks: shifted labels and a mask)."""
        batch = dict(batch)
        if "input" not in batch:
            found = [k for k in self.target_keys if k in batch]
            meta = {k: batch.pop(k) for k in ("index", "lengths", "teacher_lengths", "mask", "num_items") if k in batch}
            label = batch.pop(found[0]) if found else None
            batch = {**meta, "input": batch, "label": label}
        inputs = batch["input"]
        if isinstance(inputs, Mapping) and any(str(k).startswith(TEACHER_PREFIX) for k in inputs):
            batch["teacher_input"] = {k.removeprefix(TEACHER_PREFIX): v for k, v in inputs.items()
                                      if k.startswith(TEACHER_PREFIX)}
            batch["input"] = inputs = {k: v for k, v in inputs.items() if not str(k).startswith(TEACHER_PREFIX)}
        # each sequence's real length (right padding), for per-token stores such as the teacher cache
        for side, lengths_key in (("input", "lengths"), ("teacher_input", "teacher_lengths")):
            if lengths_key not in batch and isinstance(batch.get(side), Mapping):
                found = _lengths(batch[side])
                if found is not None:
                    batch[lengths_key] = found
        label = batch.get("label")
        if label is None:
            batch.pop("label", None)
        elif not (isinstance(label, (list, tuple)) and label and isinstance(label[0], (Mapping, torch.Tensor))):
            batch["label"] = self.check_labels(_tensor(label, self.target or "label", False))
        return batch

    def check_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return labels

    # -------------------------------------------------------- training
    def default_terms(self) -> list[Term]:
        """The student's own loss on the targets (what ``Distiller`` trains on when given no terms)."""
        raise NotImplementedError

    # ------------------------------------------------------ evaluation
    def prediction(self, output, batch: Mapping) -> torch.Tensor:
        """What the metrics read from a model's output: its logits (or vectors)."""
        return logits_of(output)

    def add_batch(self, sums: dict, pred: torch.Tensor, batch: Mapping, teacher_pred: torch.Tensor | None) -> None:
        """Add one batch's metric sums to ``sums`` (labelled metrics when the batch has labels,
        fidelity to the teacher when ``teacher_pred`` is given)."""
        pred = pred.float()
        if "label" in batch:
            self.add_labelled(sums, pred, send_to_device(batch["label"], pred.device), batch.get("mask"))
        if teacher_pred is not None:
            self.add_fidelity(sums, pred, teacher_pred.float(), batch.get("mask"))

    def add_labelled(self, sums: dict, pred, labels, mask) -> None:
        raise NotImplementedError

    def add_fidelity(self, sums: dict, pred, teacher, mask) -> None:
        if pred.shape != teacher.shape:
            raise TaskError(f"student output {tuple(pred.shape)} and teacher output {tuple(teacher.shape)} differ: "
                            "fidelity to the teacher needs outputs of the same shape")
        width = pred.shape[-1]
        p, t = pred.reshape(-1, width), teacher.reshape(-1, width)
        if mask is not None:
            keep = mask.reshape(-1).to(p.device).bool()
            p, t = p[keep], t[keep]
        _add(sums, "fidelity_count", len(p))
        if self.distribution:
            kl = F.kl_div(F.log_softmax(p, -1), F.log_softmax(t, -1), reduction="sum", log_target=True)
            _add(sums, "fidelity_kl", float(kl))
            _add(sums, "fidelity_agree", int((p.argmax(-1) == t.argmax(-1)).sum()))
        else:
            _add(sums, "fidelity_mse", float(((p - t) ** 2).mean(-1).sum()))
            _add(sums, "fidelity_cosine", float(F.cosine_similarity(p, t, dim=-1).sum()))

    def summarize(self, sums: Mapping) -> dict[str, float]:
        """Metrics from the sums of all batches (and all processes)."""
        out = self.labelled_metrics(sums) if sums.get("count") else {}
        n = sums.get("fidelity_count", 0)
        if n:
            if self.distribution:
                out["teacher_kl"] = sums["fidelity_kl"] / n
                out["teacher_agreement"] = 100.0 * sums["fidelity_agree"] / n
            else:
                out["teacher_mse"] = sums["fidelity_mse"] / n
                out["teacher_cosine"] = sums["fidelity_cosine"] / n
        return out

    def labelled_metrics(self, sums: Mapping) -> dict[str, float]:
        raise NotImplementedError

    def selection(self, labelled: bool) -> tuple[str, str]:
        """The metric that selects a model and its direction; without labels, fidelity to the teacher."""
        if labelled:
            return self.select, self.mode
        return ("teacher_agreement", "max") if self.distribution else ("teacher_mse", "min")


def _add(sums: dict, key: str, value) -> None:
    sums[key] = sums.get(key, 0) + value


TASKS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    """Make a task class available by its ``name`` (``get_task(name)``, recipes' ``task:``)."""
    TASKS[cls.name] = cls
    return cls


def get_task(task: str | Task | None = None, **options) -> Task:
    """A task object from a name (``"classification"``, ``"tokens"`` ...) and its options, or the task itself."""
    if isinstance(task, Task):
        if options:
            raise TaskError("options are for a task given by name, not a Task object")
        return task
    name = "classification" if task is None else task
    if not isinstance(name, str) or name not in TASKS:
        raise TaskError(f"unknown task {excerpt(name)}; available: {', '.join(TASKS)} (or a distill.tasks.Task)")
    try:
        return TASKS[name](**options)
    except TypeError as err:
        raise TaskError(f"task {name!r}: {err}") from None


@register_task
class Classification(Task):
    """One class per sample (or per position of ``(..., C)`` logits): cross-entropy, accuracy (%)."""

    name = "classification"
    select, mode = "accuracy", "max"
    class_labels = True

    def check_labels(self, labels):
        if labels.is_floating_point():
            if not torch.equal(labels, labels.round()):
                raise TaskError(f"classification labels must be class indices, got float values such as "
                                f"{float(labels[labels != labels.round()][0]):g}: for float targets use task "
                                "'regression' or 'multilabel'")
            labels = labels.long()
        return labels

    def default_terms(self) -> list[Term]:
        return [Term("ce")]

    def add_labelled(self, sums, pred, labels, mask):
        classes = pred.shape[-1]
        if labels.shape != pred.shape[:-1]:
            onehot = " (one-hot? pass labels.argmax(-1))" if labels.shape == pred.shape else ""
            raise TaskError(f"labels of shape {tuple(labels.shape)} do not match the outputs {tuple(pred.shape)}: "
                            f"classification labels are class indices of shape {tuple(pred.shape[:-1])}{onehot}")
        if labels.numel() and (int(labels.max()) >= classes or int(labels.min()) < 0):
            bad = int(labels.max()) if int(labels.max()) >= classes else int(labels.min())
            raise TaskError(f"label {bad} is out of range for a model with {classes} outputs: labels must be class "
                            f"indices 0 to {classes - 1}")
        _add(sums, "correct", int((pred.argmax(-1) == labels).sum()))
        _add(sums, "loss", float(F.cross_entropy(pred, labels, reduction="sum")))
        _add(sums, "count", len(labels))

    def labelled_metrics(self, sums):
        return {"accuracy": 100.0 * sums["correct"] / sums["count"], "loss": sums["loss"] / sums["count"]}


@register_task
class Regression(Task):
    """Float targets, one or several per sample: mean squared and absolute error."""

    name = "regression"
    select, mode = "mse", "min"
    distribution = False

    def check_labels(self, labels):
        return labels if labels.is_floating_point() else labels.to(torch.get_default_dtype())

    def default_terms(self) -> list[Term]:
        return [Term(mse_loss, teacher=None, labels=True, name="mse")]

    def add_labelled(self, sums, pred, labels, mask):
        labels = labels.float().reshape(pred.shape) if labels.numel() == pred.numel() else labels.float()
        if labels.shape != pred.shape:
            raise TaskError(f"regression targets {tuple(labels.shape)} do not match the model's outputs "
                            f"{tuple(pred.shape)}")
        _add(sums, "se", float(((pred - labels) ** 2).sum()))
        _add(sums, "ae", float((pred - labels).abs().sum()))
        _add(sums, "elements", labels.numel())
        _add(sums, "count", len(labels))

    def labelled_metrics(self, sums):
        return {"mse": sums["se"] / sums["elements"], "mae": sums["ae"] / sums["elements"],
                "loss": sums["se"] / sums["elements"]}


@register_task
class MultiLabel(Task):
    """Several yes/no labels per sample (multi-hot targets, sigmoid outputs): BCE, macro F1 (%).

    Also per-label accuracy (%); unlabelled sets are scored by the probabilities' MSE to the teacher's
    and per-label agreement."""

    name = "multilabel"
    select, mode = "f1", "max"
    distribution = False
    check_labels = Regression.check_labels  # float targets, never rounded

    def default_terms(self) -> list[Term]:
        return [Term(bce_loss, teacher=None, labels=True, name="bce")]

    def add_labelled(self, sums, pred, labels, mask):
        labels = labels.float()
        if labels.shape != pred.shape:
            raise TaskError(f"multi-label targets {tuple(labels.shape)} do not match the model's outputs "
                            f"{tuple(pred.shape)}")
        yes, truth = pred > 0, labels > 0.5
        _add(sums, "loss", float(F.binary_cross_entropy_with_logits(pred, labels, reduction="sum")))
        _add(sums, "correct", int((yes == truth).sum()))
        _add(sums, "elements", labels.numel())
        _add(sums, "count", len(labels))
        for name, hits in (("tp", yes & truth), ("fp", yes & ~truth), ("fn", ~yes & truth)):
            per_label = hits.reshape(-1, labels.shape[-1]).sum(0).double()
            sums[name] = sums[name] + per_label if name in sums else per_label

    def labelled_metrics(self, sums):
        tp, fp, fn = (torch.as_tensor(sums[k]) for k in ("tp", "fp", "fn"))
        seen = (tp + fp + fn) > 0  # labels never predicted nor present do not count
        f1 = (2 * tp / (2 * tp + fp + fn).clamp(min=1))[seen]
        return {"f1": 100.0 * float(f1.mean()) if len(f1) else 0.0,
                "accuracy": 100.0 * sums["correct"] / sums["elements"], "loss": sums["loss"] / sums["elements"]}

    def add_fidelity(self, sums, pred, teacher, mask):
        if pred.shape != teacher.shape:
            raise TaskError(f"student output {tuple(pred.shape)} and teacher output {tuple(teacher.shape)} differ")
        _add(sums, "fidelity_count", pred.numel())
        _add(sums, "fidelity_mse", float(((pred.sigmoid() - teacher.sigmoid()) ** 2).sum()))
        _add(sums, "fidelity_agree", int(((pred > 0) == (teacher > 0)).sum()))

    def summarize(self, sums):
        out = self.labelled_metrics(sums) if sums.get("count") else {}
        n = sums.get("fidelity_count", 0)
        if n:
            out["teacher_mse"] = sums["fidelity_mse"] / n  # of the probabilities
            out["teacher_agreement"] = 100.0 * sums["fidelity_agree"] / n  # per label
        return out

    def selection(self, labelled):
        return (self.select, self.mode) if labelled else ("teacher_agreement", "max")


@register_task
class Tokens(Task):
    """Per-token logits ``(B, L, V)``: causal language models and seq2seq decoders.

    Targets are token ids with ``-100`` at positions that do not count (padding, prompts). A causal LM
    (``shift=True``, the default) is scored at position ``i`` on token ``i + 1``: the task shifts the labels
    (or, when items have none, the ``input_ids`` with padding masked) one step left, so logits and labels
    line up and every term sees the same positions. A seq2seq decoder's labels are already aligned
    (``shift=False``). The batch's ``mask`` marks the positions that count, for every per-position term.
    Metrics: token accuracy (%), cross-entropy per token, perplexity (selects).
    """

    name = "tokens"
    select, mode = "perplexity", "min"
    per_position = True
    class_labels = True

    def __init__(self, target: str | None = None, pad_token_id: int | None = None, tokenizer=None,
                 shift: bool = True):
        super().__init__(target, pad_token_id, tokenizer)
        self.shift = shift

    def prepare(self, batch):
        batch = super().prepare(batch)
        inputs = batch["input"]
        labels = batch.get("label")
        if labels is None and self.shift and isinstance(inputs, Mapping) and "input_ids" in inputs:
            labels = inputs["input_ids"].clone()
            if "attention_mask" in inputs:
                labels = labels.masked_fill(inputs["attention_mask"] == 0, IGNORE_INDEX)
        if labels is not None:
            if not isinstance(labels, torch.Tensor) or labels.dim() < 2:
                raise TaskError(f"token labels must be token ids of shape (batch, length), got {describe(labels)}: "
                                "for one label per sample use task 'classification'")
            if self.shift:
                labels = torch.cat([labels[:, 1:], labels.new_full((len(labels), 1), IGNORE_INDEX)], dim=1)
            batch["label"] = labels
            batch["mask"] = labels != IGNORE_INDEX
        elif isinstance(inputs, Mapping) and "attention_mask" in inputs:
            batch["mask"] = inputs["attention_mask"].bool()
        return batch

    check_labels = Classification.check_labels

    def default_terms(self) -> list[Term]:
        return [Term("ce")]

    def add_labelled(self, sums, pred, labels, mask):
        keep = labels != IGNORE_INDEX
        if pred.shape[:-1] != labels.shape:
            raise TaskError(f"token logits {tuple(pred.shape)} do not line up with labels {tuple(labels.shape)}")
        logits, targets = pred[keep], labels[keep]
        Classification.add_labelled(self, sums, logits, targets, None)

    def labelled_metrics(self, sums):
        loss = sums["loss"] / sums["count"]
        return {"accuracy": 100.0 * sums["correct"] / sums["count"], "loss": loss,
                "perplexity": math.exp(min(loss, 700.0))}


def edit_distance(a, b) -> int:
    """Levenshtein distance between two sequences (insertions, deletions and substitutions cost 1)."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


@register_task
class CTC(Task):
    """Speech recognition with CTC: per-frame logits ``(B, T, V)``, blank = 0, symbols ``1 .. V-1``.

    Items: ``{"features": (frames, F), "lengths": frames, "label": symbol ids}`` (the model is called as
    ``model(features=..., lengths=...)``); features are zero-padded per batch, labels with ``-100``, and
    ``batch["mask"]`` marks the real frames of each utterance (what every CTC term reads). Symbol ``i`` is
    ``alphabet[i - 1]`` (default: space, apostrophe, ``a``-``z``). Decoding: ``"greedy"`` (best path) or
    ``"beam"`` (prefix beam search, ``beam`` prefixes); given ``words`` (a closed vocabulary), the beam search
    spells those words only (lexicon-constrained decoding), and ``word_score`` adds that much to a hypothesis's
    log-probability per word (negative: fewer, longer words; :func:`distill.losses.ctc.prefix_beam_search`).
    Metrics: CER (%, selects), WER (%) and the CTC loss per utterance.

    Token sources (a non-autoregressive text model such as :class:`distill.zoo.seq2seq.ParallelCTC`): items
    ``{"input_ids": source ids, "label": symbol ids}``; the model emits ``frames_per_token`` frames per source
    token, so each row's real frames are its tokens (padded with ``pad_token_id``) times ``frames_per_token``.
    """

    name = "ctc"
    select, mode = "cer", "min"
    per_position = True
    class_labels = True
    ALPHABET = " 'abcdefghijklmnopqrstuvwxyz"

    def __init__(self, target: str | None = None, pad_token_id: int | None = None, tokenizer=None,
                 alphabet: str = ALPHABET, decode: str = "greedy", beam: int = 8, words=None,
                 word_score: float = 0.0, frames_per_token: int = 1):
        super().__init__(target, pad_token_id, tokenizer)
        if not isinstance(frames_per_token, int) or isinstance(frames_per_token, bool) or frames_per_token < 1:
            raise TaskError(f"frames_per_token is a whole number >= 1, got {excerpt(frames_per_token)}")
        self.frames_per_token = frames_per_token
        if decode not in ("greedy", "beam"):
            raise TaskError(f"decode must be 'greedy' or 'beam', got {excerpt(decode)}")
        if not isinstance(alphabet, str) or len(set(alphabet)) != len(alphabet) or not alphabet:
            raise TaskError(f"alphabet must be a string of distinct symbols, got {excerpt(alphabet)}")
        if isinstance(word_score, bool) or not isinstance(word_score, (int, float)) or not math.isfinite(word_score):
            raise TaskError(f"word_score is a number (log-probability per word), got {excerpt(word_score)}")
        if word_score and words is None:
            raise TaskError("word_score scores the words of a closed vocabulary: give words=[...] with it")
        self.alphabet, self.decode, self.beam, self.word_score = alphabet, decode, beam, float(word_score)
        self.lexicon = None
        if words is not None:
            from distill.losses.ctc import Lexicon

            if decode != "beam":
                raise TaskError("words (a closed vocabulary) constrain the beam search: give decode='beam' with them")
            if isinstance(words, str) or not all(isinstance(w, str) and w.strip() and " " not in w.strip()
                                                 for w in words):
                raise TaskError(f"words must be a list of single non-empty words, got {excerpt(words)}")
            if " " not in alphabet:
                raise TaskError("words need a space in the alphabet to separate them")
            self.lexicon = Lexicon([self.encode(w.strip()) for w in words], separator=alphabet.index(" ") + 1)

    def encode(self, text: str) -> list[int]:
        """Symbol ids of ``text`` (``TaskError`` naming a character outside the alphabet)."""
        bad = sorted(set(text) - set(self.alphabet))
        if bad:
            raise TaskError(f"text {excerpt(text)} has characters outside the CTC alphabet: {bad!r}; normalise it "
                            f"(distill.zoo.speech.normalize) or give the task another alphabet")
        return [self.alphabet.index(c) + 1 for c in text]

    def text(self, symbols) -> str:
        return "".join(self.alphabet[s - 1] for s in symbols)

    def prepare(self, batch):
        batch = super().prepare(batch)
        inputs = batch["input"]
        if isinstance(inputs, Mapping) and "features" not in inputs and "input_ids" in inputs:
            return self._prepare_tokens(batch, inputs)
        if not isinstance(inputs, Mapping) or "features" not in inputs:
            raise TaskError(f"ctc items are dicts with 'features' (frames, F) and 'lengths', or with 'input_ids' "
                            f"(a token source), got {describe(inputs)}")
        features = inputs["features"]
        if features.dim() != 3:
            raise TaskError(f"ctc features must be (frames, F) per item, got a batch of shape {tuple(features.shape)}")
        lengths = inputs.get("lengths")
        if lengths is None:
            lengths = batch.get("lengths", torch.full((len(features),), features.shape[1], dtype=torch.long))
            batch["input"] = inputs = {**inputs, "lengths": lengths}
        batch["lengths"] = lengths = torch.as_tensor(lengths).long()
        batch["mask"] = torch.arange(features.shape[1])[None, :] < lengths[:, None]
        return self._check_label_shape(batch)

    def _prepare_tokens(self, batch, inputs):
        ids = inputs["input_ids"]
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2:
            raise TaskError(f"ctc input_ids are (batch, tokens), got {describe(ids)}")
        tokens = inputs.get("attention_mask")
        tokens = tokens.long().sum(1) if tokens is not None else torch.full((len(ids),), ids.shape[1])
        batch["lengths"] = frames = tokens * self.frames_per_token
        batch["mask"] = torch.arange(ids.shape[1] * self.frames_per_token)[None, :] < frames[:, None]
        return self._check_label_shape(batch)

    @staticmethod
    def _check_label_shape(batch):
        labels = batch.get("label")
        if labels is not None and (not isinstance(labels, torch.Tensor) or labels.dim() != 2):
            raise TaskError(f"ctc labels are symbol ids of shape (batch, symbols), got {describe(labels)}")
        return batch

    def check_labels(self, labels):
        if labels.dim() == 2 and bool(((labels == 0)).any()):
            raise TaskError("ctc labels hold 0, the blank: symbols are 1 .. V-1 (pad with -100)")
        return labels

    def default_terms(self) -> list[Term]:
        return [Term("ctc")]

    def hypotheses(self, logits: torch.Tensor, frames) -> list[str]:
        """The decoded text of each utterance of ``(B, T, V)`` logits."""
        from distill.losses.ctc import beam_decode, greedy_decode

        found = (greedy_decode(logits, frames) if self.decode == "greedy" else
                 beam_decode(logits, frames, self.beam, self.lexicon, self.word_score))
        return [self.text(s) for s in found]

    def add_labelled(self, sums, pred, labels, mask):
        from distill.losses.ctc import ctc_loss

        frames = mask.sum(1) if mask is not None else None
        for hyp, row in zip(self.hypotheses(pred, frames), labels.tolist()):
            ref = self.text([s for s in row if s != IGNORE_INDEX])
            _add(sums, "char_errors", edit_distance(ref, hyp))
            _add(sums, "chars", len(ref))
            _add(sums, "word_errors", edit_distance(ref.split(), hyp.split()))
            _add(sums, "words", len(ref.split()))
        _add(sums, "loss", float(ctc_loss(pred, labels, mask=mask)) * len(labels))
        _add(sums, "count", len(labels))

    def labelled_metrics(self, sums):
        return {"cer": 100.0 * sums["char_errors"] / max(sums["chars"], 1),
                "wer": 100.0 * sums["word_errors"] / max(sums["words"], 1), "loss": sums["loss"] / sums["count"]}


@register_task
class Embedding(Task):
    """Vectors learnt from a teacher's (no labels needed): cosine to the teacher, MSE, top-1 retrieval.

    Top-1 retrieval: within each evaluation batch, the teacher's vector of the same sample is the student's
    nearest among the batch's teacher vectors (%).

    ``pooling``: ``"none"`` (the model returns ``(B, D)`` vectors), ``"mean"`` (mean of the last hidden
    state over the attention mask, as sentence-transformers pools) or ``"cls"`` (its first position);
    ``normalize``: unit-length vectors. Items with targets (``label``) are scored against them too.
    """

    name = "embedding"
    select, mode = "cosine", "max"
    distribution = False
    scored_by_teacher = True

    def __init__(self, target: str | None = None, pad_token_id: int | None = None, tokenizer=None,
                 pooling: str = "none", normalize: bool = False):
        super().__init__(target, pad_token_id, tokenizer)
        if not isinstance(pooling, str) or pooling not in ("none", "mean", "cls"):
            raise TaskError(f"pooling must be 'none', 'mean' or 'cls', got {excerpt(pooling)}")
        self.pooling, self.normalize = pooling, normalize

    def prepare(self, batch):
        batch = super().prepare(batch)
        inputs = batch["input"]
        if self.pooling != "none" and isinstance(inputs, Mapping) and "attention_mask" in inputs:
            batch["mask"] = inputs["attention_mask"].bool()
        return batch

    check_labels = Regression.check_labels

    def default_terms(self) -> list[Term]:
        tap = "logits" if self.pooling == "none" else "output[0]"
        return [Term(embedding_mse(self.pooling, self.normalize), student=tap, teacher=tap, name="embedding_mse")]

    def prediction(self, output, batch):
        if self.pooling == "none":
            vectors = logits_of(output)
        else:
            hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else logits_of(output)
            vectors = pool(hidden, batch.get("mask"), self.pooling)
        return F.normalize(vectors.float(), dim=-1) if self.normalize else vectors

    def add_batch(self, sums, pred, batch, teacher_pred):
        pred = pred.float()
        if "label" in batch:
            self._add_pair(sums, "", pred, batch["label"].to(pred.device).float().reshape(pred.shape))
        if teacher_pred is not None:
            self._add_pair(sums, "fidelity_", pred, teacher_pred.float())

    @staticmethod
    def _add_pair(sums, prefix, pred, target):
        if pred.shape != target.shape:
            raise TaskError(f"student vectors {tuple(pred.shape)} and target vectors {tuple(target.shape)} differ")
        cos = F.cosine_similarity(pred[:, None, :], target[None, :, :], dim=-1)  # (student, target)
        _add(sums, prefix + "cosine", float(cos.diagonal().sum()))
        _add(sums, prefix + "mse", float(((pred - target) ** 2).mean(-1).sum()))
        _add(sums, prefix + "top1", int((cos.argmax(1) == torch.arange(len(pred), device=pred.device)).sum()))
        _add(sums, prefix + "count", len(pred))

    def summarize(self, sums):
        out = {}
        for prefix, name in (("", ""), ("fidelity_", "teacher_")):
            n = sums.get(prefix + "count", 0)
            if n:
                out |= {name + "cosine": sums[prefix + "cosine"] / n, name + "mse": sums[prefix + "mse"] / n,
                        name + "top1": 100.0 * sums[prefix + "top1"] / n}
        return out

    def selection(self, labelled):
        return ("cosine", "max") if labelled else ("teacher_cosine", "max")


@register_task
class ParallelEmbedding(Task):
    """Parallel sentences (a sentence and its translation) for multilingual distillation (Reimers &
    Gurevych 2020, the ``multilingual_mse`` term).

    Items: ``{"input_ids": source, "target_input_ids": translation}`` (``attention_mask`` /
    ``target_attention_mask`` are added when missing); both sides are padded per batch. When the student has
    another tokenizer than the teacher (an extended vocabulary), items also carry ``teacher_input_ids``: the
    source in the teacher's tokens, which the teacher alone sees; otherwise the teacher is given the source
    side alone (``batch["teacher_input"]``). The student is a model such as
    :class:`distill.zoo.sentence.SentenceEncoder` that returns ``(N, 2, D)`` vectors (source, translation) for
    such inputs, and the teacher ``(N, D)`` vectors of the source side; so the same encoder can teach, and be
    scored itself as a model of both sides (its retrieval before any distillation). Metrics: ``mse`` (the
    term's value against the teacher, selects), ``teacher_cosine`` (English fidelity: the student's source
    vector to the teacher's), ``teacher_cosine_target`` (its translation's vector to the teacher's source
    vector) and translation retrieval top-1 (%) both ways within each evaluation batch (``src_tgt_top1``,
    ``tgt_src_top1``; over a whole held-out set use :func:`retrieval_metrics`).
    """

    name = "parallel_embedding"
    select, mode = "mse", "min"
    distribution = False
    scored_by_teacher = True
    SIDES = (("input_ids", "attention_mask"), ("target_input_ids", "target_attention_mask"))

    def split_item(self, raw) -> dict:
        out = super().split_item(raw)
        inputs = out["input"]
        if not isinstance(inputs, Mapping) or not all(ids in inputs for ids, _ in self.SIDES):
            raise TaskError("parallel_embedding items are dicts with 'input_ids' (source) and 'target_input_ids' "
                            f"(translation), got {describe(inputs)}")
        inputs = dict(inputs)
        for ids in [k for k in inputs if k.endswith("input_ids")]:  # both sides and a teacher's own ids
            inputs.setdefault(ids.removesuffix("input_ids") + "attention_mask",
                              torch.ones(len(inputs[ids]), dtype=torch.long))
        return {**out, "input": inputs}

    def prepare(self, batch):
        batch = super().prepare(batch)
        if "teacher_input" not in batch:  # the teacher's vectors are of the source side alone
            source = {k: batch["input"][k] for k in self.SIDES[0]}
            batch["teacher_input"], batch["teacher_lengths"] = source, _lengths(source)
        return batch

    def default_terms(self) -> list[Term]:
        return [Term("multilingual_mse")]

    def add_batch(self, sums, pred, batch, teacher_pred):
        pred = pred.float()
        if pred.dim() != 3 or pred.shape[1] != 2:
            raise TaskError(f"the student gives {tuple(pred.shape)}; parallel_embedding needs (N, 2, D) vectors of "
                            "source and translation (wrap it in distill.zoo.sentence.SentenceEncoder)")
        src, tgt = F.normalize(pred[:, 0], dim=-1), F.normalize(pred[:, 1], dim=-1)
        sim, rows = src @ tgt.T, torch.arange(len(pred), device=pred.device)
        _add(sums, "src_tgt_top1", int((sim.argmax(1) == rows).sum()))
        _add(sums, "tgt_src_top1", int((sim.argmax(0) == rows).sum()))
        _add(sums, "count", len(pred))
        if teacher_pred is not None:
            teacher = teacher_pred.float()
            if teacher.shape != pred[:, 0].shape:
                raise TaskError(f"teacher vectors {tuple(teacher.shape)} must be (N, D) = {tuple(pred[:, 0].shape)}, "
                                "of the source side only (SentenceEncoder(..., source_only=True))")
            _add(sums, "se", float(((pred - teacher[:, None]) ** 2).mean(-1).sum()))
            _add(sums, "cosine", float(F.cosine_similarity(pred[:, 0], teacher, dim=-1).sum()))
            _add(sums, "cosine_target", float(F.cosine_similarity(pred[:, 1], teacher, dim=-1).sum()))
            _add(sums, "fidelity_count", len(pred))

    def summarize(self, sums):
        out = {}
        if sums.get("count"):
            out |= {"src_tgt_top1": 100.0 * sums["src_tgt_top1"] / sums["count"],
                    "tgt_src_top1": 100.0 * sums["tgt_src_top1"] / sums["count"]}
        n = sums.get("fidelity_count", 0)
        if n:
            out |= {"mse": sums["se"] / n, "teacher_cosine": sums["cosine"] / n,
                    "teacher_cosine_target": sums["cosine_target"] / n}
        return out

    def selection(self, labelled):
        return "mse", "min"



@register_task
class Detection(Task):
    """Boxes and classes per image, for the anchor-free detectors of :mod:`distill.zoo.detection`.

    Items: ``{"image": (C, H, W), "boxes": (n, 4) xyxy pixels, "classes": (n,)}`` (an image may hold no
    object), or ``{"image"}`` alone for an unlabelled set (a transfer set that only distillation terms read).
    The batch is ``{"input": (B, C, H, W), "label": [{"boxes", "classes"}, ...], "index"}``: targets do not
    stack, so they stay one dict per image. The model returns ``{"logits": (B, C, H/s, W/s) centre
    heatmap logits, "box": (B, 4, K, H/s, W/s) edge-distance distribution logits}`` at ``stride`` s; the
    student's own loss is :func:`distill.losses.detection.detection_loss`. Metrics: COCO mAP@[.5:.95]
    (``map``, selects) and mAP@.5 (``map50``) by ``pycocotools``' COCOeval over the whole set (boxes decoded
    from heatmap peaks, at most ``top_k`` per image); unlabelled sets are scored by the mean squared
    difference of the heatmaps' probabilities to the teacher's. The detections of every batch are kept until
    :meth:`summarize`, so evaluation runs in one process (several processes would each score their share).
    """

    name = "detection"
    select, mode = "map", "max"
    distribution = False

    def __init__(self, target: str | None = None, pad_token_id: int | None = None, tokenizer=None,
                 stride: int = 4, top_k: int = 100):
        super().__init__(target, pad_token_id, tokenizer)
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
            raise TaskError(f"stride must be a whole number of pixels >= 1, got {excerpt(stride)}")
        self.stride, self.top_k = stride, top_k

    def split_item(self, raw):
        if not isinstance(raw, Mapping) or "image" not in raw or ("boxes" in raw) != ("classes" in raw):
            raise TaskError(f"detection items are dicts with 'image' (C, H, W), 'boxes' (n, 4) and 'classes' (n,) "
                            f"(or 'image' alone: unlabelled), got {describe(raw)}")
        image = _tensor(raw["image"], "image", True)
        if image.dim() != 3:
            raise TaskError(f"a detection image is (C, H, W), got shape {tuple(image.shape)}")
        if "boxes" not in raw:  # an unlabelled scene (a transfer set): only distillation terms read it
            return {"input": image}
        boxes = _tensor(raw["boxes"], "boxes", True).float().reshape(-1, 4) if len(raw["boxes"]) else \
            torch.zeros(0, 4)
        classes = _tensor(raw["classes"], "classes", False).long().reshape(-1)
        if len(classes) != len(boxes):
            raise TaskError(f"{len(boxes)} boxes but {len(classes)} classes in one detection item")
        height, width = image.shape[-2:]
        if len(boxes) and (bool((boxes[:, 2:] <= boxes[:, :2]).any()) or bool((boxes[:, :2] < 0).any())
                           or bool((boxes[:, 2] > width).any()) or bool((boxes[:, 3] > height).any())):
            raise TaskError(f"boxes must be (x0, y0, x1, y1) pixels with x0 < x1 and y0 < y1 inside the {width} x "
                            f"{height} image, got {excerpt(boxes.tolist())}")
        if len(classes) and int(classes.min()) < 0:
            raise TaskError(f"detection classes are indices from 0, got {excerpt(classes.tolist())}")
        return {"input": image, "label": {"boxes": boxes, "classes": classes}}

    def stack_labels(self, labels):
        return list(labels)

    def default_terms(self) -> list[Term]:
        return [Term("detection", stride=self.stride)]

    def prediction(self, output, batch):
        if not isinstance(output, Mapping) or "logits" not in output or "box" not in output:
            raise TaskError(f"a detector returns {{'logits': heatmap, 'box': box distributions}}, got "
                            f"{describe(output)} (see distill.zoo.detection.CenterDet)")
        return {"logits": output["logits"], "box": output["box"]}

    def add_batch(self, sums, pred, batch, teacher_pred):
        from distill.losses.detection import decode

        heatmap = pred["logits"]
        if "label" in batch:
            for found, truth in zip(decode(heatmap, pred["box"], self.stride, self.top_k), batch["label"]):
                sums.setdefault("detections", []).append({k: v.cpu() for k, v in found.items()})
                sums.setdefault("truths", []).append({k: v.cpu() for k, v in truth.items()})
            sums.setdefault("shape", tuple(heatmap.shape[1:]))
            _add(sums, "count", len(heatmap))
        if teacher_pred is not None:
            diff = heatmap.float().sigmoid() - teacher_pred["logits"].float().sigmoid()
            _add(sums, "fidelity_mse", float((diff**2).mean((1, 2, 3)).sum()))
            _add(sums, "fidelity_count", len(heatmap))

    def labelled_metrics(self, sums):
        classes = sums["shape"][0]
        return coco_map(sums["detections"], sums["truths"], classes)

    def summarize(self, sums):
        out = self.labelled_metrics(sums) if sums.get("count") else {}
        if sums.get("fidelity_count"):
            out["teacher_mse"] = sums["fidelity_mse"] / sums["fidelity_count"]
        return out


def coco_map(detections: list[Mapping], truths: list[Mapping], num_classes: int) -> dict[str, float]:
    """COCO mAP@[.5:.95] (``map``) and mAP@.5 (``map50``) by ``pycocotools``' COCOeval.

    ``detections``: per image ``{"boxes": (n, 4) xyxy, "scores": (n,), "classes": (n,)}``; ``truths``: per image
    ``{"boxes": (m, 4) xyxy, "classes": (m,)}``, in the same order. Images without any ground truth count as
    COCO counts them (their detections are false positives); no detections at all score 0."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if len(detections) != len(truths):
        raise TaskError(f"{len(detections)} images of detections but {len(truths)} of ground truth")

    def xywh(box):
        x0, y0, x1, y1 = (float(v) for v in box)
        return [x0, y0, x1 - x0, y1 - y0]

    images, annotations, results = [], [], []
    for i, (found, truth) in enumerate(zip(detections, truths)):
        images.append({"id": i})
        for box, cls in zip(truth["boxes"].tolist(), truth["classes"].tolist()):
            w, h = box[2] - box[0], box[3] - box[1]
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": int(cls), "bbox": xywh(box),
                                "area": w * h, "iscrowd": 0})
        for box, score, cls in zip(found["boxes"].tolist(), found["scores"].tolist(), found["classes"].tolist()):
            results.append({"image_id": i, "category_id": int(cls), "bbox": xywh(box), "score": float(score)})
    if not results or not annotations:
        return {"map": 0.0, "map50": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": annotations,
                      "categories": [{"id": c} for c in range(num_classes)]}
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {"map": 100.0 * max(float(evaluator.stats[0]), 0.0), "map50": 100.0 * max(float(evaluator.stats[1]), 0.0)}

def retrieval_metrics(student_vecs_en, student_vecs_es, teacher_vecs_en=None) -> dict[str, float]:
    """Translation retrieval over a whole held-out set of ``N`` pairs (row ``i`` of each is pair ``i``):
    ``en_es_top1``, the % of English sentences whose nearest Spanish sentence (cosine, among all ``N``) is
    their translation, ``es_en_top1`` the other way, and with the teacher's English vectors ``en_fidelity``,
    the mean cosine of the student's English vectors to the teacher's. Ties go to the lower index."""
    en, es = (torch.as_tensor(v).float() for v in (student_vecs_en, student_vecs_es))
    if en.dim() != 2 or en.shape != es.shape or len(en) == 0:
        raise TaskError(f"retrieval needs two (N, D) sets of vectors of the same shape, got {tuple(en.shape)} and "
                        f"{tuple(es.shape)}")
    sim = F.normalize(en, dim=-1) @ F.normalize(es, dim=-1).T
    rows = torch.arange(len(en))
    out = {"en_es_top1": 100.0 * float((sim.argmax(1) == rows).float().mean()),
           "es_en_top1": 100.0 * float((sim.argmax(0) == rows).float().mean())}
    if teacher_vecs_en is not None:
        teacher = torch.as_tensor(teacher_vecs_en).float()
        if teacher.shape != en.shape:
            raise TaskError(f"teacher vectors {tuple(teacher.shape)} and student vectors {tuple(en.shape)} differ")
        out["en_fidelity"] = float(F.cosine_similarity(en, teacher, dim=-1).mean())
    return out


def pool(hidden: torch.Tensor, mask: torch.Tensor | None, pooling: str) -> torch.Tensor:
    """``(B, L, D)`` hidden states to ``(B, D)``: the mean over ``mask`` (``"mean"``) or the first position."""
    if pooling == "cls":
        return hidden[:, 0]
    if mask is None:
        return hidden.mean(1)
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


def embedding_mse(pooling: str = "none", normalize: bool = False) -> Callable:
    """The embedding task's loss: mean squared error between the student's and the teacher's (pooled) vectors."""
    def embedding_mse(student, teacher, mask=None):
        s, t = pool(student, mask, pooling) if pooling != "none" else student, \
            pool(teacher, mask, pooling) if pooling != "none" else teacher
        if normalize:
            s, t = F.normalize(s.float(), dim=-1), F.normalize(t.float(), dim=-1)
        return mse_loss(s, t)

    return embedding_mse


@register_task
class Restoration(Task):
    """Image restoration: degraded image in, clean image out (denoising, super-resolution ...).

    Items are ``{"input": degraded (C, h, w), "label": clean (C, H, W)}`` with ``H, W`` the same whole multiple
    of ``h, w`` (1 for denoising, 2 for ×2 super-resolution); the model returns ``(N, C, H, W)`` images in
    ``[0, 1]``. The student's own loss (``loss``) is the L1 distance to the clean image (``"l1"``, EDSR's loss, Lim
    et al. 2017) or the squared error (``"mse"``, DnCNN's). Metrics per image, averaged: PSNR in dB (selects,
    higher is better) and SSIM, by ``skimage.metrics`` on images clipped to ``[0, 1]``
    (:mod:`distill.image_quality`), and the L1 loss. A validation set without clean
    images is scored against the teacher's images: ``teacher_psnr`` (selects) and ``teacher_l1``.
    """

    name = "restoration"
    select, mode = "psnr", "max"
    distribution = False

    def __init__(self, target: str | None = None, pad_token_id: int | None = None, tokenizer=None, loss: str = "l1"):
        super().__init__(target, pad_token_id, tokenizer)
        if loss not in ("l1", "mse"):
            raise TaskError(f"the restoration task's loss is 'l1' or 'mse', got {excerpt(loss)}")
        self.loss = loss

    def prepare(self, batch):
        batch = super().prepare(batch)
        images = batch["input"]
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            raise TaskError(f"restoration inputs are images (C, H, W) per item, a batch (N, C, H, W); got "
                            f"{describe(images) if not isinstance(images, Mapping) else 'a dict'}")
        clean = batch.get("label")
        if clean is not None:
            if not isinstance(clean, torch.Tensor) or clean.dim() != 4 or len(clean) != len(images):
                raise TaskError(f"restoration labels are clean images (C, H, W) per item, got {describe(clean)} for "
                                f"inputs {tuple(images.shape)}")
            (c, h, w), (lc, lh, lw) = images.shape[1:], clean.shape[1:]
            if lc != c or lh % h or lw % w or lh // h != lw // w:
                raise TaskError(f"a degraded image {(c, h, w)} and its clean image {(lc, lh, lw)} do not match: "
                                "they need the same channels and a clean size that is the same whole multiple of "
                                "the degraded one along both axes (1 for denoising, 2 for ×2 super-resolution)")
        return batch

    def check_labels(self, labels):
        return labels if labels.is_floating_point() else labels.to(torch.get_default_dtype())

    def default_terms(self) -> list[Term]:
        return [Term(self.loss)]

    def _add_images(self, sums, prefix: str, pred, target) -> None:
        if pred.shape != target.shape:
            raise TaskError(f"the model's images {tuple(pred.shape)} and the {'teacher' if prefix else 'clean'} "
                            f"images {tuple(target.shape)} differ in shape")
        from distill.image_quality import psnr, ssim

        a, b = pred.detach().float().cpu().numpy(), target.detach().float().cpu().numpy()
        for x, y in zip(a, b):
            _add(sums, prefix + "psnr", psnr(x, y))
            if not prefix:
                _add(sums, "ssim", ssim(x, y))
        _add(sums, prefix + "l1", float((pred - target).abs().flatten(1).mean(1).sum()))

    def add_labelled(self, sums, pred, labels, mask):
        self._add_images(sums, "", pred, labels.float())
        _add(sums, "count", len(labels))

    def labelled_metrics(self, sums):
        n = sums["count"]
        return {"psnr": sums["psnr"] / n, "ssim": sums["ssim"] / n, "loss": sums["l1"] / n}

    def add_fidelity(self, sums, pred, teacher, mask):
        self._add_images(sums, "fidelity_", pred, teacher)
        _add(sums, "fidelity_count", len(pred))

    def summarize(self, sums):
        out = self.labelled_metrics(sums) if sums.get("count") else {}
        n = sums.get("fidelity_count", 0)
        if n:
            out |= {"teacher_psnr": sums["fidelity_psnr"] / n, "teacher_l1": sums["fidelity_l1"] / n}
        return out

    def selection(self, labelled):
        return (self.select, self.mode) if labelled else ("teacher_psnr", "max")


def collator(task: Task, collate_fn: Callable | None = None) -> Callable:
    """The loaders' collate function: the task's own, or the user's ``collate_fn`` called on the raw dataset
    items (its result may be a dict of tensors, HF-style or ``{"input", "label"}``, or an ``(input, label)``
    pair), then completed by the task (targets split off and checked, sample indices added)."""
    if collate_fn is None:
        return task.collate

    def collate(items):
        if isinstance(items, Mapping):
            return task.prepare(items)
        indices = [it.index if isinstance(it, Indexed) else n for n, it in enumerate(items)]
        out = collate_fn([it.item if isinstance(it, Indexed) else it for it in items])
        if isinstance(out, (tuple, list)):
            out = {"input": out[0], "label": out[1]} if len(out) > 1 else {"input": out[0]}
        elif not isinstance(out, Mapping):
            out = {"input": out}
        batch = task.prepare(out)
        batch.setdefault("index", torch.as_tensor(indices, dtype=torch.long))
        return batch

    return collate

