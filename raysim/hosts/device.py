"""One dedicated device's trainer: the shared device-training function, a memory cap and a clock.

Pure torch (no Ray), so it can be tested in a plain process; `raysim.runtime.dedicated` wraps
it in an actor. On the realtime clock it sleeps so that its wall time is its simulated time
times the time scale: download, then compute (real training stretched to the simulated
compute time), then upload; on the virtual clock it just trains, capped.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import replace
from typing import Any, Optional

import numpy as np
import torch

from raysim.client.evaluate import load_params
from raysim.client.trainer import Trainer
from raysim.client.wire import receive, send
from raysim.hosts.host import HostCore, ShapeKey
from raysim.hosts.memcap import (
    AS_SCALE,
    AS_SLACK,
    address_space_bytes,
    cap_bytes,
    is_oom,
    memory_cap,
    no_cap,
    tame_allocator,
    trim,
)
from raysim.hosts.state import pack, unpack
from raysim.messages import HostResult, PartialSum, TrainReport, TrainTask
from raysim.models import ModelSpec
from raysim.records import FAILED, LATE, OK, OOM, PARTIAL
from raysim.server.aggregate import contribute, fold_extra
from raysim.submodel import SubmodelPlan, extract, plan_indices

log = logging.getLogger(__name__)


class DeviceCore:
    """One device's trainer: a `HostCore` holding the data, plus the memory cap and the clock.

    Pure torch (no Ray), so it can be tested in a plain process.
    """

    def __init__(self, spec: ModelSpec, trainer: Trainer, x: np.ndarray, y: np.ndarray,
                 shard_flat: np.ndarray, shard_offsets: np.ndarray, device_id: int, memory: float,
                 ids: Optional[np.ndarray] = None) -> None:
        self.host = HostCore(spec, trainer, x, y, shard_flat, shard_offsets, host_id=device_id, ids=ids)
        self.trainer = trainer
        self.device_id = int(device_id)
        self.memory = float(memory)
        self.capped = tame_allocator() and address_space_bytes() is not None
        self._warm: set[ShapeKey] = set()
        self._overran = False
        self.n = len(self.host.shard(self.device_id))

    @property
    def steps_full(self) -> int:
        """Local steps of a full round of work."""
        return self.trainer.steps_full(self.n)

    def warm(self, plan: SubmodelPlan) -> None:
        """Build the submodel and run its batch shapes once, unlimited (see the module docstring)."""
        key = (tuple(sorted(plan.sizes().items())), plan.rate)
        if key in self._warm:
            return
        model = self.host.module(plan)
        model.train()
        bs = self.trainer.batch_size
        shapes = {min(bs, self.n)} | ({self.n % bs} if self.n > bs and self.n % bs else set())
        # One step of the real client algorithm per batch shape (its objective, its update, its
        # random stream), so that nothing it does for the first time happens under the cap.
        start = {k: p.detach().clone() for k, p in model.named_parameters()}
        for b in sorted(shapes):
            if b < 1:
                continue
            x = torch.zeros((b, *self.host.spec.input_shape))
            y = torch.zeros(b, dtype=torch.long)
            self.trainer.train(model, start, x, y, 0, self.device_id, 1)
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
              stop: Any = None, server: Optional[dict[str, torch.Tensor]] = None) -> HostResult:
        """Train the device's task. With `start` (wall time of round start), follow the realtime
        timeline: sleep the download, train, stretch the compute, sleep the upload. `stop` is
        event-like (`wait(timeout)`, `is_set()`): once set, the round is closed and sleeping ends.
        `server`: a stateful client algorithm's server quantity (global coordinates)."""
        t_call = time.perf_counter()
        stop = stop or threading.Event()
        realtime = start is not None
        self.warm(plan)
        index = plan_indices(self.host.spec, plan, self.host.shapes)
        model = self.host.module(plan)
        start_w = receive(self.trainer, extract(params, index), round_idx, task.version, task.plan_id)
        load_params(model, start_w)
        x, y = self.host.data(self.device_id)

        def report(status: str, reason: str = "", samples: int = 0, steps: int = 0,
                   loss: float = float("nan")) -> TrainReport:
            fin = (time.time() - start) / time_scale if start is not None else float("nan")
            return TrainReport(self.device_id, status, samples, steps, loss, time.perf_counter() - t_call,
                               self.device_id, reason, fin)

        def sleep_until(t: float) -> bool:  # False: the round was closed meanwhile
            delay = t - time.time()
            return not stop.wait(delay) if delay > 0 else not stop.is_set()

        acc = PartialSum.zeros(self.host.shapes)
        trim()  # before the clock's download phase: the cap is measured from a trimmed heap
        max_steps = task.max_steps
        if start is not None:  # realtime
            if not sleep_until(start + task.t_download * time_scale):
                return HostResult(acc, [report(LATE, "round closed")], self.device_id, 0.0)
            if partial and task.deadline is not None:
                # The steps that fit in the real time left, at the device's simulated step time.
                left = start + (task.deadline - task.t_upload) * time_scale - time.time()
                step_s = task.t_compute * time_scale / self.steps_full
                fit = self.steps_full if step_s <= 0 else int(math.floor(left / step_s))
                if fit < 1:
                    return HostResult(acc, [report(LATE, "no local step fits before the deadline")],
                                      self.device_id, 0.0)
                max_steps = fit if fit < self.steps_full else None
        parts = unpack(self.host.spec, self.host.shapes, plan, task.state)
        c0 = time.time()
        try:
            with memory_cap(cap_bytes(self.memory)) if self.capped else no_cap():
                res = self.trainer.train(model, start_w, x, y, round_idx, self.device_id, max_steps,
                                         parts.get("client"), None if server is None else extract(server, index))
        except (MemoryError, RuntimeError) as err:
            if not is_oom(err):
                raise
            for p in model.parameters():
                p.grad = None
            trim(collect=True)
            why = (f"memory: training rate {task.rate:g} needed more address space than the device's "
                   f"{self.memory / 2**20:.2f} MiB allow ({AS_SCALE:g}x + {AS_SLACK >> 20} MiB)")
            return HostResult(acc, [report(OOM, why)], self.device_id, time.perf_counter() - t_call)
        status, reason = OK, ""
        if realtime and max_steps is not None and res.steps < self.steps_full:
            status = PARTIAL
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
                return HostResult(acc, [report(LATE, "round closed")], self.device_id, 0.0)
        if not res.finite:
            return HostResult(acc, [report(FAILED, "non-finite update", res.samples, res.steps, res.loss)],
                              self.device_id, time.perf_counter() - t_call)
        delta, residual = send(self.trainer, res.delta, round_idx, self.device_id, parts.get("residual"))
        contribute(acc, delta, res.samples, index, task.weight)
        if res.server_delta is not None:
            fold_extra(acc, res.server_delta, index)
        rep = replace(report(status, reason, res.samples, res.steps, res.loss),
                      state=pack(plan, {"residual": residual, "client": res.state}))
        return HostResult(acc, [rep], self.device_id, time.perf_counter() - t_call)


