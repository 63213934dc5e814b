"""scikit-learn's bundled 8x8 handwritten digits: a real dataset that needs no files."""

from __future__ import annotations

import numpy as np

from raysim.data.base import Dataset, normalise, split_train_test


def load_digits_dataset(test_fraction: float, seed: int) -> Dataset:
    """The 1797 digits (values 0..16) as `(N, 1, 8, 8)`, split by a seeded permutation."""
    from sklearn.datasets import load_digits  # noqa: PLC0415 - sklearn is slow to import

    bunch = load_digits()
    x = np.asarray(bunch.images, dtype=np.float32)[:, None, :, :] / 16.0
    y = np.asarray(bunch.target, dtype=np.int64)
    train, test = split_train_test(len(y), test_fraction, seed, "data.digits.split")
    xtr, xte = normalise(x[train], x[test])
    return Dataset("digits", xtr, y[train], xte, y[test], num_classes=10)
