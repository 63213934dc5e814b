"""IoT device classes: typical speed, memory, links and availability, with their sources.

The figures live in `catalogue.yaml` next to this module (shipped as package data), so they
can be read, cited and changed without touching code.

    >>> cat = load_catalogue()
    >>> cat["mcu"].memory_bytes
    327680
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Optional

from raysim.errors import FleetError
from raysim.fleet.figures import finite_number, read_mapping
from raysim.fleet.radios import load_radios

__all__ = ["DeviceClass", "load_catalogue", "with_classes", "CATALOGUE_PATH"]

CATALOGUE_PATH = Path(__file__).with_name("catalogue.yaml")


@dataclass(frozen=True)
class DeviceClass:
    """Typical (median) device of a class; a fleet spreads devices around these figures."""

    name: str
    description: str
    flops: float  # effective training throughput, FLOP/s
    memory_bytes: int  # memory available to the FL app for training
    down_bps: float  # bits/s
    up_bps: float  # bits/s
    latency_s: float
    radio: str  # radio technology (raysim/fleet/radios.yaml): power states, framing
    compute_w: float  # whole-device power while training, W
    idle_w: float  # whole-device power awake but not computing (radio excluded), W
    battery_wh: Optional[float]  # battery capacity, Wh (None: mains-powered)
    standby_w: float  # average power of the device's own job when it does no FL work, W
    mean_online_s: float  # availability on/off process
    mean_offline_s: float
    source: str  # where the figures come from


_NUMERIC = ("flops", "memory_bytes", "down_bps", "up_bps", "latency_s", "compute_w", "idle_w", "standby_w",
            "mean_online_s", "mean_offline_s")
# Zero throughput, bandwidth or on-time would make durations infinite; latency and memory
# may be zero (a device with no memory simply fits no rate).
_POSITIVE = ("flops", "down_bps", "up_bps", "mean_online_s", "mean_offline_s")


def _parse_class(name: str, entry: Any, where: str) -> DeviceClass:
    if not isinstance(entry, dict):
        raise FleetError(f"{where}: class {name!r} must be a mapping of fields")
    expected = {f.name for f in fields(DeviceClass)} - {"name"}
    missing = sorted(expected - entry.keys())
    if missing:
        raise FleetError(f"{where}: class {name!r} lacks field {missing[0]!r}")
    unknown = sorted(entry.keys() - expected)
    if unknown:
        raise FleetError(f"{where}: class {name!r} has unknown field {unknown[0]!r}")
    values: dict[str, Any] = {"name": name}
    for key in _NUMERIC:
        raw = finite_number(f"{where}: class {name!r}", key, entry[key])
        if raw < 0 or (key in _POSITIVE and raw == 0):
            raise FleetError(f"{where}: class {name!r} field {key!r} must be positive, got {raw!r}")
        values[key] = int(raw) if key == "memory_bytes" else float(raw)
    battery = entry["battery_wh"]
    if battery is not None:
        battery = finite_number(f"{where}: class {name!r}", "battery_wh", battery)
        if battery <= 0:
            raise FleetError(f"{where}: class {name!r} field 'battery_wh' must be a positive capacity in Wh or "
                             f"null (mains-powered), got {battery!r}")
    values["battery_wh"] = battery
    for key in ("description", "source", "radio"):
        values[key] = str(entry[key]).strip()
    return DeviceClass(**values)


def _check_radios(classes: tuple[DeviceClass, ...], where: str) -> None:
    radios = load_radios()
    for c in classes:
        if c.radio not in radios:
            raise FleetError(f"{where}: class {c.name!r} names radio {c.radio!r}, a technology the catalogue lacks "
                             f"(known: {', '.join(sorted(radios))})")


@lru_cache(maxsize=8)
def _load(path: str) -> tuple[DeviceClass, ...]:
    p = Path(path)
    raw = read_mapping(p, "catalogue")
    classes = tuple(_parse_class(str(name), entry, str(p)) for name, entry in raw.items())
    _check_radios(classes, str(p))
    return classes


def load_catalogue(path: Optional[str | Path] = None) -> dict[str, DeviceClass]:
    """Device classes by name, from the shipped catalogue (or another YAML file of that form).

    Parsed once per path; each call returns a new dict of the same frozen classes.
    """
    return {c.name: c for c in _load(str(path or CATALOGUE_PATH))}


def with_classes(catalogue: Mapping[str, DeviceClass], overrides: Mapping[str, Mapping[str, Any]],
                 where: str = "fleet.classes") -> dict[str, DeviceClass]:
    """The catalogue with a scenario's own classes: each entry changes fields of a catalogue class
    (its own name, or the class named by `base`) or defines a new one from `base`. A class whose
    `radio` changes takes that technology's goodput and latency unless it gives its own.

        >>> cat = with_classes(load_catalogue(), {"mcu-solar": {"base": "mcu", "radio": "lora", "battery_wh": 1}})
        >>> cat["mcu-solar"].radio, cat["mcu-solar"].up_bps, cat["mcu-solar"].battery_wh
        ('lora', 1400.0, 1.0)
    """
    out = dict(catalogue)
    radios = load_radios()
    for name, entry in overrides.items():
        here = f"{where}.{name}"
        if not isinstance(entry, Mapping):
            raise FleetError(f"{here}: must be a mapping of class fields (and optionally base)")
        fields_given = dict(entry)
        if "base" not in fields_given and name not in catalogue:
            raise FleetError(f"{here}: not a catalogue class; a new class needs base: naming one "
                             f"(known: {', '.join(sorted(catalogue))})")
        base_name = str(fields_given.pop("base", name))
        if base_name not in catalogue:
            raise FleetError(f"{here}: base class {base_name!r} is not in the catalogue "
                             f"(known: {', '.join(sorted(catalogue))})")
        base = catalogue[base_name]
        known = {f.name for f in fields(DeviceClass)} - {"name"}
        unknown = sorted(set(fields_given) - known)
        if unknown:
            raise FleetError(f"{here}: unknown field {unknown[0]!r} (a class has: base, {', '.join(sorted(known))})")
        merged: dict[str, Any] = {f.name: getattr(base, f.name) for f in fields(DeviceClass) if f.name != "name"}
        radio = fields_given.get("radio")
        if radio is not None and radio != base.radio:
            if radio not in radios:
                raise FleetError(f"{here}.radio: {radio!r} is a technology the catalogue lacks "
                                 f"(known: {', '.join(sorted(radios))})")
            r = radios[str(radio)]
            merged.update(down_bps=r.down_bps, up_bps=r.up_bps, latency_s=r.latency_s)
        merged.update(fields_given)
        if "source" not in fields_given:
            merged["source"] = f"scenario: {base_name} with {', '.join(sorted(fields_given)) or 'no change'}"
        cls = _parse_class(name, merged, where)
        _check_radios((cls,), where)
        out[name] = cls
    return out
