"""Device hosts: one process trains many simulated devices and pre-aggregates their updates.

`HostCore` is the pure-torch worker (testable without Ray); `DeviceHost` (in `pool`) is its
Ray actor. A device keeps its own identity, data shard and random stream; only the process is
shared. Devices that share a plan in a round share one extracted copy of their start weights
and one index into the global tensors; per device there is one copy into the submodel, the
training, and one remap into the host's partial sum.
"""

from __future__ import annotations

import time
import warnings
from typing import Mapping, Optional

import numpy as np
import torch

from raysim.aggregate import add_weights
from raysim.models import ModelSpec
from raysim.records import FAILED, OK, GroupResult, HostResult, PartialSum, TrainReport, TrainTask
from raysim.submodel import SubmodelPlan, extract, plan_indices
from raysim.train import load_params
from raysim.trainer import Trainer, contribute


class HostCore:
    """Trains devices' submodels on their shards and folds their deltas into one partial sum."""

    def __init__(self, spec: ModelSpec, trainer: Trainer, x: np.ndarray, y: np.ndarray,
                 shard_flat: np.ndarray, shard_offsets: np.ndarray, host_id: int = 0,
                 ids: Optional[np.ndarray] = None) -> None:
        torch.set_num_threads(trainer.torch_threads)
        self.spec = spec
        self.trainer = trainer
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

    def data(self, device_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The device's training samples and labels (a copy: the stored set stays read-only)."""
        ix = torch.from_numpy(self.shard(device_id))
        return self.x[ix], self.y[ix]

    def module(self, plan: SubmodelPlan) -> torch.nn.Module:
        """The submodel module of a plan's shape (built once per shape, reloaded per device)."""
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
        partials, reports = self.fold_tasks(round_idx, {0: params}, plans, tasks)
        acc = partials[0] if 0 in partials else PartialSum.zeros(self.shapes)
        return HostResult(acc, reports, self.host_id, time.perf_counter() - t0)

    def train_groups(self, versions: Mapping[int, Mapping[str, torch.Tensor]], plans: Mapping[int, SubmodelPlan],
                     tasks: list[TrainTask]) -> GroupResult:
        """Asynchronous modes: train tasks that start from several global versions (a plan
        belongs to one version) and return one partial sum per task group."""
        t0 = time.perf_counter()
        partials, reports = self.fold_tasks(0, versions, plans, tasks)
        return GroupResult(partials, reports, self.host_id, time.perf_counter() - t0)

    def fold_tasks(self, round_idx: int, versions: Mapping[int, Mapping[str, torch.Tensor]],
                   plans: Mapping[int, SubmodelPlan], tasks: list[TrainTask]
                   ) -> tuple[dict[int, PartialSum], list[TrainReport]]:
        """Train the tasks and fold each device's delta into its group's partial sum."""
        partials: dict[int, PartialSum] = {}
        reports = []
        version_of = {t.plan_id: t.version for t in tasks}
        used = sorted(version_of)
        indices = {pid: plan_indices(self.spec, plans[pid], self.shapes) for pid in used}
        # One extracted start per plan, shared by the plan's devices.
        starts = {pid: extract(versions[version_of[pid]], indices[pid]) for pid in used}
        plan_weight: dict[tuple[int, int], int] = {}  # element weights: once per (group, plan), not per device
        for task in tasks:
            ts = time.perf_counter()
            model = self.module(plans[task.plan_id])
            start = starts[task.plan_id]
            load_params(model, start)
            x, y = self.data(task.device_id)
            stream = round_idx if task.stream < 0 else task.stream
            res = self.trainer.train(model, start, x, y, stream, task.device_id, task.max_steps)
            wall = time.perf_counter() - ts
            if not res.finite:
                reports.append(TrainReport(task.device_id, FAILED, res.samples, res.steps, res.loss, wall,
                                           self.host_id, "non-finite update", job=task.stream))
                continue
            acc = partials.get(task.group)
            if acc is None:
                acc = partials[task.group] = PartialSum.zeros(self.shapes)
            w = contribute(acc, res, indices[task.plan_id], task.weight, count=False)
            key = (task.group, task.plan_id)
            plan_weight[key] = plan_weight.get(key, 0) + w
            reports.append(TrainReport(task.device_id, OK, res.samples, res.steps, res.loss, wall, self.host_id,
                                       job=task.stream))
        for group, pid in sorted(plan_weight):
            add_weights(partials[group], indices[pid], plan_weight[(group, pid)])
        return partials, reports
