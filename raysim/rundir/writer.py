"""The run directory's writer: atomic files, a manifest that says how far a run got.

Every file is written to a temporary name and renamed, so a crash never leaves a half file;
`manifest.json` says `complete` only after the last round's files are in place. The layout is
described in `raysim.rundir.reader`.
"""


from __future__ import annotations

import json
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import pandas as pd

from raysim.records import CLIENT_COLUMNS, NOT_APPLIED_COLUMNS, ClientRecords, RoundOutput

if TYPE_CHECKING:
    from raysim.scenario.schema import Scenario

from raysim.rundir.reader import CHECKPOINTS, RunError, read_manifest, read_tables
from raysim.rundir.resume import manifest_note
from raysim.version import __version__


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


def client_frame(clients: ClientRecords) -> pd.DataFrame:
    """One round's client rows as a table; "not applied" (-1) becomes a null (nullable Int64)."""
    df = pd.DataFrame(clients.columns(), columns=CLIENT_COLUMNS)
    for c in NOT_APPLIED_COLUMNS:
        col = df[c].astype("Int64")
        df[c] = col.mask(col < 0)
    return df


class RunWriter:
    """Collects round records and writes the run directory's files atomically."""

    def __init__(self, path: Path, scenario: Scenario, info: Optional[dict[str, Any]] = None) -> None:
        self.path = Path(path)
        self.scenario = scenario
        self.rounds: list[dict[str, Any]] = []
        self.clients: list[pd.DataFrame] = []
        self.evals: list[dict[str, Any]] = []
        self.batteries: list[dict[str, Any]] = []
        self.gateways: list[dict[str, Any]] = []
        self.manifest: dict[str, Any] = {
            "status": "running", "name": scenario.name, "seed": scenario.seed, "rounds": scenario.rounds,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "host": platform.node(), "platform": platform.platform(), "versions": versions(),
            "info": info or {}, "completed_rounds": 0,
        }
        (self.path / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path / "scenario.yaml", scenario.to_yaml())

        self.manifest.update(manifest_note(self.path))
        self._write_manifest()

    @classmethod
    def resume(cls, path: Path, scenario: Scenario, upto: int) -> "RunWriter":
        """Reopen a run directory, keeping the records of rounds <= `upto`."""
        w = cls.__new__(cls)
        w.path, w.scenario = Path(path), scenario
        w.manifest = read_manifest(w.path)
        w.manifest["status"] = "running"
        w.manifest.pop("stopped_by", None)  # a callback's stop ended the last session, not the run
        w.manifest["driver"] = {"host": platform.node(), "pid": os.getpid()}
        w.manifest.setdefault("resumed", []).append(
            {"at_round": upto, "time": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        w.rounds, w.clients, w.evals, w.batteries, w.gateways = [], [], [], [], []
        tables = read_tables(w.path, ("rounds", "clients", "evals", "batteries", "gateways"))
        if "rounds" in tables:
            w.rounds = tables["rounds"].to_dict("records")
        if "clients" in tables:
            w.clients = [tables["clients"]]
        if "evals" in tables:
            w.evals = tables["evals"].to_dict("records")
        if "batteries" in tables:
            w.batteries = tables["batteries"].to_dict("records")
        if "gateways" in tables:
            w.gateways = tables["gateways"].to_dict("records")
        w.rewind(upto)
        return w

    def rewind(self, upto: int) -> None:
        """Forget the records of rounds after `upto` (they will be run again from a checkpoint)."""
        self.rounds = [r for r in self.rounds if r["round"] <= upto]
        self.clients = [c[c["round"] <= upto] for c in self.clients]
        self.evals = [e for e in self.evals if e["round"] <= upto]
        self.batteries = [b for b in self.batteries if b["round"] <= upto]
        self.gateways = [g for g in self.gateways if g["round"] <= upto]
        self.manifest["completed_rounds"] = upto
        self._write_manifest()

    def note_restart(self, lost_round: int, from_round: int, why: str) -> None:
        """Record that a lost coordinator was restarted from the checkpoint of `from_round`."""
        self.manifest.setdefault("coordinator_restarts", []).append(
            {"lost_in_round": lost_round, "from_round": from_round, "error": why,
             "time": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        self._write_manifest()

    def add(self, out: RoundOutput) -> None:
        """Record one round (its callbacks' metrics as extra columns of its row)."""
        self.rounds.append({**out.record.row(), **out.metrics})
        self.clients.append(client_frame(out.clients))
        self.evals.extend(e.row() for e in out.evals)
        self.batteries.extend(out.batteries)
        self.gateways.extend(out.gateways)
        self.manifest["completed_rounds"] = int(out.record.round)

    def flush(self) -> None:
        """Write the tables as they stand (each file atomically)."""
        atomic_write_parquet(self.path / "rounds.parquet", pd.DataFrame(self.rounds))
        clients = pd.concat(self.clients, ignore_index=True) if self.clients else pd.DataFrame(columns=CLIENT_COLUMNS)
        atomic_write_parquet(self.path / "clients.parquet", clients)
        atomic_write_parquet(self.path / "evals.parquet", pd.DataFrame(self.evals))
        if self.batteries:
            atomic_write_parquet(self.path / "batteries.parquet", pd.DataFrame(self.batteries))
        if self.gateways:
            atomic_write_parquet(self.path / "gateways.parquet", pd.DataFrame(self.gateways))
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
