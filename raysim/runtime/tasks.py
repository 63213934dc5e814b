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


@dataclass(frozen=True)
class TrainReport:
    """What happened to one task."""

    device_id: int
    status: str          # ok | failed | oom
    samples: int
    steps: int
    loss: float
    wall_s: float
    host: int
    reason: str = ""


@dataclass
class HostResult:
    """A device host's answer for a round: one pre-aggregated partial sum and the reports."""

    partial: PartialSum
    reports: list[TrainReport]
    host: int
    wall_s: float
