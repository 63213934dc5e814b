"""IoT device classes: typical speed, memory, links and availability, with their sources.

The figures live in `catalogue.yaml` next to this module (shipped as package data), so they
can be read, cited and changed without touching code.

    >>> cat = load_catalogue()
    >>> cat["mcu"].memory_bytes
    327680
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

import yaml

from raysim.fleet.errors import FleetError

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
    mean_online_s: float  # availability on/off process
    mean_offline_s: float
    source: str  # where the figures come from


_NUMERIC = ("flops", "memory_bytes", "down_bps", "up_bps", "latency_s", "mean_online_s", "mean_offline_s")
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
        raw = entry[key]
        if isinstance(raw, str):
            # YAML 1.1 reads `8.0e7` (no exponent sign) as a string; accept it as a number.
            try:
                raw = float(raw)
            except ValueError:
                pass
        if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw):
            raise FleetError(f"{where}: class {name!r} field {key!r} must be a finite number, got {raw!r}")
        if raw < 0 or (key in _POSITIVE and raw == 0):
            raise FleetError(f"{where}: class {name!r} field {key!r} must be positive, got {raw!r}")
        values[key] = int(raw) if key == "memory_bytes" else float(raw)
    for key in ("description", "source"):
        values[key] = str(entry[key]).strip()
    return DeviceClass(**values)


@lru_cache(maxsize=8)
def _load(path: str) -> tuple[DeviceClass, ...]:
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text())
    except OSError as err:
        raise FleetError(f"{p}: cannot read catalogue ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise FleetError(f"{p}: not valid YAML ({getattr(err, 'problem', err)})") from None
    if not isinstance(raw, dict) or not raw:
        raise FleetError(f"{p}: catalogue must be a non-empty mapping of class name to fields")
    return tuple(_parse_class(str(name), entry, str(p)) for name, entry in raw.items())


def load_catalogue(path: Optional[str | Path] = None) -> dict[str, DeviceClass]:
    """Device classes by name, from the shipped catalogue (or another YAML file of that form).

    Parsed once per path; each call returns a new dict of the same frozen classes.
    """
    return {c.name: c for c in _load(str(path or CATALOGUE_PATH))}
