"""Device hosts: one process trains many simulated devices and pre-aggregates their updates.

`HostCore` is the pure-torch worker (testable without Ray); `DeviceHost` is its Ray actor.
A device keeps its own identity, data shard and random stream; only the process is shared.
"""

from __future__ import annotations

import time
import warnings
from typing import Mapping, Optional

import numpy as np
import torch

from raysim.aggregate import PartialSum, add_weights, fold
from raysim.config import Scenario
from raysim.models import ModelSpec
from raysim.runtime.tasks import HostResult, TrainReport, TrainTask
from raysim.seeding import torch_generator
from raysim.submodel import SubmodelPlan, extract, plan_indices
from raysim.train import load_params, local_train


class HostCore:
    """Trains devices' submodels on their shards and folds their deltas into one partial sum."""

    def __init__(self, scenario: Scenario, spec: ModelSpec, x: np.ndarray, y: np.ndarray,
                 shard_flat: np.ndarray, shard_offsets: np.ndarray, host_id: int = 0,
                 ids: Optional[np.ndarray] = None) -> None:
        torch.set_num_threads(scenario.runtime.torch_threads)
        self.sc = scenario
        self.spec = spec
        # from_numpy shares memory with the read-only, object-store backed arrays; they are
        # only ever indexed (copied), never written, so torch's warning does not apply.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            self.x = torch.from_numpy(np.asarray(x))
            self.y = torch.from_numpy(np.asarray(y))
        self.flat = np.asarray(shard_flat)
        self.offsets = np.asarray(shard_offsets)
        self.host_id = host_id
        # Shards are stored by fleet position; `ids` (sorted fleet device ids) maps an id to
        # its position. Without it, ids are positions (fleets drawn from a class mix).
        self.ids = None if ids is None else np.asarray(ids)
        self.shapes = spec.global_shapes()
        self._modules: dict[tuple, torch.nn.Module] = {}

    def shard(self, device_id: int) -> np.ndarray:
        """Indices of the device's training samples."""
        pos = device_id if self.ids is None else int(np.searchsorted(self.ids, device_id))
        return self.flat[self.offsets[pos]:self.offsets[pos + 1]]

    def _module(self, plan: SubmodelPlan) -> torch.nn.Module:
        key = (tuple(sorted(plan.sizes().items())), plan.rate)
        m = self._modules.get(key)
        if m is None:
            m = self.spec.build(plan.sizes(), plan.rate)
            self._modules[key] = m
        return m

    def train(self, round_idx: int, params: Mapping[str, torch.Tensor], plans: Mapping[int, SubmodelPlan],
              tasks: list[TrainTask]) -> HostResult:
        """Train every task's device and return the pre-aggregated result."""
        t0 = time.perf_counter()
        acc = PartialSum.zeros(self.shapes)
        reports = []
        indices = {pid: plan_indices(self.spec, p, self.shapes) for pid, p in plans.items()}
        plan_weight: dict[int, int] = {}  # element weights are added once per plan, not per device
        tc = self.sc.train
        for task in tasks:
            ts = time.perf_counter()
            plan = plans[task.plan_id]
            index = indices[task.plan_id]
            model = self._module(plan)
            sub = extract(params, index)
            load_params(model, sub)
            ix = torch.from_numpy(self.shard(task.device_id))
            res = local_train(model, self.x[ix], self.y[ix], epochs=tc.epochs, batch_size=tc.batch_size,
                              lr=tc.lr, momentum=tc.momentum, weight_decay=tc.weight_decay,
                              max_steps=task.max_steps,
                              generator=torch_generator(self.sc.seed, "train", round_idx, task.device_id),
                              start=sub)
            wall = time.perf_counter() - ts
            if not res.finite:
                reports.append(TrainReport(task.device_id, "failed", res.samples, res.steps, res.loss, wall,
                                           self.host_id, "non-finite update"))
                continue
            weight = 1 if task.weight == "uniform" else res.samples
            fold(acc, res.delta, index, weight, res.samples, count=False)
            plan_weight[task.plan_id] = plan_weight.get(task.plan_id, 0) + weight
            reports.append(TrainReport(task.device_id, "ok", res.samples, res.steps, res.loss, wall, self.host_id))
        for pid in sorted(plan_weight):
            add_weights(acc, indices[pid], plan_weight[pid])
        return HostResult(acc, reports, self.host_id, time.perf_counter() - t0)
