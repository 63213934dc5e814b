"""The dedicated placement: one Ray actor per device, with a real memory cap and real time.

Each selected device gets its own small actor (created when the device is first selected and
kept in a bounded LRU: a torch actor costs ~180-300 MB). Inside it a `DeviceCore` trains the
device's submodel with the same `HostCore` the pooled placement uses, so a dedicated run on the
virtual clock gives the same numbers as a pooled one, and adds two real constraints:

* **Memory.** Training runs under an address-space limit (`RLIMIT_AS`) of
  `current address space + AS_SCALE * device memory + AS_SLACK`. An allocation past it fails
  inside torch (`RuntimeError: ... can't allocate memory`) or Python (`MemoryError`); the
  device is recorded `oom` and the actor, whose limit is lifted again, goes on serving.
* **Time** (`runtime.clock: realtime`). The actor sleeps so that its wall time is its simulated
  time times `runtime.time_scale`: download, then compute (real training stretched to the
  simulated compute time), then upload. The pool starts every device at once and enforces the
  deadline with real timeouts (`ray.wait`); it keeps the first K results (over-commitment),
  and work that misses the deadline is discarded and recorded `late`.

The memory cap is `raysim.hosts.memcap`; one device's trainer is `raysim.hosts.device`.

Costs and limits. Small-block mmaps make training about 2x slower than in a pooled host. The
limit is per process, so while a device trains near its cap, Ray's own threads may be refused
a new thread stack (gRPC logs `pthread_create failed` and carries on). On the realtime clock
a device's real compute must fit in its simulated compute x time_scale; where it does not, the
device is as slow as the host (a warning says so once per device): raise time_scale.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any, Optional

import numpy as np
import ray
import torch
from ray.exceptions import RayActorError, WorkerCrashedError

from raysim.client.trainer import Trainer
from raysim.hosts.device import DeviceCore
from raysim.hosts.memcap import MALLOC_ENV
from raysim.messages import HostResult, PartialSum, TrainReport, TrainTask
from raysim.models import ModelSpec
from raysim.records import FAILED, LATE, TRAINED
from raysim.runtime.shared import SharedData
from raysim.submodel import SubmodelPlan

log = logging.getLogger(__name__)

DEFAULT_ACTORS = 32      # LRU bound when runtime.hosts is not set (~8 GB of torch actors)
OVERCOMMIT_REASON = "over-commitment: not among the first K to finish"


@dataclass(frozen=True)
class RealTime:
    """How a dedicated pool keeps real time (the realtime clock): wall seconds per simulated
    second, the K results a round keeps, and whether late devices train the steps that fit."""

    time_scale: float
    per_round: int
    partial: bool = False


class _Cancelled:
    """Ray's cancellation flag of the running task, seen as an event (`ray.cancel` sets it)."""

    POLL_S = 0.005

    def is_set(self) -> bool:
        return ray.get_runtime_context().is_canceled()

    def wait(self, timeout: float) -> bool:
        end = time.time() + timeout
        while not self.is_set():
            left = end - time.time()
            if left <= 0:
                return False
            time.sleep(min(self.POLL_S, left))
        return True


@ray.remote(num_cpus=0, max_restarts=0, max_task_retries=0)
class DeviceActor:
    """Ray actor around one `DeviceCore`.

    One thread on purpose: the memory cap holds for the whole process, so nothing else of ours
    may run (and allocate) while a device trains under it. The server closes a round with
    `ray.cancel`, which a sleeping `train` sees through `_Cancelled`. num_cpus=0: a throttled
    device mostly sleeps, and a round's actors must all run at once for the deadline to mean
    anything.
    """

    def __init__(self, spec: ModelSpec, trainer: Trainer, data: SharedData, device_id: int,
                 memory: float, realtime: Optional[RealTime]) -> None:
        x, y, flat, offsets, ids = data.get()
        self.core = DeviceCore(spec, trainer, x, y, flat, offsets, device_id, memory, ids)
        self._refs = data.ref_ids()
        self.time_scale = realtime.time_scale if realtime else 1.0
        self.partial = bool(realtime and realtime.partial)
        self._crash_round: Optional[int] = None

    def prepare(self, plan: SubmodelPlan) -> bool:
        """Warm up for this plan (outside the round's clock)."""
        self.core.warm(plan)
        return True

    def train(self, round_idx: int, params: dict[str, np.ndarray], plan: SubmodelPlan, task: TrainTask,
              start: Optional[float], server: Optional[dict[str, np.ndarray]] = None) -> HostResult:
        if self._crash_round == round_idx:
            os._exit(1)
        tparams, tserver = _tensors(params), None if server is None else _tensors(server)
        return self.core.train(round_idx, tparams, plan, task, start, self.time_scale, self.partial, _Cancelled(),
                               tserver)

    def try_allocate(self, nbytes: int) -> bool:
        return self.core.try_allocate(nbytes)

    def arm_crash(self, round_idx: int) -> None:
        """Fault injection: die (hard, like a killed process) when that round's work arrives."""
        self._crash_round = round_idx

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def data_ref_ids(self) -> list[str]:
        """Ids of the stored arrays this actor reads."""
        return self._refs

    def pid(self) -> int:
        return os.getpid()


# ---------------------------------------------------------------------------- the pool
class DedicatedPool:
    """Backend with one `DeviceActor` per selected device (same `train` interface as `RayPool`).

    `memory[i]` is the simulated memory of the device with id `ids[i]`. `capacity` bounds the
    live actors (least recently used ones are killed), but never below one round's devices.
    """

    def __init__(self, spec: ModelSpec, trainer: Trainer, data: SharedData, ids: np.ndarray, memory: np.ndarray,
                 capacity: Optional[int] = None, actor_options: Optional[dict[str, Any]] = None,
                 realtime: Optional[RealTime] = None) -> None:
        self._data = data
        self.trainer = trainer
        self.realtime = realtime
        self.shapes = spec.global_shapes()
        self._spec = spec
        self._memory = {int(d): float(m) for d, m in zip(ids, memory)}
        self.capacity = int(capacity or DEFAULT_ACTORS)
        self._opts = {"scheduling_strategy": "SPREAD", "runtime_env": {"env_vars": MALLOC_ENV}, **(actor_options or {})}
        self.actors: OrderedDict[int, Any] = OrderedDict()
        self.created = 0
        self.restarts = 0

    # -- actors
    def _ensure(self, devices: list[int]) -> dict[int, Any]:
        want = set(devices)
        room = max(self.capacity, len(want))
        for d in devices:
            if d in self.actors:
                self.actors.move_to_end(d)
        missing = [d for d in devices if d not in self.actors]
        for old in list(self.actors):
            if len(self.actors) + len(missing) <= room:
                break
            if old not in want:
                ray.kill(self.actors.pop(old))
        for d in missing:
            self.actors[d] = DeviceActor.options(**self._opts).remote(  # type: ignore[attr-defined]  # ray.remote's stub keeps the plain class
                self._spec, self.trainer, self._data, d, self._memory[d], self.realtime)
            self.created += 1
        return {d: self.actors[d] for d in devices}

    def _lost(self, d: int) -> None:
        self.actors.pop(d, None)
        self.restarts += 1

    def close(self) -> None:
        """Kill every device actor (they also die with the process that created the pool)."""
        for a in self.actors.values():
            ray.kill(a)
        self.actors.clear()

    def live(self) -> list[int]:
        """Devices that have an actor now (least recently used first)."""
        return list(self.actors)

    @property
    def hosts(self) -> list:
        """The live device actors (the pool's hosts, for the manifest)."""
        return list(self.actors.values())

    def node_ids(self) -> list[str]:
        """Node of every live device actor."""
        return ray.get([a.node_id.remote() for a in self.actors.values()])

    def pids(self) -> list[int]:
        return ray.get([a.pid.remote() for a in self.actors.values()])

    def data_ref_ids(self) -> list[list[str]]:
        """Ids of the stored arrays every live device actor reads."""
        return ray.get([a.data_ref_ids.remote() for a in self.actors.values()])

    def arm_crash(self, host: int, round_idx: int) -> None:
        """Fault injection: the actor of device `host` dies in round `round_idx`."""
        ray.get(self._ensure([host])[host].arm_crash.remote(round_idx))

    def pid(self, device_id: int) -> int:
        """Process id of the device's actor (created if needed)."""
        return ray.get(self._ensure([device_id])[device_id].pid.remote())

    def try_allocate(self, device_id: int, nbytes: int) -> bool:
        """Whether the device's actor can allocate `nbytes` under its memory cap."""
        return ray.get(self._ensure([device_id])[device_id].try_allocate.remote(nbytes))

    # -- one round
    def train(self, round_idx: int, params: dict[str, torch.Tensor], plans: dict[int, SubmodelPlan],
              tasks: list[TrainTask], server: Optional[dict[str, torch.Tensor]] = None) -> list[HostResult]:
        if not tasks:
            return []
        actors = self._ensure([t.device_id for t in tasks])
        lost: list[TrainReport] = []
        ready = []
        # Actor start-up and warm-up happen before the round's clock starts.
        warm = {t.device_id: actors[t.device_id].prepare.remote(plans[t.plan_id]) for t in tasks}
        for t in tasks:
            try:
                ray.get(warm[t.device_id])
                ready.append(t)
            except (RayActorError, WorkerCrashedError):
                self._lost(t.device_id)
                lost.append(_report(t.device_id, FAILED, "device actor lost"))
        pref = ray.put({k: v.numpy() for k, v in params.items()})
        realtime = self.realtime is not None
        start = time.time() if realtime else None
        sref = None if server is None else ray.put({k: v.numpy() for k, v in server.items()})
        futures = {actors[t.device_id].train.remote(round_idx, pref, plans[t.plan_id], t, start, sref): t
                   for t in ready}
        if start is not None:  # realtime
            out, late = self._collect_realtime(futures, start)
        else:
            out, late = self._collect_all(futures), []
        reports = lost + late
        out = [r for r in out if r is not None]
        for r in out:
            if r.reports[0].status not in TRAINED:
                reports.extend(r.reports)
        kept = [r for r in out if r.reports[0].status in TRAINED]
        if reports:
            # Devices that contributed nothing still need their report to reach the records.
            kept.append(HostResult(PartialSum.zeros(self.shapes), reports, -1, 0.0))
        return kept

    def _get(self, ref, task: TrainTask) -> HostResult:
        try:
            return ray.get(ref)
        except (RayActorError, WorkerCrashedError) as err:
            log.warning("device actor %d lost: %s", task.device_id, type(err).__name__)
            self._lost(task.device_id)
            return HostResult(PartialSum.zeros(self.shapes), [_report(task.device_id, FAILED, "device actor lost")],
                              task.device_id, 0.0)

    def _collect_all(self, futures: dict) -> list[HostResult]:
        return [self._get(ref, t) for ref, t in futures.items()]

    def _collect_realtime(self, futures: dict, start: float) -> tuple[list[HostResult], list[TrainReport]]:
        """Wait for results until K have arrived or the deadline passes (real timeouts)."""
        assert self.realtime is not None
        scale = self.realtime.time_scale
        deadline = next(iter(futures.values())).deadline if futures else None
        close_at = None if deadline is None else start + deadline * scale
        k = self.realtime.per_round
        pending = list(futures)
        out: list[HostResult] = []
        kept = 0
        while pending and kept < k:
            timeout = None if close_at is None else close_at - time.time()
            if timeout is not None and timeout <= 0:
                break
            done, pending = ray.wait(pending, num_returns=1, timeout=timeout)
            if not done:
                break
            arrived = time.time()
            res = self._get(done[0], futures[done[0]])
            rep = res.reports[0]
            if rep.status in TRAINED:
                # The server's clock, not the device's: when the result reached it.
                res.reports[0] = replace(rep, finish_s=(arrived - start) / scale)
                kept += 1
            out.append(res)
        late = []
        for ref in pending:
            t = futures[ref]
            ray.cancel(ref)  # a sleeping device gives up; its work is discarded
            why = OVERCOMMIT_REASON if kept >= k else f"missed the {deadline:g} s deadline (real time)"
            late.append(_report(t.device_id, LATE, why))
        return out, late


def _report(device_id: int, status: str, reason: str) -> TrainReport:
    return TrainReport(device_id, status, 0, 0, float("nan"), 0.0, device_id, reason)


def _tensors(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Tensors of stored (read-only) arrays, copied: training never writes into the store."""
    return {k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}
