"""MNIST and Fashion-MNIST from their IDX files.

IDX layout: two zero bytes, a type byte (0x08 = unsigned byte), a byte with the number of
dimensions, one big-endian uint32 per dimension, then the data in row-major order. The magic
number (the first four bytes as a big-endian int) is therefore 2051 for 3-d image files and
2049 for 1-d label files.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np

from raysim.data.base import DataError, Dataset, normalise
from raysim.data.files import find_file, read_bytes, require_root

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
_UBYTE = 0x08

# Both sets share the same file names and 28x28 format; they differ only in content.
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def parse_idx(data: bytes, path: Path, magic: int) -> np.ndarray:
    """Decode one unsigned-byte IDX file, checking its header against the payload."""
    if len(data) < 4:
        raise DataError(f"{path}: truncated IDX file ({len(data)} bytes, no header)")
    (found,) = struct.unpack(">i", data[:4])
    if found != magic:
        kind = "images" if magic == IMAGES_MAGIC else "labels"
        raise DataError(f"{path}: bad magic number {found} (expected {magic} for IDX {kind}; wrong or corrupt file?)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = math.prod(dims)  # Python ints: absurd header dims cannot overflow
    payload = len(data) - header
    if payload < expected:
        raise DataError(f"{path}: truncated IDX file: header {'x'.join(map(str, dims))} needs {expected} bytes, found {payload}")
    if payload > expected:
        raise DataError(f"{path}: IDX file has {payload - expected} bytes beyond its header's {'x'.join(map(str, dims))}")
    return np.frombuffer(data, dtype=np.uint8, count=expected, offset=header).reshape(dims)


def read_split(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images `(N, 1, H, W)` uint8 and labels `(N,)` int64 of one split."""
    img_name, lbl_name = FILES[split]
    img_path = find_file(root, img_name, gz=True)
    lbl_path = find_file(root, lbl_name, gz=True)
    images = parse_idx(read_bytes(img_path), img_path, IMAGES_MAGIC)
    labels = parse_idx(read_bytes(lbl_path), lbl_path, LABELS_MAGIC)
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{lbl_path}: {labels.shape[0]} labels but {img_path.name} has {images.shape[0]} images")
    if images.shape[0] == 0:
        raise DataError(f"{img_path}: holds no images (its header says 0); the {split} split needs at least one")
    if labels.size and labels.max() > 9:
        raise DataError(f"{lbl_path}: label {int(labels.max())} outside 0..9")
    return images[:, None, :, :], labels.astype(np.int64)


def load_idx(name: str, root: str | None) -> Dataset:
    """`mnist` or `fashion-mnist` from the four IDX files under `root`."""
    base = require_root(root, name)
    x_train, y_train = read_split(base, "train")
    x_test, y_test = read_split(base, "test")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(f"data.root {root}: train images are {x_train.shape[2:]} but test images are {x_test.shape[2:]}")
    # Pixels go to [0, 1] before normalising so that statistics are over the usual scale.
    xtr, xte = normalise(x_train.astype(np.float32) / 255.0, x_test.astype(np.float32) / 255.0)
    return Dataset(name, xtr, y_train, xte, y_test, num_classes=10)
