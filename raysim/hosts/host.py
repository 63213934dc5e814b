"""Device hosts: one process trains many simulated devices and pre-aggregates their updates.

`HostCore` is the pure-torch worker (testable without Ray); `DeviceHost` (in `pool`) is its
Ray actor. A device keeps its own identity, data shard and random stream; only the process is
shared. Devices that share a plan in a round share one extracted copy of their start weights
and one index into the global tensors; per device there is one copy into the submodel, the
training, and one remap into the host's partial sum.

On a GPU host (`trainer.device == "cuda"`) the training data moves to the GPU once, when the
host starts, and the process may use only its share of the GPU's memory; a CUDA out-of-memory
error while training a device records that device `oom`. With `trainer.batched` the devices
of a plan train together (`raysim.client.batched`); `auto` decides per rate from a measurement
(`raysim.client.batch_choice`). A rate whose batched training cannot be built trains one device at a
time, in either mode, and `reasons` says why (the manifest records it).
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import replace
from typing import Mapping, Optional, Sequence

import numpy as np
import torch

from raysim.client import batch_choice as autobatch
from raysim.client import batched
from raysim.client.algorithms import LocalResult
from raysim.client.evaluate import load_params
from raysim.client.trainer import Trainer
from raysim.client.wire import receive, send
from raysim.errors import gist
from raysim.hosts.cuda import cuda_host
from raysim.hosts.cuda import release as _release
from raysim.hosts.state import pack, unpack
from raysim.messages import GroupResult, HostResult, PartialSum, TrainReport, TrainTask
from raysim.models import ModelSpec
from raysim.records import FAILED, OK, OOM
from raysim.server.aggregate import add_weights, contribute, fold_extra
from raysim.submodel import SubmodelPlan, extract, plan_indices
from raysim.submodel.plan import rate_sizes

log = logging.getLogger(__name__)
Parts = dict[str, dict[str, torch.Tensor]]  # a device's state by part (`raysim.hosts.state`)
ShapeKey = tuple[tuple[tuple[str, int], ...], float]  # a submodel's (group, width) pairs and its rate
OOM_REASON = "CUDA out of memory"


class HostCore:
    """Trains devices' submodels on their shards and folds their deltas into one partial sum."""

    def __init__(self, spec: ModelSpec, trainer: Trainer, x: np.ndarray, y: np.ndarray,
                 shard_flat: np.ndarray, shard_offsets: np.ndarray, host_id: int = 0,
                 ids: Optional[np.ndarray] = None) -> None:
        torch.set_num_threads(trainer.torch_threads)
        self.spec = spec
        self.trainer = trainer
        self.device = torch.device(trainer.device)
        if self.device.type == "cuda":
            cuda_host(trainer.gpu_share, owner=self)
        # from_numpy shares memory with the read-only, object-store backed arrays; they are
        # only ever indexed (copied), never written, so torch's warning does not apply. On a
        # GPU the whole set is copied there once.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            self.x = torch.from_numpy(np.asarray(x)).to(self.device)
            self.y = torch.from_numpy(np.asarray(y)).to(self.device)
        self.flat = np.asarray(shard_flat)
        self.offsets = np.asarray(shard_offsets)
        self.host_id = host_id
        # Shards are stored by fleet position; `ids` (sorted fleet device ids) maps an id to
        # its position. Without it, ids are positions (fleets drawn from a class mix).
        self.ids = None if ids is None else np.asarray(ids)
        self.shapes = spec.global_shapes()
        self._modules: dict[ShapeKey, torch.nn.Module] = {}
        self._live: dict[ShapeKey, Optional[list[str]]] = {}   # per shape: batchable (live params) or None
        self.choices: dict[float, bool] = dict(trainer.choices or ())  # on, auto: batched per rate
        self.reasons: dict[float, str] = {}   # why a rate of `choices` trains one device at a time
        self._why: dict[ShapeKey, str] = {}      # per shape: why it cannot batch

    def shard(self, device_id: int) -> np.ndarray:
        """Indices of the device's training samples."""
        pos = device_id if self.ids is None else int(np.searchsorted(self.ids, device_id))
        return self.flat[self.offsets[pos]:self.offsets[pos + 1]]

    def data(self, device_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The device's training samples and labels (a copy: the stored set stays read-only)."""
        ix = torch.from_numpy(self.shard(device_id)).to(self.device)
        return self.x[ix], self.y[ix]

    def module(self, plan: SubmodelPlan) -> torch.nn.Module:
        """The submodel module of a plan's shape (built once per shape, reloaded per device)."""
        return self._module(plan.sizes(), plan.rate)

    def _module(self, sizes: Mapping[str, int], rate: float) -> torch.nn.Module:
        key = _shape_key(sizes, rate)
        m = self._modules.get(key)
        if m is None:
            m = self.spec.build(sizes, rate).to(self.device)
            self._modules[key] = m
        return m

    # ---------------------------------------------------------------- batched or per device
    def choose_batching(self, rates: Sequence[float]) -> dict[float, bool]:
        """Per rate, whether its devices train batched (`on` and `auto`; returns the choices,
        which the pool hands from host 0 to every host, so that all hosts of a run train alike).

        A rate trains one device at a time when its model or client algorithm cannot batch
        (`raysim.client.batched.batchable`) or its batched training cannot be built (`batched.trial`:
        the run goes on, the reason is kept in `reasons`); `auto` then measures loop against
        batched (a typical submodel of the rate, `raysim.client.batch_choice`) and keeps batched where it
        is clearly faster.
        """
        for rate in rates:
            if rate in self.choices:
                continue
            sizes = {g: rate_sizes(w, rate) for g, w in self.spec.groups.items()}
            m = self._module(sizes, rate)
            live = self._batchable(m, sizes, rate)
            why = self._why.get(_shape_key(sizes, rate))
            if live is not None:
                why = batched.trial(m, self.trainer.client, tuple(self.spec.input_shape), self.spec.num_classes,
                                    self.trainer.batch_size, self.device, live)
                if why is not None:
                    log.warning("host %d: devices at rate %g train one by one: %s", self.host_id, rate, why)
            if why is None and self.trainer.batched == "auto":
                try:
                    loop_s, batched_s = autobatch.measure(m, self.trainer.client, tuple(self.spec.input_shape),
                                                          self.spec.num_classes, self.trainer.batch_size,
                                                          self.device, steps=self._typical_steps())
                except Exception as err:  # noqa: BLE001 (a measurement that fails: the loop, and why)
                    why = f"the measurement fails ({gist(err, 120)})"
                else:
                    log.info("host %d, rate %g: loop %.4fs, batched %.4fs -> %s", self.host_id, rate, loop_s,
                             batched_s, "batched" if autobatch.prefer_batched(loop_s, batched_s) else "loop")
                    if not autobatch.prefer_batched(loop_s, batched_s):
                        why = f"auto measured the loop faster ({loop_s:.3g} s, batched {batched_s:.3g} s)"
            self.choices[rate] = why is None
            if why is not None:
                self.reasons[rate] = why
        return dict(self.choices)

    def _typical_steps(self) -> int:
        """Minibatch steps of a median device's full local work (what `auto` measures)."""
        sizes = np.diff(self.offsets)
        return self.trainer.steps_full(int(np.median(sizes)) if len(sizes) else self.trainer.batch_size)

    def set_batching(self, choices: Mapping[float, bool]) -> None:
        """Adopt decisions made elsewhere (host 0's, or a resumed run's `auto` choices)."""
        self.choices = dict(choices)

    def _batchable(self, module: torch.nn.Module, sizes: Mapping[str, int], rate: float) -> Optional[list[str]]:
        """The live parameters of a batchable shape, else None (checked once per shape; why
        not is kept in `_why`)."""
        key = _shape_key(sizes, rate)
        if key not in self._live:
            why = batched.batchable(self.trainer.client, module)
            if why is not None:
                log.info("host %d: devices at rate %g train one by one: %s", self.host_id, rate, why)
                self._why[key] = why
            self._live[key] = None if why else batched.live_parameters(module, tuple(self.spec.input_shape),
                                                                        self.device)
        return self._live[key]

    def _use_batched(self, plan: SubmodelPlan, module: torch.nn.Module) -> Optional[list[str]]:
        if self.trainer.batched == "off":
            return None
        live = self._batchable(module, plan.sizes(), plan.rate)
        if live is None:
            return None
        if plan.rate not in self.choices:
            self.choose_batching([plan.rate])
        return live if self.choices[plan.rate] else None

    def train_plan(self, round_idx: int, plan: SubmodelPlan, start: Mapping[str, torch.Tensor],
                   tasks: Sequence[TrainTask], server: Optional[Mapping[str, torch.Tensor]] = None,
                   parts: Optional[Mapping[tuple[int, int], Parts]] = None
                   ) -> list[tuple[Optional[LocalResult], float]]:
        """Train the tasks that share `plan` from `start` (on the host's device): per task, its
        result (None: it ran out of GPU memory) and wall seconds (a batched chunk's split evenly).
        Batched, devices are chunked by their step counts (`raysim.client.batched.chunks`).

        Deltas come back on the CPU, where they are folded. `server`: a stateful client
        algorithm's server quantity, in the plan's coordinates (such algorithms train one by one);
        `parts`: the devices' states in the plan's coordinates, by `_task_key`.
        """
        model = self.module(plan)
        live = self._use_batched(plan, model)
        if live is None:
            return [self._train_one(round_idx, model, start, t, server, parts) for t in tasks]
        out: list[Optional[tuple[Optional[LocalResult], float]]] = [None] * len(tasks)
        tr = self.trainer
        steps = [min(tr.steps_full(len(self.shard(t.device_id))), t.max_steps if t.max_steps is not None else 1 << 30)
                 for t in tasks]
        cut = batched.chunking(self.device)
        for ids in batched.chunks(steps, cut.slots, split=not cut.padded):
            chunk = [tasks[i] for i in ids]
            ts = time.perf_counter()
            works = [batched.DeviceWork(torch.from_numpy(self.shard(t.device_id)),
                                        tr.stream(_stream(round_idx, t), t.device_id),
                                        t.max_steps)
                     for t in chunk]
            oom = False
            try:
                res = batched.train_group(model, tr.client, start, self.x, self.y, works, tr.epochs, tr.batch_size,
                                          live=live)
            except torch.cuda.OutOfMemoryError:
                oom = True   # handled below: inside `except`, the traceback still holds the chunk's tensors
            if oom:
                # The chunk does not fit this host's share: its devices train one by one, and
                # only those that do not fit even alone are out of memory.
                _release(model)
                for i, t in zip(ids, chunk):
                    out[i] = self._train_one(round_idx, model, start, t, server, parts)
                continue
            wall = (time.perf_counter() - ts) / len(chunk)
            for i, r in zip(ids, res):
                out[i] = (r, wall)
        return out  # type: ignore[return-value]

    def _train_one(self, round_idx: int, model: torch.nn.Module, start: Mapping[str, torch.Tensor],
                   task: TrainTask, server: Optional[Mapping[str, torch.Tensor]] = None,
                   parts: Optional[Mapping[tuple[int, int], Parts]] = None) -> tuple[Optional[LocalResult], float]:
        ts = time.perf_counter()
        oom = False
        own = (parts or {}).get(_task_key(task), {}).get("client")
        if own is not None:
            own = {k: v.to(self.device) for k, v in own.items()}
        try:
            load_params(model, start)
            x, y = self.data(task.device_id)
            res = self.trainer.train(model, start, x, y, _stream(round_idx, task), task.device_id, task.max_steps,
                                     own, server)
        except torch.cuda.OutOfMemoryError:
            oom = True   # released below, once the traceback (and the tensors its frames hold) is gone
        if oom:
            _release(model)
            return None, time.perf_counter() - ts
        if self.device.type != "cpu":
            res = to_cpu(res)
        return res, time.perf_counter() - ts

    def train(self, round_idx: int, params: Mapping[str, torch.Tensor], plans: Mapping[int, SubmodelPlan],
              tasks: list[TrainTask], server: Optional[Mapping[str, torch.Tensor]] = None) -> HostResult:
        """Train every task's device and return the pre-aggregated result (`server`: a stateful
        client algorithm's server quantity, in global coordinates)."""
        t0 = time.perf_counter()
        partials, reports = self.fold_tasks(round_idx, {0: params}, plans, tasks, server)
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
                   plans: Mapping[int, SubmodelPlan], tasks: list[TrainTask],
                   server: Optional[Mapping[str, torch.Tensor]] = None
                   ) -> tuple[dict[int, PartialSum], list[TrainReport]]:
        """Train the tasks, plan by plan, and fold each device's delta into its group's partial sum."""
        partials: dict[int, PartialSum] = {}
        reports = []
        version_of = {t.plan_id: t.version for t in tasks}
        used = sorted(version_of)
        by_plan: dict[int, list[TrainTask]] = {pid: [] for pid in used}   # one pass, task order kept
        for t in tasks:
            by_plan[t.plan_id].append(t)
        indices = {pid: plan_indices(self.spec, plans[pid], self.shapes) for pid in used}
        # One extracted start per plan, on the host's device, shared by the plan's devices.
        starts = {pid: {k: v.to(self.device) for k, v in
                        receive(self.trainer, extract(versions[version_of[pid]], indices[pid]), round_idx,
                                version_of[pid], pid).items()}
                  for pid in used}
        # Each device's state (error-feedback residual, a client algorithm's own) in its plan's
        # coordinates, moved once per task.
        parts = {_task_key(t): unpack(self.spec, self.shapes, plans[t.plan_id], t.state)
                 for t in tasks if t.state is not None}
        plan_weight: dict[tuple[int, int], int] = {}  # element weights: once per (group, plan), not per device
        trained: list[tuple[TrainTask, tuple[Optional[LocalResult], float]]] = []
        for pid in used:
            cut = None if server is None else {k: v.to(self.device) for k, v in extract(server, indices[pid]).items()}
            trained += zip(by_plan[pid], self.train_plan(round_idx, plans[pid], starts[pid], by_plan[pid], cut, parts))
        for task, (res, wall) in trained:
            if res is None:
                reports.append(TrainReport(task.device_id, OOM, 0, 0, math.nan, wall, self.host_id, OOM_REASON,
                                           job=task.stream))
                continue
            if not res.finite:
                reports.append(TrainReport(task.device_id, FAILED, res.samples, res.steps, res.loss, wall,
                                           self.host_id, "non-finite update", job=task.stream))
                continue
            acc = partials.get(task.group)
            if acc is None:
                acc = partials[task.group] = PartialSum.zeros(self.shapes)
            plan = plans[task.plan_id]
            delta, residual = send(self.trainer, res.delta, _stream(round_idx, task), task.device_id,
                                   parts.get(_task_key(task), {}).get("residual"))
            w = contribute(acc, delta, res.samples, indices[task.plan_id], task.weight, count=False)
            if res.server_delta is not None:
                fold_extra(acc, res.server_delta, indices[task.plan_id])
            key = (task.group, task.plan_id)
            plan_weight[key] = plan_weight.get(key, 0) + w
            reports.append(TrainReport(task.device_id, OK, res.samples, res.steps, res.loss, wall, self.host_id,
                                       job=task.stream, state=pack(plan, {"residual": residual, "client": res.state})))
        for group, pid in sorted(plan_weight):
            add_weights(partials[group], indices[pid], plan_weight[(group, pid)])
        return partials, reports


def to_cpu(res: LocalResult) -> LocalResult:
    """A result's tensors (delta, state, server contribution) on the CPU, where they are folded."""
    def cpu(t: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.cpu() for k, v in t.items()}

    return replace(res, delta=cpu(res.delta), state=None if res.state is None else cpu(res.state),
                   server_delta=None if res.server_delta is None else cpu(res.server_delta))


def _task_key(task: TrainTask) -> tuple[int, int]:
    """A task's identity on a host: its device and its stream (a device may train twice in a call
    only in asynchronous modes, each time under its own stream)."""
    return task.device_id, task.stream


def _shape_key(sizes: Mapping[str, int], rate: float) -> ShapeKey:
    """What a submodel module is cached by: its group widths and its rate (the scalers')."""
    return tuple(sorted(sizes.items())), rate


def _stream(round_idx: int, task: TrainTask) -> int:
    """The key of a device's random stream: its round, or (asynchronous modes) its dispatch."""
    return round_idx if task.stream < 0 else task.stream
