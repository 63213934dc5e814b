"""Placements: where simulated devices train, behind one interface.

- `Pooled` (default): a pool of device-host actors (one per CPU, or one per node), each
  training many devices per call and answering with one pre-aggregated partial sum. This is
  what reaches 10^5 devices on one machine.
- `Dedicated`: one actor per selected device, with a real memory cap and, under the realtime
  clock, real time (`RealTime`).

A placement is a small description that the coordinator turns into a backend with `start`.

    >>> backend = Pooled(hosts=2).start(setup, trainer, data)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from raysim.runtime.dedicated import RealTime
    from raysim.runtime.shared import SharedData
    from raysim.simulation import Backend, Setup
    from raysim.trainer import Trainer


class Placement(ABC):
    """How devices are placed on Ray actors."""

    @abstractmethod
    def start(self, setup: "Setup", trainer: "Trainer", data: "SharedData",
              options: Optional[dict[str, Any]] = None) -> "Backend":
        """The backend that trains rounds (actors started or started lazily)."""


@dataclass(frozen=True)
class Pooled(Placement):
    """`hosts` device hosts (None: one per CPU, or per node with `hosts_per='node'`)."""

    hosts: Optional[int] = None
    hosts_per: str = "cpu"

    def start(self, setup, trainer, data, options=None):
        from raysim.runtime.pool import RayPool  # noqa: PLC0415

        return RayPool(setup.spec, trainer, data, self.hosts, self.hosts_per, options, setup.rates)


@dataclass(frozen=True)
class Dedicated(Placement):
    """One actor per selected device; at most `capacity` stay alive (None: the default bound)."""

    capacity: Optional[int] = None
    realtime: Optional["RealTime"] = None

    def start(self, setup, trainer, data, options=None):
        from raysim.runtime.dedicated import DedicatedPool  # noqa: PLC0415

        return DedicatedPool(setup.spec, trainer, data, setup.fleet.device_id, setup.fleet.memory,
                             self.capacity, options, self.realtime)
