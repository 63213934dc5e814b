"""Resuming a run: check that the run directory, its scenario and its checkpoint belong together.

A resume continues a run exactly as it was started, so everything is checked before Ray starts
and before anything in the directory is touched:

* the directory is a run that can continue: readable manifest, not `complete`, not being
  written right now by a live driver on this host;
* its `scenario.yaml` is the one the run started with (the manifest keeps its hash);
* `--set` overrides change only how the run is executed (`RESUME_SAFE`), never what it computes;
* the newest checkpoint is readable and holds the parameters of the scenario's model, with the
  same names and shapes.

Every failure is a `RunError` (one line, exit code 2) and leaves the directory as it was.
"""

from __future__ import annotations

import hashlib
import os
import platform
from pathlib import Path
from typing import Any, Mapping, Optional

from raysim.rundir.reader import RunError, latest_checkpoint, load_checkpoint, read_manifest
from raysim.scenario.schema import Scenario, ScenarioError, load_scenario

# Fields whose value does not change a run's numbers (test_cluster and test_runtime check
# that hosts and layouts give identical results); everything else is the run's identity.
RESUME_SAFE = ("runtime.address", "runtime.num_cpus", "runtime.hosts", "runtime.hosts_per",
               "runtime.coordinator_restarts", "output.dir", "output.plots", "output.tensorboard")


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def changed_fields(before: Scenario, after: Scenario) -> list[str]:
    """Dotted names of the fields whose values differ."""
    a, b = _flat(before.model_dump(mode="json")), _flat(after.model_dump(mode="json"))
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def _driver_alive(manifest: Mapping[str, Any]) -> Optional[int]:
    """The pid of the driver still writing this run on this host, if it is alive."""
    drv = manifest.get("driver")
    if not isinstance(drv, dict) or drv.get("host") != platform.node():
        return None
    pid = drv.get("pid")
    if not isinstance(pid, int) or pid == os.getpid():
        return None
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return pid if b"raysim" in cmd else None


def resume_scenario(run_dir: Path, overrides: list[str]) -> Scenario:
    """The scenario to continue `run_dir` with (its own, plus execution-only overrides)."""
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir, what="--resume")
    status = manifest.get("status")
    if status == "complete":
        raise RunError(f"--resume {run_dir}: the run is complete; nothing to resume (a complete run is never "
                       f"changed: start a new run for other settings)")
    pid = _driver_alive(manifest) if status == "running" else None
    if pid is not None:
        raise RunError(f"--resume {run_dir}: the run is still being written by raysim (pid {pid}); stop it first")
    yaml_path = run_dir / "scenario.yaml"
    if not yaml_path.is_file():
        raise RunError(f"--resume {run_dir}: not a run directory (no scenario.yaml)")
    want = manifest.get("scenario_sha256")
    if want is not None and file_sha256(yaml_path) != want:
        raise RunError(f"--resume {run_dir}: scenario.yaml was changed after the run started; restore it "
                       f"or start a new run")
    try:
        stored = load_scenario(yaml_path)
        sc = load_scenario(yaml_path, overrides)
    except ScenarioError as err:
        raise RunError(f"--resume {run_dir}: {err}") from None
    bad = [k for k in changed_fields(stored, sc) if k not in RESUME_SAFE]
    if bad:
        raise RunError(f"--resume {run_dir}: --set {bad[0]} would change the run (a resume continues it as "
                       f"it started; only {', '.join(RESUME_SAFE)} may change); start a new run instead")
    return sc


def check_checkpoint(run_dir: Path, shapes: Mapping[str, tuple[int, ...]], rounds: int) -> Optional[dict[str, Any]]:
    """The newest checkpoint's state after checking it against the scenario's model (None when
    the run has no checkpoint yet)."""
    ck = latest_checkpoint(run_dir)
    if ck is None:
        return None
    try:
        state = load_checkpoint(ck)
    except Exception as err:  # noqa: BLE001 - torch raises many types for a corrupt file
        msg = " ".join(str(err).split())[:200] or type(err).__name__
        raise RunError(f"{ck}: unreadable checkpoint ({msg}); delete it to resume from the one before") from None
    if not isinstance(state, dict) or not {"round", "clock", "params", "server"} <= state.keys() \
            or not isinstance(state["params"], dict):
        raise RunError(f"{ck}: not a raysim checkpoint (needs round, clock, params and server)")
    params = state["params"]
    missing = sorted(shapes.keys() - params.keys())
    extra = sorted(params.keys() - shapes.keys())
    if missing or extra:
        name = missing[0] if missing else extra[0]
        raise RunError(f"{ck}: does not match the scenario's model (parameter {name!r} is "
                       f"{'missing from the checkpoint' if missing else 'not in the model'})")
    for name, shape in shapes.items():
        got = tuple(getattr(params[name], "shape", ()))
        if got != tuple(shape):
            raise RunError(f"{ck}: does not match the scenario's model (parameter {name!r} has shape "
                           f"{list(got)} in the checkpoint, {list(shape)} in the model)")
    r = state["round"]
    if not isinstance(r, int) or isinstance(r, bool) or not 0 <= r <= rounds:
        raise RunError(f"{ck}: round {r!r} is outside the run's 0..{rounds}")
    return state


def manifest_note(run_dir: Path) -> dict[str, Any]:
    """What a new run directory's manifest records to make later resumes checkable."""
    return {"scenario_sha256": file_sha256(Path(run_dir) / "scenario.yaml"),
            "driver": {"host": platform.node(), "pid": os.getpid()}}


__all__ = ["RESUME_SAFE", "changed_fields", "check_checkpoint", "manifest_note", "resume_scenario"]
