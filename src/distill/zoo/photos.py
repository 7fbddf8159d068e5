"""Real photographs that ship offline, cut into patches for image restoration (denoising, ×2 super-resolution).

| photograph | source | size | split |
|---|---|---|---|
| astronaut, grass, gravel, coins, motorcycle_left, rocket, moon | ``scikit-image`` wheel (``skimage/data``) | 303×384 to 512×741 | train |
| flower | ``scikit-learn`` ``load_sample_images`` | 427×640 | train |
| chelsea (a cat), brick (a wall) | ``scikit-image`` | 300×451, 512×512 | validation |
| camera (the cameraman), coffee | ``scikit-image`` | 512×512, 400×600 | test |
| china (a temple) | ``scikit-learn`` | 427×640 | test |

Only the photographs stored inside the two wheels are read (no ``pooch`` download). Left out on purpose: the
microscopy and medical images (``cell``, ``ihc``, ``retina``, ``microaneurysms``, ``hubble_deep_field``),
synthetic ones (``chessboard``, ``color``, ``logo``, ``phantom``, ``horse``), scans and text (``page``,
``text``), ``clock_motion`` (already blurred), ``motorcycle_right`` (the stereo twin of ``motorcycle_left``: it
would leak the same scene across splits) and ``lfw_subset`` (25×25 thumbnails).

The split is by photograph, fixed: no photograph gives patches to two splits. Every photograph is converted to
grayscale in ``[0, 1]`` (the σ = 25 grayscale denoising setting of DnCNN, Zhang et al. 2017; one channel also
keeps the networks three times cheaper at their first and last layers). Training patches are 40×40 taken every 24
pixels, 3,249 of them (DnCNN trained on 40×40 for a known σ); validation and test patches are non-overlapping
64×64 tiles, 92 and 178 of them. All deterministic.

Degradations (:func:`degrade`): ``"denoise"`` adds Gaussian noise of σ = 25 on the 0-255 scale (25/255 here),
from a generator seeded per split, so every split's noisy inputs are fixed (the teacher's outputs on the training
set can then be cached); ``"sr"`` downsamples by 2 with bicubic interpolation and antialiasing
(``torch.nn.functional.interpolate(..., antialias=True)``, the MATLAB ``imresize`` convention of the SR
literature) and the label is the 40×40 (64×64) patch itself.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from distill.data import ArrayDataset
from distill.zoo.datasets import DataMissing

SKIMAGE = ("astronaut", "grass", "gravel", "coins", "motorcycle_left", "rocket", "moon", "chelsea", "brick",
           "camera", "coffee")
SKLEARN = ("china", "flower")
SPLITS = {"train": ("astronaut", "grass", "gravel", "coins", "motorcycle_left", "rocket", "moon", "flower"),
          "val": ("chelsea", "brick"),
          "test": ("camera", "coffee", "china")}
SIGMA = 25.0 / 255.0
TASKS = ("denoise", "sr")
_NOISE_SEEDS = {"train": 1, "val": 2, "test": 3}


def photographs() -> dict[str, np.ndarray]:
    """Every photograph of the table above as a grayscale ``(H, W)`` float32 array in ``[0, 1]``, by name."""
    return {name: image.copy() for name, image in _read_photographs().items()}


@lru_cache(maxsize=1)
def _read_photographs() -> dict[str, np.ndarray]:
    try:
        from skimage import color, io
        from skimage.data import data_dir
    except ImportError:
        raise DataMissing("the photographs for restoration need scikit-image: pip install scikit-image") from None
    try:
        from sklearn.datasets import load_sample_images
    except ImportError:
        raise DataMissing("the photographs for restoration need scikit-learn: pip install scikit-learn") from None
    files = {path.stem: path for path in Path(data_dir).iterdir() if path.suffix in (".png", ".jpg")}
    missing = [name for name in SKIMAGE if name not in files]
    if missing:
        raise DataMissing(f"scikit-image's wheel lacks the photographs {', '.join(missing)} (in {data_dir}): "
                          "pip install --force-reinstall scikit-image")
    raw = {name: io.imread(files[name]) for name in SKIMAGE}
    raw |= dict(zip(SKLEARN, load_sample_images().images))
    out = {}
    for name, image in raw.items():
        image = image[..., :3] if image.ndim == 3 else image
        gray = color.rgb2gray(image) if image.ndim == 3 else image / 255.0
        out[name] = np.asarray(gray, dtype=np.float32)
    return out


def patches(image: np.ndarray, size: int, stride: int) -> np.ndarray:
    """Every ``size``×``size`` patch of ``image`` whose corner lies on the ``stride`` grid: ``(N, size, size)``."""
    h, w = image.shape
    return np.stack([image[i:i + size, j:j + size] for i in range(0, h - size + 1, stride)
                     for j in range(0, w - size + 1, stride)])


def degrade(clean: torch.Tensor, task: str, seed: int) -> torch.Tensor:
    """The degraded inputs of ``(N, 1, H, W)`` clean patches: noisy (σ = 25/255, ``task="denoise"``, unclipped, as
    in DnCNN) or bicubic ×2 downsampled (``task="sr"``, ``(N, 1, H/2, W/2)``, clipped to ``[0, 1]``)."""
    if task == "denoise":
        noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed))
        return clean + SIGMA * noise
    if task == "sr":
        if clean.shape[-1] % 2 or clean.shape[-2] % 2:
            raise ValueError(f"×2 super-resolution needs even patch sizes, got {tuple(clean.shape[-2:])}")
        small = F.interpolate(clean, scale_factor=0.5, mode="bicubic", antialias=True, align_corners=False)
        return small.clamp(0, 1)
    raise ValueError(f"unknown restoration task {task!r}; choose one of {', '.join(TASKS)}")


@dataclass
class Photos:
    """Train / validation / test patch datasets of one task: ``ds[i] = {"input": degraded, "label": clean}``."""

    train: ArrayDataset
    val: ArrayDataset
    test: ArrayDataset
    task: str
    images: dict  # split -> the photographs' names


def load_photos(task: str = "denoise", train_size: int = 40, stride: int = 24, eval_size: int = 64,
                limit: dict | None = None) -> Photos:
    """The patches of ``task`` (``"denoise"`` or ``"sr"``): ``train_size``-pixel training patches every
    ``stride`` pixels, ``eval_size``-pixel validation and test tiles. ``limit``: split -> the most patches kept
    (an evenly spaced subset, for quick runs)."""
    if task not in TASKS:
        raise ValueError(f"unknown restoration task {task!r}; choose one of {', '.join(TASKS)}")
    photos = photographs()
    splits = {}
    for split, names in SPLITS.items():
        size, step = (train_size, stride) if split == "train" else (eval_size, eval_size)
        clean = torch.from_numpy(np.concatenate([patches(photos[n], size, step) for n in names]))[:, None]
        keep = (limit or {}).get(split)
        if keep is not None and keep < len(clean):
            clean = clean[torch.linspace(0, len(clean) - 1, keep).long()]
        splits[split] = ArrayDataset(degrade(clean, task, _NOISE_SEEDS[split]), clean, name=f"{task}-{split}")
    return Photos(**splits, task=task, images=dict(SPLITS))


def sr_photos() -> Photos:
    """``load_photos("sr")``: a recipe's ``dataset: distill.zoo.photos:sr_photos`` (``load_photos`` alone is
    denoising)."""
    return load_photos("sr")
