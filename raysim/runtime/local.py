"""In-process backend and the task-splitting helpers shared with the Ray pool (no Ray here)."""

from __future__ import annotations

import heapq
from typing import Optional

import numpy as np
import torch

from raysim.config import Scenario
from raysim.models import ModelSpec
from raysim.runtime.host import HostCore
from raysim.runtime.tasks import HostResult, TrainTask
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


def flatten_shards(shards: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Shards as one flat index array plus offsets (one object instead of 10^5 small ones)."""
    offsets = np.zeros(len(shards) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(s) for s in shards])
    flat = np.concatenate(shards).astype(np.int64) if shards else np.zeros(0, np.int64)
    return flat, offsets


class LocalBackend:
    """Backend that trains in the calling process (tests, debugging); no Ray."""

    def __init__(self, sc: Scenario, spec: ModelSpec, x: np.ndarray, y: np.ndarray,
                 shards: list[np.ndarray], hosts: int = 1, ids: Optional[np.ndarray] = None) -> None:
        flat, offsets = flatten_shards(shards)
        self.cores = [HostCore(sc, spec, x, y, flat, offsets, h, ids) for h in range(hosts)]

    def train(self, round_idx: int, params: dict[str, torch.Tensor], plans: dict[int, SubmodelPlan],
              tasks: list[TrainTask]) -> list[HostResult]:
        return [c.train(round_idx, params, plans, share)
                for c, share in zip(self.cores, balance(tasks, len(self.cores))) if share]
