"""Parameter sweeps: a scenario run at every point of a grid, into one parent directory.

    raysim sweep scenarios/quickstart.yaml --grid deadline.seconds=30,120 --grid seed=0,1

gives `runs/quickstart-sweep-<stamp>/` holding `sweep.json`, the report, and one run directory
per point, named after the point (`deadline.seconds=30,seed=0/`, ...); each point's scenario is
named `<name>/<point>`. Every point is validated before anything runs, so a bad grid costs
nothing. Ray is started once for the whole sweep.

    >>> plan = plan_sweep("scenarios/quickstart.yaml", ["deadline.seconds=30,120"], ["rounds=5"])
    >>> [p.label for p in plan.points]
    ['deadline.seconds=30', 'deadline.seconds=120']

and `run_sweep` runs them (one run directory each, under the scenario's `output.dir`):

    result = run_sweep(plan)
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from raysim.errors import ScenarioError, SweepError, gist
from raysim.rundir.reader import SWEEP_FILE
from raysim.scenario.schema import Scenario, load_scenario

_OPEN, _CLOSE = "[{(", "]})"


@dataclass(frozen=True)
class Point:
    """One point of the grid: its overrides, its label, and its validated scenario."""

    overrides: tuple[str, ...]
    scenario: Scenario
    dirname: str

    @property
    def label(self) -> str:
        """`key=value,...` in the order the grid was given."""
        return ",".join(self.overrides)


@dataclass(frozen=True)
class SweepPlan:
    """A validated sweep: the base scenario file and overrides, the grid, and every point."""

    source: Path
    name: str
    overrides: tuple[str, ...]
    grid: dict[str, list[str]]
    points: list[Point]


@dataclass
class PointResult:
    """Where a point's run went and how it ended (`complete` or `failed`)."""

    point: Point
    path: Path
    status: str
    wall_s: float = 0.0
    error: Optional[str] = None


@dataclass
class SweepResult:
    """The sweep's parent directory and the result of every point that ran."""

    path: Path
    points: list[PointResult] = field(default_factory=list)

    @property
    def run_dirs(self) -> list[Path]:
        return [p.path for p in self.points if p.status == "complete"]


def split_values(text: str) -> list[str]:
    """Split `v1,v2,...` at the commas outside brackets, so `[1,0.5],[1]` is two values.

    Raises SweepError when the brackets do not balance.
    """
    values: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in text:
        if ch in _OPEN:
            depth += 1
        elif ch in _CLOSE:
            depth -= 1
            if depth < 0:
                break
        if ch == "," and depth == 0:
            values.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if depth != 0:
        raise SweepError(f"{text!r}: unbalanced brackets")
    values.append("".join(cur).strip())
    return values


def parse_grid(items: Sequence[str]) -> dict[str, list[str]]:
    """`["key=v1,v2", "key2=w1"]` -> `{"key": ["v1", "v2"], "key2": ["w1"]}` (order kept)."""
    if not items:
        raise SweepError("sweep: give at least one --grid KEY=V1,V2,...")
    grid: dict[str, list[str]] = {}
    for item in items:
        if "=" not in item:
            raise SweepError(f"--grid {item!r}: expected KEY=V1,V2,...")
        key, text = (s.strip() for s in item.split("=", 1))
        if not key:
            raise SweepError(f"--grid {item!r}: empty key")
        if key in grid:
            raise SweepError(f"--grid {key}: given twice")
        if not text:
            raise SweepError(f"--grid {key}: no values")
        try:
            values = split_values(text)
        except SweepError as err:
            raise SweepError(f"--grid {key}: {err}") from None
        if any(v == "" for v in values):
            raise SweepError(f"--grid {item!r}: empty value")
        dup = next((v for i, v in enumerate(values) if v in values[:i]), None)
        if dup is not None:
            raise SweepError(f"--grid {key}: value {dup!r} given twice")
        grid[key] = values
    return grid


def expand(grid: dict[str, list[str]]) -> list[tuple[str, ...]]:
    """Every combination of the grid's values as override tuples (the last key varies fastest)."""
    keys = list(grid)
    return [tuple(f"{k}={v}" for k, v in zip(keys, combo)) for combo in itertools.product(*grid.values())]


def dir_name(label: str, index: int) -> str:
    """A safe directory name for a point: its label with path separators and spaces replaced."""
    safe = re.sub(r"[^A-Za-z0-9._=,+\-\[\]]", "_", label)
    return safe if 0 < len(safe) <= 180 else f"point-{index:04d}"


def plan_sweep(scenario: str | Path, grid_items: Sequence[str], overrides: Sequence[str] = ()) -> SweepPlan:
    """Parse the grid and validate the scenario at every point; raises ScenarioError (one line)."""
    base = load_scenario(scenario, list(overrides))
    grid = parse_grid(grid_items)
    points, seen = [], set()
    for i, point in enumerate(expand(grid)):
        label = ",".join(point)
        try:
            sc = load_scenario(scenario, [*overrides, *point])
        except ScenarioError as err:
            raise SweepError(f"--grid {label}: {err}") from None
        name = dir_name(label, i)
        if name in seen:  # two labels that differ only in characters a path cannot hold
            name = f"{name}-{i:04d}"
        seen.add(name)
        # The name holds the directory name, not the raw label: it stays a valid run name.
        points.append(Point(point, sc.model_copy(update={"name": f"{base.name}/{name}"}), name))
    return SweepPlan(Path(scenario), base.name, tuple(overrides), grid, points)


def run_sweep(plan: SweepPlan, out_root: Optional[str | Path] = None, address: Optional[str] = None,
              progress: bool = True, parallel: int = 1,
              on_point: Optional[Callable[[PointResult], None]] = None) -> SweepResult:
    """Run every point of `plan` under one Ray session into `<out_root>/<name>-sweep-<stamp>/`.

    `parallel` > 1 runs that many points at once, each on its share of the cluster's CPUs
    (`runtime.hosts` = CPUs // parallel unless the scenario sets it); results do not depend on
    the number of hosts. The first point that fails stops the sweep (its error is raised after
    `sweep.json` records it); finished points stay readable.
    """
    # Imported here: planning (and rejecting) a grid must not wait for torch and Ray to load.
    from raysim.rundir.writer import new_run_dir  # noqa: PLC0415
    from raysim.runtime.runner import run  # noqa: PLC0415
    from raysim.runtime.session import cluster_cpus, ray_session  # noqa: PLC0415

    if parallel < 1:
        raise SweepError(f"--parallel {parallel}: must be at least 1")
    first = plan.points[0].scenario
    parent = new_run_dir(out_root or first.output.dir, f"{plan.name}-sweep")
    book = _Book(parent, plan)
    result = SweepResult(parent)

    def one(point: Point, hosts: Optional[int]) -> PointResult:
        sc = point.scenario
        if hosts is not None and sc.runtime.hosts is None:
            sc = sc.model_copy(update={"runtime": sc.runtime.model_copy(update={"hosts": hosts})})
        path = parent / point.dirname
        book.update(point, status="running", dir=point.dirname)
        t0 = time.perf_counter()
        try:
            run(sc, address=address, progress=progress and parallel == 1, run_dir=path)
        except BaseException as err:
            # the error in a few words (one raised in a Ray actor: the original's, not the remote traceback)
            res = PointResult(point, path, "failed", time.perf_counter() - t0, gist(err, 300))
            book.update(point, status="failed", wall_s=res.wall_s, error=res.error)
            _notify(on_point, res)
            raise
        res = PointResult(point, path, "complete", time.perf_counter() - t0)
        book.update(point, status="complete", wall_s=round(res.wall_s, 3))
        _notify(on_point, res)
        return res

    with ray_session(address or first.runtime.address, first.runtime.num_cpus):
        if parallel == 1:
            for point in plan.points:
                result.points.append(one(point, None))
        else:
            hosts = max(1, cluster_cpus() // parallel)
            result.points.extend(_in_threads(lambda p: one(p, hosts), plan.points, parallel))
    book.finish()
    return result


def _in_threads(job: Callable[[Point], PointResult], points: list[Point], width: int) -> list[PointResult]:
    """`job` on every point, `width` at a time, in grid order; the first failure stops the rest."""
    pool = ThreadPoolExecutor(max_workers=width, thread_name_prefix="sweep")
    try:
        futures = [pool.submit(job, p) for p in points]
        wait(futures, return_when=FIRST_EXCEPTION)
        for f in futures:
            f.cancel()  # only those not started yet
        wait(futures)
    finally:
        # Interrupted: do not wait for running points; shutting Ray down ends them.
        pool.shutdown(wait=False, cancel_futures=True)
    ran = [f for f in futures if not f.cancelled()]
    errors = [e for f in ran if (e := f.exception()) is not None]
    if errors:
        raise errors[0]
    return [f.result() for f in ran]


def _notify(callback: Optional[Callable[[PointResult], None]], res: PointResult) -> None:
    if callback is not None:
        callback(res)


class _Book:
    """`sweep.json`: the grid and each point's state, rewritten atomically on every change."""

    def __init__(self, parent: Path, plan: SweepPlan) -> None:
        self.path = parent / SWEEP_FILE
        self.lock = threading.Lock()
        self.data: dict[str, Any] = {
            "status": "running", "name": plan.name, "scenario": str(plan.source),
            "overrides": list(plan.overrides), "grid": plan.grid,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "points": {p.label: {"overrides": list(p.overrides), "dir": p.dirname, "status": "pending"}
                       for p in plan.points},
        }
        self._write()

    def update(self, point: Point, **fields: Any) -> None:
        with self.lock:
            self.data["points"][point.label].update(fields)
            states = {p["status"] for p in self.data["points"].values()}
            if "failed" in states:
                self.data["status"] = "failed"
            self._write()

    def finish(self) -> None:
        with self.lock:
            self.data["status"] = "complete"
            self.data["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            self._write()

    def _write(self) -> None:
        from raysim.rundir.writer import atomic_write_text  # noqa: PLC0415

        atomic_write_text(self.path, json.dumps(self.data, indent=2))
