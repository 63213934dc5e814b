"""Radio technologies: what a device's link is, beyond its bandwidth.

A device class names its radio (`ble`, `802.15.4`, `lora`, `nbiot`, `ltem`, `lte`, `wifi`,
`ethernet`); the technology brings its typical goodput and latency, its power states (transmit,
receive, idle), the fixed tail energy of cellular radios, a duty-cycle limit (LoRa in EU868
sub-bands) and the payload and overhead of one message. The figures live in `radios.yaml` next
to this module, with their sources, as the device catalogue does.

    >>> radios = load_radios()
    >>> radios["lora"].duty_cycle
    0.01
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

from raysim.errors import FleetError
from raysim.fleet.figures import finite_number, read_mapping

__all__ = ["Radio", "load_radios", "RADIOS_PATH"]

RADIOS_PATH = Path(__file__).with_name("radios.yaml")


@dataclass(frozen=True)
class Radio:
    """One radio technology's typical figures."""

    name: str
    description: str
    down_bps: float  # application-level goodput, bit/s
    up_bps: float
    latency_s: float  # one-way setup latency per transfer
    tx_w: float  # power while transmitting, W
    rx_w: float  # power while receiving, W
    idle_w: float  # power between transfers (connected idle, or sleep for duty-cycled LPWANs), W
    tail_j: float  # fixed energy after each transfer (cellular RRC tail), J
    duty_cycle: float  # largest share of time on air (1: no limit)
    max_payload_bytes: Optional[int]  # application payload of one message (None: no practical limit)
    overhead_bytes: int  # per-message bytes beyond the payload
    source: str


_FLOATS = ("down_bps", "up_bps", "latency_s", "tx_w", "rx_w", "idle_w", "tail_j", "duty_cycle")
_POSITIVE = ("down_bps", "up_bps", "duty_cycle")


def _parse(name: str, entry: Any, path: str) -> Radio:
    where = f"{path}: radio {name!r}"
    if not isinstance(entry, dict):
        raise FleetError(f"{where} must be a mapping of fields")
    expected = {f.name for f in fields(Radio)} - {"name"}
    missing = sorted(expected - entry.keys())
    if missing:
        raise FleetError(f"{where} lacks field {missing[0]!r}")
    unknown = sorted(entry.keys() - expected)
    if unknown:
        raise FleetError(f"{where} has unknown field {unknown[0]!r}")
    values: dict[str, Any] = {"name": name, "description": str(entry["description"]).strip(),
                              "source": str(entry["source"]).strip()}
    for key in _FLOATS:
        v = finite_number(f"{where}:", key, entry[key])
        if v < 0 or (key in _POSITIVE and v == 0):
            raise FleetError(f"{where}: field {key!r} must be {'positive' if key in _POSITIVE else 'non-negative'}, "
                             f"got {v:g}")
        values[key] = v
    if values["duty_cycle"] > 1:
        raise FleetError(f"{where}: field 'duty_cycle' is a share of time in (0, 1], got {values['duty_cycle']:g}")
    payload = entry["max_payload_bytes"]
    if payload is not None:
        p = finite_number(f"{where}:", "max_payload_bytes", payload)
        if p < 1 or p != int(p):
            raise FleetError(f"{where}: field 'max_payload_bytes' must be a whole number of bytes >= 1 or null, "
                             f"got {payload!r}")
        payload = int(p)
    values["max_payload_bytes"] = payload
    overhead = finite_number(f"{where}:", "overhead_bytes", entry["overhead_bytes"])
    if overhead < 0 or overhead != int(overhead):
        raise FleetError(f"{where}: field 'overhead_bytes' must be a whole number of bytes >= 0, got {overhead:g}")
    values["overhead_bytes"] = int(overhead)
    return Radio(**values)


@lru_cache(maxsize=8)
def _load(path: str) -> tuple[Radio, ...]:
    p = Path(path)
    raw = read_mapping(p, "radio technologies")
    return tuple(_parse(str(name), entry, str(p)) for name, entry in raw.items())


def load_radios(path: Optional[str | Path] = None) -> dict[str, Radio]:
    """Radio technologies by name, from the shipped table (or another YAML file of that form)."""
    return {r.name: r for r in _load(str(path or RADIOS_PATH))}
