"""Clocks: who decides when a device finishes, and so who is late.

- `VirtualClock` (default): time is computed from the cost model. The whole schedule (late,
  partial, offline, the first K of an over-committed round) is decided ahead of training, so
  stragglers are never trained and runs are fast and deterministic.
- `RealtimeClock`: devices really take their time (dedicated placement: each device's actor
  sleeps its simulated time times `time_scale`) and the placement enforces the deadline with
  real timeouts; only exclusion and availability are decided ahead, the rest from what was
  measured.

Both are pure numerics; the placement that honours a realtime clock lives in `raysim.runtime`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import Mapping, Optional

import numpy as np

from raysim.engine.deadlines import Schedule, decide
from raysim.messages import TrainReport
from raysim.records import LATE, OK, PARTIAL


@dataclass(frozen=True)
class Predicted:
    """A round's predicted timelines, per selected device (inf total: not assigned)."""

    total: np.ndarray
    download: np.ndarray
    upload: np.ndarray
    compute: np.ndarray
    assigned: np.ndarray
    stays_online: np.ndarray


class Clock(ABC):
    """Decides a round's schedule: ahead of training, and once the results are in."""

    realtime: bool = False

    @abstractmethod
    def ahead(self, p: Predicted, k: int, deadline: Optional[float], policy: str) -> Schedule:
        """The schedule decided before anything trains."""

    def task_deadline(self, deadline: Optional[float]) -> Optional[float]:
        """The deadline a placement must enforce itself (None: the schedule already did)."""
        return None

    def settle(self, ahead: Schedule, sel: np.ndarray, sent: np.ndarray, reports: Mapping[int, TrainReport],
               stays: np.ndarray, k: int, deadline: Optional[float], steps_full: np.ndarray) -> Schedule:
        """The final schedule, given what the placement reported."""
        return ahead


class VirtualClock(Clock):
    """Time from the cost model: everything decided ahead, from predictions."""

    def ahead(self, p: Predicted, k: int, deadline: Optional[float], policy: str) -> Schedule:
        return decide(p.total, p.download, p.upload, p.compute, p.assigned, p.stays_online, k, deadline, policy)


@dataclass(frozen=True)
class RealtimeClock(Clock):
    """Measured time: wall seconds = simulated seconds x `time_scale`."""

    time_scale: float = 0.01
    realtime = True

    def ahead(self, p: Predicted, k: int, deadline: Optional[float], policy: str) -> Schedule:
        # Only exclusion and availability are decided ahead: every assigned, staying device trains.
        return decide(p.total, p.download, p.upload, p.compute, p.assigned, p.stays_online, len(p.total), None, "wait")

    def task_deadline(self, deadline: Optional[float]) -> Optional[float]:
        return deadline

    def settle(self, ahead: Schedule, sel: np.ndarray, sent: np.ndarray, reports: Mapping[int, TrainReport],
               stays: np.ndarray, k: int, deadline: Optional[float], steps_full: np.ndarray) -> Schedule:
        return measured_schedule(sel, sent, reports, stays, k, deadline, steps_full)


def measured_schedule(sel: np.ndarray, sent: np.ndarray, reports: Mapping[int, TrainReport], stays: np.ndarray,
                      k: int, deadline: Optional[float], steps_full: np.ndarray) -> Schedule:
    """Decisions of a realtime round from what happened: measured finish times replace predictions.

    A device that reported `late` finished at +inf; one that reported `oom` or `failed` is no
    candidate (it never counts towards K; its record keeps the report's status); devices not
    sent keep their ahead-of-time status (`excluded`, `offline`).
    """
    n = len(sel)
    finish = np.zeros(n)
    cand = ~stays.astype(bool)  # offline devices: `decide` marks them again
    steps = np.zeros(n)
    for i in sent:
        rep = reports.get(int(sel[i]))
        if rep is None or rep.status not in (OK, PARTIAL, LATE):
            continue
        cand[i] = True
        finish[i] = rep.finish_s if rep.status != LATE else np.inf
        steps[i] = rep.steps
    zeros = np.zeros(n)
    sched = decide(finish, zeros, zeros, finish, cand, stays, k, deadline, "drop" if deadline is not None else "wait")
    frac = np.where(sched.step_fraction > 0, np.minimum(1.0, steps / np.maximum(steps_full, 1)), 0.0)
    return replace(sched, step_fraction=frac)
