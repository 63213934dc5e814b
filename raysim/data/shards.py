"""Every device's training samples as one flat index array plus offsets (a CSR layout).

Two arrays instead of one per device: at 10^5 devices a list of index arrays costs 10^5
Python objects to build, pickle and ship, while `Shards` is two buffers that go into Ray's
object store once and are read zero-copy. It behaves as a read-only sequence of per-device
index arrays, so code written for a list keeps working.

    >>> s = Shards.from_list([np.array([0, 2]), np.array([], np.int64), np.array([1])])
    >>> len(s), s[0].tolist(), s.sizes().tolist()
    (3, [0, 2], [2, 0, 1])
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)  # eq=False: comparing numpy arrays has no single truth value
class Shards(Sequence):
    """Device `i` holds the samples `flat[offsets[i]:offsets[i + 1]]` (int64 indices)."""

    flat: np.ndarray
    offsets: np.ndarray

    def __post_init__(self) -> None:
        off = self.offsets
        if off.ndim != 1 or len(off) < 1 or off[0] != 0 or off[-1] != len(self.flat) or np.any(np.diff(off) < 0):
            raise ValueError("shards: offsets must rise from 0 to len(flat)")

    @classmethod
    def from_list(cls, parts: Iterable[np.ndarray]) -> "Shards":
        """Pack per-device index arrays (a `Shards` is returned as it is)."""
        if isinstance(parts, Shards):
            return parts
        parts = [np.asarray(p, dtype=np.int64) for p in parts]
        offsets = np.zeros(len(parts) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(p) for p in parts])
        flat = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        return cls(flat, offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:  # type: ignore[override]
        n = len(self)
        j = int(i) + n if int(i) < 0 else int(i)
        if not 0 <= j < n:
            raise IndexError(f"shard {i} out of range for {n} devices")
        return self.flat[self.offsets[j]:self.offsets[j + 1]]

    def sizes(self) -> np.ndarray:
        """Training samples of every device (int64)."""
        return np.diff(self.offsets)

    def owners(self) -> np.ndarray:
        """The device of every entry of `flat`."""
        return np.repeat(np.arange(len(self), dtype=np.int64), self.sizes())
