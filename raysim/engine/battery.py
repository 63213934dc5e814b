"""Batteries: every battery-powered device's charge, evolving on the simulated clock.

A device class is mains-powered or has a battery (`battery_wh` in the catalogue, or the
scenario's `fleet.classes`). With `energy.batteries: on`, each battery device holds a charge in
joules that moves with simulated time, for every device whether selected or not:

    charge after a round = charge before + charging over the round - standby x the round's length
                           - the FL energy of its part in the round, clipped to [0, capacity]

`standby_w` is the device's own job (sleep between sensor readings): it drains a battery even
when the device does no FL work, and FL work comes on top. Charging is a daily power profile
per class (`energy.charging`): `constant`, `solar` (a half-sine from 06:00 to 18:00 peaking at
`w`), `night` (plugged in from 22:00 to 07:00) or `hourly` (24 values, W); integrated exactly,
hour by hour, from the simulated clock (`energy.start_hour` is the local time at t = 0).

A device does no FL work at or below its reserve (`energy.reserve`, a share of capacity): it is
`excluded` with reason `battery`. With `energy.check: work` (the default) a device also refuses
work whose predicted energy would take it below its reserve; with `check: reserve` devices know
only their charge (as in EAFL's setting): a device that runs empty mid-round stops, is recorded
`depleted`, and its update is lost. Everything is a pure function of the scenario and seed
(no randomness after the initial charges), and the charge is part of the checkpoint.

    >>> b = Batteries(np.array([100.0, np.inf]), np.array([50.0, np.inf]), np.array([10.0, 0.0]),
    ...               np.zeros(2, np.int64), np.zeros(2), np.zeros((1, 24)), 0.0)
    >>> b.available(np.array([0, 1])).tolist()
    [40.0, inf]
    >>> b.advance(0.0, 10.0, np.array([0]), np.array([45.0])); b.charge.tolist()
    [5.0, inf]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Optional, Union, cast

import numpy as np
from pydantic import Field, field_validator

from raysim.fleet import Fleet
from raysim.seeding import rng
from raysim.settings import Section

__all__ = ["ChargingConfig", "EnergyConfig", "Batteries", "batteries_for", "death_time"]

HOUR = 3600.0
DAY = 24 * HOUR


def _solar_shape() -> np.ndarray:
    """Mean of max(0, sin(pi (t - 6) / 12)) over each hour of the day (t in hours): 0 at night,
    1 at the 12:00 peak; its integral over a day is 24 / pi peak-hours (7.6)."""
    out = np.zeros(24)
    for h in range(6, 18):
        out[h] = 12.0 / math.pi * (math.cos(math.pi * (h - 6) / 12) - math.cos(math.pi * (h - 5) / 12))
    return out


_SHAPES = {
    "constant": np.ones(24),
    "solar": _solar_shape(),
    "night": np.array([1.0 if (h >= 22 or h < 7) else 0.0 for h in range(24)]),
}


class ChargingConfig(Section):
    """A daily charging (or energy-harvesting) power profile."""

    profile: Literal["constant", "solar", "night", "hourly"] = Field(
        description="constant: w all day; solar: a half-sine 06:00-18:00 peaking at w; night: w from 22:00 "
        "to 07:00 (plugged in); hourly: w is 24 values in W, one per hour from 00:00")
    w: Union[float, list[float]] = Field(description="power in W (hourly: a list of 24)")

    @field_validator("w")
    @classmethod
    def _w(cls, v: Union[float, list[float]]) -> Union[float, list[float]]:
        values = v if isinstance(v, list) else [v]
        if any(not math.isfinite(float(x)) or float(x) < 0 for x in values):
            raise ValueError("power must be finite and non-negative (W)")
        return v

    def hourly(self) -> np.ndarray:
        """Watts in each hour of the day."""
        if self.profile == "hourly":
            if not isinstance(self.w, list) or len(self.w) != 24:
                raise ValueError("profile 'hourly' needs w as a list of 24 values (W)")
            return np.asarray(self.w, dtype=np.float64)
        if isinstance(self.w, list):
            raise ValueError(f"profile {self.profile!r} needs w as one number (W)")
        return _SHAPES[self.profile] * float(self.w)


class EnergyConfig(Section):
    """Batteries and charging (energy is always accounted; batteries only when on)."""

    batteries: bool = Field(False, description="track each battery-powered device's charge over simulated time")
    initial_charge: Union[float, list[float]] = Field(
        1.0, description="charge at t = 0 as a share of capacity, or [low, high]: drawn uniformly per device")
    reserve: float = Field(0.1, ge=0.0, lt=1.0, description="share of capacity below which a device does no FL work")
    check: Literal["work", "reserve"] = Field(
        "work", description="work: a device refuses work whose predicted energy would take it below its reserve; "
        "reserve: devices check only their reserve, and one that runs empty mid-round loses its update")
    charging: dict[str, ChargingConfig] = Field(default_factory=dict,
                                                description="device class -> daily charging profile")
    start_hour: float = Field(0.0, ge=0.0, lt=24.0, description="local time of day at simulated t = 0, hours")

    @field_validator("initial_charge")
    @classmethod
    def _initial(cls, v: Union[float, list[float]]) -> Union[float, list[float]]:
        lo, hi = (v, v) if not isinstance(v, list) else (v + [math.nan, math.nan])[:2]
        if isinstance(v, list) and len(v) != 2:
            raise ValueError("a share of capacity, or [low, high]")
        if not (0.0 <= float(lo) <= float(hi) <= 1.0):
            raise ValueError(f"shares of capacity with 0 <= low <= high <= 1, got {v!r}")
        return v


def _cumulative(profile: np.ndarray, t: np.ndarray | float) -> np.ndarray:
    """Joules a profile (classes x 24 watts) delivers from local midnight of day 0 to local time t (s)."""
    cum = np.concatenate([np.zeros((profile.shape[0], 1)), np.cumsum(profile, axis=1) * HOUR], axis=1)
    days, rest = divmod(float(t), DAY)
    h = int(rest // HOUR)
    frac = rest - h * HOUR
    return cast(np.ndarray, days * cum[:, 24] + cum[:, h] + profile[:, min(h, 23)] * frac)


@dataclass
class Batteries:
    """Charge of every device of a fleet (inf for mains-powered ones), by fleet position.

    `capacity`, `charge`, `reserve` are joules and `standby_w` watts per device; `profile` (W per
    hour of the day) is per class, `class_idx` maps devices to classes; `offset_s` is the local time
    of day at t = 0; `check` is `work` or `reserve` (see the module docstring).
    """

    capacity: np.ndarray
    charge: np.ndarray
    reserve: np.ndarray
    class_idx: np.ndarray
    standby_w: np.ndarray
    profile: np.ndarray
    offset_s: float
    check: str = "work"
    class_names: tuple[str, ...] = ()

    @classmethod
    def of(cls, fleet: Fleet, cfg: EnergyConfig, seed: int) -> "Batteries":
        """The fleet's batteries at t = 0 (charges drawn from `cfg.initial_charge`)."""
        n = len(fleet)
        if fleet.power is None:
            cap_c = np.full(len(fleet.class_names), np.inf)
            standby_c = np.zeros(len(fleet.class_names))
        else:
            cap_c, standby_c = fleet.power.battery_j, fleet.power.standby_w
        cap = cap_c[fleet.class_idx].astype(np.float64)
        standby = np.nan_to_num(standby_c)[fleet.class_idx].astype(np.float64)
        all_pos = np.arange(n)
        given_cap, given_standby = fleet.device("battery_wh", all_pos), fleet.device("standby_w", all_pos)
        if given_cap is not None:  # a trace's own capacities
            cap = np.where(np.isnan(given_cap), cap, given_cap * 3600.0)
        if given_standby is not None:
            standby = np.where(np.isnan(given_standby), standby, given_standby)
        has = np.isfinite(cap)
        share: np.ndarray
        if isinstance(cfg.initial_charge, list):
            lo, hi = (float(x) for x in cfg.initial_charge)
            share = rng(seed, "battery-initial").uniform(lo, hi, size=n)
        else:
            share = np.full(n, float(cfg.initial_charge))
        finite = np.where(has, cap, 0.0)  # no inf x 0 for mains-powered devices
        charge = np.where(has, finite * share, np.inf)
        reserve = finite * cfg.reserve
        profile = np.zeros((len(fleet.class_names), 24))
        for name, c in cfg.charging.items():
            if name in fleet.class_names:
                profile[fleet.class_names.index(name)] = c.hourly()
        return cls(cap, charge, reserve, fleet.class_idx.astype(np.int64), standby, profile,
                   cfg.start_hour * HOUR, cfg.check, tuple(fleet.class_names))

    # ---------------------------------------------------------------- what the engine asks
    def available(self, pos: np.ndarray) -> np.ndarray:
        """Joules above the reserve (inf: mains-powered; 0 at or below the reserve)."""
        return cast(np.ndarray, np.maximum(self.charge[pos] - self.reserve[pos], 0.0))

    def level(self, pos: np.ndarray) -> np.ndarray:
        """Charge above the reserve as a share of what the reserve leaves (1: full or mains; 0: at it)."""
        room = self.capacity[pos] - self.reserve[pos]
        with np.errstate(invalid="ignore", divide="ignore"):
            lv = (self.charge[pos] - self.reserve[pos]) / room
        return np.where(np.isfinite(self.capacity[pos]), np.clip(np.nan_to_num(lv), 0.0, 1.0), 1.0)

    def harvest(self, t0: float, t1: float) -> np.ndarray:
        """Joules each class's profile delivers between simulated t0 and t1."""
        if not self.profile.any():
            return np.zeros(self.profile.shape[0])
        return cast(np.ndarray, _cumulative(self.profile, self.offset_s + t1) - _cumulative(self.profile, self.offset_s + t0))

    def advance(self, t0: float, t1: float, pos: np.ndarray, spent: np.ndarray,
                among: Optional[np.ndarray] = None) -> None:
        """Move every battery (`among`: a fleet mask, those only, e.g. a gateway's devices on its
        own clock) from t0 to t1: charging and standby, FL energy `spent` (J) for the devices at
        `pos`; clipped to [0, capacity]."""
        dt = max(float(t1) - float(t0), 0.0)
        new = self.charge + (self.harvest(t0, t1)[self.class_idx] - self.standby_w * dt if dt > 0 else 0.0)
        np.subtract.at(new, np.asarray(pos, dtype=np.int64), np.nan_to_num(np.asarray(spent, dtype=np.float64)))
        new = np.where(np.isfinite(self.capacity), np.clip(new, 0.0, self.capacity), np.inf)
        self.charge = new if among is None else np.where(among, new, self.charge)

    def empty(self, pos: np.ndarray) -> np.ndarray:
        """Devices whose battery is empty."""
        return cast(np.ndarray, np.isfinite(self.capacity[pos]) & (self.charge[pos] <= 0.0))

    # ---------------------------------------------------------------- records and checkpoints
    def rows(self, round_idx: int, sim_time: float) -> list[dict[str, Any]]:
        """One row per battery class: charge percentiles (share of capacity) and devices at or
        below the reserve and empty (the rows of `batteries.parquet`)."""
        out = []
        has = np.isfinite(self.capacity)
        for c, name in enumerate(self.class_names):
            m = has & (self.class_idx == c)
            if not m.any():
                continue
            share = self.charge[m] / self.capacity[m]
            p10, p50, p90 = np.percentile(share, [10, 50, 90])
            out.append({"round": round_idx, "sim_time": sim_time, "device_class": name, "devices": int(m.sum()),
                        "charge_p10": float(p10), "charge_p50": float(p50), "charge_p90": float(p90),
                        "charge_mean": float(share.mean()), "charge_j": float(self.charge[m].sum()),
                        "at_reserve": int(np.sum(self.charge[m] <= self.reserve[m])),
                        "empty": int(np.sum(self.charge[m] <= 0.0))})
        return out

    def state_dict(self) -> dict[str, Any]:
        """The charge (the rest is rebuilt from the scenario)."""
        import torch  # noqa: PLC0415 - checkpoints hold tensors (loadable with weights_only)

        return {"charge": torch.from_numpy(self.charge.copy())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        charge = state["charge"].numpy().astype(np.float64)
        if charge.shape != self.charge.shape:
            raise ValueError(f"checkpoint: {charge.shape[0]} batteries for a fleet of {self.charge.shape[0]}")
        self.charge = charge


def batteries_for(fleet: Fleet, cfg: EnergyConfig, seed: int) -> Optional["Batteries"]:
    """The fleet's batteries when `cfg.batteries` is on (None: no battery tracked)."""
    return Batteries.of(fleet, cfg, seed) if cfg.batteries else None


def death_time(charge: np.ndarray, t_down: np.ndarray, t_comp: np.ndarray, t_up: np.ndarray,
               p_down: np.ndarray, p_comp: np.ndarray, p_up: np.ndarray) -> np.ndarray:
    """Seconds into the round at which a battery of `charge` J runs empty while it downloads,
    computes and uploads at the given average powers (W); inf when it lasts the whole work.

        >>> death_time(np.array([5.0, 100.0]), np.ones(2), np.full(2, 4.0), np.ones(2),
        ...            np.ones(2), np.full(2, 2.0), np.ones(2)).tolist()
        [3.0, inf]
    """
    out = np.full(len(charge), np.inf)
    left = charge.astype(np.float64).copy()
    start = np.zeros(len(charge))
    for dur, pw in ((t_down, p_down), (t_comp, p_comp), (t_up, p_up)):
        use = dur * pw
        dies = np.isinf(out) & (use > left) & (pw > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            out = np.where(dies, start + left / np.where(pw > 0, pw, 1.0), out)
        left = left - use
        start = start + dur
    return out
