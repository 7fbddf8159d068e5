"""Cached teacher signals: the teacher's tap values computed once per training sample.

When the student's inputs are the same every epoch (no augmentation), the
teacher's outputs are too, so running the teacher every step is wasted work.
:class:`CachedTeacher` runs it once over the training set and looks its
outputs up by ``batch["index"]``; loss terms see the same ``{tap: tensor}``
dict as from a live teacher. With augmentation the inputs change every epoch
and a cache would hand out stale targets, so the engine refuses that
combination instead.
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from distill.data import IndexedDataset, collate
from distill.teacher import LiveTeacher


class TeacherOutputs:
    """Teacher tap values over one training set, filled tap by tap and shared by several students' runs.

    A recipe trains many students against one frozen teacher on the same data; with one
    ``TeacherOutputs`` passed to each run (``Distiller(..., teacher_outputs=...)``), the teacher
    runs over the training set once per set of new taps instead of once per student.
    """

    def __init__(self):
        self.values: dict[str, torch.Tensor] = {}
        self.model = None
        self.dataset = None

    def bind(self, model, dataset) -> None:
        dataset = dataset.dataset if isinstance(dataset, IndexedDataset) else dataset  # a wrapper made per run
        if self.model is None:
            self.model, self.dataset = model, dataset
        elif self.model is not model or self.dataset is not dataset:
            raise ValueError("TeacherOutputs holds another teacher's or another dataset's outputs; "
                             "use one per (teacher, training set)")


class CachedTeacher:
    """Teacher tap values for every sample of ``dataset``, kept in memory and indexed by sample index.

    ``outputs``: a :class:`TeacherOutputs` to reuse taps another run computed and to keep the new ones.
    """

    def __init__(self, teacher: LiveTeacher, dataset, batch_size: int = 1000, device="cpu", progress: bool = False,
                 outputs: TeacherOutputs | None = None):
        self.taps = teacher.taps
        outputs = outputs if outputs is not None else TeacherOutputs()
        outputs.bind(teacher.model, dataset)
        values = outputs.values
        teacher.to(device)
        if any(tap not in values for tap in self.taps):
            loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
            for batch in tqdm(loader, desc="caching teacher outputs", leave=False, disable=not progress):
                index = torch.as_tensor(batch["index"]).long()
                inputs = batch["input"].to(device) if isinstance(batch["input"], torch.Tensor) else batch["input"]
                for tap, value in teacher({**batch, "input": inputs}).items():
                    if tap not in values:
                        values[tap] = torch.empty((len(dataset), *value.shape[1:]), dtype=value.dtype,
                                                  device=value.device)
                    values[tap][index.to(value.device)] = value
        self.values = {tap: values[tap] for tap in self.taps}

    def to(self, device) -> "CachedTeacher":
        self.values = {k: v.to(device) for k, v in self.values.items()}
        return self

    def __call__(self, batch) -> dict[str, torch.Tensor]:
        if "index" not in batch:
            raise KeyError("a cached teacher needs batch['index'] to look its outputs up")
        index = torch.as_tensor(batch["index"]).long()
        return {tap: value[index.to(value.device)] for tap, value in self.values.items()}
