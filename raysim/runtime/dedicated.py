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

How the memory cap maps to the simulated cap. RLIMIT_AS counts virtual address space, which
for a Ray worker holding torch is ~9 GB, so the limit is set relative to the address space in
use when training starts, after three steps that make that figure track live memory:
(1) a warm-up forward/backward at the task's shapes before the limit, so one-off costs
(oneDNN's JIT-compiled kernels, ~1 MiB per new convolution shape, and torch's lazy
initialisation) are paid unlimited, like loading the program; (2) glibc set, from the actor's
start (`MALLOC_ENV`), to serve every block of 64 KiB or more with its own mmap, returned to the
system when freed, and to keep one malloc arena (otherwise freed memory, and a thread's 64 MiB
arena reservation, would be reused without the address space growing); (3) `malloc_trim`
before the limit is measured. Measured on the default CNN with one torch thread, the extra
address space one local training then needs is raysim's predicted training memory plus at
most ~0.6 MiB (batch 20: 2.95 MiB at rate 1 for a predicted 2.50 MiB, <= 1.1 MiB at rates
1/4 and 1/8; batch 50: 4.98 MiB at rate 1 for 4.99 MiB). Hence AS_SCALE = 1.25 (the cost
model is a lower bound: transient buffers are not counted) and AS_SLACK = 1 MiB: a device
trains what the cost model says fits it, and an allocation larger than 1.25x its cap + 1 MiB
fails. Below about 1 MiB the cap is only as sharp as AS_SLACK. Linux (glibc) only; elsewhere
no cap is set.

Costs and limits. Small-block mmaps make training about 2x slower than in a pooled host. The
limit is per process, so while a device trains near its cap, Ray's own threads may be refused
a new thread stack (gRPC logs `pthread_create failed` and carries on). On the realtime clock
a device's real compute must fit in its simulated compute x time_scale; where it does not, the
device is as slow as the host (a warning says so once per device): raise time_scale.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import math
import os
import resource
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, Iterator, Optional

import numpy as np
import ray
import torch
from ray.exceptions import RayActorError, WorkerCrashedError

from raysim.aggregate import PartialSum, fold
from raysim.config import Scenario
from raysim.models import ModelSpec
from raysim.runtime.host import HostCore
from raysim.runtime.shared import SharedData
from raysim.runtime.tasks import HostResult, TrainReport, TrainTask
from raysim.seeding import torch_generator
from raysim.submodel import SubmodelPlan, extract, plan_indices
from raysim.train import load_params, local_train

log = logging.getLogger(__name__)

AS_SCALE = 1.25          # real bytes of address space per simulated byte of device memory
AS_SLACK = 1 << 20       # plus this much: allocator rounding and the training loop's own objects
MMAP_THRESHOLD = 64 << 10
DEFAULT_ACTORS = 32      # LRU bound when runtime.hosts is not set (~8 GB of torch actors)
OVERCOMMIT_REASON = "over-commitment: not among the first K to finish"

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
# The same settings from the process's start (glibc reads them at its first malloc): a thread
# that got its own arena before `tame_allocator` ran would serve allocations from that arena's
# 64 MiB reservation, which the address space does not see grow.
MALLOC_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD),
              "MALLOC_TRIM_THRESHOLD_": str(MMAP_THRESHOLD)}


# ---------------------------------------------------------------------------- memory cap
def _libc() -> Optional[ctypes.CDLL]:
    name = ctypes.util.find_library("c")
    try:
        lib = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return lib if lib is not None and hasattr(lib, "mallopt") else None


_LIBC = _libc()
_CAP_LOCK = threading.Lock()


def address_space_bytes() -> Optional[int]:
    """This process's virtual address space (VmSize), or None where /proc is not available."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def tame_allocator() -> bool:
    """Make the address space track live memory (see the module docstring); True if it could."""
    if _LIBC is None:
        return False
    ok = _LIBC.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    ok &= _LIBC.mallopt(_M_TRIM_THRESHOLD, MMAP_THRESHOLD) == 1
    # No new malloc arenas: a fresh arena reserves 64 MiB of address space at once.
    ok &= _LIBC.mallopt(_M_ARENA_MAX, 1) == 1
    return bool(ok)


def trim(collect: bool = False) -> None:
    """Return freed heap memory to the system (after a garbage collection when `collect`)."""
    if collect:
        gc.collect()
    if _LIBC is not None and hasattr(_LIBC, "malloc_trim"):
        _LIBC.malloc_trim(0)


def cap_bytes(memory: float) -> int:
    """Address space a device with `memory` simulated bytes may add while it trains."""
    return int(AS_SCALE * float(memory)) + AS_SLACK


@contextmanager
def memory_cap(extra: int) -> Iterator[Optional[int]]:
    """Within the block, the process may grow its address space by at most `extra` bytes.

    Yields the limit set (None where no cap can be set). The soft limit alone is lowered and
    restored after, so the process keeps the right to lift it.
    """
    base = address_space_bytes()
    if base is None:
        yield None
        return
    with _CAP_LOCK:  # one cap at a time: nested caps would restore each other's limits
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = base + int(extra)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
        try:
            yield limit
        finally:
            resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def is_oom(err: BaseException) -> bool:
    """Is this exception an allocation that failed (as opposed to a bug)?"""
    if isinstance(err, MemoryError):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and any(s in text for s in ("allocate", "bad_alloc", "out of memory"))


# ---------------------------------------------------------------------------- one device
class DeviceCore:
    """One device's trainer: a `HostCore` holding the data, plus the memory cap and the clock.

    Pure torch (no Ray), so it can be tested in a plain process.
    """

    def __init__(self, scenario: Scenario, spec: ModelSpec, x: np.ndarray, y: np.ndarray,
                 shard_flat: np.ndarray, shard_offsets: np.ndarray, device_id: int, memory: float,
                 ids: Optional[np.ndarray] = None) -> None:
        self.host = HostCore(scenario, spec, x, y, shard_flat, shard_offsets, host_id=device_id, ids=ids)
        self.sc = scenario
        self.device_id = int(device_id)
        self.memory = float(memory)
        self.capped = tame_allocator() and address_space_bytes() is not None
        self._warm: set[tuple] = set()
        self._overran = False
        self.n = len(self.host.shard(self.device_id))

    @property
    def steps_full(self) -> int:
        """Local steps of a full round of work."""
        return max(1, math.ceil(self.n / self.sc.train.batch_size)) * self.sc.train.epochs

    def warm(self, plan: SubmodelPlan) -> None:
        """Build the submodel and run its batch shapes once, unlimited (see the module docstring)."""
        key = (tuple(sorted(plan.sizes().items())), plan.rate)
        if key in self._warm:
            return
        model = self.host._module(plan)
        model.train()
        bs = self.sc.train.batch_size
        shapes = {min(bs, self.n)} | ({self.n % bs} if self.n > bs and self.n % bs else set())
        for b in sorted(shapes):
            if b < 1:
                continue
            x = torch.zeros((b, *self.host.spec.input_shape))
            y = torch.zeros(b, dtype=torch.long)
            torch.nn.functional.cross_entropy(model(x), y).backward()
        for p in model.parameters():
            p.grad = None
        self._warm.add(key)
        trim()

    def try_allocate(self, nbytes: int) -> bool:
        """Whether `nbytes` can be allocated under this device's cap (a check of the cap itself)."""
        trim(collect=True)
        try:
            with memory_cap(cap_bytes(self.memory)):
                t = torch.empty(int(nbytes), dtype=torch.uint8)
                t.fill_(1)  # touch it: the allocation is real
                del t
            return True
        except (MemoryError, RuntimeError) as err:
            if not is_oom(err):
                raise
            return False
        finally:
            trim()

    def train(self, round_idx: int, params: dict[str, torch.Tensor], plan: SubmodelPlan, task: TrainTask,
              start: Optional[float] = None, time_scale: float = 1.0, partial: bool = False,
              stop: Any = None) -> HostResult:
        """Train the device's task. With `start` (wall time of round start), follow the realtime
        timeline: sleep the download, train, stretch the compute, sleep the upload. `stop` is
        event-like (`wait(timeout)`, `is_set()`): once set, the round is closed and sleeping ends."""
        t_call = time.perf_counter()
        stop = stop or threading.Event()
        realtime = start is not None
        self.warm(plan)
        index = plan_indices(self.host.spec, plan, self.host.shapes)
        model = self.host._module(plan)
        load_params(model, extract(params, index))
        ix = torch.from_numpy(self.host.shard(self.device_id))
        x, y = self.host.x[ix], self.host.y[ix]

        def report(status: str, reason: str = "", samples: int = 0, steps: int = 0,
                   loss: float = float("nan")) -> TrainReport:
            fin = (time.time() - start) / time_scale if realtime else float("nan")
            return TrainReport(self.device_id, status, samples, steps, loss, time.perf_counter() - t_call,
                               self.device_id, reason, fin)

        def sleep_until(t: float) -> bool:  # False: the round was closed meanwhile
            delay = t - time.time()
            return not stop.wait(delay) if delay > 0 else not stop.is_set()

        acc = PartialSum.zeros(self.host.shapes)
        trim()  # before the clock's download phase: the cap is measured from a trimmed heap
        max_steps = task.max_steps
        if realtime:
            if not sleep_until(start + task.t_download * time_scale):
                return HostResult(acc, [report("late", "round closed")], self.device_id, 0.0)
            if partial and task.deadline is not None:
                # The steps that fit in the real time left, at the device's simulated step time.
                left = start + (task.deadline - task.t_upload) * time_scale - time.time()
                step_s = task.t_compute * time_scale / self.steps_full
                fit = self.steps_full if step_s <= 0 else int(math.floor(left / step_s))
                if fit < 1:
                    return HostResult(acc, [report("late", "no local step fits before the deadline")],
                                      self.device_id, 0.0)
                max_steps = fit if fit < self.steps_full else None
        tc = self.sc.train
        # Everything but the training itself happens before the cap (it may import lazily).
        gen = torch_generator(self.sc.seed, "train", round_idx, self.device_id)
        c0 = time.time()
        try:
            with memory_cap(cap_bytes(self.memory)) if self.capped else _no_cap():
                res = local_train(model, x, y, epochs=tc.epochs, batch_size=tc.batch_size, lr=tc.lr,
                                  momentum=tc.momentum, weight_decay=tc.weight_decay, max_steps=max_steps,
                                  generator=gen)
        except (MemoryError, RuntimeError) as err:
            if not is_oom(err):
                raise
            for p in model.parameters():
                p.grad = None
            trim(collect=True)
            why = (f"memory: training rate {task.rate:g} needed more address space than the device's "
                   f"{self.memory / 2**20:.2f} MiB allow ({AS_SCALE:g}x + {AS_SLACK >> 20} MiB)")
            return HostResult(acc, [report("oom", why)], self.device_id, time.perf_counter() - t_call)
        status, reason = "ok", ""
        if realtime and max_steps is not None and res.steps < self.steps_full:
            status = "partial"
            reason = f"deadline: {res.steps} of {self.steps_full} local steps fit before the deadline"
        if realtime:
            stretched = task.t_compute * time_scale * res.steps / self.steps_full
            real = time.time() - c0
            if real > stretched and not self._overran:
                # The host is slower than the device at this time scale: its times are now real,
                # not simulated. Said once per device.
                self._overran = True
                log.warning("device %d: real compute %.3f s exceeds its simulated compute x time_scale "
                            "(%.3f s); raise runtime.time_scale", self.device_id, real, stretched)
            if not sleep_until(c0 + stretched) or not sleep_until(time.time() + task.t_upload * time_scale):
                return HostResult(acc, [report("late", "round closed")], self.device_id, 0.0)
        if not res.finite:
            return HostResult(acc, [report("failed", "non-finite update", res.samples, res.steps, res.loss)],
                              self.device_id, time.perf_counter() - t_call)
        weight = 1 if task.weight == "uniform" else res.samples
        fold(acc, res.delta, index, weight, res.samples)
        return HostResult(acc, [report(status, reason, res.samples, res.steps, res.loss)], self.device_id,
                          time.perf_counter() - t_call)


@contextmanager
def _no_cap() -> Iterator[None]:
    yield None


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

    def __init__(self, scenario: Scenario, spec: ModelSpec, data: SharedData, device_id: int,
                 memory: float) -> None:
        x, y, flat, offsets, ids = data.get()
        self.core = DeviceCore(scenario, spec, x, y, flat, offsets, device_id, memory, ids)
        self._refs = data.ref_ids()
        self.time_scale = scenario.runtime.time_scale
        self.partial = scenario.deadline.policy == "partial"
        self._crash_round: Optional[int] = None

    def prepare(self, plan: SubmodelPlan) -> bool:
        """Warm up for this plan (outside the round's clock)."""
        self.core.warm(plan)
        return True

    def train(self, round_idx: int, params: dict[str, np.ndarray], plan: SubmodelPlan, task: TrainTask,
              start: Optional[float]) -> HostResult:
        if self._crash_round == round_idx:
            os._exit(1)
        tparams = {k: torch.from_numpy(np.array(v)) for k, v in params.items()}
        return self.core.train(round_idx, tparams, plan, task, start, self.time_scale, self.partial, _Cancelled())

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

    def __init__(self, sc: Scenario, spec: ModelSpec, data: SharedData, ids: np.ndarray, memory: np.ndarray,
                 capacity: Optional[int] = None, actor_options: Optional[dict[str, Any]] = None) -> None:
        self._data = data
        self.sc = sc
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
            self.actors[d] = DeviceActor.options(**self._opts).remote(
                self.sc, self._spec, self._data, d, self._memory[d])
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
              tasks: list[TrainTask]) -> list[HostResult]:
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
                lost.append(_report(t.device_id, "failed", "device actor lost"))
        pref = ray.put({k: v.numpy() for k, v in params.items()})
        realtime = self.sc.runtime.clock == "realtime"
        start = time.time() if realtime else None
        futures = {actors[t.device_id].train.remote(round_idx, pref, plans[t.plan_id], t, start): t for t in ready}
        if realtime:
            out, late = self._collect_realtime(futures, start)
        else:
            out, late = self._collect_all(futures), []
        reports = lost + late
        out = [r for r in out if r is not None]
        for r in out:
            if r.reports[0].status not in ("ok", "partial"):
                reports.extend(r.reports)
        kept = [r for r in out if r.reports[0].status in ("ok", "partial")]
        if reports:
            # Devices that contributed nothing still need their report to reach the records.
            kept.append(HostResult(PartialSum.zeros(self.shapes), reports, -1, 0.0))
        return kept

    def _get(self, ref, task: TrainTask) -> Optional[HostResult]:
        try:
            return ray.get(ref)
        except (RayActorError, WorkerCrashedError) as err:
            log.warning("device actor %d lost: %s", task.device_id, type(err).__name__)
            self._lost(task.device_id)
            return HostResult(PartialSum.zeros(self.shapes), [_report(task.device_id, "failed", "device actor lost")],
                              task.device_id, 0.0)

    def _collect_all(self, futures: dict) -> list[Optional[HostResult]]:
        return [self._get(ref, t) for ref, t in futures.items()]

    def _collect_realtime(self, futures: dict, start: float) -> tuple[list[Optional[HostResult]], list[TrainReport]]:
        """Wait for results until K have arrived or the deadline passes (real timeouts)."""
        scale = self.sc.runtime.time_scale
        deadline = next(iter(futures.values())).deadline if futures else None
        close_at = None if deadline is None else start + deadline * scale
        k = self.sc.selection.per_round
        pending = list(futures)
        out: list[Optional[HostResult]] = []
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
            if rep.status in ("ok", "partial"):
                # The server's clock, not the device's: when the result reached it.
                res.reports[0] = replace(rep, finish_s=(arrived - start) / scale)
                kept += 1
            out.append(res)
        late = []
        for ref in pending:
            t = futures[ref]
            ray.cancel(ref)  # a sleeping device gives up; its work is discarded
            why = OVERCOMMIT_REASON if kept >= k else f"missed the {deadline:g} s deadline (real time)"
            late.append(_report(t.device_id, "late", why))
        return out, late


def _report(device_id: int, status: str, reason: str) -> TrainReport:
    return TrainReport(device_id, status, 0, 0, float("nan"), 0.0, device_id, reason)
