"""The coordinator actor: owns the simulation and its pool of device hosts.

The driver (CLI) keeps the file system: the coordinator returns each round's records and,
on request, its checkpoint state; it never writes files, so it can live on any node.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Optional

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from raysim.client.trainer import Trainer
from raysim.engine.loop import RoundLoop
from raysim.engine.loops import Parts, round_loop
from raysim.engine.setup import RoundConfig, Setup
from raysim.records import RoundOutput
from raysim.runtime.gpu import coordinator_gpu_options
from raysim.runtime.placement import Placement, Pooled
from raysim.runtime.shared import SharedData, attach, share


@dataclass(frozen=True, kw_only=True)
class Engine:
    """What a coordinator builds its round loop from: the loop's parts, how devices train
    (`trainer`), the loop's settings and where device hosts go; no scenario."""

    parts: Parts
    trainer: Trainer
    cfg: RoundConfig
    placement: Placement = field(default_factory=Pooled)


@ray.remote(num_cpus=0, max_restarts=0)
class Coordinator:
    """Runs the rounds of one scenario.

    `setup` is the light setup of `raysim.runtime.shared.share` and `data` its training data
    in the object store; the coordinator maps the data (no copy) and hands the same refs to
    its device hosts. Start it with `start_coordinator`.
    """

    def __init__(self, engine: Engine, setup: Setup, data: SharedData,
                 host_options: Optional[dict[str, Any]] = None) -> None:
        self.setup = attach(setup, data)
        self.data = data
        e = engine
        self.pool = e.placement.start(self.setup, e.trainer, data, host_options)
        self.sim: RoundLoop = round_loop(setup=self.setup, parts=e.parts, backend=self.pool, cfg=e.cfg,
                                         trainer=e.trainer)

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
            "device": self.sim.cfg.device,
            "batched": {str(r): bool(b) for r, b in sorted(getattr(self.pool, "choices", {}).items())},
            "unbatched": {str(r): why for r, why in sorted(getattr(self.pool, "reasons", {}).items())},
            "host_nodes": self.pool.node_ids(),
            "train_samples": int(len(s.dataset.y_train)),
            "eval_samples": int(len(s.dataset.y_test)),
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

    def data_ref_ids(self) -> dict[str, Any]:
        """Ids of the stored training arrays: the coordinator's and every host's."""
        return {"coordinator": self.data.ref_ids(), "hosts": self.pool.data_ref_ids()}

    def host_nodes(self) -> list[str]:
        return self.pool.node_ids()

    def host_pids(self) -> list[int]:
        return self.pool.pids()

    def arm_host_crash(self, host: int, round_idx: int) -> None:
        """Fault injection for tests and drills: a device host dies mid-round."""
        self.pool.arm_crash(host, round_idx)

    def host_restarts(self) -> int:
        return self.pool.restarts

    def pid(self) -> int:
        return os.getpid()

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()


def spawn_coordinator(engine: Engine, light: Setup, data: SharedData, host_options: Optional[dict[str, Any]] = None):
    """A coordinator for a light setup and its stored data, next to the caller (the driver,
    which keeps the files). Returns the actor handle."""
    here = ray.get_runtime_context().get_node_id()
    # Hard affinity: it needs no resources, so the driver's node always fits it, and a soft
    # preference was seen to land it elsewhere on a cluster. Beside the driver it shares the
    # driver's fate and no other node's: losing a worker node never costs the coordinator.
    # A GPU run evaluates on the GPU where the driver's node has one (a small share of it).
    gpu = coordinator_gpu_options(here) if engine.cfg.device == "cuda" else {}
    actor = Coordinator.options(  # type: ignore[attr-defined]  # ray.remote's stub keeps the plain class
        scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False), **gpu)
    return actor.remote(engine, light, data, host_options)


def start_coordinator(engine: Engine, setup: Setup, host_options: Optional[dict[str, Any]] = None):
    """Put the setup's training data into the object store once and spawn the coordinator.

    The caller should drop its own `setup` afterwards: the stored copy is the one in use.
    """
    light, data = share(setup, engine.cfg.eval_max_samples)
    return spawn_coordinator(engine, light, data, host_options)
