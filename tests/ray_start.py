"""A real Ray cluster started with `ray start`, as a user would, and stopped by pid.

Every `ray start --block` runs in a session of its own, so the processes it starts (GCS,
raylet, agents, workers) are exactly the processes of that session; stopping the cluster
signals those pids and nothing else (never `ray stop`, which would stop every Ray on the
machine).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def session_pids(sid: int) -> list[int]:
    """Live (non-zombie) processes whose session id is `sid`."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] != "Z" and int(fields[3]) == sid:
            out.append(int(entry))
    return out


class RayStartNode:
    """One `ray start --block` node (head or joining), in its own session."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._out = open(log, "w")
        self.proc = subprocess.Popen([RAY, "start", "--block", *args], env=env, stdout=self._out,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def pids(self) -> list[int]:
        return session_pids(self.proc.pid)

    def stop(self, grace: float = 2.0) -> list[int]:
        """SIGTERM every process of the node's session, then SIGKILL what is left; returns what
        is still alive afterwards (nothing, normally). A head's `ray start --block` and its GCS
        were seen to outlive SIGTERM by more than 15 s (the rest goes within a second): a longer
        grace only waits for the SIGKILL."""
        for sig, wait_s in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            for pid in self.pids():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.time() + wait_s
            while self.pids() and time.time() < deadline:
                time.sleep(0.2)
            try:
                self.proc.wait(timeout=0.1)
            except subprocess.TimeoutExpired:
                pass
        self._out.close()
        return self.pids()


class PortTaken(AssertionError):
    """A node could not bind a port picked free a moment before: another process took it."""


# What Ray's GCS and raylet say when a port they were given is in use.
_TAKEN = ("Address already in use", "Failed to start the grpc server", "failed to bind")


def _exited(node: "RayStartNode") -> AssertionError:
    log = node.log.read_text()[-2000:]
    kind = PortTaken if any(s in log for s in _TAKEN) else AssertionError
    return kind(f"ray start exited ({node.proc.returncode}): {log}")


def wait_for_nodes(address: str, n: int, env: dict[str, str], timeout: float = 120.0,
                   watch: Optional["RayStartNode"] = None) -> None:
    """Wait until the cluster at `address` has `n` alive nodes (asked from a subprocess, so
    the caller's process never joins the cluster); `watch`: a node whose exit ends the wait."""
    code = ("import ray,sys; ray.init(address=sys.argv[1], logging_level='ERROR'); "
            "print(sum(1 for x in ray.nodes() if x['Alive']))")
    deadline = time.time() + timeout
    last = ""
    while time.time() < deadline:
        if watch is not None and watch.proc.poll() is not None:
            raise _exited(watch)
        p = subprocess.run([sys.executable, "-c", code, address], env=env, capture_output=True, text=True,
                           timeout=120)
        last = p.stdout.strip() or p.stderr.strip()[-500:]
        if p.returncode == 0 and last.isdigit() and int(last) >= n:
            return
        time.sleep(1.0)
    raise AssertionError(f"cluster at {address} did not reach {n} nodes: {last}")


def start_cluster(tmp: Path, env: dict[str, str], head_cpus: int = 1, worker_cpus: int = 1,
                  ) -> tuple[str, list[RayStartNode]]:
    """A head and one joining node on loopback, on different ports, started as the README
    says (token authentication as `ray start` sets it up by default). A port picked free can
    be taken before Ray binds it (other Ray instances on the machine pick ports at random):
    then the cluster is started again on new ports, up to three times."""
    for attempt in range(3):
        try:
            return _start_cluster(tmp, env, head_cpus, worker_cpus)
        except PortTaken:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _start_cluster(tmp: Path, env: dict[str, str], head_cpus: int, worker_cpus: int,
                   ) -> tuple[str, list[RayStartNode]]:
    port = free_port()
    address = f"127.0.0.1:{port}"
    common = ["--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    head = RayStartNode(["--head", f"--port={port}", f"--num-cpus={head_cpus}", "--include-dashboard=false", *common],
                        env, tmp / "head.log")
    nodes = [head]
    try:
        _wait_listening(port, head)
        worker_env = {**env, "RAY_AUTH_MODE": "token"}
        nodes.append(RayStartNode([f"--address={address}", f"--num-cpus={worker_cpus}",
                                   f"--node-manager-port={free_port()}", *common], worker_env, tmp / "worker.log"))
        wait_for_nodes(address, 2, worker_env, watch=nodes[-1])
    except BaseException:
        for node in nodes:
            node.stop()
        raise
    return address, nodes


def _wait_listening(port: int, node: RayStartNode, timeout: float = 90.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if node.proc.poll() is not None:
            raise _exited(node)
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise AssertionError(f"ray start head not listening on {port}: {node.log.read_text()[-2000:]}")


def token_env(home: Path, base: Optional[dict[str, str]] = None) -> dict[str, str]:
    """An environment whose home holds a fresh Ray token, as on a machine where Ray has been
    used (`ray start --head` then turns token authentication on)."""
    env = {k: v for k, v in (base or os.environ).items() if not k.startswith("RAY_AUTH")}
    env.pop("RAY_ADDRESS", None)
    env["HOME"] = str(home)
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    (home / ".ray").mkdir(parents=True, exist_ok=True)
    import uuid  # noqa: PLC0415

    (home / ".ray" / "auth_token").write_text(uuid.uuid4().hex + uuid.uuid4().hex)
    return env
