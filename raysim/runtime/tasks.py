"""Messages between the coordinator and device hosts (plain dataclasses, cheap to pickle)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from raysim.aggregate import PartialSum


@dataclass(frozen=True)
class TrainTask:
    """One device's work in one round."""

    device_id: int
    rate: float
    plan_id: int             # key into the round's plan table
    max_steps: Optional[int]  # None = full local work; else partial work before the deadline
    weight: str              # "uniform" or "samples"
    cost_hint: float = 0.0   # predicted compute, for balancing hosts
    # Predicted simulated seconds of the device's timeline; a realtime backend sleeps them
    # (times runtime.time_scale). `deadline`: set only under the realtime clock, where the
    # backend's real timeouts (not predictions) decide who is late.
    t_download: float = 0.0
    t_compute: float = 0.0
    t_upload: float = 0.0
    deadline: Optional[float] = None


@dataclass(frozen=True)
class TrainReport:
    """What happened to one task."""

    device_id: int
    status: str          # ok | failed | oom; realtime backends also report late | partial
    samples: int
    steps: int
    loss: float
    wall_s: float
    host: int
    reason: str = ""
    finish_s: float = float("nan")  # realtime: measured simulated seconds from round start to result


@dataclass
class HostResult:
    """A device host's answer for a round: one pre-aggregated partial sum and the reports."""

    partial: PartialSum
    reports: list[TrainReport]
    host: int
    wall_s: float
