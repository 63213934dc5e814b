"""Per-element weighted aggregation of submodel updates (server optimizers: `raysim.server.optimizers`).

Every global element moves by the weighted mean of the deltas of the devices whose submodel
held it; elements nobody held do not move (HeteroFL / FedRolex aggregation).

Updates are folded into *fixed-point integer* sums: each delta is rounded once to a multiple
of 2**-FRAC_BITS and accumulated in int64. Integer addition is associative, so the sum is
bit-identical whatever the number of device-host actors, the placement of devices on them and
the order in which partial sums arrive. That is what makes runs deterministic on any cluster.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from raysim.messages import GroupResult, HostResult, PartialSum, TrainReport
from raysim.submodel.plan import Index

__all__ = ["FRAC_BITS", "PartialSum", "quantise", "fold", "weight_of", "contribute", "add_weights", "merge",
           "mean_delta", "buffered_mean", "mixed_update", "fold_extra", "extra_total", "fold_held"]

FRAC_BITS = 24
# A single quantised delta is clipped to +-2**CLIP_BITS so that sums of up to ~2**(62-CLIP_BITS)
# weighted updates cannot overflow int64 (|delta| <= 2**(CLIP_BITS-FRAC_BITS) = 4096).
CLIP_BITS = 36
_SCALE = float(2**FRAC_BITS)


def quantise(delta: torch.Tensor) -> np.ndarray:
    """A float delta as int64 fixed point (clipped so that sums cannot overflow).

    Done in the delta's own dtype: scaling by a power of two is exact, and rounding an
    exactly represented value to an integer gives the same integer in float32 as in float64
    (an overflow to inf clips to the same bound), so this is bit-identical to the float64
    computation at well under half its memory traffic.
    """
    q = delta.detach() * _SCALE
    return q.round_().clamp_(-(2.0**CLIP_BITS), 2.0**CLIP_BITS).to(torch.int64).numpy()


def fold(acc: PartialSum, delta: Mapping[str, torch.Tensor], index: Mapping[str, Index],
         weight: int, samples: int = 0, count: bool = True) -> None:
    """Remap one device's submodel delta into global coordinates and add it, weighted.

    `count=False` leaves the element weights to the caller, who adds them with `add_weights`:
    a host folding many devices that share a plan then adds their weights once per plan.
    """
    if weight <= 0:
        return
    # One quantisation over all tensors at once (a flat copy, then four whole-model ops)
    # instead of four small ops per tensor; the per-element arithmetic is the same.
    names = list(delta)
    flat = quantise(torch.cat([delta[k].detach().reshape(-1) for k in names]))
    if weight != 1:
        flat *= weight
    off = 0
    for k in names:
        shape = delta[k].shape
        n = delta[k].numel()
        ix = _np_index(index[k])
        acc.sums[k][ix] += flat[off:off + n].reshape(shape)
        off += n
        if count:
            acc.weights[k][ix] += weight
    acc.devices += 1
    acc.samples += samples


def fold_held(acc: PartialSum, delta: Mapping[str, torch.Tensor], held: Mapping[str, torch.Tensor],
              weight: int) -> None:
    """Add a whole-model delta, weighted, on the elements `held` marks (a gateway's change to
    the global model: the elements its devices trained)."""
    if weight <= 0:
        return
    for k, d in delta.items():
        mask = held[k].numpy()
        acc.sums[k] += np.where(mask, quantise(d) * weight, 0)
        acc.weights[k] += mask.astype(np.int64) * weight
    acc.devices += 1


def fold_extra(acc: PartialSum, contribution: Mapping[str, torch.Tensor], index: Mapping[str, Index]) -> None:
    """Remap one device's contribution to the server quantity into global coordinates and add it
    to `acc.extra` (unweighted, in the same exact fixed point as the deltas)."""
    if acc.extra is None:
        acc.extra = {k: np.zeros_like(v) for k, v in acc.sums.items()}
    for k, v in contribution.items():
        acc.extra[k][_np_index(index[k])] += quantise(v)


def extra_total(acc: PartialSum) -> dict[str, torch.Tensor]:
    """The summed contributions to the server quantity (zeros where none came), as float32."""
    extra = acc.extra or {}
    return {k: torch.from_numpy((extra[k] / _SCALE).astype(np.float32)) if k in extra else
            torch.zeros(s.shape, dtype=torch.float32) for k, s in acc.sums.items()}


def weight_of(samples: int, weighting: str) -> int:
    """A device's aggregation weight: 1 (uniform, HeteroFL) or its samples trained."""
    return 1 if weighting == "uniform" else samples


def contribute(acc: PartialSum, delta: Mapping[str, torch.Tensor], samples: int, index: Mapping[str, Index],
               weighting: str, count: bool = True) -> int:
    """Remap a device's delta into global coordinates and add it to `acc`; returns its weight.

    `count=False` leaves the element weights to the caller (a host adds them once per plan).
    """
    w = weight_of(samples, weighting)
    fold(acc, delta, index, w, samples, count=count)
    return w


def add_weights(acc: PartialSum, index: Mapping[str, Index], weight: int) -> None:
    """Add `weight` to the element weights of everything the plan's index holds."""
    if weight <= 0:
        return
    for k, ix in index.items():
        acc.weights[k][_np_index(ix)] += weight


def merge(results: Sequence[Union[HostResult, GroupResult]], shapes: Mapping[str, tuple[int, ...]],
          into: Optional[dict[Any, PartialSum]] = None, key: Callable[[int], Any] = lambda g: g
          ) -> tuple[dict[Any, PartialSum], list[TrainReport]]:
    """The hosts' partial sums added per task group (exact, so in any order; a `HostResult` is
    group 0) into `into` (new sums where it has none, keyed by `key(group)`), and every report,
    in host order. The one place host results meet.

        >>> parts, reports = merge([], {"w": (2,)})
        >>> parts, reports
        ({}, [])
    """
    parts: dict[Any, PartialSum] = {} if into is None else into
    reports: list[TrainReport] = []
    for res in sorted(results, key=lambda h: h.host):
        groups = res.partials if isinstance(res, GroupResult) else {0: res.partial}
        for gid, part in sorted(groups.items()):
            k = key(gid)
            if k not in parts:
                parts[k] = PartialSum.zeros(shapes)
            parts[k].merge(part)
        reports.extend(res.reports)
    return parts, reports


def _np_index(index: Index) -> tuple[Union[slice, np.ndarray], ...]:
    """The same index for numpy arrays (index tensors become arrays; slices stay)."""
    return tuple(p if isinstance(p, slice) else p.numpy() for p in index)


def mean_delta(acc: PartialSum) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Per-element weighted mean delta and the mask of elements somebody held."""
    means, held = {}, {}
    for k, s in acc.sums.items():
        w = acc.weights[k]
        mask = w > 0
        m = np.zeros(s.shape, np.float64)
        np.divide(s, w * _SCALE, out=m, where=mask)
        means[k] = torch.from_numpy(m.astype(np.float32))
        held[k] = torch.from_numpy(mask)
    return means, held


def buffered_mean(parts: list[tuple[float, PartialSum]], shapes: Mapping[str, tuple[int, ...]]
                  ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """FedBuff: per element, sum of factor x weighted delta over the weights of its holders.

    `parts`: (staleness factor, partial sum) in a fixed order (ascending start version), so
    the float additions happen in the same order on every run.
    """
    delta, held = {}, {}
    for name in shapes:
        num = np.zeros(shapes[name], np.float64)
        den = np.zeros(shapes[name], np.int64)
        for factor, part in parts:
            num += factor * part.sums[name].astype(np.float64)
            den += part.weights[name]
        mask = den > 0
        out = np.zeros_like(num)
        np.divide(num, den * _SCALE, out=out, where=mask)
        delta[name] = torch.from_numpy(out.astype(np.float32))
        held[name] = torch.from_numpy(mask)
    return delta, held


def mixed_update(part: PartialSum, mix: float, start: Mapping[str, torch.Tensor], params: Mapping[str, torch.Tensor]
                 ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """FedAsync: `mix` x (x_start + delta - x) on the elements the arrival held (mix = alpha s(staleness))."""
    delta, held = {}, {}
    for name, wts in part.weights.items():
        mask = wts > 0
        own = np.zeros(wts.shape, np.float64)
        np.divide(part.sums[name], wts * _SCALE, out=own, where=mask)
        target = start[name].double().numpy() + own - params[name].double().numpy()
        delta[name] = torch.from_numpy((mix * np.where(mask, target, 0.0)).astype(np.float32))
        held[name] = torch.from_numpy(mask)
    return delta, held
