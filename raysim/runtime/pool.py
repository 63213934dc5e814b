"""The pooled placement: a pool of device-host actors, each training many devices per call.

Per round the global weights go into the object store once; every host gets one call with
its share of the devices and answers with one pre-aggregated partial sum. A host that dies
loses that round's work of its devices (they are recorded `failed`) and the pool starts a replacement.
A Python error inside a host is a bug, not a fault: it propagates.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Optional, Sequence

import numpy as np
import ray
import torch
from ray.exceptions import RayActorError, WorkerCrashedError

from raysim.client.trainer import Trainer
from raysim.hosts.host import HostCore
from raysim.hosts.local import balance
from raysim.messages import GroupResult, HostResult, TrainTask
from raysim.models import ModelSpec
from raysim.runtime.session import host_placements, node_alive
from raysim.runtime.shared import SharedData, prefault
from raysim.submodel import SubmodelPlan

log = logging.getLogger(__name__)


@ray.remote(num_cpus=1, max_restarts=0, max_task_retries=0)
class DeviceHost:
    """Ray actor around `HostCore` (the dataset arrives as object-store refs, zero-copy)."""

    def __init__(self, spec: ModelSpec, trainer: Trainer, data: SharedData, host_id: int) -> None:
        x, y, flat, offsets, ids = data.get()
        prefault(x, y, flat)
        self.core = HostCore(spec, trainer, x, y, flat, offsets, host_id, ids)
        self._refs = data.ref_ids()
        self._crash_round: Optional[int] = None
        self._versions: dict[int, dict[str, torch.Tensor]] = {}  # asynchronous modes: weights per version

    def arm_crash(self, round_idx: int) -> None:
        """Fault injection: die (hard, like a killed process) half-way through that round."""
        self._crash_round = round_idx

    def train(self, round_idx: int, params: dict[str, np.ndarray], plans: dict[int, SubmodelPlan],
              tasks: list[TrainTask], server: Optional[dict[str, np.ndarray]] = None) -> HostResult:
        tparams = {k: torch.from_numpy(np.array(v)) for k, v in params.items()}
        tserver = None if server is None else {k: torch.from_numpy(np.array(v)) for k, v in server.items()}
        if self._crash_round == round_idx:
            self.core.train(round_idx, tparams, plans, tasks[: len(tasks) // 2], tserver)
            os._exit(1)
        return self.core.train(round_idx, tparams, plans, tasks, tserver)

    def train_groups(self, refs: dict[int, list], plans: dict[int, SubmodelPlan], tasks: list[TrainTask],
                     live: list[int]) -> GroupResult:
        """Asynchronous modes: fetch the versions not held yet (`refs[v]` wraps the stored
        weights' ref, so Ray does not fetch them eagerly), drop those no longer live, train."""
        keep = set(live)
        self._versions = {v: p for v, p in self._versions.items() if v in keep}
        for v, (ref,) in refs.items():
            if v not in self._versions:
                self._versions[v] = {k: torch.from_numpy(np.array(a)) for k, a in ray.get(ref).items()}
        return self.core.train_groups({v: self._versions[v] for v in refs}, plans, tasks)

    def choose_batching(self, rates: list[float]) -> dict[float, bool]:
        return self.core.choose_batching(rates)

    def set_batching(self, choices: dict[float, bool]) -> None:
        self.core.set_batching(choices)

    def batching_reasons(self) -> dict[float, str]:
        return dict(self.core.reasons)

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def pid(self) -> int:
        return os.getpid()

    def data_ref_ids(self) -> list[str]:
        """Ids of the stored arrays this host reads."""
        return self._refs


class RayPool:
    """Backend that trains a round's tasks on a pool of `DeviceHost` actors."""

    def __init__(self, spec: ModelSpec, trainer: Trainer, data: SharedData, hosts: Optional[int],
                 hosts_per: str = "cpu", host_options: Optional[dict[str, Any]] = None,
                 rates: Sequence[float] = ()) -> None:
        # The driver put the data once; every host on a node maps the same stored copy, and a
        # replacement host reads it again from the same refs.
        self._args = (spec, trainer, data)
        gpu_share = trainer.gpu_share if trainer.device == "cuda" else None
        self._opts = [{**o, **(host_options or {})}
                      for o in host_placements(hosts_per, hosts, trainer.torch_threads, gpu_share)]
        self.hosts = [self._spawn(h) for h in range(len(self._opts))]
        self.restarts = 0
        self._version_refs: dict[int, Any] = {}  # asynchronous modes: live versions in the object store
        self.choices: dict[float, bool] = dict(trainer.choices or ())
        self.reasons: dict[float, str] = {}   # why a rate trains one device at a time
        if trainer.batched != "off" and rates and not self.choices:
            # Checked (and, for auto, measured) once, by host 0, and adopted by all: every host
            # of a run trains alike.
            self.choices = ray.get(self.hosts[0].choose_batching.remote(list(rates)))
            self.reasons = ray.get(self.hosts[0].batching_reasons.remote())
            ray.get([h.set_batching.remote(self.choices) for h in self.hosts[1:]])

    def _spawn(self, h: int):
        # Restarts are ours, not Ray's: a replacement host is built from the same shared refs,
        # with the same placement, unless it was pinned to a node that is gone: then anywhere.
        opts = self._opts[h]
        node = getattr(opts.get("scheduling_strategy"), "node_id", None)
        if node is not None and not node_alive(node):
            opts = {**opts, "scheduling_strategy": "SPREAD"}
        host = DeviceHost.options(**opts).remote(*self._args, h)  # type: ignore[attr-defined]  # ray.remote's stub keeps the plain class
        if getattr(self, "choices", None):
            host.set_batching.remote(self.choices)  # a replacement trains as its predecessor did
        return host

    def train(self, round_idx: int, params: dict[str, torch.Tensor], plans: dict[int, SubmodelPlan],
              tasks: list[TrainTask], server: Optional[dict[str, torch.Tensor]] = None) -> list[HostResult]:
        pref = ray.put({k: v.numpy() for k, v in params.items()})
        sref = None if server is None else ray.put({k: v.numpy() for k, v in server.items()})
        return self._gather([(h, self.hosts[h].train.remote(round_idx, pref, plans, share, sref))
                             for h, share in enumerate(balance(tasks, len(self.hosts))) if share], f"round {round_idx}")

    def _gather(self, futures: list, when: str) -> list:
        """The hosts' answers; a host that died is replaced and its devices get no report
        (they are recorded `failed`)."""
        out = []
        for h, f in futures:
            try:
                out.append(ray.get(f))
            except (RayActorError, WorkerCrashedError) as err:
                log.warning("device host %d lost in %s: %s", h, when, type(err).__name__)
                self.hosts[h] = self._spawn(h)
                self.restarts += 1
        return out

    def train_groups(self, versions: dict[int, dict[str, torch.Tensor]], plans: dict[int, SubmodelPlan],
                     tasks: list[TrainTask], live: set[int]) -> list[GroupResult]:
        """Asynchronous modes: each version goes into the object store once and stays there while
        it is live; every host gets the refs of the versions its tasks start from."""
        for v in [v for v in self._version_refs if v not in live]:
            del self._version_refs[v]
        for v, params in versions.items():
            if v not in self._version_refs:
                self._version_refs[v] = ray.put({k: t.numpy() for k, t in params.items()})
        keep = sorted(live)
        futures = []
        for h, share in enumerate(balance(tasks, len(self.hosts))):
            if share:
                refs = {v: [self._version_refs[v]] for v in sorted({t.version for t in share})}
                futures.append((h, self.hosts[h].train_groups.remote(refs, plans, share, keep)))
        return self._gather(futures, "an asynchronous batch")

    @property
    def parallelism(self) -> int:
        """Hosts that train at once."""
        return len(self.hosts)

    def node_ids(self) -> list[str]:
        """Node of every host (to check the spread over a cluster)."""
        return ray.get([h.node_id.remote() for h in self.hosts])

    def pids(self) -> list[int]:
        return ray.get([h.pid.remote() for h in self.hosts])

    def data_ref_ids(self) -> list[list[str]]:
        """Ids of the stored arrays every host reads."""
        return ray.get([h.data_ref_ids.remote() for h in self.hosts])

    def arm_crash(self, host: int, round_idx: int) -> None:
        """Fault injection: host `host` dies half-way through round `round_idx`."""
        ray.get(self.hosts[host].arm_crash.remote(round_idx))
