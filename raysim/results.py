"""The run directory: its writer (atomic files) and its reader (pandas).

    runs/<name>-<stamp>/
      scenario.yaml      the resolved scenario (every default written out)
      manifest.json      versions, seed, host, timings, and status: running | complete | failed
      rounds.parquet     one row per round
      clients.parquet    one row per (round, selected device)
      evals.parquet      one row per (round, evaluated model)
      fleet.parquet      one row per device (class, profile, samples, label histogram)
      checkpoints/       round-NNNNNN.pt (global model + server state), torch-safe-loadable
      *.png              the report's figures

Every file is written to a temporary name and renamed, so a crash never leaves a half file;
`manifest.json` says `complete` only after the last round's files are in place.

    >>> run = load_run("runs/quickstart-20261124-101500")
    >>> run.rounds[["round", "sim_time", "accuracy"]].tail()
"""

from __future__ import annotations

import json
import os
import platform
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import pandas as pd

from raysim.errors import BadInput
from raysim.records import CLIENT_COLUMNS, RoundOutput

if TYPE_CHECKING:  # reading results needs pandas only: no torch, no Ray
    from raysim.config import Scenario

CHECKPOINTS = "checkpoints"
SWEEP_FILE = "sweep.json"  # a sweep's parent directory: its points and their states


class RunError(BadInput):
    """A run directory is missing, incomplete or malformed."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_parquet(path: Path, df: pd.DataFrame) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def versions() -> dict[str, str]:
    """Versions of the packages that shape the numbers."""
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    from raysim import __version__  # noqa: PLC0415

    def of(pkg: str) -> str:  # from the installed metadata: no need to import torch or ray
        try:
            return version(pkg)
        except PackageNotFoundError:
            return "not installed"

    return {"raysim": __version__, "python": sys.version.split()[0], "torch": of("torch"), "ray": of("ray"),
            "numpy": of("numpy"), "pandas": pd.__version__}


def check_output_root(root: str | Path) -> Path:
    """`root` if run directories can be made in it: it (or its nearest existing ancestor) is a
    writable directory. Checked before anything starts, so a bad `--out` costs nothing."""
    p = Path(root).expanduser()
    probe = p
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        what = "is a file" if probe == p else f"lies under {probe}, which is a file"
        raise RunError(f"--out {root}: {what}, not a directory")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise RunError(f"--out {root}: {probe} is not writable")
    return p


def new_run_dir(root: str | Path, name: str) -> Path:
    """A fresh `<root>/<name>-<stamp>` directory (suffixed if it exists)."""
    check_output_root(root)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(root).expanduser() / f"{name}-{stamp}"
    path, i = base, 1
    while path.exists():
        i += 1
        path = Path(f"{base}-{i}")
    try:
        path.mkdir(parents=True)
    except OSError as err:
        raise RunError(f"--out {root}: cannot create {path} ({err.strerror})") from None
    return path


class RunWriter:
    """Collects round records and writes the run directory's files atomically."""

    def __init__(self, path: Path, scenario: Scenario, info: Optional[dict[str, Any]] = None) -> None:
        self.path = Path(path)
        self.scenario = scenario
        self.rounds: list[dict[str, Any]] = []
        self.clients: list[pd.DataFrame] = []
        self.evals: list[dict[str, Any]] = []
        self.manifest: dict[str, Any] = {
            "status": "running", "name": scenario.name, "seed": scenario.seed, "rounds": scenario.rounds,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "host": platform.node(), "platform": platform.platform(), "versions": versions(),
            "info": info or {}, "completed_rounds": 0,
        }
        (self.path / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path / "scenario.yaml", scenario.to_yaml())
        from raysim.resume import manifest_note  # noqa: PLC0415

        self.manifest.update(manifest_note(self.path))
        self._write_manifest()

    @classmethod
    def resume(cls, path: Path, scenario: Scenario, upto: int) -> "RunWriter":
        """Reopen a run directory, keeping the records of rounds <= `upto`."""
        w = cls.__new__(cls)
        w.path, w.scenario = Path(path), scenario
        w.manifest = read_manifest(w.path)
        w.manifest["status"] = "running"
        w.manifest["driver"] = {"host": platform.node(), "pid": os.getpid()}
        w.manifest.setdefault("resumed", []).append(
            {"at_round": upto, "time": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        w.rounds, w.clients, w.evals = [], [], []
        tables = read_tables(w.path, ("rounds", "clients", "evals"))
        if "rounds" in tables:
            w.rounds = tables["rounds"].to_dict("records")
        if "clients" in tables:
            w.clients = [tables["clients"]]
        if "evals" in tables:
            w.evals = tables["evals"].to_dict("records")
        w.rewind(upto)
        return w

    def rewind(self, upto: int) -> None:
        """Forget the records of rounds after `upto` (they will be run again from a checkpoint)."""
        self.rounds = [r for r in self.rounds if r["round"] <= upto]
        self.clients = [c[c["round"] <= upto] for c in self.clients]
        self.evals = [e for e in self.evals if e["round"] <= upto]
        self.manifest["completed_rounds"] = upto
        self._write_manifest()

    def note_restart(self, lost_round: int, from_round: int, why: str) -> None:
        """Record that a lost coordinator was restarted from the checkpoint of `from_round`."""
        self.manifest.setdefault("coordinator_restarts", []).append(
            {"lost_in_round": lost_round, "from_round": from_round, "error": why,
             "time": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        self._write_manifest()

    def add(self, out: RoundOutput) -> None:
        """Record one round."""
        self.rounds.append(out.record.row())
        self.clients.append(pd.DataFrame(out.clients.columns(), columns=CLIENT_COLUMNS))
        self.evals.extend(e.row() for e in out.evals)
        self.manifest["completed_rounds"] = int(out.record.round)

    def flush(self) -> None:
        """Write the tables as they stand (each file atomically)."""
        atomic_write_parquet(self.path / "rounds.parquet", pd.DataFrame(self.rounds))
        clients = pd.concat(self.clients, ignore_index=True) if self.clients else pd.DataFrame(columns=CLIENT_COLUMNS)
        atomic_write_parquet(self.path / "clients.parquet", clients)
        atomic_write_parquet(self.path / "evals.parquet", pd.DataFrame(self.evals))
        self._write_manifest()

    def write_fleet(self, fleet: pd.DataFrame) -> None:
        """The fleet table (written once)."""
        atomic_write_parquet(self.path / "fleet.parquet", fleet)

    def checkpoint(self, state: dict[str, Any]) -> Path:
        """Save the coordinator state of the last completed round; keep the two newest."""
        r = int(state["round"])
        self.flush()
        p = self.path / CHECKPOINTS / f"round-{r:06d}.pt"
        tmp = p.with_name(f".{p.name}.tmp")
        import torch  # noqa: PLC0415 - only writing a checkpoint needs it

        torch.save(state, tmp)
        os.replace(tmp, p)
        self.manifest["checkpoint_round"] = r
        self._write_manifest()
        for old in sorted((self.path / CHECKPOINTS).glob("round-*.pt"))[:-2]:
            old.unlink()
        return p

    def finish(self, status: str = "complete", **extra: Any) -> None:
        """Final flush and the manifest's last word."""
        self.manifest.update(extra)
        self.manifest["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.manifest["status"] = status
        if status == "complete":
            self.flush()
        else:
            self._write_manifest()

    def _write_manifest(self) -> None:
        atomic_write_text(self.path / "manifest.json", json.dumps(self.manifest, indent=2, default=str))


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


def load_run(path: str | Path, allow_incomplete: bool = False) -> Run:
    """Read a run directory. Raises RunError for a missing, corrupt or (unless allowed) unfinished run."""
    p = Path(path)
    manifest = read_manifest(p)
    if manifest.get("status") != "complete" and not allow_incomplete:
        raise RunError(f"{p}: run is {manifest.get('status')!r}, not complete "
                       f"(pass allow_incomplete=True to read it anyway)")
    names = ("rounds", "clients", "evals", "fleet")
    tables = read_tables(p, names)
    scenario: Any = {}
    if (p / "scenario.yaml").is_file():
        from raysim.yamlload import read_yaml_file  # noqa: PLC0415

        try:
            scenario = read_yaml_file(p / "scenario.yaml")
        except BadInput as err:
            raise RunError(str(err)) from None
    if not isinstance(scenario, dict):
        raise RunError(f"{p / 'scenario.yaml'}: corrupt scenario (not a mapping)")
    return Run(p, manifest, scenario, *(tables.get(n, pd.DataFrame()) for n in names))
