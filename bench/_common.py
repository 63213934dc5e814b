"""Helpers shared by the benchmarks: scenarios, machine facts, memory sampling, output.

Benchmarks are plain scripts (`.venv/bin/python bench/overhead.py`), not tests; each prints a
table and writes a JSON under bench/out/.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
WORKLOAD = ROOT / "bench" / "workload.yaml"


# ------------------------------------------------------------------------------ scenarios
def bench_overrides(per_round: int, devices: int, rounds: int) -> list[str]:
    """Overrides that make a scenario a clean training workload.

    Every selected device that can hold a submodel trains it in full: no over-commitment, no
    deadline. Evaluation runs only in the last round (the scenario schema always evaluates
    the last round), so benchmarks leave the last round out of their medians. No plots and
    one checkpoint at the end.
    """
    return [f"selection.per_round={per_round}", "selection.overcommit=0", f"fleet.devices={devices}",
            "deadline.seconds=null", f"rounds={rounds}", "eval.every=1000000", "eval.per_rate=false",
            "output.plots=false", f"output.checkpoint_every={rounds}", "runtime.num_cpus=2"]


def load_bench_scenario(per_round: int, devices: int, rounds: int, extra: Sequence[str] = (),
                        path: Path = WORKLOAD):
    """The benchmark workload (bench/workload.yaml) turned into a benchmark workload (see `bench_overrides`)."""
    from raysim.scenario.schema import load_scenario  # noqa: PLC0415

    return load_scenario(path, bench_overrides(per_round, devices, rounds) + list(extra))


# ------------------------------------------------------------------------------ Ray
def start_ray(num_cpus: int = 2) -> float:
    """Start a local Ray instance with explicit resources; returns the seconds it took."""
    import ray  # noqa: PLC0415

    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    t = time.perf_counter()
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=True)
    return time.perf_counter() - t


def stop_ray() -> None:
    import ray  # noqa: PLC0415

    if ray.is_initialized():
        ray.shutdown()


# ------------------------------------------------------------------------------ facts
def machine_info() -> dict[str, Any]:
    """CPU model, cores, memory, versions and the commit the numbers belong to."""
    info: dict[str, Any] = {"python": platform.python_version(), "cores": os.cpu_count(),
                            "platform": platform.platform()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory_gib"] = round(int(line.split()[1]) / 2**20, 1)
                break
    except OSError:
        pass
    for mod in ("torch", "ray", "numpy"):
        try:
            info[mod] = __import__(mod).__version__
        except ImportError:
            info[mod] = None
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True)
        info["commit"] = rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except OSError:
        info["commit"] = None
    try:
        info["loadavg_start"] = os.getloadavg()
    except OSError:
        pass
    return info


# ------------------------------------------------------------------------------ statistics
def median(xs: Iterable[float]) -> float:
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")


def spread(xs: Iterable[float]) -> tuple[float, float]:
    xs = [x for x in xs if x == x]
    return (min(xs), max(xs)) if xs else (float("nan"), float("nan"))


# ------------------------------------------------------------------------------ output
def print_table(rows: list[dict[str, Any]], cols: Optional[list[str]] = None, title: str = "") -> None:
    """A plain fixed-width table on stdout."""
    if not rows:
        return
    cols = cols or list(rows[0])
    cells = [[_fmt(r.get(c)) for c in cols] for r in rows]
    width = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    if title:
        print(f"\n{title}")
    print("  ".join(c.rjust(w) for c, w in zip(cols, width)))
    print("  ".join("-" * w for w in width))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, width)))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v != v:
            return "-"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.3f}"
    if isinstance(v, int):
        return f"{v:,}"
    return "-" if v is None else str(v)


def write_json(name: str, data: dict[str, Any], path: Optional[str] = None) -> Path:
    """Write `data` to bench/out/<name>-<stamp>.json (or `path`) and return where."""
    p = Path(path) if path else OUT / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_json_default))
    tmp.replace(p)
    return p


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)


# ------------------------------------------------------------------------------ memory
def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may contain spaces and parentheses: split after the last ')'.
        ppid = int(stat[stat.rfind(b")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    return kids


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants (Ray's GCS, raylet and worker processes included)."""
    kids = _children_map()
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU seconds consumed so far by these processes (all their threads)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / _TICK


def tree_cpu_seconds(root: Optional[int] = None) -> float:
    """CPU seconds of a process and all its live descendants (Ray's processes included)."""
    return cpu_seconds(process_tree(root or os.getpid()))


def _rss_pss(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of a process in bytes (PSS shares shared pages out among their users)."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
    except OSError:
        pass
    return rss, pss


class TreeMemory:
    """Background sampler of the process tree's memory: sum of RSS (and of PSS), peak kept.

    Summed RSS counts a page shared by several processes (the object store's shared memory,
    torch's libraries) once per process, so it overstates real use; summed PSS divides every
    shared page among its users and adds up to what the tree really holds.
    """

    def __init__(self, root: Optional[int] = None, interval: float = 0.25) -> None:
        self.root = root or os.getpid()
        self.interval = interval
        self.peak_rss = 0
        self.peak_pss = 0
        self.peak_procs = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="tree-memory")

    def sample(self) -> tuple[int, int, int]:
        pids = process_tree(self.root)
        rss = pss = 0
        for p in pids:
            r, s = _rss_pss(p)
            rss += r
            pss += s
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_pss = max(self.peak_pss, pss)
        self.peak_procs = max(self.peak_procs, len(pids))
        return rss, pss, len(pids)

    def reset(self) -> None:
        self.peak_rss = self.peak_pss = self.peak_procs = 0

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> "TreeMemory":
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def leftover_ray_processes() -> list[str]:
    """Ray worker processes still alive (should be none after a benchmark)."""
    out = subprocess.run(["ps", "-eo", "pid,ppid,args"], capture_output=True, text=True).stdout
    me = os.getpid()
    tree = set(process_tree(me))
    return [line for line in out.splitlines() if "ray::" in line and int(line.split()[0]) in tree]
