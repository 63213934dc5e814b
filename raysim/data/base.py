"""The in-memory dataset, its error type, and the seeding rule shared by every loader."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Optional

import numpy as np

from raysim.errors import DataError


@dataclass(frozen=True, eq=False)  # eq=False: comparing numpy arrays has no single truth value
class Dataset:
    """A train/test classification set held in memory.

    Features are float32 `(N, ...)` of any per-sample shape: images `(N, C, H, W)` (the
    built-in loaders normalise them with the training set's per-channel mean and standard
    deviation), multichannel series `(N, C, T)`, tabular `(N, F)`; labels are int64 in
    `[0, num_classes)`. `writers` gives the writer (or
    latent style) of every *training* sample where the data has one (femnist), else None.

        >>> from raysim.scenario.schema import DataConfig
        >>> from raysim.scenario.resolve import load_dataset
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
            if x.dtype != np.float32 or x.ndim < 2:
                raise DataError(f"dataset {self.name}: x_{split} must be float32 (N, ...), got {x.dtype} {x.shape}")
            if y.dtype != np.int64 or y.shape != (x.shape[0],):
                raise DataError(f"dataset {self.name}: y_{split} must be int64 ({x.shape[0]},), got {y.dtype} {y.shape}")
            if y.size and (y.min() < 0 or y.max() >= self.num_classes):
                raise DataError(f"dataset {self.name}: y_{split} has labels outside [0, {self.num_classes})")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise DataError(f"dataset {self.name}: train samples {self.x_train.shape[1:]} and test samples "
                            f"{self.x_test.shape[1:]} differ in shape")
        if self.writers is not None and (self.writers.dtype != np.int64 or self.writers.shape != self.y_train.shape):
            raise DataError(f"dataset {self.name}: writers must be int64 ({self.y_train.shape[0]},)")

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one sample, e.g. `(C, H, W)` of an image."""
        return tuple(int(d) for d in self.x_train.shape[1:])


def dataset_from(name: str, out: object) -> Dataset:
    """A Dataset from what a dataset callable returned, checked, or a one-line DataError.

    `out` is a Dataset, or a tuple `(x_train, y_train, x_test, y_test)` or `(..., groups)` of
    numpy arrays: features of any shape `(N, ...)` and any real dtype (kept as float32),
    integer labels from 0 (the classes are 0..max label), and `groups` one integer id per
    training sample (a user, a writer: it enables `partition.kind: natural`).
    """
    if isinstance(out, Dataset):
        return out
    if not isinstance(out, (tuple, list)) or len(out) not in (4, 5):
        raise DataError(f"dataset {name}: must return a Dataset or a tuple (x_train, y_train, x_test, y_test"
                        f"[, groups]), got {type(out).__name__}")
    names = ["x_train", "y_train", "x_test", "y_test", "groups"]
    arrays = []
    for n, a in zip(names, out):
        if not isinstance(a, np.ndarray):
            raise DataError(f"dataset {name}: {n} must be a numpy array, got {type(a).__name__}")
        arrays.append(a)
    xs = {"x_train": arrays[0], "x_test": arrays[2]}
    for n, x in xs.items():
        if x.ndim < 2 or x.shape[0] == 0:
            raise DataError(f"dataset {name}: {n} must have shape (N, ...) with N > 0, got {x.shape}")
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise DataError(f"dataset {name}: {n} must be numeric, got dtype {x.dtype}")
        if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
            raise DataError(f"dataset {name}: {n} has non-finite values (NaN or inf)")
    for n, y, x in (("y_train", arrays[1], arrays[0]), ("y_test", arrays[3], arrays[2])):
        if not np.issubdtype(y.dtype, np.integer) or y.shape != (x.shape[0],):
            raise DataError(f"dataset {name}: {n} must be integer labels of shape ({x.shape[0]},), got {y.dtype} {y.shape}")
        if y.min() < 0:
            raise DataError(f"dataset {name}: {n} has negative labels")
    num_classes = int(max(arrays[1].max(), arrays[3].max())) + 1
    if num_classes < 2:
        raise DataError(f"dataset {name}: needs at least two classes, labels are all {num_classes - 1}")
    groups = None
    if len(arrays) == 5:
        g = arrays[4]
        if not np.issubdtype(g.dtype, np.integer) or g.shape != arrays[1].shape:
            raise DataError(f"dataset {name}: groups must be integer ids of shape ({arrays[1].shape[0]},), "
                            f"got {g.dtype} {g.shape}")
        groups = g.astype(np.int64)
    return Dataset(name, np.ascontiguousarray(arrays[0], dtype=np.float32), arrays[1].astype(np.int64),
                   np.ascontiguousarray(arrays[2], dtype=np.float32), arrays[3].astype(np.int64), num_classes, groups)


def rng_for(seed: int, purpose: str) -> np.random.Generator:
    """An independent random stream for one purpose (synthetic data, a split, a partition).

    The purpose string is folded into the seed sequence, so two purposes never share draws and
    adding a new purpose never shifts the numbers an existing one sees.
    """
    return np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(purpose.encode())]))


def normalise(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scale both splits by the training split's per-channel mean and std (float32 out).

    A channel is axis 1; its statistics run over the samples and every trailing axis (pixels
    of an image, time steps of a sensor window). Only training statistics are used, as a
    device could never see the test set.
    """
    if len(x_train) == 0:  # checked here, before numpy warns about the mean of nothing
        raise DataError("data: the dataset's files hold no training samples")
    xt = x_train.astype(np.float32, copy=False)
    axes = (0,) + tuple(range(2, xt.ndim))
    mean = xt.mean(axis=axes, dtype=np.float64, keepdims=True)
    std = xt.std(axis=axes, dtype=np.float64, keepdims=True)
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
