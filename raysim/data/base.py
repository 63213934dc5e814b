"""The in-memory dataset, its error type, and the seeding rule shared by every loader."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Optional

import numpy as np

from raysim.errors import BadInput


class DataError(BadInput):
    """A dataset cannot be loaded or partitioned; the message is one line naming the file."""


@dataclass(frozen=True, eq=False)  # eq=False: comparing numpy arrays has no single truth value
class Dataset:
    """A train/test image-classification set held in memory.

    Images are float32 `(N, C, H, W)`, normalised with the training set's per-channel mean and
    standard deviation; labels are int64 in `[0, num_classes)`. `writers` gives the writer (or
    latent style) of every *training* sample where the data has one (femnist), else None.

        >>> ds = load_dataset(DataConfig(dataset="digits"), seed=0)
        >>> ds.input_shape, ds.num_classes
        ((1, 8, 8), 10)
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    writers: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        # Loaders are the only producers; these checks catch a loader bug at its source
        # rather than as a shape error deep inside a training actor.
        for split, x, y in (("train", self.x_train, self.y_train), ("test", self.x_test, self.y_test)):
            if x.dtype != np.float32 or x.ndim != 4:
                raise DataError(f"dataset {self.name}: x_{split} must be float32 (N, C, H, W), got {x.dtype} {x.shape}")
            if y.dtype != np.int64 or y.shape != (x.shape[0],):
                raise DataError(f"dataset {self.name}: y_{split} must be int64 ({x.shape[0]},), got {y.dtype} {y.shape}")
            if y.size and (y.min() < 0 or y.max() >= self.num_classes):
                raise DataError(f"dataset {self.name}: y_{split} has labels outside [0, {self.num_classes})")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise DataError(f"dataset {self.name}: train images {self.x_train.shape[1:]} and test images {self.x_test.shape[1:]} differ")
        if self.writers is not None and (self.writers.dtype != np.int64 or self.writers.shape != self.y_train.shape):
            raise DataError(f"dataset {self.name}: writers must be int64 ({self.y_train.shape[0]},)")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """`(C, H, W)` of one image."""
        c, h, w = self.x_train.shape[1:]
        return (int(c), int(h), int(w))


def rng_for(seed: int, purpose: str) -> np.random.Generator:
    """An independent random stream for one purpose (synthetic data, a split, a partition).

    The purpose string is folded into the seed sequence, so two purposes never share draws and
    adding a new purpose never shifts the numbers an existing one sees.
    """
    return np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(purpose.encode())]))


def normalise(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scale both splits by the training split's per-channel mean and std (float32 out).

    Only training statistics are used, as a device could never see the test set.
    """
    if len(x_train) == 0:  # checked here, before numpy warns about the mean of nothing
        raise DataError("data: the dataset's files hold no training samples")
    xt = x_train.astype(np.float32, copy=False)
    mean = xt.mean(axis=(0, 2, 3), dtype=np.float64, keepdims=True)
    std = xt.std(axis=(0, 2, 3), dtype=np.float64, keepdims=True)
    std = np.where(std > 1e-8, std, 1.0)  # a constant channel stays constant, not NaN
    scale = (1.0 / std).astype(np.float32)
    shift = mean.astype(np.float32)
    out = xt - shift
    out *= scale  # in place: the same numbers as `(xt - shift) * scale`, one temporary fewer
    test = x_test.astype(np.float32, copy=False) - shift
    test *= scale
    return out, test


def split_train_test(n: int, test_fraction: float, seed: int, purpose: str) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/test index split of `range(n)` for sets that ship without one."""
    perm = rng_for(seed, purpose).permutation(n)
    n_test = min(n - 1, max(1, int(round(test_fraction * n))))
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])
