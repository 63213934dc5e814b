"""In-process backend and the task-splitting helper shared with the Ray pool (no Ray here)."""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from typing import Optional

import numpy as np
import torch

from raysim.client.trainer import Trainer
from raysim.data import Shards
from raysim.hosts.host import HostCore
from raysim.messages import GroupResult, HostResult, TrainTask
from raysim.models import ModelSpec
from raysim.submodel import SubmodelPlan


def balance(tasks: list[TrainTask], hosts: int) -> list[list[TrainTask]]:
    """Longest-processing-time-first assignment of tasks to hosts (deterministic)."""
    bins: list[list[TrainTask]] = [[] for _ in range(hosts)]
    heap = [(0.0, h) for h in range(hosts)]
    for t in sorted(tasks, key=lambda t: (-t.cost_hint, t.device_id)):
        load, h = heapq.heappop(heap)
        bins[h].append(t)
        heapq.heappush(heap, (load + max(t.cost_hint, 1e-9), h))
    return bins


class LocalBackend:
    """Backend that trains in the calling process (tests, debugging); no Ray."""

    def __init__(self, spec: ModelSpec, trainer: Trainer, x: np.ndarray, y: np.ndarray,
                 shards: Sequence[np.ndarray], hosts: int = 1, ids: Optional[np.ndarray] = None,
                 rates: Sequence[float] = ()) -> None:
        s = Shards.from_list(shards)
        self.trainer = trainer
        self.cores = [HostCore(spec, trainer, x, y, s.flat, s.offsets, h, ids) for h in range(hosts)]
        self.choices: dict[float, bool] = dict(trainer.choices or ())
        self.reasons: dict[float, str] = {}
        if trainer.batched != "off" and rates and not self.choices:
            # As the Ray pool does: checked (auto: measured) once, by host 0, adopted by every host.
            self.choices = self.cores[0].choose_batching(rates)
            self.reasons = dict(self.cores[0].reasons)
            for c in self.cores[1:]:
                c.set_batching(self.choices)

    def train(self, round_idx: int, params: dict[str, torch.Tensor], plans: dict[int, SubmodelPlan],
              tasks: list[TrainTask], server: Optional[dict[str, torch.Tensor]] = None) -> list[HostResult]:
        return [c.train(round_idx, params, plans, share, server)
                for c, share in zip(self.cores, balance(tasks, len(self.cores))) if share]

    def train_groups(self, versions: dict[int, dict[str, torch.Tensor]], plans: dict[int, SubmodelPlan],
                     tasks: list[TrainTask], live: set[int]) -> list[GroupResult]:
        return [c.train_groups(versions, plans, share)
                for c, share in zip(self.cores, balance(tasks, len(self.cores))) if share]

    @property
    def parallelism(self) -> int:
        """Hosts that train at once."""
        return len(self.cores)
