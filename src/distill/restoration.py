"""The ``restoration`` task: image to image (denoising, super-resolution, any restoration).

Items are ``{"input": degraded (C, h, w), "label": clean (C, H, W)}`` with ``H, W`` the same integer multiple
of ``h, w`` (1 for denoising, 2 for ×2 super-resolution); the model returns ``(N, C, H, W)`` images. Pixel
values are in ``[0, 1]``. The student's own loss is the L1 distance to the clean image (``Term("l1")``; L1
rather than DnCNN's MSE because the SR literature since EDSR, Lim et al. 2017, trains with it and it gives the
same PSNR or better). Metrics, per image, then averaged: PSNR in dB (selects, higher is better) and SSIM, both by
``skimage.metrics`` on outputs clipped to ``[0, 1]`` (data range 1; SSIM with its default 7×7 window, smaller
for smaller images), and the L1 loss. A validation set without clean images is scored against the teacher's
outputs instead: ``teacher_psnr`` (selects) and ``teacher_l1``.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from distill.errors import describe
from distill.tasks import Task, TaskError, _add, register_task
from distill.terms import Term


def _metrics():
    try:
        from skimage.metrics import peak_signal_noise_ratio, structural_similarity
    except ImportError:
        raise TaskError("PSNR and SSIM of the restoration task need scikit-image: pip install scikit-image") from None
    return peak_signal_noise_ratio, structural_similarity


def psnr(image, reference) -> float:
    """PSNR (dB) of one ``(C, H, W)`` (or ``(H, W)``) image against ``reference``, data range 1, both clipped to
    ``[0, 1]`` (``skimage.metrics.peak_signal_noise_ratio``); identical images give ``inf``."""
    peak_signal_noise_ratio, _ = _metrics()
    a, b = (np.clip(np.asarray(x, dtype=np.float64), 0, 1) for x in (image, reference))
    with np.errstate(divide="ignore"):
        return float(peak_signal_noise_ratio(b, a, data_range=1.0))


def ssim(image, reference) -> float:
    """SSIM of one ``(C, H, W)`` (or ``(H, W)``) image against ``reference``, data range 1, both clipped to
    ``[0, 1]`` (``skimage.metrics.structural_similarity``, channels averaged; a 7×7 window, or the largest odd one
    that fits a smaller image)."""
    _, structural_similarity = _metrics()
    a, b = (np.clip(np.asarray(x, dtype=np.float64), 0, 1) for x in (image, reference))
    if a.ndim == 3 and a.shape[0] == 1:
        a, b = a[0], b[0]
    side = min(a.shape[-2:])
    window = min(7, side if side % 2 else side - 1)
    if window < 3:
        raise TaskError(f"SSIM needs images of at least 3×3 pixels, got {a.shape[-2:]}")
    return float(structural_similarity(b, a, data_range=1.0, win_size=window,
                                       channel_axis=0 if a.ndim == 3 else None))


@register_task
class Restoration(Task):
    """Image restoration: degraded image in, clean image out; PSNR (selects) and SSIM (module docstring)."""

    name = "restoration"
    select, mode = "psnr", "max"
    distribution = False

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
        return [Term("l1")]

    def _add_images(self, sums, prefix: str, pred, target) -> None:
        if pred.shape != target.shape:
            raise TaskError(f"the model's images {tuple(pred.shape)} and the {'teacher' if prefix else 'clean'} "
                            f"images {tuple(target.shape)} differ in shape")
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
