"""Messages: what crosses between the round loop and the places devices train (numpy only).

Tasks go out to hosts; reports and pre-aggregated partial sums come back. A partial sum is
also the unit of aggregation (`raysim.server.aggregate`). Nothing here imports the rest of
raysim.

    >>> task = TrainTask(device_id=7, rate=0.5, plan_id=0, max_steps=None, weight="uniform")
    >>> PartialSum.zeros({"w": (2,)}).merge(PartialSum.zeros({"w": (2,)})).devices
    0
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

import numpy as np


# ---------------------------------------------------------------------------- aggregation payload
@dataclass
class PartialSum:
    """Running sum of weighted, quantised deltas in global coordinates.

    `sums[k]` holds sum_i w_i * q(delta_i) and `weights[k]` sum_i w_i over the devices i that
    held each element. Both are int64, so merging is exact and order-free: this is the
    aggregation contract that makes runs bit-identical on any number of hosts.
    """

    sums: dict[str, np.ndarray]
    weights: dict[str, np.ndarray]
    devices: int = 0
    samples: int = 0
    # A stateful client algorithm's server quantity: the unweighted fixed-point sum of the
    # devices' contributions (SCAFFOLD's control-variate changes); None when nobody sent one.
    extra: Optional[dict[str, np.ndarray]] = None

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
        if other.extra is not None:
            if self.extra is None:
                self.extra = {k: np.zeros_like(v) for k, v in other.extra.items()}
            for k, v in other.extra.items():
                self.extra[k] += v
        self.devices += other.devices
        self.samples += other.samples
        return self


# ---------------------------------------------------------------------------- round loop <-> placements
@dataclass(frozen=True)
class TrainTask:
    """One device's work in one round."""

    device_id: int
    rate: float
    plan_id: int             # key into the round's plan table
    max_steps: Optional[int]  # None = full local work; else partial work before the deadline
    weight: str              # "uniform" or "samples"
    cost_hint: float = 0.0   # predicted compute, for balancing hosts
    # Predicted simulated seconds of the device's timeline; a realtime placement sleeps them
    # (times its time scale). `deadline`: set only under the realtime clock, where real
    # timeouts (not predictions) decide who is late.
    t_download: float = 0.0
    t_compute: float = 0.0
    t_upload: float = 0.0
    deadline: Optional[float] = None
    # Asynchronous modes: the global version the device downloaded, the key of the partial sum
    # its update is folded into (devices of one key share their staleness), and its own
    # random stream (-1: the round's).
    version: int = 0
    group: int = 0
    stream: int = -1
    # The device's own state from its last training (error-feedback residual; None: none yet).
    state: Optional[dict] = None


@dataclass(frozen=True)
class TrainReport:
    """What happened to one task."""

    device_id: int
    status: str          # ok | failed | oom; realtime placements also report late | partial
    samples: int
    steps: int
    loss: float
    wall_s: float
    host: int
    reason: str = ""
    finish_s: float = float("nan")  # realtime: measured simulated seconds from round start to result
    job: int = -1                   # asynchronous modes: the task's stream (one device may train twice)
    state: Optional[dict] = None    # the device's state after this training (kept by the engine)


@dataclass
class HostResult:
    """A host's answer for a round: one pre-aggregated partial sum and the reports."""

    partial: PartialSum
    reports: list[TrainReport]
    host: int
    wall_s: float


@dataclass
class GroupResult:
    """A host's answer in asynchronous modes: one partial sum per task group (`TrainTask.group`)."""

    partials: dict[int, PartialSum]
    reports: list[TrainReport]
    host: int
    wall_s: float
