"""Axes that are not one plain channel group: blocks of columns and groups side by side.

Most tensor dimensions of a width-scalable model are indexed by one channel group (see
`raysim.models.base`). Two layouts are not:

* **flatten after a convolution**: `(N, C, H, W) -> (N, C*H*W)` makes channel `c` the columns
  `c*H*W ... (c+1)*H*W - 1` of the next Linear's input, so a kept channel keeps its whole
  block: `Span((Block("conv1", 16),))`.
* **concatenation**: `cat([a, b], dim=1)` lays group `a`'s channels, then group `b`'s, side by
  side: `Span((Block("a"), Block("b")))`. A part that never shrinks (an input passed through,
  a channel stream kept whole) is a `Fixed(size)` run.

A `Span` is the axis of such a dimension; it names groups only, never their widths, so the
same axes serve a spec whose groups were narrowed (`fedavg-smallest`). Widths come from the
spec when an index is built (`raysim.submodel.plan.param_index`).

    >>> axis = Span((Fixed(3), Block("conv1", 4)))   # 3 raw inputs, then conv1's 4x4 maps
    >>> span_width(axis, {"conv1": 2})
    11
    >>> span_indices(axis, {"conv1": np.array([1, 3])}, {"conv1": 8}).tolist()[:5]
    [0, 1, 2, 7, 8]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Union

import numpy as np


@dataclass(frozen=True)
class Block:
    """The channels of `group`, each owning `block` consecutive entries (channel-major)."""

    group: str
    block: int = 1


@dataclass(frozen=True)
class Fixed:
    """`size` entries that every submodel keeps."""

    size: int


Part = Union[Block, Fixed]


@dataclass(frozen=True)
class Span:
    """A dimension made of parts laid side by side, in order."""

    parts: tuple[Part, ...]

    def groups(self) -> tuple[str, ...]:
        """The groups this dimension follows (a group may appear more than once)."""
        return tuple(p.group for p in self.parts if isinstance(p, Block))


Axis = Optional[Union[str, Span]]


def span_width(span: Span, sizes: Mapping[str, int]) -> int:
    """Length of the dimension when every group has the width `sizes[group]`."""
    return sum(p.size if isinstance(p, Fixed) else sizes[p.group] * p.block for p in span.parts)


def span_indices(span: Span, keep: Mapping[str, np.ndarray], widths: Mapping[str, int]) -> np.ndarray:
    """Entries of the global dimension that a submodel keeping `keep[group]` holds (sorted
    within each part, parts in order), given the global group widths `widths`."""
    out: list[np.ndarray] = []
    offset = 0
    for p in span.parts:
        if isinstance(p, Fixed):
            out.append(np.arange(offset, offset + p.size, dtype=np.int64))
            offset += p.size
        else:
            kept = np.asarray(keep[p.group], dtype=np.int64)
            cols = offset + kept[:, None] * p.block + np.arange(p.block, dtype=np.int64)[None, :]
            out.append(cols.reshape(-1))
            offset += widths[p.group] * p.block
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def axis_width(axis: Axis, sizes: Mapping[str, int], fixed: int) -> int:
    """Length of a dimension with this axis at group widths `sizes` (`fixed` when None)."""
    if axis is None:
        return fixed
    if isinstance(axis, str):
        return sizes[axis]
    return span_width(axis, sizes)


def axis_groups(axis: Axis) -> tuple[str, ...]:
    """The groups an axis follows."""
    if axis is None:
        return ()
    if isinstance(axis, str):
        return (axis,)
    return axis.groups()
