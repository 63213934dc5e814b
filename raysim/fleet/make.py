"""`make_fleet`: the fleet a scenario describes, from a class mix or a trace file."""

from __future__ import annotations

from typing import Any, Optional

from pydantic import Field, field_validator

from raysim.errors import FleetError
from raysim.fleet.availability import AvailabilityConfig
from raysim.fleet.catalogue import DeviceClass, load_catalogue, with_classes
from raysim.fleet.fleet import Fleet
from raysim.fleet.mix import fleet_from_mix
from raysim.fleet.trace import fleet_from_trace
from raysim.settings import Section

__all__ = ["make_fleet"]


class FleetConfig(Section):
    """The simulated devices (classes from raysim/fleet/catalogue.yaml, or a trace)."""

    devices: int = Field(1000, ge=1, description="fleet size (ignored with a trace)")
    mix: dict[str, float] = Field(default_factory=lambda: {"mcu": 0.4, "mcu-psram": 0.3, "rpi-zero": 0.2, "rpi4": 0.1},
                                  description="share of each catalogue class; normalised to 1")
    trace: Optional[str] = Field(None, description="CSV/parquet device trace instead of mix")
    spread: float = Field(0.25, ge=0.0, le=2.0, description="log-normal sigma around class means")
    availability: AvailabilityConfig = AvailabilityConfig()
    classes: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="the scenario's own device classes: name -> fields that change a catalogue "
        "class (base: the class to start from; default the same name), e.g. {mcu-solar: {base: mcu, radio: lora, "
        "battery_wh: 1}}")

    @field_validator("classes")
    @classmethod
    def _classes(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        try:
            with_classes(load_catalogue(), v)
        except FleetError as err:
            raise ValueError(str(err).removeprefix("fleet.classes: ").removeprefix("fleet.classes.")) from None
        return v

    def catalogue(self) -> dict[str, DeviceClass]:
        """The device classes this fleet draws from: the catalogue with `classes` applied."""
        return with_classes(load_catalogue(), self.classes)

    @field_validator("mix")
    @classmethod
    def _mix(cls, v: dict[str, float]) -> dict[str, float]:
        if not v:
            raise ValueError("needs at least one device class")
        if any(w < 0 for w in v.values()) or sum(v.values()) <= 0:
            raise ValueError("shares must be non-negative and not all zero")
        return v



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
    catalogue = cfg.catalogue()
    if cfg.trace:
        return fleet_from_trace(cfg.trace, catalogue, reference_flops)
    return fleet_from_mix(cfg.mix, cfg.devices, cfg.spread, seed, catalogue)
