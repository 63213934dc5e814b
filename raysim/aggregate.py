"""Per-element weighted aggregation of submodel updates, and server optimizers.

Every global element moves by the weighted mean of the deltas of the devices whose submodel
held it; elements nobody held do not move (HeteroFL / FedRolex aggregation).

Updates are folded into *fixed-point integer* sums: each delta is rounded once to a multiple
of 2**-FRAC_BITS and accumulated in int64. Integer addition is associative, so the sum is
bit-identical whatever the number of device-host actors, the placement of devices on them and
the order in which partial sums arrive. That is what makes runs deterministic on any cluster.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import torch

from raysim.submodel.plan import Index

FRAC_BITS = 24
# A single quantised delta is clipped to +-2**CLIP_BITS so that sums of up to ~2**(62-CLIP_BITS)
# weighted updates cannot overflow int64 (|delta| <= 2**(CLIP_BITS-FRAC_BITS) = 4096).
CLIP_BITS = 36
_SCALE = float(2**FRAC_BITS)


@dataclass
class PartialSum:
    """Running sum of weighted, quantised deltas in global coordinates.

    `sums[k]` holds sum_i w_i * q(delta_i) and `weights[k]` sum_i w_i over the devices i that
    held each element. Both are int64, so merging is exact and order-free.
    """

    sums: dict[str, np.ndarray]
    weights: dict[str, np.ndarray]
    devices: int = 0
    samples: int = 0

    @classmethod
    def zeros(cls, shapes: Mapping[str, tuple[int, ...]]) -> "PartialSum":
        """An empty sum for a model with these parameter shapes."""
        return cls({k: np.zeros(s, np.int64) for k, s in shapes.items()},
                   {k: np.zeros(s, np.int64) for k, s in shapes.items()})

    def merge(self, other: "PartialSum") -> "PartialSum":
        """Add another partial sum into this one (in place) and return self."""
        for k in self.sums:
            self.sums[k] += other.sums[k]
            self.weights[k] += other.weights[k]
        self.devices += other.devices
        self.samples += other.samples
        return self


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
    for k, d in delta.items():
        q = quantise(d)
        ix = _np_index(index[k])
        if weight != 1:
            q *= weight
        acc.sums[k][ix] += q
        if count:
            acc.weights[k][ix] += weight
    acc.devices += 1
    acc.samples += samples


def add_weights(acc: PartialSum, index: Mapping[str, Index], weight: int) -> None:
    """Add `weight` to the element weights of everything the plan's index holds."""
    if weight <= 0:
        return
    for k, ix in index.items():
        acc.weights[k][_np_index(ix)] += weight


def _np_index(index: Index) -> tuple:
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


@dataclass
class ServerOptimizer:
    """Server step on the aggregated delta (treated as a negative pseudo-gradient).

    fedavg: x += lr * d. fedavgm: heavy-ball momentum on d. fedadam / fedyogi: adaptive
    server optimizers (Reddi et al., "Adaptive Federated Optimization", ICLR 2021).
    Elements no device held are left untouched, state included.
    """

    kind: str = "fedavg"
    lr: float = 1.0
    momentum: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.99
    eps: float = 1e-3
    state: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)

    def step(self, params: dict[str, torch.Tensor], delta: Mapping[str, torch.Tensor],
             held: Mapping[str, torch.Tensor]) -> None:
        """Update `params` in place."""
        for k, p in params.items():
            d, h = delta[k], held[k]
            if self.kind == "fedavg":
                upd = d * self.lr
            elif self.kind == "fedavgm":
                m = self._buf(k, "m", p)
                m[h] = self.momentum * m[h] + d[h]
                upd = self.lr * m
            elif self.kind in ("fedadam", "fedyogi"):
                m, v = self._buf(k, "m", p), self._buf(k, "v", p, fill=self.eps**2)
                m[h] = self.beta1 * m[h] + (1 - self.beta1) * d[h]
                d2 = d[h] * d[h]
                if self.kind == "fedadam":
                    v[h] = self.beta2 * v[h] + (1 - self.beta2) * d2
                else:
                    v[h] = v[h] - (1 - self.beta2) * d2 * torch.sign(v[h] - d2)
                upd = self.lr * m / (v.sqrt() + self.eps)
            else:
                raise ValueError(f"server.optimizer: unknown optimizer {self.kind!r}")
            p[h] += upd[h]

    def _buf(self, k: str, name: str, like: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        slot = self.state.setdefault(k, {})
        if name not in slot:
            slot[name] = torch.full_like(like, fill)
        return slot[name]
