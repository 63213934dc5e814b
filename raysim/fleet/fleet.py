"""The fleet: every simulated device's profile, stored column by column.

One numpy array per attribute keeps 10^5..10^6 devices cheap to build, slice and ship (a
million devices take about 70 MB), and lets the cost model and policies work on whole
selections at once. Rows are sorted by `device_id`; a row's position is what `idx` arguments
elsewhere (e.g. `raysim.engine.cost.device_times`) index. Fleets made from a class mix have
`device_id == position`; trace fleets keep the trace's ids (see `index_of`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import pandas as pd

from raysim.errors import FleetError
from raysim.fleet.power import PowerStates

__all__ = ["Fleet"]


@dataclass
class Fleet:
    """Device profiles (one entry per device in every array).

    flops: effective training FLOP/s; memory: bytes available for training; down_bps/up_bps:
    bit/s; latency: seconds per transfer; mean_online/mean_offline: seconds (means of the
    on/off durations of the `markov` availability model; NaN where unknown).
    """

    device_id: np.ndarray  # int64, strictly increasing
    class_idx: np.ndarray  # int16, index into class_names
    class_names: list[str]
    flops: np.ndarray
    memory: np.ndarray  # int64 bytes
    down_bps: np.ndarray
    up_bps: np.ndarray
    latency: np.ndarray
    mean_online: np.ndarray
    mean_offline: np.ndarray
    power: Optional[PowerStates] = None  # per class; None: unknown (energy is NaN)
    # per device, from a trace: compute_w, idle_w, standby_w, battery_wh (NaN: the class's figure)
    device_power: Optional[dict[str, np.ndarray]] = None
    gateway: Optional[np.ndarray] = None  # per device, from a trace's `gateway` column (topology.attach: trace)

    def __post_init__(self) -> None:
        n = len(self.device_id)
        for name in ("class_idx", "flops", "memory", "down_bps", "up_bps", "latency", "mean_online", "mean_offline"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"Fleet.{name}: {len(getattr(self, name))} entries for {n} devices")
        if self.gateway is not None and len(self.gateway) != n:
            raise ValueError(f"Fleet.gateway: {len(self.gateway)} entries for {n} devices")
        if n > 1 and not np.all(np.diff(self.device_id) > 0):
            raise ValueError("Fleet.device_id must be strictly increasing")

    def __len__(self) -> int:
        return int(self.device_id.shape[0])

    def classes(self) -> np.ndarray:
        """Class name of every device (object array)."""
        return np.asarray(self.class_names, dtype=object)[self.class_idx]

    def index_of(self, ids: np.ndarray) -> np.ndarray:
        """Positions of device ids in this fleet; FleetError for an id it does not hold."""
        ids = np.asarray(ids, dtype=np.int64)
        pos = np.searchsorted(self.device_id, ids)
        pos_c = np.minimum(pos, max(len(self) - 1, 0))
        missing = (pos >= len(self)) | (self.device_id[pos_c] != ids) if len(self) else np.ones(ids.shape, bool)
        if np.any(missing):
            raise FleetError(f"device id {int(ids[np.flatnonzero(missing)[0]])} is not in the fleet")
        return pos

    def power_of(self, pos: np.ndarray) -> dict[str, np.ndarray]:
        """The power states of the devices at positions `pos` (NaN where unknown)."""
        names = ("compute_w", "idle_w", "tx_w", "rx_w", "radio_idle_w", "tail_j")
        if self.power is None:
            return {k: np.full(len(pos), np.nan) for k in names}
        cls = self.class_idx[pos]
        out = {k: getattr(self.power, k)[cls] for k in names}
        for k in ("compute_w", "idle_w"):
            given = self.device(k, pos)
            if given is not None:
                out[k] = np.where(np.isnan(given), out[k], given)
        return out

    def device(self, name: str, pos: np.ndarray) -> Optional[np.ndarray]:
        """A trace's per-device figure `name` at `pos` (NaN where not given), or None without one."""
        if self.device_power is None or name not in self.device_power:
            return None
        return self.device_power[name][pos]

    def duty_of(self, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Duty-cycle limit and payload bytes per message of the devices at `pos` (1 and inf where
        the radio has no limit or is unknown)."""
        if self.power is None:
            return np.ones(len(pos)), np.full(len(pos), np.inf)
        cls = self.class_idx[pos]
        return self.power.duty_cycle[cls], self.power.payload_bytes[cls]

    def to_frame(self) -> pd.DataFrame:
        """One row per device, for `fleet.parquet` and analysis."""
        return pd.DataFrame({
            "device_id": self.device_id,
            "device_class": pd.Categorical.from_codes(self.class_idx.astype(np.int32), self.class_names),
            "flops": self.flops,
            "memory_bytes": self.memory,
            "down_bps": self.down_bps,
            "up_bps": self.up_bps,
            "latency_s": self.latency,
            "mean_online_s": self.mean_online,
            "mean_offline_s": self.mean_offline,
            **self._power_columns(),
            **({"gateway": self.gateway} if self.gateway is not None else {}),
        })

    def _power_columns(self) -> dict[str, object]:
        if self.power is None:
            return {}
        p, c = self.power, self.class_idx
        power = self.power_of(np.arange(len(self)))
        return {"radio": np.asarray(p.radio, dtype=object)[c],
                "compute_w": power["compute_w"], "idle_w": power["idle_w"], "tx_w": p.tx_w[c], "rx_w": p.rx_w[c],
                "radio_idle_w": p.radio_idle_w[c], "tail_j": p.tail_j[c]}

    def class_counts(self) -> dict[str, int]:
        """Devices per class name (classes with no device included, as 0)."""
        counts = np.bincount(self.class_idx.astype(np.int64), minlength=len(self.class_names))
        return {name: int(c) for name, c in zip(self.class_names, counts)}
