"""Rate assignment: which rung of the model's ladder each selected device trains.

An `Assigner` sees the round's selected devices (memory caps, predicted round time at every
rate) and the ladder's training memory, and returns a rate per device, or NaN with a reason
(the device is then recorded `excluded`). Built-ins:

- `FitMemory`: the largest rate whose training memory fits the device's cap.
- `FitDeadline`: the largest rate that fits the memory cap *and* whose predicted round time
  meets the deadline (excluded when none does).
- `Fixed(rate)`: one rate for everyone; devices that cannot hold it are excluded.

A new rule subclasses `Assigner`:

    class FastestHalf(Assigner):
        def assign(self, req):
            t = req.predicted_time(req.rates[0])
            rate = np.where(t <= np.median(t), req.rates[0], req.rates[-1])
            return Assignment(rate, np.full(len(rate), "faster half", dtype=object))
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


@dataclass(frozen=True)
class Assignment:
    """Per selected device: the assigned rate (NaN = excluded) and why."""

    rate: np.ndarray
    reason: np.ndarray  # object array of str


@dataclass(frozen=True)
class AssignRequest:
    """What an assigner may look at in one round (arrays are per selected device, in id order).

    `predicted_time(rate)` gives every selected device's predicted round time at that rate
    (download + compute + upload, with this round's jitter); `deadline` is the round's
    deadline (None when the round waits).
    """

    round: int
    device_ids: np.ndarray
    rates: list[float]               # the ladder, largest first
    memory_need: dict[float, int]    # training bytes per rate
    memory_cap: np.ndarray           # each device's memory for training, bytes
    predicted_time: Callable[[float], np.ndarray]
    deadline: Optional[float]


class Assigner(ABC):
    """Turns a round's selected devices into rates. `Params` validates `assignment.params`."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

    @abstractmethod
    def assign(self, req: AssignRequest) -> Assignment:
        """A rate from `req.rates` (or NaN) and a reason for every device."""


def _mib(b: float) -> str:
    return f"{b / 2**20:.2f} MiB"


def ladder_assign(req: AssignRequest, ladder: list[float], label: str, need_deadline: bool) -> Assignment:
    """The largest rung of `ladder` that fits each device's memory (and, with `need_deadline`,
    whose predicted time meets the deadline), with the reason for every decision."""
    n = len(req.memory_cap)
    out = np.full(n, np.nan)
    reason = np.full(n, "", dtype=object)
    if need_deadline and req.deadline is None:
        raise ValueError(f"assignment.policy: '{label}' needs a deadline")
    todo = np.ones(n, bool)
    for r in ladder:
        fits = todo & (req.memory_cap >= req.memory_need[r])
        if need_deadline:
            fits &= req.predicted_time(r) <= req.deadline
        out[fits] = r
        todo &= ~fits
    got = np.flatnonzero(~todo)
    times = {r: req.predicted_time(r) for r in set(out[got].tolist())} if need_deadline else {}
    for i in got:
        r = float(out[i])
        why = f"{label}: rate {r:g} ({_mib(req.memory_need[r])}) fits the device's {_mib(req.memory_cap[i])}"
        if need_deadline:
            why += f" and finishes in {float(times[r][i]):.1f} s of the {req.deadline:g} s deadline"
        if len(ladder) > 1 and r != ladder[0]:
            why += f"; rate {ladder[ladder.index(r) - 1]:g} does not"
        reason[i] = why
    smallest = ladder[-1]
    mem_short = todo & (req.memory_cap < req.memory_need[smallest])
    reason[mem_short] = f"memory: rate {smallest:g} needs {req.memory_need[smallest] / 2**20:.2f} MiB"
    reason[todo & ~mem_short] = f"deadline: rate {smallest:g} cannot finish in time"
    return Assignment(out, reason)


class FitMemory(Assigner):
    """The largest rate whose training memory fits the device."""

    def assign(self, req: AssignRequest) -> Assignment:
        return ladder_assign(req, sorted(req.rates, reverse=True), "fit-memory", need_deadline=False)


class FitDeadline(Assigner):
    """The largest rate that fits the device's memory and meets the round's deadline."""

    def assign(self, req: AssignRequest) -> Assignment:
        return ladder_assign(req, sorted(req.rates, reverse=True), "fit-deadline", need_deadline=True)


class Fixed(Assigner):
    """One rate for every device; those that cannot hold it are excluded."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        rate: float = Field(gt=0.0, le=1.0, description="the rate every device trains")

    def __init__(self, rate: float) -> None:
        self.rate = float(rate)

    def assign(self, req: AssignRequest) -> Assignment:
        if self.rate not in req.memory_need:
            raise ValueError(f"assignment: fixed rate {self.rate:g} is not on the ladder {req.rates}")
        return ladder_assign(req, [self.rate], "fixed", need_deadline=False)
