"""A scenario run in this process, without Ray: the engine with in-process device hosts.

For tests, benchmarks, notebooks and a debugger stopped inside a client algorithm. The numbers
are those of a Ray run of the same scenario (same seed, any host count).

    >>> from raysim.scenario.schema import load_scenario
    >>> sim = local_simulation(load_scenario("scenarios/quickstart.yaml", ["rounds=1", "fleet.devices=40",
    ...                                       "selection.per_round=4", "eval.max_samples=200"]))
    >>> 0.0 <= sim.step().record.accuracy <= 1.0
    True
"""

from __future__ import annotations

from dataclasses import replace
from typing import Optional

from raysim.engine.clock import VirtualClock
from raysim.engine.loop import RoundLoop
from raysim.engine.loops import Parts, round_loop
from raysim.engine.setup import Setup
from raysim.hosts.local import LocalBackend
from raysim.runtime.gpu import local_device
from raysim.scenario.build import async_config, build_setup, gateways, round_config, trainer
from raysim.scenario.resolve import Components, components
from raysim.scenario.schema import Scenario


def local_simulation(sc: Scenario, comps: Optional[Components] = None, hosts: int = 1, setup: Optional[Setup] = None
                     ) -> RoundLoop:
    """The whole engine in this process, no Ray (tests, debugging, notebooks): `hosts`
    in-process device hosts, the scenario's clock. Same numbers as a Ray run.

        sim = local_simulation(load_scenario("scenarios/quickstart.yaml", ["rounds=2"]))
        sim.step().record.accuracy
    """
    comps = comps or components(sc)
    setup = setup or build_setup(sc, comps, comps.load_dataset(sc.seed))
    device = local_device(sc.runtime.device)
    backend = LocalBackend(setup.spec, replace(trainer(sc, comps), device=device), setup.dataset.x_train,
                           setup.dataset.y_train, setup.shards, hosts, setup.fleet.device_id, setup.rates)
    cfg = replace(round_config(sc), device=device)
    parts = Parts(strategy=comps.strategy, assigner=comps.assigner, server=comps.server, selector=comps.selector,
                  clock=VirtualClock(), energy=sc.energy, asynchronous=async_config(sc, len(setup.fleet)),
                  gateways=gateways(sc), gateway_server=comps.gateway_server)
    return round_loop(setup=setup, parts=parts, backend=backend, cfg=cfg, trainer=backend.trainer)
