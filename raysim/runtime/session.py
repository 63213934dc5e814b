"""Starting and joining Ray: a small local instance by default, an existing cluster by address."""

from __future__ import annotations

import logging
import os
import sys
import sysconfig
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any, Iterable, Iterator, Optional

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

import raysim


def start_ray(address: Optional[str], num_cpus: Optional[int], modules: Iterable[ModuleType] = ()) -> bool:
    """Connect to `address` or start a local instance; returns True if this call started Ray.

    On a cluster, raysim and `modules` (the user's plug-in modules, `user_modules`) travel
    with the job (Ray's runtime environment), so workers on other machines can import them.
    """
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    kwargs = dict(include_dashboard=False, logging_level=logging.ERROR, log_to_driver=True)
    if address:
        # On a cluster the workers may not have raysim installed: ship the package with the job.
        ray.init(address=address, runtime_env={"py_modules": [raysim, *modules]}, **kwargs)
    else:
        # "local": always a fresh instance of our own, never a `ray start` cluster found on the machine.
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1, **kwargs)
    return True


def pickle_by_value(modules: Iterable[ModuleType]) -> None:
    """Ship the classes and functions of `modules` to workers by value, not by import.

    A worker may not be able to import a user's module at all (a test file, a notebook's
    helper, a directory only on the driver's `sys.path`); by value it needs only raysim and
    the libraries the module imports.
    """
    from ray import cloudpickle  # noqa: PLC0415

    for mod in modules:
        cloudpickle.register_pickle_by_value(mod)


def user_modules(objects: Any) -> list[ModuleType]:
    """The top-level modules (or packages) that define a run's plug-in components.

    `objects` is a `Components` (or any object with the components as attributes). Left out:
    raysim itself, installed packages and the standard library (present on every worker), and
    `__main__` (whose objects Ray pickles by value).
    """
    installed = {str(Path(p).resolve()) for k, p in sysconfig.get_paths().items() if k in ("purelib", "platlib", "stdlib")}
    found: dict[str, ModuleType] = {}
    for obj in vars(objects).values() if hasattr(objects, "__dict__") else objects:
        target = getattr(obj, "func", obj)  # functools.partial: the function it binds
        name = getattr(target, "__module__", None) or type(target).__module__
        top = name.split(".")[0]
        mod = sys.modules.get(top)
        if top in ("raysim", "__main__", "builtins") or mod is None or not getattr(mod, "__file__", None):
            continue
        where = str(Path(mod.__file__).resolve())
        if any(where.startswith(p + os.sep) for p in installed):
            continue
        found[top] = mod
    return [found[k] for k in sorted(found)]


@contextmanager
def ray_session(address: Optional[str], num_cpus: Optional[int]) -> Iterator[None]:
    """Ray for the length of a block (e.g. a sweep's runs); shut down after only if started here."""
    started = start_ray(address, num_cpus)
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def cluster_cpus() -> int:
    """Whole CPUs known to the cluster."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def host_placements(hosts_per: str, hosts: Optional[int], torch_threads: int = 1) -> list[dict[str, Any]]:
    """Ray options of every device host, in host order.

    `cpu`: `hosts` hosts (default: one per CPU of the cluster) of one CPU each, SPREAD so that
    they fill different nodes before doubling up. `node`: one host on each alive node with
    CPUs (the first `hosts` by node id, if set), pinned to it and reserving as many CPUs as
    it runs torch threads: fewer processes (one torch runtime per node) for less parallelism.
    """
    if hosts_per == "node":
        nodes = sorted((n for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU", 0) >= 1),
                       key=lambda n: n["NodeID"])
        if hosts:
            nodes = nodes[:hosts]
        return [{"num_cpus": min(torch_threads, int(n["Resources"]["CPU"])),
                 "scheduling_strategy": NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)} for n in nodes]
    return [{"scheduling_strategy": "SPREAD"} for _ in range(hosts or cluster_cpus())]


def node_alive(node_id: str) -> bool:
    """Whether the cluster still has this node."""
    return any(n["NodeID"] == node_id and n.get("Alive") for n in ray.nodes())
