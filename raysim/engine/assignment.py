"""Rate assignment: which rung of the model's ladder each selected device trains.

An `Assigner` sees the round's selected devices (memory caps, predicted round time at every
rate) and the ladder's training memory, and returns a rate per device, or NaN with a reason
(the device is then recorded `excluded`). Built-ins:

- `FitMemory`: the largest rate whose training memory fits the device's cap.
- `FitDeadline`: the largest rate that fits the memory cap *and* whose predicted round time
  meets the deadline (excluded when none does).
- `FitEnergy(budget_j, deadline)`: the largest rate that fits the memory cap and whose predicted
  energy (download, compute, upload) fits both a per-round budget (`budget_j`, optional) and
  the device's battery above its reserve; with `deadline`, it must also meet the deadline.
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

from raysim.errors import PluginError


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
    deadline (None when the round waits). `predicted_energy(rate)` gives the joules of that
    work (radio receive, compute, radio transmit; NaN where a device's power is unknown), and
    `energy_available` each device's joules above its battery reserve (inf: mains-powered, or
    batteries not tracked).
    """

    round: int
    device_ids: np.ndarray
    rates: list[float]               # the ladder, largest first
    memory_need: dict[float, int]    # training bytes per rate
    memory_cap: np.ndarray           # each device's memory for training, bytes
    predicted_time: Callable[[float], np.ndarray]
    deadline: Optional[float]
    predicted_energy: Optional[Callable[[float], np.ndarray]] = None
    energy_available: Optional[np.ndarray] = None

    def energy(self, rate: float) -> np.ndarray:
        """`predicted_energy(rate)`, or NaN for every device when the engine gives none."""
        if self.predicted_energy is None:
            return np.full(len(self.device_ids), np.nan)
        return self.predicted_energy(rate)

    def available(self) -> np.ndarray:
        """`energy_available`, or inf for every device (no battery tracked)."""
        if self.energy_available is None:
            return np.full(len(self.device_ids), np.inf)
        return self.energy_available


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


class FitEnergy(Assigner):
    """The largest rate that fits the device's memory and whose predicted energy fits the
    per-round budget (if any) and the battery above its reserve; with `deadline`, whose predicted
    time also meets the deadline. A device of unknown power is held to memory (and deadline) only."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        budget_j: Optional[float] = Field(None, gt=0.0, description="joules a device may spend on one round's work "
                                          "(null: only its battery limits it)")
        deadline: bool = Field(False, description="also require the predicted time to meet the deadline")

    def __init__(self, budget_j: Optional[float] = None, deadline: bool = False) -> None:
        self.budget_j = None if budget_j is None else float(budget_j)
        self.deadline = bool(deadline)

    def assign(self, req: AssignRequest) -> Assignment:
        if self.deadline and req.deadline is None:
            raise ValueError("assignment.params.deadline: fit-energy with deadline: true needs deadline.seconds")
        ladder = sorted(req.rates, reverse=True)
        n = len(req.memory_cap)
        limit = np.minimum(req.available(), np.inf if self.budget_j is None else self.budget_j)
        out = np.full(n, np.nan)
        reason = np.full(n, "", dtype=object)
        todo = np.ones(n, bool)
        energy = {r: req.energy(r) for r in ladder}
        for r in ladder:
            e = energy[r]
            fits = todo & (req.memory_cap >= req.memory_need[r]) & (np.isnan(e) | (e <= limit))
            if self.deadline:
                fits &= req.predicted_time(r) <= req.deadline
            out[fits] = r
            todo &= ~fits
        for i in np.flatnonzero(~todo):
            r = float(out[i])
            why = f"fit-energy: rate {r:g} needs {energy[r][i]:.3g} J"
            why += f" of {'the budget' if limit[i] == self.budget_j else 'its battery'} {limit[i]:.3g} J" \
                if np.isfinite(limit[i]) else ""
            if r != ladder[0]:
                why += f"; rate {ladder[ladder.index(r) - 1]:g} does not fit"
            reason[i] = why
        smallest = ladder[-1]
        mem = todo & (req.memory_cap < req.memory_need[smallest])
        reason[mem] = f"memory: rate {smallest:g} needs {req.memory_need[smallest] / 2**20:.2f} MiB"
        for i in np.flatnonzero(todo & ~mem):
            need = float(energy[smallest][i])
            if np.isnan(need) or need <= limit[i]:
                reason[i] = f"deadline: rate {smallest:g} cannot finish in time"
            elif self.budget_j is not None and need > self.budget_j:
                reason[i] = f"energy budget: rate {smallest:g} needs {need:.3g} J, over the {self.budget_j:g} J budget"
            else:
                reason[i] = f"battery: rate {smallest:g} needs {need:.3g} J, {limit[i]:.3g} J above its reserve"
        return Assignment(out, reason)


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


def check_rates(assigner: object, rates: object, ladder: list[float], n: int) -> np.ndarray:
    """The assigned rates as floats (NaN: excluded); `PluginError` naming `assigner` unless
    there is one per device, each on the ladder or NaN.

        >>> check_rates(FitMemory(), [0.5, float("nan")], [1.0, 0.5], 2).tolist()
        [0.5, nan]
    """
    try:
        rate = np.asarray(rates, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as err:
        raise PluginError(assigner, "assigner", f"returned rates that are not numbers ({err}); expected one rate "
                          f"of the ladder {ladder} (or NaN: excluded) per device") from None
    if len(rate) != n:
        raise PluginError(assigner, "assigner", f"returned {len(rate)} rates for {n} devices; expected one per "
                          f"device")
    off = ~np.isnan(rate) & ~np.isin(rate, ladder)
    if off.any():
        raise PluginError(assigner, "assigner", f"assigned rate {float(rate[off][0]):g}, which is not on the ladder "
                          f"{ladder}; expected a ladder rate or NaN (excluded)")
    return rate
