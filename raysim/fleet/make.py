"""`make_fleet`: the fleet a scenario describes, from a class mix or a trace file."""

from __future__ import annotations

from typing import Optional

from raysim.config import FleetConfig
from raysim.fleet.catalogue import load_catalogue
from raysim.fleet.fleet import Fleet
from raysim.fleet.mix import fleet_from_mix
from raysim.fleet.trace import fleet_from_trace

__all__ = ["make_fleet"]


def make_fleet(cfg: FleetConfig, seed: int, *, reference_flops: Optional[float] = None) -> Fleet:
    """The scenario's fleet; deterministic in (cfg, seed).

    With `cfg.trace` the fleet is the trace file's devices (`cfg.devices`, `cfg.mix` and
    `cfg.spread` are ignored; see `raysim.fleet.trace`). `reference_flops`, the forward FLOPs
    per sample of the global model, converts a trace's FedScale-style `ms_per_sample` into
    FLOP/s. Otherwise `cfg.devices` devices are drawn from `cfg.mix` over the catalogue.

        >>> fleet = make_fleet(FleetConfig(devices=1000, mix={"mcu": 0.7, "rpi4": 0.3}), seed=0)
        >>> fleet.class_counts()
        {'mcu': 700, 'rpi4': 300}
    """
    catalogue = load_catalogue()
    if cfg.trace:
        return fleet_from_trace(cfg.trace, catalogue, reference_flops)
    return fleet_from_mix(cfg.mix, cfg.devices, cfg.spread, seed, catalogue)
