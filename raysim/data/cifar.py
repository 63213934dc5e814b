"""CIFAR-10 from its "python version" pickle batches.

The batches are pickles, and unpickling can run arbitrary code, so they are read with an
Unpickler that resolves only the handful of globals a pickled dict of numpy arrays needs.
"""

from __future__ import annotations

import importlib
import io
import pickle
from pathlib import Path
from typing import Any, Callable

import numpy as np

from raysim.data.base import DataError, Dataset, normalise
from raysim.data.files import find_file, read_bytes, require_root

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
SUBDIR = "cifar-10-batches-py"  # the folder the official archive unpacks to
_PIXELS = 3 * 32 * 32


def _numpy_global(name: str) -> Callable[..., Any]:
    # numpy 2 moved numpy.core to numpy._core; pickles name either, depending on who wrote them.
    for module in ("numpy._core.multiarray", "numpy._core.numeric", "numpy.core.multiarray", "numpy.core.numeric"):
        try:
            obj = getattr(importlib.import_module(module), name, None)
        except ImportError:
            continue
        if obj is not None:
            return obj
    raise ImportError(name)


_ALLOWED: dict[tuple[str, str], Callable[[], Any]] = {
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("_codecs", "encode"): lambda: importlib.import_module("_codecs").encode,  # protocol-2 bytes
}
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED[(_mod, "_reconstruct")] = lambda: _numpy_global("_reconstruct")
    _ALLOWED[(_mod, "scalar")] = lambda: _numpy_global("scalar")
for _mod in ("numpy.core.numeric", "numpy._core.numeric"):
    _ALLOWED[(_mod, "_frombuffer")] = lambda: _numpy_global("_frombuffer")


class _SafeUnpickler(pickle.Unpickler):
    """Refuses every global outside the numpy-array allow-list."""

    def find_class(self, module: str, name: str) -> Any:
        make = _ALLOWED.get((module, name))
        if make is None:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")
        return make()


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images `(n, 3, 32, 32)` uint8 and labels `(n,)` int64 of one batch file."""
    try:
        obj = _SafeUnpickler(io.BytesIO(read_bytes(path)), encoding="bytes").load()
    except DataError:
        raise
    except Exception as err:  # a corrupt pickle can raise almost anything
        msg = " ".join(str(err).split()) or type(err).__name__
        raise DataError(f"{path}: not a CIFAR-10 python batch ({msg})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: not a CIFAR-10 python batch (expected a dict, found {type(obj).__name__})")
    data = obj.get(b"data", obj.get("data"))
    labels = obj.get(b"labels", obj.get("labels"))
    if data is None or labels is None:
        raise DataError(f"{path}: CIFAR-10 batch lacks the 'data' or 'labels' key")
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _PIXELS:
        raise DataError(f"{path}: 'data' must be uint8 (n, {_PIXELS}), found {data.dtype} {data.shape}")
    try:
        y = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        raise DataError(f"{path}: 'labels' must be a list of integers") from None
    if y.shape != (data.shape[0],):
        raise DataError(f"{path}: {y.size} labels for {data.shape[0]} images")
    if y.size and (y.min() < 0 or y.max() > 9):
        raise DataError(f"{path}: labels outside 0..9")
    # Each row holds the red, green and blue 32x32 planes in turn, each row-major.
    return data.reshape(-1, 3, 32, 32), y


def load_cifar10(root: str | None) -> Dataset:
    """`cifar10` from `data_batch_1..5` and `test_batch` in `root` or `root/cifar-10-batches-py`."""
    base = require_root(root, "cifar10")
    train = [read_batch(find_file(base, n, subdirs=(SUBDIR,))) for n in TRAIN_BATCHES]
    x_test, y_test = read_batch(find_file(base, TEST_BATCH, subdirs=(SUBDIR,)))
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    xtr, xte = normalise(x_train.astype(np.float32) / 255.0, x_test.astype(np.float32) / 255.0)
    return Dataset("cifar10", xtr, y_train, xte, y_test, num_classes=10)
