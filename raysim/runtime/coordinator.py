"""The coordinator actor: owns the simulation and its pool of device hosts.

The driver (CLI) keeps the file system: the coordinator returns each round's records and,
on request, its checkpoint state; it never writes files, so it can live on any node.
"""

from __future__ import annotations

from typing import Any, Optional

import ray

from raysim.config import Scenario
from raysim.runtime.pool import RayPool
from raysim.simulation import RoundOutput, Setup, Simulation


@ray.remote(num_cpus=0, max_restarts=0)
class Coordinator:
    """Runs the rounds of one scenario."""

    def __init__(self, scenario: Scenario, setup: Setup, hosts: int,
                 host_options: Optional[dict[str, Any]] = None) -> None:
        # The driver prepared (and validated) the setup; it arrives through the object store.
        self.setup = setup
        dataset = setup.dataset
        if scenario.runtime.placement == "dedicated":
            # One actor per selected device; runtime.hosts (if set) bounds how many stay alive.
            from raysim.runtime.dedicated import DedicatedPool  # noqa: PLC0415

            self.pool = DedicatedPool(scenario, self.setup.spec, dataset.x_train, dataset.y_train,
                                      self.setup.shards, setup.fleet.device_id, setup.fleet.memory,
                                      scenario.runtime.hosts, host_options)
        else:
            self.pool = RayPool(scenario, self.setup.spec, dataset.x_train, dataset.y_train, self.setup.shards,
                                hosts, host_options, ids=setup.fleet.device_id)
        self.sim = Simulation(scenario, self.setup, self.pool)

    def step(self) -> RoundOutput:
        return self.sim.step()

    def state_dict(self) -> dict[str, Any]:
        return self.sim.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sim.load_state_dict(state)

    def info(self) -> dict[str, Any]:
        """Static facts about the run (for the manifest and the fleet table)."""
        s = self.setup
        return {
            "model": s.spec.name,
            "rates": s.rates,
            "params": {str(r): c.params for r, c in s.costs.items()},
            "memory_bytes": {str(r): c.memory_bytes for r, c in s.costs.items()},
            "flops_per_sample": {str(r): c.flops_per_sample for r, c in s.costs.items()},
            "hosts": len(self.pool.hosts),
            "host_nodes": self.pool.node_ids(),
            "train_samples": int(len(s.dataset.y_train)),
            "test_samples": int(len(s.dataset.y_test)),
        }

    def fleet_frame(self):
        """The fleet as a DataFrame with each device's sample count and label histogram."""
        from raysim.data import label_histograms  # noqa: PLC0415

        df = self.setup.fleet.to_frame()
        s = self.setup
        hist = label_histograms(s.dataset.y_train, s.shards, s.dataset.num_classes)
        df["samples"] = hist.sum(axis=1)
        df["label_hist"] = list(hist)
        return df

    def host_nodes(self) -> list[str]:
        return self.pool.node_ids()

    def host_pids(self) -> list[int]:
        return self.pool.pids()

    def arm_host_crash(self, host: int, round_idx: int) -> None:
        """Fault injection for tests and drills: a device host dies mid-round."""
        self.pool.arm_crash(host, round_idx)

    def host_restarts(self) -> int:
        return self.pool.restarts
