"""Placements: where simulated devices train, behind one interface.

- `Pooled` (default): a pool of device-host actors (one per CPU, or one per node), each
  training many devices per call and answering with one pre-aggregated partial sum. This is
  what reaches 10^5 devices on one machine.
- `Dedicated`: one actor per selected device, with a real memory cap and, under the realtime
  clock, real time (`RealTime`).

A placement is a small description that the coordinator turns into a backend with `start`.

    backend = Pooled(hosts=2).start(setup, trainer, data)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Protocol

from raysim.engine.setup import Backend

if TYPE_CHECKING:
    from raysim.client.trainer import Trainer
    from raysim.engine.setup import Setup
    from raysim.runtime.dedicated import RealTime
    from raysim.runtime.shared import SharedData


class ActorBackend(Backend, Protocol):
    """A backend whose hosts are Ray actors (`RayPool`, `DedicatedPool`), as the coordinator
    reports on them and injects faults into them."""

    restarts: int

    @property
    def hosts(self) -> list[Any]: ...

    def node_ids(self) -> list[str]: ...

    def pids(self) -> list[int]: ...

    def data_ref_ids(self) -> list[list[str]]: ...

    def arm_crash(self, host: int, round_idx: int) -> None: ...


class Placement(ABC):
    """How devices are placed on Ray actors."""

    @abstractmethod
    def start(self, setup: "Setup", trainer: "Trainer", data: "SharedData",
              options: Optional[dict[str, Any]] = None) -> ActorBackend:
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
