"""Image quality for the ``restoration`` task (:class:`distill.tasks.Restoration`): PSNR and SSIM of one image
against its reference, by ``skimage.metrics``, on images clipped to ``[0, 1]`` (data range 1)."""
from __future__ import annotations

import numpy as np

from distill.errors import DistillError


def _metrics():
    try:
        from skimage.metrics import peak_signal_noise_ratio, structural_similarity
    except ImportError:
        raise DistillError("PSNR and SSIM of the restoration task need scikit-image: pip install scikit-image") from None
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
        raise DistillError(f"SSIM needs images of at least 3×3 pixels, got {a.shape[-2:]}")
    return float(structural_similarity(b, a, data_range=1.0, win_size=window,
                                       channel_axis=0 if a.ndim == 3 else None))
