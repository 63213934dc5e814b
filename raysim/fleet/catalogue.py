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
from typing import Any, Optional

from raysim.fleet.errors import FleetError
from raysim.fleet.figures import finite_number, read_mapping
from raysim.fleet.radios import load_radios

__all__ = ["DeviceClass", "load_catalogue", "CATALOGUE_PATH"]

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
    mean_online_s: float  # availability on/off process
    mean_offline_s: float
    source: str  # where the figures come from


_NUMERIC = ("flops", "memory_bytes", "down_bps", "up_bps", "latency_s", "compute_w", "idle_w", "mean_online_s",
            "mean_offline_s")
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
