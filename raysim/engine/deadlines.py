"""Straggler mechanics on the virtual clock: deadline policies, over-commitment, round length.

Given each selected device's predicted timeline, decide who trains (fully or partially), who
is late, who went offline, and when the server closes the round. Pure numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from raysim.records import EXCLUDED, FAILED, LATE, OFFLINE, OK, OOM, PARTIAL, STATUSES  # noqa: F401 - re-exported


@dataclass(frozen=True)
class Schedule:
    """Decisions for the selected devices of one round."""

    status: np.ndarray        # object array of status strings
    reason: np.ndarray        # object array of reasons ("" when none)
    step_fraction: np.ndarray  # share of the full local work each device does (0 = not trained)
    finish: np.ndarray        # predicted finish time relative to round start (nan if none)
    duration: float           # simulated length of the round


def decide(total: np.ndarray, download: np.ndarray, upload: np.ndarray, compute: np.ndarray,
           assigned: np.ndarray, stays_online: np.ndarray, k: int, deadline: Optional[float],
           policy: str) -> Schedule:
    """Apply the deadline policy and over-commitment to predicted times.

    `assigned`: device got a rate (others are already `excluded`). `stays_online`: device is
    online from round start until it would finish. The server closes the round when it holds
    K results or at the deadline, whichever is first; with `wait` it waits for the K-th.
    """
    n = len(total)
    status = np.full(n, EXCLUDED, dtype=object)
    reason = np.full(n, "", dtype=object)
    frac = np.zeros(n)
    finish = np.full(n, np.nan)
    cand = assigned.copy()
    status[cand] = OK
    use_deadline = deadline is not None and policy != "wait"
    if use_deadline and deadline is not None:
        over = cand & (total > deadline)
        if policy == "drop":
            status[over] = LATE
            reason[over] = f"predicted past the {deadline:g} s deadline"
            cand &= ~over
            finish[cand] = total[cand]
            frac[cand] = 1.0
        else:  # partial: train the share of the compute that fits before the deadline
            budget = deadline - download - upload
            share = np.where(compute > 0, np.clip(budget / np.maximum(compute, 1e-12), 0.0, 1.0), 1.0)
            none_fit = cand & (share <= 0)
            status[none_fit] = LATE
            reason[none_fit] = "no local step fits before the deadline"
            cand &= ~none_fit
            part = cand & (share < 1.0)
            status[part] = PARTIAL
            for i in np.flatnonzero(part):
                reason[i] = f"deadline: {share[i]:.0%} of the local work fits before the {deadline:g} s deadline"
            frac[cand] = share[cand]
            finish[cand] = np.minimum(total[cand], deadline)
    else:
        frac[cand] = 1.0
        finish[cand] = total[cand]
    gone = cand & ~stays_online
    status[gone] = OFFLINE
    reason[gone] = "went offline during the round"
    frac[gone] = 0.0
    finish[gone] = np.nan
    cand &= ~gone
    # Over-commitment: keep the first K to finish (ties broken by position, i.e. selection order).
    idx = np.flatnonzero(cand)
    if len(idx) > k:
        order = idx[np.argsort(finish[idx], kind="stable")]
        surplus = order[k:]
        status[surplus] = LATE
        reason[surplus] = "over-commitment: not among the first K to finish"
        frac[surplus] = 0.0
        finish[surplus] = np.nan
        cand[surplus] = False
    kept_finish = finish[cand]
    last = float(kept_finish.max()) if kept_finish.size else 0.0
    waited = bool(np.any((status == LATE) | (status == OFFLINE)) and cand.sum() < k)
    if use_deadline and deadline is not None and (waited or np.any(status == PARTIAL)):
        duration = float(deadline)
    else:
        duration = last
    return Schedule(status, reason, frac, finish, duration)
