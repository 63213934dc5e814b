"""Which round loop a run takes: flat synchronous rounds, an asynchronous server, or rounds
through gateways; the one place the coordinator and the in-process engine build it from.

    sim = round_loop(setup, Parts(strategy, assigner, server, selector), backend, cfg, trainer)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

from raysim.client.trainer import Trainer
from raysim.engine.assignment import Assigner
from raysim.engine.asynchronous import AsyncConfig, AsyncSimulation
from raysim.engine.battery import EnergyConfig, batteries_for
from raysim.engine.clock import Clock, VirtualClock
from raysim.engine.device_state import states_for
from raysim.engine.gateway_async import AsyncGatewaySimulation
from raysim.engine.hierarchy import HierarchicalSimulation
from raysim.engine.rounds import Backend, RoundConfig, Setup, Simulation
from raysim.engine.selection import Selector, Uniform
from raysim.engine.topology import Gateways
from raysim.server.optimizers import ServerOptimizer
from raysim.submodel.strategies import Strategy

__all__ = ["Parts", "round_loop"]


@dataclass(frozen=True)
class Parts:
    """The components a round loop runs, and the loop's kind (asynchronous, gateways)."""

    strategy: Strategy
    assigner: Assigner
    server: ServerOptimizer
    selector: Selector = field(default_factory=Uniform)
    clock: Clock = field(default_factory=VirtualClock)
    energy: EnergyConfig = field(default_factory=EnergyConfig)
    asynchronous: Optional[AsyncConfig] = None
    gateways: Optional[Gateways] = None
    gateway_server: Optional[ServerOptimizer] = None  # how gateways aggregate (default: the plain mean)


def round_loop(setup: Setup, parts: Parts, backend: Backend, cfg: RoundConfig, trainer: Trainer
               ) -> Union[Simulation, AsyncSimulation]:
    """The engine for a run: `AsyncSimulation` with an asynchronous server, `HierarchicalSimulation`
    with gateways (`AsyncGatewaySimulation` when the cloud is asynchronous), else `Simulation`;
    batteries and per-device state as the parts ask."""
    p = parts
    if p.asynchronous is not None and p.gateways is None:
        return AsyncSimulation(setup, p.strategy, p.assigner, p.server, backend, cfg, p.asynchronous)
    args = (setup, p.strategy, p.assigner, p.server, backend, cfg, p.clock, p.selector,
            batteries_for(setup.fleet, p.energy, cfg.seed), states_for(trainer), trainer.client)
    if p.gateways is not None and p.asynchronous is not None:
        return AsyncGatewaySimulation(*args, gateways=p.gateways, gateway_server=p.gateway_server,
                                      acfg=p.asynchronous)
    if p.gateways is not None:
        return HierarchicalSimulation(*args, gateways=p.gateways, gateway_server=p.gateway_server)
    return Simulation(*args)
