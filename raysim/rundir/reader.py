"""The run directory and its reader (pandas; the writer is `raysim.rundir.writer`).

    runs/<name>-<stamp>/
      scenario.yaml      the resolved scenario (every default written out)
      manifest.json      versions, seed, host, timings, and status: running | complete | stopped |
                         interrupted | failed (`stopped_by`: the callback that ended the run early)
      rounds.parquet     one row per round
      clients.parquet    one row per (round, selected device)
      evals.parquet      one row per (round, evaluated model)
      fleet.parquet      one row per device (class, profile, samples, label histogram)
      batteries.parquet  one row per (round, battery class): charge percentiles (energy.batteries on)
      gateways.parquet   one row per (round, gateway round, gateway): devices, times, bytes per tier
                         (under a topology)
      checkpoints/       round-NNNNNN.pt (global model + server state), torch-safe-loadable
      tensorboard/       TensorBoard event files (output.tensorboard on)
      *.png              the report's figures

Every file is written to a temporary name and renamed, so a crash never leaves a half file;
`manifest.json` says `complete` only after the last round's files are in place.

    run = load_run("runs/quickstart-20261124-101500")
    run.rounds[["round", "sim_time", "accuracy"]].tail()
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from raysim.errors import BadInput, RunError

CHECKPOINTS = "checkpoints"
SWEEP_FILE = "sweep.json"  # a sweep's parent directory: its points and their states


def latest_checkpoint(path: Path) -> Optional[Path]:
    """The newest checkpoint file of a run directory, if any."""
    found = sorted((Path(path) / CHECKPOINTS).glob("round-*.pt"))
    return found[-1] if found else None


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint, loaded with torch's safe (weights-only) unpickler."""
    import torch  # noqa: PLC0415

    return torch.load(path, map_location="cpu", weights_only=True)


@dataclass
class Run:
    """A run directory as DataFrames."""

    path: Path
    manifest: dict[str, Any]
    scenario: dict[str, Any]
    rounds: pd.DataFrame
    clients: pd.DataFrame
    evals: pd.DataFrame
    fleet: pd.DataFrame = field(default_factory=pd.DataFrame)
    batteries: pd.DataFrame = field(default_factory=pd.DataFrame)  # empty: no battery tracked
    gateways: pd.DataFrame = field(default_factory=pd.DataFrame)   # empty: a flat run

    @property
    def name(self) -> str:
        return str(self.manifest.get("name", self.path.name))


MAX_MANIFEST_BYTES = 16 << 20  # a manifest is a few KB; anything this large is no manifest


def read_manifest(path: str | Path, what: str = "") -> dict[str, Any]:
    """A run directory's manifest as a dict; RunError when it is absent, corrupt or no mapping."""
    p = Path(path)
    lead = f"{what} {p}" if what else str(p)
    mf = p / "manifest.json"
    if not mf.is_file():
        raise RunError(f"{lead}: not a run directory (no manifest.json)")
    try:
        if mf.stat().st_size > MAX_MANIFEST_BYTES:
            raise RunError(f"{mf}: {mf.stat().st_size} bytes, too large for a manifest")
        manifest = json.loads(mf.read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError) as err:  # JSON and UTF-8 errors are ValueErrors
        why = err.strerror if isinstance(err, OSError) else " ".join(str(err).split())[:120] or type(err).__name__
        raise RunError(f"{mf}: corrupt manifest ({why})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("status"), str):
        raise RunError(f"{mf}: corrupt manifest (no status)")
    return manifest


def read_tables(path: Path, names: tuple[str, ...]) -> dict[str, pd.DataFrame]:
    """The parquet tables of a run directory that exist; RunError naming a corrupt one."""
    out = {}
    for name in names:
        f = Path(path) / f"{name}.parquet"
        if not f.is_file():
            continue
        try:
            out[name] = pd.read_parquet(f)
        except Exception as err:  # noqa: BLE001 - pyarrow raises several types for a corrupt file
            why = " ".join(str(err).split())[:120] or type(err).__name__
            raise RunError(f"{f}: corrupt or truncated table ({why})") from None
    return out


def is_final(manifest: dict[str, Any]) -> bool:
    """Whether a run's results are final: it completed, or a callback ended it early on purpose
    (`stopped_by`), unlike a run that was interrupted, failed or stopped to be resumed."""
    status = manifest.get("status")
    return status == "complete" or (status == "stopped" and isinstance(manifest.get("stopped_by"), dict))


def load_run(path: str | Path, allow_incomplete: bool = False) -> Run:
    """Read a run directory. Raises RunError for a missing, corrupt or (unless allowed) unfinished
    run; a run a callback stopped early is finished."""
    p = Path(path)
    manifest = read_manifest(p)
    if not is_final(manifest) and not allow_incomplete:
        raise RunError(f"{p}: run is {manifest.get('status')!r}, not complete "
                       f"(pass allow_incomplete=True to read it anyway)")
    names = ("rounds", "clients", "evals", "fleet", "batteries", "gateways")
    tables = read_tables(p, names)
    scenario: Any = {}
    if (p / "scenario.yaml").is_file():
        from raysim.scenario.strict_yaml import read_yaml_file  # noqa: PLC0415

        try:
            scenario = read_yaml_file(p / "scenario.yaml")
        except BadInput as err:
            raise RunError(str(err)) from None
    if not isinstance(scenario, dict):
        raise RunError(f"{p / 'scenario.yaml'}: corrupt scenario (not a mapping)")
    return Run(p, manifest, scenario, *(tables.get(n, pd.DataFrame()) for n in names))
