"""Which devices are online at a simulated time.

Three models, chosen by `AvailabilityConfig.kind`:

* `always`: every device is always online.
* `markov`: each device alternates online/offline periods with exponential durations whose
  means are the device's `mean_online`/`mean_offline`, started in the stationary state
  (online at t=0 with probability on/(on+off)). Exponential durations are memoryless, so this
  start makes the process stationary from t=0 on.
* `trace`: online intervals from an availability trace file (see `raysim.fleet.trace`);
  devices the trace does not list are never online; with `loop` the trace repeats with
  period = its last end time.

Every answer is a pure function of (seed, device id, time): devices' on/off sequences come
from a counter-based hash of (seed, device id, interval number), not from a shared random
stream, so answers never depend on query order, on which other ids are asked about, or on the
process asking. Sequences are generated lazily, a block of intervals at a time, and cached.

An interval is [start, end): a device is online at t when start <= t < end, and online
during [t0, t1] when one interval holds the whole closed range.
"""

from __future__ import annotations

from typing import Literal, Optional, Protocol, Union

import numpy as np
from pydantic import Field, model_validator

from raysim.errors import FleetError
from raysim.fleet.fleet import Fleet
from raysim.fleet.trace import Intervals, load_intervals
from raysim.settings import Section

__all__ = ["Availability"]


class AvailabilityConfig(Section):
    """When devices are online (see `raysim.fleet.availability`)."""

    kind: Literal["always", "markov", "trace"] = Field(
        "always", description="markov: on/off periods of exponential length around each device's means; "
        "trace: online intervals from a file")
    trace: Optional[str] = Field(None, description="kind=trace: CSV/parquet of device_id,start_s,end_s")
    loop: bool = Field(True, description="kind=trace: repeat the trace after its last interval ends")

    @model_validator(mode="after")
    def _needs_trace(self) -> "AvailabilityConfig":
        if self.kind == "trace" and not self.trace:
            raise ValueError("trace: required when kind is 'trace'")
        return self



class _Model(Protocol):
    def online_during(self, pos: np.ndarray, t0: float, t1: np.ndarray) -> np.ndarray: ...


class Availability:
    """Online status of a fleet's devices over simulated time.

        >>> from raysim.fleet import make_fleet
        >>> from raysim.scenario.schema import FleetConfig
        >>> fleet = make_fleet(FleetConfig(), seed=0)
        >>> av = Availability(fleet, FleetConfig().availability, seed=0)
        >>> av.online(np.array([3, 7, 11]), t=3600.0)
        array([ True,  True,  True])
    """

    def __init__(self, fleet: Fleet, cfg: AvailabilityConfig, seed: int) -> None:
        self.fleet = fleet
        self.kind = cfg.kind
        self._model: _Model
        if cfg.kind == "always":
            self._model = _Always()
        elif cfg.kind == "markov":
            self._model = _Markov(fleet, seed)
        elif cfg.kind == "trace":
            if not cfg.trace:
                raise FleetError("fleet.availability.trace: required when fleet.availability.kind is 'trace'")
            # getattr: an AvailabilityConfig without the `loop` field still works (loops).
            self._model = _Trace(fleet, load_intervals(cfg.trace), loop=getattr(cfg, "loop", True))
        else:  # pragma: no cover - the config schema allows only the kinds above
            raise FleetError(f"fleet.availability.kind: unknown kind {cfg.kind!r}")

    def online(self, ids: np.ndarray, t: float) -> np.ndarray:
        """Boolean mask: which of the devices `ids` are online at time `t`."""
        return self.online_during(ids, t, t)

    def online_during(self, ids: np.ndarray, t0: float, t1: Union[float, np.ndarray]) -> np.ndarray:
        """Boolean mask: which of the devices `ids` stay online for the whole of [t0, t1].

        `t1` may also be an array with one end time per id (e.g. each device's predicted
        finish), which answers a whole selection in one vectorised call.
        """
        if t0 < 0:
            raise ValueError(f"online_during: negative time {t0}")
        pos = self.fleet.index_of(np.asarray(ids, dtype=np.int64).reshape(-1))
        ends = np.broadcast_to(np.asarray(t1, dtype=np.float64), pos.shape)
        if np.any(ends < t0):
            raise ValueError(f"online_during: an end time is before t0 ({t0})")
        return self._model.online_during(pos, float(t0), ends)


class _Always:
    def online_during(self, pos: np.ndarray, t0: float, t1: np.ndarray) -> np.ndarray:
        return np.ones(pos.shape[0], dtype=bool)


# --- counter-based randomness -------------------------------------------------------------

_MASK64 = (1 << 64) - 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MARKOV_STREAM = 0x6D61726B6F76  # "markov": keeps these draws apart from other uses of the seed


def _mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijective avalanche on uint64 (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _device_keys(seed: int, device_ids: np.ndarray) -> np.ndarray:
    base = _mix64(np.array([(int(seed) ^ _MARKOV_STREAM) & _MASK64], dtype=np.uint64))
    with np.errstate(over="ignore"):
        return _mix64(base ^ _mix64(device_ids.astype(np.uint64) * _GOLDEN + np.uint64(1)))


def _uniforms(keys: np.ndarray, counters: np.ndarray) -> np.ndarray:
    """Uniforms in (0, 1), one per (key, counter) pair (broadcast)."""
    with np.errstate(over="ignore"):
        bits = _mix64(keys ^ _mix64((counters.astype(np.uint64) + np.uint64(1)) * _GOLDEN))
    return ((bits >> np.uint64(11)).astype(np.float64) + 0.5) * (1.0 / 2**53)


class _Markov:
    """Alternating renewal process per device, generated a block of periods at a time.

    Counter 0 of a device decides its state at t=0; counter j >= 1 gives the duration of its
    (j-1)-th period. Block b holds periods b*B .. b*B+B-1 and starts where block b-1 ended;
    its end times are that start plus a cumulative sum within the block, always computed the
    same way, so they are bit-identical whenever and for whichever devices they are computed.

    Only a cursor is kept per device (its latest block and that block's start time: 16 bytes),
    not the periods themselves: a block is cheap to recompute from the hash, and the simulated
    clock mostly moves forward, so a query usually recomputes one block per queried device.
    """

    BLOCK = 16  # even, so every block starts in the device's initial state

    def __init__(self, fleet: Fleet, seed: int) -> None:
        on, off = fleet.mean_online, fleet.mean_offline
        bad = ~(np.isfinite(on) & np.isfinite(off) & (on > 0) & (off > 0))
        if np.any(bad):
            cls = fleet.classes()[np.flatnonzero(bad)[0]]
            raise FleetError(f"fleet.availability: markov needs positive mean_online_s and mean_offline_s for "
                             f"every device; devices of class {cls!r} have none (give them in the trace)")
        n = len(fleet)
        self.on = on.astype(np.float64)
        self.off = off.astype(np.float64)
        self.keys = _device_keys(seed, fleet.device_id)
        u0 = _uniforms(self.keys, np.zeros(n, dtype=np.uint64))
        self.start_online = u0 < self.on / (self.on + self.off)
        self.block = np.zeros(n, dtype=np.int64)  # cursor: latest block reached per device
        self.block_start = np.zeros(n, dtype=np.float64)  # ... and the time it starts

    def __setstate__(self, state: dict) -> None:
        # Unpickled from Ray's object store, arrays are read-only views; the cursor is a cache
        # that must stay writable (its values never change answers, only their cost).
        self.__dict__.update(state)
        self.block = np.array(self.block, copy=True)
        self.block_start = np.array(self.block_start, copy=True)

    def _block_ends(self, pos: np.ndarray, block: np.ndarray, start: np.ndarray) -> np.ndarray:
        """End times of the periods of block `block[i]` of device `pos[i]`, shape (len(pos), BLOCK)."""
        period = block[:, None] * self.BLOCK + np.arange(self.BLOCK)[None, :]
        u = _uniforms(self.keys[pos][:, None], period + 1)
        online = self.start_online[pos][:, None] ^ (period % 2 == 1)
        means = np.where(online, self.on[pos][:, None], self.off[pos][:, None])
        return start[:, None] + np.cumsum(-np.log(u) * means, axis=1)

    def online_during(self, pos: np.ndarray, t0: float, t1: np.ndarray) -> np.ndarray:
        block = self.block[pos]
        start = self.block_start[pos]
        rewound = t0 < start  # asked about the past: replay from the first block
        block[rewound] = 0
        start[rewound] = 0.0
        ends = self._block_ends(pos, block, start)
        todo = np.flatnonzero(t0 >= ends[:, -1])
        while todo.size:
            block[todo] += 1
            start[todo] = ends[todo, -1]
            ends[todo] = self._block_ends(pos[todo], block[todo], start[todo])
            todo = todo[t0 >= ends[todo, -1]]
        keep = ~rewound  # a replay never moves a cursor back
        self.block[pos[keep]] = block[keep]
        self.block_start[pos[keep]] = start[keep]

        k = (ends <= t0).sum(axis=1)  # t0 lies in period k of the block
        online = self.start_online[pos] ^ (k % 2 == 1)
        return online & (t1 < ends[np.arange(pos.shape[0]), k])


class _Trace:
    """Online intervals from a file, matched to the fleet by device id."""

    def __init__(self, fleet: Fleet, intervals: Intervals, loop: bool) -> None:
        k = np.searchsorted(intervals.device_ids, fleet.device_id)
        kc = np.minimum(k, len(intervals.device_ids) - 1)
        listed = (k < len(intervals.device_ids)) & (intervals.device_ids[kc] == fleet.device_id)
        if not np.any(listed):
            raise FleetError("fleet.availability.trace: no device of the fleet appears in the availability trace "
                             f"(fleet ids {int(fleet.device_id[0])}..{int(fleet.device_id[-1])})")
        self.lo = np.where(listed, intervals.offsets[kc], 0)
        self.hi = np.where(listed, intervals.offsets[kc + 1], 0)
        self.starts, self.ends = intervals.starts, intervals.ends
        self.period: Optional[float] = intervals.horizon if loop else None

    def online_during(self, pos: np.ndarray, t0: float, t1: np.ndarray) -> np.ndarray:
        if self.period is not None:
            cycle = np.floor(t0 / self.period)
            t0, t1 = t0 - cycle * self.period, t1 - cycle * self.period
        out = np.zeros(pos.shape[0], dtype=bool)
        t1 = t1.tolist()
        for i, p in enumerate(pos.tolist()):
            lo, hi = int(self.lo[p]), int(self.hi[p])
            if lo == hi:
                continue
            starts, ends = self.starts[lo:hi], self.ends[lo:hi]
            j = int(starts.searchsorted(t0, side="right")) - 1
            if j < 0 or t0 >= ends[j]:
                continue
            end = ends[j]
            if self.period is not None and end >= self.period and starts[0] <= 0.0:
                if j == 0:  # one interval covers the whole period: online forever
                    out[i] = True
                    continue
                end = self.period + ends[0]  # runs on into the next cycle's first interval
            out[i] = t1[i] < end
        return out

