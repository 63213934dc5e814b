"""Starting and joining Ray: a small local instance by default, an existing cluster by address.

Without an address raysim always starts a private local instance (`address="local"`), even on
a machine where a `ray start` cluster runs or left its address file behind. With one it joins
that cluster: it first checks that something listens there (a wrong address would otherwise
make Ray retry for minutes), turns on token authentication when the cluster requires it (a
driver in token mode cannot serve a cluster without it), and reports a refused connection as one line that
names the fix.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import sysconfig
import tempfile
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any, Iterable, Iterator, Optional

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from raysim.errors import ClusterError, one_line

# The package's directory, shipped to a cluster's workers that may not have raysim installed.
RAYSIM_DIR = str(Path(__file__).resolve().parents[1])

PROBE_TIMEOUT_S = 5.0


def start_ray(address: Optional[str], num_cpus: Optional[int], modules: Iterable[ModuleType] = ()) -> bool:
    """Connect to `address` or start a local instance; returns True if this call started Ray.

    On a cluster, raysim and `modules` (the user's plug-in modules, `user_modules`) travel
    with the job (Ray's runtime environment), so workers on other machines can import them.
    """
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    kwargs: dict[str, Any] = dict(include_dashboard=False, logging_level=logging.ERROR, log_to_driver=True)
    if address:
        join_cluster(address, kwargs, modules)
    else:
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1, **kwargs)
        from raysim.runtime.reaper import watch_local_instance  # noqa: PLC0415

        watch_local_instance()
    return True


def token_available() -> bool:
    """Whether this machine holds a Ray authentication token where Ray looks for one."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    return Path(path).is_file() if path else (Path.home() / ".ray" / "auth_token").is_file()


def resolve_address(address: str) -> str:
    """`host:port` of the cluster: `auto` is what RAY_ADDRESS or the last `ray start` on this
    machine names; a `ray://` client address is returned as it is."""
    if address != "auto":
        return address
    found = os.environ.get("RAY_ADDRESS") or ray._private.services.find_bootstrap_address(None)
    if not found or found == "auto":
        raise ClusterError("--address auto: no Ray cluster was started on this machine (run `ray start --head` "
                           "first, or give the head's HOST:PORT)")
    return found


def probe(address: str) -> None:
    """ClusterError unless something accepts TCP connections at `host:port`."""
    if address.startswith("ray://") or address == "local":
        return
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ClusterError(f"--address {address}: expected HOST:PORT (the head's `ray start --head --port`), or auto")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_TIMEOUT_S):
            pass
    except OSError as err:
        why = err.strerror or type(err).__name__
        raise ClusterError(f"--address {address}: no Ray cluster answers there ({why}); start one with "
                           f"`ray start --head --port={port}` or check the address") from None


def _enable_token_auth() -> None:
    try:
        from ray._private.authentication.authentication_token_setup import (  # noqa: PLC0415
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # a Ray without token authentication: nothing to enable
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def _is_auth_failure(err: BaseException) -> bool:
    seen: Optional[BaseException] = err
    while seen is not None:
        text = str(seen)
        if type(seen).__name__ == "AuthenticationError" or "InvalidAuthToken" in text or "auth" in text.lower():
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _auth_fix(shown: str, have: str) -> str:
    return (f"--address {shown}: the cluster requires token authentication and {have}; copy the head's "
            f"~/.ray/auth_token here (or set RAY_AUTH_TOKEN)")


def needs_token(target: str) -> bool:
    """Whether the cluster's GCS refuses a client without a token (one quick request; a bare
    GCS client fails at once, where `ray.init` would retry for 20 s)."""
    if target.startswith("ray://"):
        return False
    try:
        from ray._raylet import GcsClient  # type: ignore[attr-defined]  # noqa: PLC0415 (compiled module: no stub for it)
    except ImportError:
        return False
    with _stderr_held():
        try:
            GcsClient(address=target)
        except Exception as err:  # noqa: BLE001 - any other failure is left to ray.init to report
            return _is_auth_failure(err)
    return False


@contextmanager
def _stderr_held() -> Iterator[Any]:
    """Hold what is written to file descriptor 2 (Ray's C++ core logs a warning a second while
    it retries a refused connection) until the block ends; yields a function returning it."""
    sys.stderr.flush()
    saved = os.dup(2)
    buf = tempfile.TemporaryFile()
    text: list[str] = []
    try:
        os.dup2(buf.fileno(), 2)
        yield lambda: "".join(text)
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        buf.seek(0)
        text.append(buf.read().decode(errors="replace"))
        buf.close()


def join_cluster(address: str, kwargs: dict[str, Any], modules: Iterable[ModuleType] = ()) -> None:
    """`ray.init` on an existing cluster, every failure to connect as one ClusterError."""
    target = resolve_address(address)
    probe(target)
    shown = address if address == target else f"{address} ({target})"
    # `ray start --head` enables token authentication when a token exists (it creates one on
    # first use); a driver must then send it, and Ray only does so by itself for `auto`. A
    # driver in token mode cannot serve a cluster without it, so the cluster is asked first.
    if "RAY_AUTH_MODE" not in os.environ and needs_token(target):
        if not token_available():
            raise ClusterError(_auth_fix(shown, "no token was found on this machine"))
        _enable_token_auth()
    failure: Optional[BaseException] = None
    with _stderr_held() as held:
        try:
            # On a cluster the workers may not have raysim installed: ship the package with the job.
            ray.init(address=target, runtime_env={"py_modules": [RAYSIM_DIR, *modules]}, **kwargs)
        except Exception as err:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, AuthenticationError
            failure = err
    if failure is None:
        sys.stderr.write(held())  # joined: whatever Ray said meanwhile is passed on
        return
    if _is_auth_failure(failure):
        have = "this machine's token was refused" if token_available() else "no token was found on this machine"
        raise ClusterError(_auth_fix(shown, have)) from None
    raise ClusterError(f"--address {shown}: cannot join the Ray cluster ({one_line(failure)[:200]})") from None


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
        file = getattr(mod, "__file__", None) if mod is not None else None
        if top in ("raysim", "__main__", "builtins") or mod is None or not file:
            continue
        where = str(Path(file).resolve())
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
            stop_ray()


def stop_ray() -> None:
    """Shut down the Ray this process started, and release its watcher."""
    ray.shutdown()
    from raysim.runtime.reaper import release  # noqa: PLC0415

    release()


def cluster_cpus() -> int:
    """Whole CPUs known to the cluster."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def check_hosts_fit(sc: Any) -> None:
    """ClusterError when `runtime.hosts` pooled hosts of one CPU each cannot all start on the
    cluster (Ray would wait for the missing CPUs for ever)."""
    rt = sc.runtime
    if rt.placement != "pooled" or rt.hosts_per != "cpu" or not rt.hosts:
        return
    have = cluster_cpus()
    if rt.hosts > have:
        raise ClusterError(f"runtime.hosts: {rt.hosts} device hosts take a CPU each, but the cluster has {have} CPUs "
                           f"(set runtime.hosts to at most {have}, or leave it unset for one host a CPU)")


def host_placements(hosts_per: str, hosts: Optional[int], torch_threads: int = 1,
                    gpu_share: Optional[float] = None) -> list[dict[str, Any]]:
    """Ray options of every device host, in host order.

    `cpu`: `hosts` hosts (default: one per CPU of the cluster) of one CPU each, SPREAD so that
    they fill different nodes before doubling up. `node`: one host on each alive node with
    CPUs (the first `hosts` by node id, if set), pinned to it and reserving as many CPUs as
    it runs torch threads: fewer processes (one torch runtime per node) for less parallelism.
    `gpu_share` (GPU hosts): every host also reserves that share of a GPU; `cpu` starts as many
    as the free GPUs hold by default, `node` uses only nodes with that much GPU.
    """
    gpu = {"num_gpus": gpu_share} if gpu_share else {}
    if hosts_per == "node":
        nodes = sorted((n for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU", 0) >= 1
                        and (not gpu_share or n["Resources"].get("GPU", 0) >= gpu_share)),
                       key=lambda n: n["NodeID"])
        if hosts:
            nodes = nodes[:hosts]
        return [{"num_cpus": min(torch_threads, int(n["Resources"]["CPU"])), **gpu,
                 "scheduling_strategy": NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)} for n in nodes]
    if gpu_share:
        from raysim.runtime.gpu import gpu_hosts  # noqa: PLC0415

        hosts = gpu_hosts(gpu_share, hosts, cluster_cpus())
    return [{"scheduling_strategy": "SPREAD", **gpu} for _ in range(hosts or cluster_cpus())]


def node_alive(node_id: str) -> bool:
    """Whether the cluster still has this node."""
    return any(n["NodeID"] == node_id and n.get("Alive") for n in ray.nodes())
