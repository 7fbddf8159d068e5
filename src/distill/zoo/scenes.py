"""Detection scenes: Fashion-MNIST and MNIST objects pasted at several scales on textured canvases.

Every scene is a ``size x size`` grey image holding 1 to ``max_objects`` objects. Classes 0-9 are the
Fashion-MNIST classes, 10-19 the MNIST digits (:data:`CLASSES`). An object is a 28 x 28 source image
resized to ``min_scale``-``max_scale`` pixels and alpha-blended onto the canvas by its own ink; its box is
tight to the ink (pixels above :data:`INK`) in the canvas's pixel coordinates ``(x0, y0, x1, y1)``, pixel
edges, so a one-pixel object at column 3 is ``x0 = 3, x1 = 4``. Objects may overlap, but a new box may cover
at most ``max_overlap`` of an earlier box's (or its own) area, and later objects are drawn over earlier ones.
Backgrounds are procedural textures: a gradient, stripes at a random angle and frequency, and smoothed blobs,
each at a random strength, plus pixel noise.

Splits are fixed by ``seed``: training and validation scenes use objects of the source training splits
(the last 10% of each source training split is kept for validation objects only), test scenes use objects
of the source test splits. Generated arrays are cached under ``distill.fileio.cache_dir() / "scenes"``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from distill.fileio import atomic_write_dir, cache_dir, settings_key

FASHION = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot")
CLASSES = FASHION + tuple(f"digit-{d}" for d in range(10))
INK = 0.2  # a resized object's pixel counts as ink above this (of 1)
VERSION = 1  # bump when the generator changes, so cached scenes are made again


@dataclass(frozen=True)
class SceneSettings:
    size: int = 96
    min_objects: int = 1
    max_objects: int = 6
    min_scale: int = 20  # pixels, the side of the resized 28 x 28 source image
    max_scale: int = 44
    max_overlap: float = 0.4  # the largest share of a box's area another box may cover

    def check(self) -> None:
        if not 32 <= self.size <= 1024:
            raise ValueError(f"scene size must be 32 to 1024 pixels, got {self.size}")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(f"need 1 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}")
        if not 8 <= self.min_scale <= self.max_scale <= self.size:
            raise ValueError(f"need 8 <= min_scale <= max_scale <= size, got {self.min_scale}, {self.max_scale}")


class SceneSet(Dataset):
    """Scenes as items ``{"image": (1, S, S) float in [0, 1], "boxes": (n, 4) float xyxy, "classes": (n,) long}``."""

    def __init__(self, images: np.ndarray, boxes: np.ndarray, classes: np.ndarray, offsets: np.ndarray,
                 name: str = "scenes"):
        self.images, self.boxes, self.classes, self.offsets, self.name = images, boxes, classes, offsets, name

    def __len__(self) -> int:
        return len(self.images)

    def target(self, i: int) -> dict:
        lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
        return {"boxes": torch.from_numpy(self.boxes[lo:hi].copy()), "classes": torch.from_numpy(self.classes[lo:hi].astype(np.int64))}

    def __getitem__(self, i: int) -> dict:
        image = torch.from_numpy(self.images[i].astype(np.float32) / 255.0)[None]
        return {"image": image, **self.target(i)}


class UnlabelledScenes(Dataset):
    """The images of a :class:`SceneSet` as items ``{"image"}``, boxes withheld: a transfer set that only
    distillation terms read."""

    def __init__(self, scenes: SceneSet):
        self.scenes = scenes

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.scenes[i]["image"]}


@dataclass
class Scenes:
    train: SceneSet
    val: SceneSet
    test: SceneSet
    settings: dict


def _objects(split: str) -> tuple[torch.Tensor, np.ndarray]:
    """The source images ``(N, 28, 28)`` and scene classes ``(N,)`` of one source split (Fashion-MNIST then MNIST)."""
    from distill.zoo.datasets import fashion_mnist, mnist

    source = "test" if split == "test" else "train"
    parts = []
    for offset, load in ((0, fashion_mnist), (10, mnist)):
        data = load(source)
        images, labels = data.inputs[:, 0], data.labels.numpy() + offset
        if source == "train":  # the last tenth of each source training split gives the validation objects
            cut = len(images) * 9 // 10
            keep = slice(cut, None) if split == "val" else slice(0, cut)
            images, labels = images[keep], labels[keep]
        parts.append((images, labels))
    return torch.cat([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A procedural background in about [0, 0.5]: gradient + stripes + smoothed blobs + pixel noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = rng.uniform(0, 2 * math.pi)
    gradient = (np.cos(angle) * xx + np.sin(angle) * yy)
    gradient = (gradient - gradient.min()) / max(float(np.ptp(gradient)), 1e-6)
    angle, freq, phase = rng.uniform(0, math.pi), rng.uniform(2, 12), rng.uniform(0, 2 * math.pi)
    stripes = 0.5 + 0.5 * np.sin(2 * math.pi * freq * (np.cos(angle) * xx + np.sin(angle) * yy) + phase)
    coarse = torch.from_numpy(rng.random((1, 1, 6, 6), dtype=np.float32))
    blobs = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[0, 0].numpy()
    w = rng.uniform(0, 1, 3) * np.array([0.25, 0.18, 0.25])
    out = 0.05 + w[0] * gradient + w[1] * stripes + w[2] * blobs + rng.normal(0, 0.03, (size, size))
    return out.astype(np.float32)


def _overlap(box, others, limit: float) -> bool:
    """Whether ``box`` covers more than ``limit`` of an earlier box's area, or one covers that much of it."""
    area = (box[2] - box[0]) * (box[3] - box[1])
    for o in others:
        iw = min(box[2], o[2]) - max(box[0], o[0])
        ih = min(box[3], o[3]) - max(box[1], o[1])
        if iw > 0 and ih > 0:
            inter = iw * ih
            if inter > limit * area or inter > limit * (o[2] - o[0]) * (o[3] - o[1]):
                return True
    return False


def make_scene(rng: np.random.Generator, sources: torch.Tensor, labels: np.ndarray, s: SceneSettings):
    """One scene: ``(image uint8 (S, S), boxes float32 (n, 4), classes int64 (n,))``."""
    canvas = texture(rng, s.size)
    boxes, classes = [], []
    wanted = int(rng.integers(s.min_objects, s.max_objects + 1))
    for _ in range(wanted * 10):  # placement attempts
        if len(boxes) == wanted:
            break
        k = int(rng.integers(len(sources)))
        side = int(rng.integers(s.min_scale, s.max_scale + 1))
        obj = F.interpolate(sources[k][None, None], size=(side, side), mode="bilinear", align_corners=False,
                            antialias=True)[0, 0].clamp(0, 1).numpy()
        ink_rows, ink_cols = np.nonzero(obj.max(1) > INK)[0], np.nonzero(obj.max(0) > INK)[0]
        if len(ink_rows) == 0:
            continue
        y, x = int(rng.integers(0, s.size - side + 1)), int(rng.integers(0, s.size - side + 1))
        box = (x + ink_cols[0], y + ink_rows[0], x + ink_cols[-1] + 1, y + ink_rows[-1] + 1)
        if _overlap(box, boxes, s.max_overlap):
            continue
        alpha = np.clip(obj * 1.6, 0, 1)
        tone = rng.uniform(0.7, 1.0)
        patch = canvas[y:y + side, x:x + side]
        canvas[y:y + side, x:x + side] = patch * (1 - alpha) + alpha * tone * obj / max(float(obj.max()), 1e-6)
        boxes.append(box)
        classes.append(int(labels[k]))
    # a later object may have hidden an earlier one's ink (bounded by max_overlap): the box stays as drawn
    image = np.clip(canvas * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return image, np.asarray(boxes, dtype=np.float32).reshape(-1, 4), np.asarray(classes, dtype=np.int64)


def generate(split: str, count: int, seed: int, settings: SceneSettings) -> SceneSet:
    """``count`` scenes of ``split`` (``train``, ``val`` or ``test``), the same for the same arguments."""
    settings.check()
    sources, labels = _objects(split)
    rng = np.random.default_rng([seed, ("train", "val", "test").index(split)])
    images, boxes, classes, offsets = [], [], [], [0]
    for _ in range(count):
        image, b, c = make_scene(rng, sources, labels, settings)
        images.append(image)
        boxes.append(b)
        classes.append(c)
        offsets.append(offsets[-1] + len(b))
    return SceneSet(np.stack(images), np.concatenate(boxes), np.concatenate(classes), np.asarray(offsets), split)


def load_scenes(train_size: int = 4000, val_size: int = 500, test_size: int = 1000, seed: int = 0,
                settings: SceneSettings | None = None, say=print) -> Scenes:
    """The fixed train / validation / test scenes, generated once and cached as ``.npz`` arrays."""
    settings = settings or SceneSettings()
    key = {"train": train_size, "val": val_size, "test": test_size, "seed": seed, "version": VERSION,
           **settings.__dict__}
    folder = cache_dir() / "scenes" / f"scenes-{settings_key(key)}"
    sizes = {"train": train_size, "val": val_size, "test": test_size}
    if not (folder / "test.npz").is_file():
        say(f"generating detection scenes ({train_size} / {val_size} / {test_size}) into {folder}")
        made = {split: generate(split, n, seed, settings) for split, n in sizes.items()}

        def write(tmp: Path) -> None:
            for split, d in made.items():
                np.savez(tmp / f"{split}.npz", images=d.images, boxes=d.boxes, classes=d.classes, offsets=d.offsets)

        atomic_write_dir(folder, write)
    sets = {}
    for split in sizes:
        with np.load(folder / f"{split}.npz") as z:
            sets[split] = SceneSet(z["images"], z["boxes"], z["classes"], z["offsets"], split)
    return Scenes(**sets, settings=key)


def recipe_data(train_size: int = 3000) -> dict:
    """The benchmark's scenes as a recipe's data (``data.dataset: distill.zoo.scenes:recipe_data``)."""
    data = load_scenes(train_size, 300, 1000)
    return {"train": data.train, "val": data.val, "test": data.test, "num_classes": len(CLASSES)}


def recipe_data_small() -> dict:
    """300 training, 60 validation and 100 test scenes (checks and tests; generated in a few seconds)."""
    data = load_scenes(300, 60, 100)
    return {"train": data.train, "val": data.val, "test": data.test, "num_classes": len(CLASSES)}
