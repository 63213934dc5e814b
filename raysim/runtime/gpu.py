"""GPU device hosts: which torch device a run trains on, and how GPUs are shared out.

`runtime.device` is `auto`, `cpu` or `cuda`. It is resolved once per run, where the run's Ray
is known: `cuda` needs GPUs (on this machine for a local instance, in the cluster otherwise;
without them it is bad input, one line); `auto` is `cuda` exactly when the cluster has GPUs
and placement is pooled. Every device host then reserves `runtime.gpus_per_host` of a GPU
(Ray's fractional `num_gpus`) and may use that share of the GPU's memory; the coordinator,
which evaluates, reserves a small share of its own when its node has a GPU.

    check_device_here("cuda", address=None)     # before Ray starts: DeviceError without a GPU
    device = resolve_device("auto", "pooled")   # after: "cuda" or "cpu"
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Optional, Sequence

from raysim.errors import DeviceError
from raysim.hosts.cuda import EVAL_GPU_SHARE


def _cuda_here() -> bool:
    import torch  # noqa: PLC0415

    return bool(torch.cuda.is_available())


def no_gpu_message(where: str) -> str:
    return (f"runtime.device: cuda, but {where} has no CUDA GPU (torch.cuda.is_available() is false); "
            f"use runtime.device: cpu or auto")


def check_device_here(requested: str, address: Optional[str]) -> None:
    """Before Ray starts: a local run that asks for `cuda` needs a GPU on this machine."""
    if requested == "cuda" and not address and not _cuda_here():
        raise DeviceError(no_gpu_message("this machine"))


def local_device(requested: str) -> str:
    """The device of an in-process run (no Ray): this machine's GPU, if asked for or `auto`."""
    check_device_here(requested, None)
    return "cuda" if requested != "cpu" and _cuda_here() else "cpu"


def cluster_gpus() -> float:
    """GPUs the running Ray cluster knows of."""
    import ray  # noqa: PLC0415

    return float(ray.cluster_resources().get("GPU", 0.0))


def resolve_device(requested: str, placement: str) -> str:
    """`cpu` or `cuda` for a run on the connected Ray (DeviceError: `cuda` without GPUs)."""
    if requested == "cpu" or placement != "pooled":
        return "cpu"
    gpus = cluster_gpus()
    if requested == "cuda" and gpus <= 0:
        raise DeviceError(no_gpu_message("the Ray cluster"))
    return "cuda" if gpus > 0 else "cpu"


def with_device(engine: Any, device: str) -> Any:
    """The coordinator's `Engine` with its hosts and evaluation on `device`."""
    return replace(engine, trainer=replace(engine.trainer, device=device), cfg=replace(engine.cfg, device=device))


def hosts_that_fit(share: float, node_gpus: Sequence[float], used: float) -> int:
    """Hosts of `share` of a GPU that fit, GPU by GPU: Ray never splits a fractional request
    across two GPUs, so two GPUs hold two hosts of 0.6, not three. `node_gpus`: each node's
    GPUs; `used`: what is taken already (the evaluator's share, other work), packed onto the
    first GPUs as Ray packs fractions.

        >>> hosts_that_fit(0.6, [2.0], 0.05)
        2
    """
    room: list[float] = []
    for g in node_gpus:
        room += [1.0] * int(math.floor(g + 1e-9))
        if g - math.floor(g + 1e-9) > 1e-9:
            room.append(g - math.floor(g + 1e-9))
    for i, r in enumerate(room):
        take = min(used, r)
        room[i], used = r - take, used - take
    return sum(int(math.floor(r / share + 1e-9)) for r in room)


def gpu_hosts(share: float, hosts: Optional[int], cpus: int) -> int:
    """How many hosts of `share` of a GPU each to start: `hosts` if given (DeviceError if the
    free GPUs cannot hold them: Ray would wait for ever), else as many as fit, at most one per CPU."""
    import ray  # noqa: PLC0415

    free = float(ray.available_resources().get("GPU", 0.0))
    gpus = [float(n["Resources"].get("GPU", 0.0)) for n in ray.nodes() if n.get("Alive")]
    fit = min(int(math.floor(free / share + 1e-9)), hosts_that_fit(share, gpus, max(0.0, sum(gpus) - free)))
    if hosts is not None:
        if hosts > fit:
            raise DeviceError(f"runtime.hosts: {hosts} hosts of runtime.gpus_per_host {share:g} need "
                              f"{hosts * share:g} GPUs, and the {free:g} free hold {fit} (a host's share "
                              f"never spans two GPUs); lower one of them")
        return hosts
    if fit < 1:
        raise DeviceError(f"runtime.gpus_per_host: {share:g} of a GPU is more than any GPU has free "
                          f"({free:g} free in all)")
    return min(fit, cpus)


def coordinator_gpu_options(node_id: str) -> dict[str, Any]:
    """Ray options that give the coordinator a small GPU share for evaluation when its node
    has one free (else none: it evaluates on its CPU)."""
    import ray  # noqa: PLC0415

    for n in ray.nodes():
        if n["NodeID"] == node_id and n.get("Alive") and n["Resources"].get("GPU", 0.0) >= EVAL_GPU_SHARE:
            return {"num_gpus": EVAL_GPU_SHARE}
    return {}
