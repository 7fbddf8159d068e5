"""Interchange interventions: what a model would say had one region of its input, or of a feature map, come
from another image (Geiger et al. 2022, *Inducing Causal Structure for Interpretable Neural Networks*, ICML;
Wu et al. 2022, *Causal Distillation for Language Models*, NAACL).

An interchange intervention runs a model on a *base* input but sets an internal variable to the value it
takes on a *source* input. Wu et al. align a teacher's variables with a student's and train the student so
that, under the same interventions, it gives the teacher's counterfactual outputs (their DIITO objective):
the student learns the teacher's causal structure, not only its answers on clean inputs.
:class:`Interchange` makes those counterfactual rows for image models: the variable is a square region of
the input (the same pixels for both models) or of an aligned pair of feature maps (the same *relative*
region in each model's own resolution).
"""
from __future__ import annotations

from collections.abc import Mapping

import torch

from distill.errors import DistillError, describe, excerpt
from distill.taps import TapError, parse_tap

__all__ = ["Interchange"]


class Interchange:
    """A batch transform that adds one counterfactual row per image: ``N`` images become ``2N`` rows, the
    last ``N`` being interchange interventions of the first (base ``i``, source ``perm(i)``).

    Args:
        size: the side of the swapped square region as a fraction of the image's (or feature map's) sides;
            each row's region is placed uniformly at random.
        student_layer, teacher_layer: ``None`` (the default): the region of the *input image* is swapped,
            so both models see the same counterfactual image. Otherwise tap paths (or aliases) of
            ``(N, C, H, W)`` feature maps: each model runs on the base image and its own layer's region is
            replaced by the same relative region computed on the source image (the batch's first half is
            the sources' clean run). ``teacher_layer`` defaults to ``student_layer``.

    The added rows' labels are ``-100`` (the label term counts the real images only; the teacher's outputs
    are the only targets on counterfactuals). The engine calls :meth:`attach` with the student and the
    teachers while training and calls the object on whole batches (``whole_batch``); evaluation is
    untouched. Images with one class label each (or unlabelled).
    """

    whole_batch = True

    def __init__(self, size: float = 0.5, student_layer: str | None = None, teacher_layer: str | None = None):
        if isinstance(size, bool) or not isinstance(size, (int, float)) or not 0 < size <= 1:
            raise DistillError(f"Interchange size must be a fraction of the side in (0, 1], got {excerpt(size)}")
        if teacher_layer is not None and student_layer is None:
            raise DistillError("Interchange: give student_layer too (or neither, to swap regions of the input)")
        self.size = float(size)
        self.student_layer = student_layer
        self.teacher_layer = teacher_layer or student_layer
        self._plan = None  # (the input made, perm (N,), corners (N, 2) as fractions) of the last batch made

    def attach(self, student, *teachers) -> list:
        """Hook the aligned layer of the student and of each teacher (nothing for input interchanges)."""
        if self.student_layer is None:
            return []
        handles = []
        for model, layer in [(student, self.student_layer), *((t, self.teacher_layer) for t in teachers)]:
            try:
                spec = parse_tap(layer, model)
            except TapError as err:
                raise DistillError(f"Interchange: {err}") from None
            if spec.kind != "module" or spec.capture != "output" or spec.indices:
                raise DistillError(f"Interchange: {layer!r} must name a module whose output is a feature map")
            running = {}
            # the layer hook acts only inside a forward pass on the batch this object made
            handles.append(model.register_forward_pre_hook(
                lambda m, args, running=running: running.__setitem__("on", bool(args) and self._made(args[0]))))
            handles.append(model.register_forward_hook(lambda m, args, out, running=running: running.clear()))
            handles.append(dict(model.named_modules())[spec.target].register_forward_hook(
                lambda m, args, out, running=running, layer=layer: self._swap(out, layer) if running.get("on") else None))
        return handles

    def _made(self, value) -> bool:
        return self._plan is not None and value is self._plan[0]

    def _regions(self, height: int, width: int, corners: torch.Tensor) -> list[tuple[slice, slice]]:
        h, w = max(1, round(self.size * height)), max(1, round(self.size * width))
        return [(slice(int(round(float(top) * (height - h))), int(round(float(top) * (height - h))) + h),
                 slice(int(round(float(left) * (width - w))), int(round(float(left) * (width - w))) + w))
                for top, left in corners.tolist()]

    def _interchange(self, values: torch.Tensor, perm: torch.Tensor, corners: torch.Tensor) -> torch.Tensor:
        """Rows ``N..2N-1`` of ``values`` ``(2N, C, H, W)`` get their region from row ``perm(i)``."""
        n = len(perm)
        out = values.clone()
        for i, (rows, cols) in enumerate(self._regions(values.shape[-2], values.shape[-1], corners)):
            out[n + i, ..., rows, cols] = values[int(perm[i]), ..., rows, cols]
        return out

    def _swap(self, output, layer: str):
        if not isinstance(output, torch.Tensor) or output.dim() != 4:
            raise DistillError(f"Interchange: {layer!r} gives {describe(output)}, not an (N, C, H, W) feature map")
        _, perm, corners = self._plan
        return self._interchange(output, perm.to(output.device), corners)

    def __call__(self, batch: dict, generator: torch.Generator | None = None) -> dict:
        x = batch["input"]
        if isinstance(x, Mapping) or not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise DistillError(f"Interchange intervenes on images: batches need an (N, C, H, W) input tensor, got "
                               f"{describe(x)}")
        n = len(x)
        perm = torch.randperm(n, generator=generator)
        corners = torch.rand(n, 2, generator=generator)
        made = torch.cat([x, x])
        if self.student_layer is None:
            made = self._interchange(made, perm.to(x.device), corners)
        out = dict(batch, input=made)
        label = batch.get("label")
        if isinstance(label, torch.Tensor):
            if label.is_floating_point() or label.dim() != 1:
                raise DistillError(f"Interchange needs one class label per image, got {describe(label)}")
            out["label"] = torch.cat([label, torch.full_like(label, -100)])
        if isinstance(batch.get("index"), torch.Tensor):
            out["index"] = torch.cat([batch["index"], batch["index"]])
        self._plan = (made, perm, corners)
        return out

    def __repr__(self) -> str:
        where = "input" if self.student_layer is None else f"{self.student_layer} ~ {self.teacher_layer}"
        return f"Interchange({self.size}, {where})"
