"""Trace files: measured device capacities, and measured online intervals.

Device trace (CSV or parquet, one row per device; extra columns are ignored):

    device_id        non-negative integer, unique
    flops            effective training FLOP/s            } one of the two
    ms_per_sample    FedScale-style compute time (ms)     }
    memory_bytes     bytes for training                   } one of the two
    memory_mb        MiB (2**20 bytes) for training       }
    down_kbps        downlink, kbit/s (1000 bit/s)
    up_kbps          uplink, kbit/s
    latency_ms       optional; default: the device class's latency, else 0
    device_class     optional; default "trace"
    mean_online_s    optional; default: the device class's, else NaN (then `markov`
    mean_offline_s   optional   availability cannot be used)
    compute_w        optional, W while training          } per device; a blank cell or no
    idle_w           optional, W awake, not computing      } column: the device class's
    standby_w        optional, W of its own job            } figure (NaN energy for a class
    battery_wh       optional, battery capacity in Wh      } the catalogue lacks)
    gateway          optional, the device's gateway (0, 1, ...; `topology.attach: trace`)

`ms_per_sample` follows FedScale: it is the per-sample *forward* time of a reference model,
and training a sample costs about 3x that. raysim turns it into a throughput,
flops = reference_flops / (ms_per_sample / 1000), where `reference_flops` is the forward FLOPs
per sample of the model the timings refer to (the runtime passes its global model's). Training
the rate-1 model then takes ~3 x ms_per_sample per sample, as in FedScale, and smaller
submodels proportionally less.

The fleet is the trace: `FleetConfig.devices` and `spread` are ignored for trace fleets.

Availability trace (CSV or parquet): `device_id, start_s, end_s`, one row per online
interval [start_s, end_s); a device may have many rows; overlapping or touching intervals
are merged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

import numpy as np
import pandas as pd

from raysim.errors import FleetError
from raysim.fleet.catalogue import DeviceClass
from raysim.fleet.fleet import Fleet
from raysim.fleet.power import PowerStates
from raysim.fleet.trace_table import Table, optional_column, read_table

__all__ = ["fleet_from_trace", "Intervals", "load_intervals"]

TRACE_CLASS = "trace"
DEVICE_POWER = ("compute_w", "idle_w", "standby_w", "battery_wh")  # optional per-device power columns


def _device_ids(table: Table) -> np.ndarray:
    ids = table.numbers("device_id", integer=True)
    return ids.astype(np.int64)


def _check_unique(table: Table, ids: np.ndarray) -> None:
    order = np.argsort(ids, kind="stable")
    same = np.flatnonzero(ids[order][1:] == ids[order][:-1])
    if same.size:
        # Report the duplicate that comes last in the file among the first clashing pair.
        first, second = sorted((int(order[same[0]]), int(order[same[0] + 1])))
        raise FleetError(f"{table.where(second, 'device_id')}: duplicate device id {ids[second]} "
                         f"(first at {table.unit} {int(table.origin[first])})")


def fleet_from_trace(path: str | Path, catalogue: Mapping[str, DeviceClass],
                     reference_flops: Optional[float] = None) -> Fleet:
    """The fleet described by a device trace file (see the module docstring for columns)."""
    t = read_table(path, "device trace")
    speed_col = optional_column(t, "flops", "ms_per_sample")
    memory_col = optional_column(t, "memory_bytes", "memory_mb")
    t.require("device_id")
    if speed_col is None:
        t.require("flops")
    if memory_col is None:
        t.require("memory_bytes")
    t.require("down_kbps", "up_kbps")

    ids = _device_ids(t)
    _check_unique(t, ids)
    if speed_col == "flops":
        flops = t.numbers("flops", positive=True)
    else:
        ms = t.numbers("ms_per_sample", positive=True)
        if reference_flops is None or not reference_flops > 0:
            raise FleetError(f"{t.path}: column 'ms_per_sample' needs the forward FLOPs per sample of the "
                             "model it was timed with (reference_flops); or give a 'flops' column")
        flops = float(reference_flops) / (ms / 1000.0)
    assert memory_col is not None  # else `t.require("memory_bytes")` raised above
    memory = t.numbers(memory_col)
    if memory_col == "memory_mb":
        memory = memory * 2**20
    down = t.numbers("down_kbps", positive=True) * 1000.0
    up = t.numbers("up_kbps", positive=True) * 1000.0

    if t.has("device_class"):
        raw = t.frame["device_class"].astype("string").str.strip().fillna("")
        labels = np.where(raw.eq("").to_numpy(dtype=bool), TRACE_CLASS, raw.to_numpy(dtype=object))
    else:
        labels = np.full(len(t), TRACE_CLASS, dtype=object)
    class_names = sorted(set(labels.tolist()))
    class_idx = np.searchsorted(np.array(class_names, dtype=object), labels).astype(np.int16)

    def class_default(attr: str, fallback: float) -> np.ndarray:
        per_class = np.array([getattr(catalogue[c], attr) if c in catalogue else fallback for c in class_names])
        return per_class[class_idx]

    def with_default(column: str, attr: str, fallback: float, scale: float = 1.0) -> np.ndarray:
        default = class_default(attr, fallback)
        if not t.has(column):
            return default
        given = t.numbers(column, required=False) * scale
        return np.where(np.isnan(given), default, given)

    latency = with_default("latency_ms", "latency_s", 0.0, scale=1e-3)
    mean_on = with_default("mean_online_s", "mean_online_s", np.nan)
    mean_off = with_default("mean_offline_s", "mean_offline_s", np.nan)

    order = np.argsort(ids, kind="stable")
    device_power = {}
    for col in DEVICE_POWER:
        if t.has(col):
            given = t.numbers(col, required=False, positive=col == "battery_wh")
            device_power[col] = given[order]
    gateway = t.numbers("gateway", integer=True)[order].astype(np.int64) if t.has("gateway") else None
    return Fleet(
        device_id=ids[order],
        class_idx=class_idx[order],
        class_names=class_names,
        flops=flops[order],
        memory=np.floor(memory[order]).astype(np.int64),
        down_bps=down[order],
        up_bps=up[order],
        latency=latency[order],
        mean_online=mean_on[order],
        mean_offline=mean_off[order],
        power=PowerStates.of(class_names, catalogue),
        device_power=device_power or None,
        gateway=gateway,
    )


@dataclass(frozen=True)
class Intervals:
    """Online intervals per device, merged and sorted (CSR layout).

    Device `device_ids[k]` is online on [starts[j], ends[j]) for j in offsets[k]:offsets[k+1].
    `horizon` is the latest end in the trace.
    """

    device_ids: np.ndarray
    offsets: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    horizon: float

    def slice_of(self, device_id: int) -> Optional[tuple[np.ndarray, np.ndarray]]:
        """(starts, ends) of one device, or None when the trace does not list it."""
        k = int(np.searchsorted(self.device_ids, device_id))
        if k >= len(self.device_ids) or self.device_ids[k] != device_id:
            return None
        lo, hi = int(self.offsets[k]), int(self.offsets[k + 1])
        return self.starts[lo:hi], self.ends[lo:hi]


def load_intervals(path: str | Path) -> Intervals:
    """Read and validate an availability trace (see the module docstring)."""
    t = read_table(path, "availability trace")
    t.require("device_id", "start_s", "end_s")
    ids = _device_ids(t)
    starts = t.numbers("start_s")
    ends = t.numbers("end_s")
    bad = np.flatnonzero(ends <= starts)
    if bad.size:
        i = int(bad[0])
        raise FleetError(f"{t.where(i, 'end_s')}: end_s {ends[i]:g} must be greater than start_s {starts[i]:g}")

    order = np.lexsort((starts, ids))
    ids, starts, ends = ids[order], starts[order], ends[order]
    # Merge overlapping or touching intervals of the same device: a new run begins where the
    # device changes or the interval starts after everything before it (of that device) ended.
    run_end = _running_max_per_device(ids, ends)
    new_run = np.ones(len(ids), dtype=bool)
    new_run[1:] = (ids[1:] != ids[:-1]) | (starts[1:] > run_end[:-1])
    heads = np.flatnonzero(new_run)
    tails = np.append(heads[1:], len(ids)) - 1
    m_ids, m_starts, m_ends = ids[heads], starts[heads], run_end[tails]

    uniq, first = np.unique(m_ids, return_index=True)
    offsets = np.append(first, len(m_ids)).astype(np.int64)
    return Intervals(uniq, offsets, m_starts, m_ends, float(m_ends.max()))


def _running_max_per_device(ids: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Running maximum of `ends` that restarts at each new device (rows sorted by id)."""
    return pd.Series(ends).groupby(ids, sort=False).cummax().to_numpy(dtype=np.float64)
