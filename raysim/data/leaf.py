"""FEMNIST in the LEAF benchmark's JSON layout.

`root/train/*.json` and `root/test/*.json`, each file
`{"users": [...], "num_samples": [...], "user_data": {user: {"x": [[784 floats], ...], "y": [...]}}}`.
Every training user becomes a writer id (its position over the sorted train files), which is
what the `natural` partition groups devices by.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from raysim.data.base import DataError, Dataset, normalise
from raysim.data.files import DOCS, require_root

NUM_CLASSES = 62  # 10 digits, 26 upper-case and 26 lower-case letters
SIDE = 28


def _json_files(root: Path, split: str) -> list[Path]:
    d = root / split
    if not d.is_dir():
        raise DataError(f"data.root {root}: directory {split}/ not found (LEAF layout: {split}/*.json; {DOCS})")
    files = sorted(p for p in d.iterdir() if p.suffix == ".json" and p.is_file())
    if not files:
        raise DataError(f"data.root {root}: no *.json files in {split}/ ({DOCS})")
    return files


def read_leaf_file(path: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per user, in the file's `users` order: images `(n, 1, 28, 28)` float32 and labels int64."""
    try:
        with open(path, "rb") as f:
            blob = json.load(f)
    except (OSError, ValueError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise DataError(f"{path}: not valid JSON ({' '.join(str(err).split())})") from None
    except RecursionError:
        raise DataError(f"{path}: not a LEAF file (JSON nested too deeply)") from None
    if not isinstance(blob, dict) or not isinstance(blob.get("users"), list) or not isinstance(blob.get("user_data"), dict):
        raise DataError(f"{path}: not a LEAF file (needs 'users' list and 'user_data' mapping)")
    counts = blob.get("num_samples")
    if counts is not None and (not isinstance(counts, list) or len(counts) != len(blob["users"])):
        raise DataError(f"{path}: 'num_samples' must list one count per user")
    out = []
    for i, user in enumerate(blob["users"]):
        rec = blob["user_data"].get(user)
        if not isinstance(rec, dict) or "x" not in rec or "y" not in rec:
            raise DataError(f"{path}: user {user!r} has no 'x'/'y' in user_data")
        bad = _bad_row(rec["x"])
        if bad is not None:
            raise DataError(f"{path}: user {user!r}: each 'x' row must have {SIDE * SIDE} values ({bad})")
        try:
            x = np.asarray(rec["x"], dtype=np.float32)
            y = np.asarray(rec["y"], dtype=np.int64)
        except (TypeError, ValueError):
            raise DataError(f"{path}: user {user!r}: 'x' must hold numbers and 'y' integers") from None
        x = x.reshape(-1, SIDE * SIDE)  # rows were checked; this only shapes an empty list
        if not np.isfinite(x).all():
            raise DataError(f"{path}: user {user!r}: 'x' holds non-finite values (NaN or Infinity)")
        if y.shape != (x.shape[0],):
            raise DataError(f"{path}: user {user!r}: {y.size} labels for {x.shape[0]} images")
        if counts is not None and counts[i] != len(y):
            raise DataError(f"{path}: user {user!r}: num_samples says {counts[i]} but has {len(y)}")
        if y.size and (y.min() < 0 or y.max() >= NUM_CLASSES):
            raise DataError(f"{path}: user {user!r}: labels outside 0..{NUM_CLASSES - 1}")
        out.append((x.reshape(-1, 1, SIDE, SIDE), y))
    return out


def _bad_row(rows: object) -> str | None:
    """What is wrong with the first malformed image row, or None (checked before numpy sees a
    ragged list, which would give a much vaguer error)."""
    if not isinstance(rows, list):
        return "'x' is not a list"
    for j, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != SIDE * SIDE:
            return f"row {j} has {len(row) if isinstance(row, list) else 'no list of'} values"
    return None


def _read_split(root: Path, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    users = [u for p in _json_files(root, split) for u in read_leaf_file(p)]
    if not users or sum(len(y) for _, y in users) == 0:
        raise DataError(f"data.root {root}: {split}/*.json hold no samples")
    x = np.concatenate([u[0] for u in users])
    y = np.concatenate([u[1] for u in users])
    writers = np.repeat(np.arange(len(users), dtype=np.int64), [len(u[1]) for u in users])
    return x, y, writers


def load_femnist(root: str | None) -> Dataset:
    """`femnist` from LEAF's `train/` and `test/` JSON files under `root`."""
    base = require_root(root, "femnist")
    x_train, y_train, writers = _read_split(base, "train")
    x_test, y_test, _ = _read_split(base, "test")
    xtr, xte = normalise(x_train, x_test)
    return Dataset("femnist", xtr, y_train, xte, y_test, num_classes=NUM_CLASSES, writers=writers)
