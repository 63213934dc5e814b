"""Which mode a run's round loop takes, built from named parts: the one place the coordinator
and the in-process engine build the loop.

    loop = round_loop(setup=setup, parts=Parts(strategy=Static(), assigner=FitMemory(), server=FedAvg()),
                      backend=backend, cfg=cfg, trainer=trainer)
    loop.step()

The modes (`raysim.engine.loop.Mode`): flat synchronous rounds (`FlatRounds`), a flat
asynchronous server on the event timeline (`FlatEvents`), synchronous cloud rounds through
gateways (`GatewayRounds`) and an asynchronous cloud over gateways (`GatewayEvents`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from raysim.client.trainer import Trainer
from raysim.engine.assignment import Assigner
from raysim.engine.asynchronous import AsyncConfig, FlatEvents
from raysim.engine.battery import EnergyConfig, batteries_for
from raysim.engine.clock import Clock, VirtualClock
from raysim.engine.device_round import DeviceRounds
from raysim.engine.device_state import states_for
from raysim.engine.evaluation import Evaluator
from raysim.engine.flat import FlatRounds
from raysim.engine.gateway_async import GatewayEvents
from raysim.engine.hierarchy import Cycles, GatewayRounds
from raysim.engine.loop import Global, Mode, RoundLoop
from raysim.engine.selection import Selector, Uniform
from raysim.engine.setup import Backend, RoundConfig, Setup
from raysim.engine.topology import Gateways
from raysim.server.optimizers import ServerOptimizer
from raysim.server.rules import Mean, Rule
from raysim.submodel.strategies import Strategy

__all__ = ["Parts", "round_loop"]


@dataclass(frozen=True, kw_only=True)
class Parts:
    """The components a round loop runs, and its mode's settings (asynchronous, gateways)."""

    strategy: Strategy
    assigner: Assigner
    server: ServerOptimizer
    selector: Selector = field(default_factory=Uniform)
    clock: Clock = field(default_factory=VirtualClock)
    energy: EnergyConfig = field(default_factory=EnergyConfig)
    asynchronous: Optional[AsyncConfig] = None
    gateways: Optional[Gateways] = None
    gateway_server: Optional[ServerOptimizer] = None  # how gateways aggregate (default: the plain mean)


def round_loop(*, setup: Setup, parts: Parts, backend: Backend, cfg: RoundConfig, trainer: Trainer) -> RoundLoop:
    """The round loop for a run: its mode picked by the parts (an asynchronous server, gateways,
    both or neither), batteries and per-device state as they ask."""
    import torch  # noqa: PLC0415

    p = parts
    torch.set_num_threads(max(1, cfg.torch_threads))
    model = Global.init(setup.spec, cfg.seed)
    mode: Mode
    rule: Rule = p.asynchronous.rule if p.asynchronous is not None else Mean()
    if p.asynchronous is not None and p.gateways is None:
        mode = FlatEvents(setup=setup, cfg=cfg, strategy=p.strategy, assigner=p.assigner, model=model,
                          backend=backend, acfg=p.asynchronous)
    else:
        rounds = DeviceRounds(setup=setup, cfg=cfg, strategy=p.strategy, assigner=p.assigner, selector=p.selector,
                              clock=p.clock, batteries=batteries_for(setup.fleet, p.energy, cfg.seed),
                              device_states=states_for(trainer))
        if p.gateways is None:
            mode = FlatRounds(rounds=rounds, model=model, backend=backend, client=trainer.client)
        else:
            cycles = Cycles(rounds=rounds, model=model, backend=backend, gateways=p.gateways,
                            gateway_server=p.gateway_server)
            mode = (GatewayRounds(cycles=cycles) if p.asynchronous is None
                    else GatewayEvents(cycles=cycles, acfg=p.asynchronous))
    return RoundLoop(model=model, mode=mode, rule=rule, server=p.server, evaluator=Evaluator(setup, cfg, p.strategy))
