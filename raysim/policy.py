"""Rate assignment: which rung of the model's ladder each selected device trains.

- fit-memory: the largest rate whose training memory fits the device's cap.
- fit-deadline: the largest rate that fits the memory cap *and* whose predicted round time
  meets the deadline (falls back to excluded when none does).
- fixed: one rate for everyone; devices that cannot hold it are excluded.
A device that fits no rate gets NaN and a reason, and is recorded `excluded`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np


@dataclass(frozen=True)
class Assignment:
    """Per selected device: the assigned rate (NaN = excluded) and why it was excluded."""

    rate: np.ndarray
    reason: np.ndarray  # object array of str ("" when assigned)


def assign_rates(policy: str, rates: list[float], memory_need: dict[float, int], memory_cap: np.ndarray,
                 fixed_rate: Optional[float] = None,
                 predicted_time: Optional[Callable[[float], np.ndarray]] = None,
                 deadline: Optional[float] = None) -> Assignment:
    """Assign a rate to each device (vectorised over devices).

    `memory_need[r]` is the training memory at rate r; `predicted_time(r)` returns every
    device's predicted round time at rate r (needed only by fit-deadline).
    """
    n = len(memory_cap)
    out = np.full(n, np.nan)
    reason = np.full(n, "", dtype=object)
    ladder = sorted(rates, reverse=True)
    if policy == "fixed":
        if fixed_rate is None:
            raise ValueError("assignment.fixed_rate: required for policy 'fixed'")
        ladder = [fixed_rate]
    todo = np.ones(n, bool)
    for r in ladder:
        fits = todo & (memory_cap >= memory_need[r])
        if policy == "fit-deadline":
            if predicted_time is None or deadline is None:
                raise ValueError("assignment.policy: 'fit-deadline' needs a deadline")
            fits &= predicted_time(r) <= deadline
        out[fits] = r
        todo &= ~fits
    # Why each device got its rate (the decision is recorded with its reason, like exclusions).
    mib = lambda b: f"{b / 2**20:.2f} MiB"  # noqa: E731
    got = np.flatnonzero(~todo)
    times = {r: predicted_time(r) for r in set(out[got].tolist())} if policy == "fit-deadline" else {}
    for i in got:
        r = float(out[i])
        why = f"{policy}: rate {r:g} ({mib(memory_need[r])}) fits the device's {mib(memory_cap[i])}"
        if policy == "fit-deadline":
            why += f" and finishes in {float(times[r][i]):.1f} s of the {deadline:g} s deadline"
        if policy != "fixed" and r != ladder[0]:
            why += f"; rate {ladder[ladder.index(r) - 1]:g} does not"
        reason[i] = why
    smallest = ladder[-1]
    mem_short = todo & (memory_cap < memory_need[smallest])
    reason[mem_short] = f"memory: rate {smallest:g} needs {memory_need[smallest] / 2**20:.2f} MiB"
    reason[todo & ~mem_short] = f"deadline: rate {smallest:g} cannot finish in time"
    return Assignment(out, reason)
