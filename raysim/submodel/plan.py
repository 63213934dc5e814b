"""Submodel plans: which rows/columns of every global tensor a submodel keeps.

A plan stores, per channel group of the model, the sorted indices it keeps. The index of a
parameter follows from its axes (see `raysim.models.base`), so one plan describes every
tensor consistently: a layer's inputs are exactly the previous layer's kept outputs, and layers
sharing a group (residual streams) keep the same channels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence, Union

import numpy as np
import torch

from raysim.models.base import ModelSpec
from raysim.models.span import Axis, Span, span_indices

Index = tuple[Union[slice, torch.Tensor], ...]


def rate_sizes(width: int, rate: float) -> int:
    """Channels kept at `rate` of a layer `width` wide: ceil(rate * width), at least 1."""
    return max(1, math.ceil(rate * width - 1e-9))



@dataclass(frozen=True)
class SubmodelPlan:
    """Kept indices per channel group (sorted, unique, int64) at a rate."""

    rate: float
    keep: Mapping[str, np.ndarray]

    def sizes(self) -> dict[str, int]:
        """Width of every group in the submodel."""
        return {g: int(len(ix)) for g, ix in self.keep.items()}

    def key(self) -> tuple:
        """Hashable identity (for caching extraction indices)."""
        return tuple((g, ix.tobytes()) for g, ix in sorted(self.keep.items()))


def full_plan(spec: ModelSpec) -> SubmodelPlan:
    """The plan that keeps everything (rate 1)."""
    return SubmodelPlan(1.0, {g: np.arange(w, dtype=np.int64) for g, w in spec.groups.items()})


def prefix_plan(spec: ModelSpec, rate: float) -> SubmodelPlan:
    """The first ceil(rate * width) channels of every group (HeteroFL's static submodel)."""
    return SubmodelPlan(rate, {g: np.arange(rate_sizes(w, rate), dtype=np.int64) for g, w in spec.groups.items()})


def validate_plan(spec: ModelSpec, plan: SubmodelPlan) -> None:
    """Raise ValueError unless every group keeps sorted unique in-range indices."""
    why = plan_problem(spec, plan)
    if why is not None:
        raise ValueError(f"plan: {why}")


def plan_problem(spec: ModelSpec, plan: SubmodelPlan, rate: Optional[float] = None) -> Optional[str]:
    """What is wrong with a plan for `spec`, in a few words (None: nothing). Every group of the
    model keeps sorted, unique integer indices into its global width, and no other group is
    named; with `rate`, the plan is at that rate and keeps `rate_sizes(width, rate)` of each."""
    if not isinstance(plan, SubmodelPlan):
        return f"is a {type(plan).__name__}, not a SubmodelPlan"
    if rate is not None and plan.rate != rate:
        return f"is at rate {plan.rate:g} for rate {rate:g}"
    extra = sorted(set(plan.keep) - set(spec.groups))
    if extra:
        return f"names group {extra[0]!r}, which the model does not have (its groups: {', '.join(spec.groups)})"
    for g, w in spec.groups.items():
        ix = plan.keep.get(g)
        if ix is None:
            return f"misses group {g!r} (every group of the model needs its kept indices)"
        if not isinstance(ix, np.ndarray) or ix.ndim != 1 or not np.issubdtype(ix.dtype, np.integer):
            what = f"{ix.dtype} array of shape {ix.shape}" if isinstance(ix, np.ndarray) else type(ix).__name__
            return f"keeps a {what} for group {g!r}, not a 1-d numpy array of integers"
        if rate is not None and len(ix) != rate_sizes(w, rate):
            return (f"keeps {len(ix)} channels of group {g!r} (width {w}) at rate {rate:g}, not rate_sizes({w}, "
                    f"{rate:g}) = {rate_sizes(w, rate)}")
        if len(ix) == 0:
            return f"keeps no channel of group {g!r}"
        if ix.min() < 0 or ix.max() >= w:
            bad = int(ix.max()) if ix.max() >= w else int(ix.min())
            return f"keeps index {bad} of group {g!r}, outside the global width [0, {w})"
        if np.any(np.diff(ix) <= 0):
            return f"keeps indices of group {g!r} that are not sorted and unique"
    return None


def _as_slice(ix: np.ndarray) -> slice | None:
    """A contiguous run of indices as a slice (basic indexing is a cheap view)."""
    if len(ix) and int(ix[-1]) - int(ix[0]) + 1 == len(ix):
        return slice(int(ix[0]), int(ix[-1]) + 1)
    return None


def param_index(axes: Sequence[Axis], plan: SubmodelPlan, shape: tuple[int, ...],
                widths: Optional[Mapping[str, int]] = None) -> Index:
    """Index selecting the submodel's part of a global tensor with these axes and shape.

    When every kept set is contiguous the index is a tuple of slices (a view). Otherwise it is
    an open mesh of index tensors (numpy's `ix_` layout), so `global[index]` has the
    submodel's shape and `acc[index] += x` scatters back in place.

    An axis is a group name, None (never shrinks) or a `raysim.models.span.Span` (blocks of
    columns after a flatten, groups side by side after a concatenation); a Span needs the
    global group `widths` to place its parts (`plan_indices` passes the spec's groups).
    """
    parts: list[slice | np.ndarray] = []
    for d, g in enumerate(axes):
        if g is None:
            parts.append(slice(None))
            continue
        if isinstance(g, Span):
            if widths is None:
                raise ValueError("param_index: a Span axis needs the global group widths")
            ix = span_indices(g, plan.keep, widths)
            if int(ix.max(initial=-1)) >= shape[d]:
                raise ValueError(f"param_index: span {g} does not fit a dimension of {shape[d]}")
        else:
            ix = plan.keep[g]
        s = _as_slice(ix)
        parts.append(s if s is not None else ix)
    slices = [p for p in parts if isinstance(p, slice)]
    if len(slices) == len(parts):
        return tuple(slices)
    n = len(shape)
    mesh = []
    for d, p in enumerate(parts):
        arr = np.arange(shape[d], dtype=np.int64)[p] if isinstance(p, slice) else p
        view = [1] * n
        view[d] = len(arr)
        mesh.append(torch.from_numpy(np.ascontiguousarray(arr, dtype=np.int64)).reshape(view))
    return tuple(mesh)


def plan_indices(spec: ModelSpec, plan: SubmodelPlan, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Index]:
    """Index of every global parameter for this plan."""
    return {k: param_index(spec.axes[k], plan, shapes[k], spec.groups) for k in shapes}
