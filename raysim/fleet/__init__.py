"""Simulated IoT devices: device classes, fleets, trace files and availability.

    >>> from raysim.fleet import make_fleet, Availability
    >>> from raysim.scenario.schema import load_scenario
    >>> scenario = load_scenario("scenarios/quickstart.yaml")
    >>> fleet = make_fleet(scenario.fleet, seed=scenario.seed)
    >>> av = Availability(fleet, scenario.fleet.availability, seed=scenario.seed)
    >>> online_ids = fleet.device_id[av.online(fleet.device_id, t=0.0)]
    >>> len(online_ids)   # the quickstart's devices are always online
    1000
"""

from __future__ import annotations

from raysim.errors import FleetError
from raysim.fleet.availability import Availability
from raysim.fleet.catalogue import DeviceClass, load_catalogue
from raysim.fleet.fleet import Fleet
from raysim.fleet.make import make_fleet
from raysim.fleet.mix import largest_remainder

__all__ = [
    "Availability",
    "DeviceClass",
    "Fleet",
    "FleetError",
    "largest_remainder",
    "load_catalogue",
    "make_fleet",
]
