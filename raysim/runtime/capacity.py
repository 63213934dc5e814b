"""How many dedicated device actors the cluster can hold at once, measured on it.

The dedicated placement starts one Ray actor per selected device, and all of a round's actors
live at the same time. What one costs is measured, not assumed: a one-off task builds the
scenario's global model in a fresh worker process, trains one step on it and reports its
resident memory. The cluster holds as many as its Ray `memory` resource (the memory Ray may
schedule, over all alive nodes) divided by that figure; a round that needs more is refused in
one line before the run directory exists.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import ray

from raysim.models import ModelSpec
from raysim.scenario.schema import Scenario, ScenarioError

MB = 1 << 20


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


@ray.remote(num_cpus=0, max_calls=1)  # max_calls=1: a fresh worker, gone afterwards
def _actor_footprint(spec: ModelSpec, batch_size: int) -> int:
    """Resident bytes of a worker process holding torch and the model after one training step."""
    import torch  # noqa: PLC0415

    model = spec.build()
    x = torch.zeros((batch_size, *spec.input_shape))
    loss = model(x).sum()
    loss.backward()
    return _rss_bytes()


@dataclass(frozen=True)
class Capacity:
    """Measured bytes per dedicated actor, the cluster's schedulable memory, and their ratio."""

    per_actor: int
    cluster_memory: int

    @property
    def actors(self) -> int:
        return int(self.cluster_memory // max(self.per_actor, 1))


def measure(spec: ModelSpec, batch_size: int) -> Capacity:
    """Measure one actor's footprint on the cluster Ray is connected to."""
    per_actor = int(ray.get(_actor_footprint.remote(spec, batch_size)))
    memory = sum(n["Resources"].get("memory", 0) for n in ray.nodes() if n.get("Alive"))
    return Capacity(per_actor or 300 * MB, int(memory))


def check_dedicated_fits(sc: Scenario, spec: ModelSpec) -> Capacity:
    """ScenarioError when a dedicated round's actors cannot all fit the cluster's memory."""
    per_round = math.ceil(sc.selection.per_round * (1 + sc.selection.overcommit) - 1e-9)
    cap = measure(spec, sc.train.batch_size)
    if per_round > cap.actors:
        raise ScenarioError(
            f"runtime.placement: 'dedicated' starts one Ray actor per selected device ({cap.per_actor / MB:.0f} MB "
            f"each, measured); {per_round} per round need {per_round * cap.per_actor / 2**30:.1f} GiB but the cluster "
            f"can schedule {cap.cluster_memory / 2**30:.1f} GiB, room for {cap.actors} (lower selection.per_round or "
            f"selection.overcommit, or use placement 'pooled')")
    return cap
