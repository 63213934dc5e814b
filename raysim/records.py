"""Records: what a round leaves behind (numpy only: no torch, no Ray).

One round record, one client record per selected device, and eval records: the rows of
`rounds.parquet`, `clients.parquet` and `evals.parquet`. What crosses between the round loop
and the places devices train is in `raysim.messages`. Nothing here imports the rest of raysim.

    >>> Status.LATE.value
    'late'
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from typing import Any

import numpy as np


class Status(str, Enum):
    """What happened to a selected device in a round."""

    OK = "ok"                # trained its full local work; its update counts
    PARTIAL = "partial"      # trained only the steps that fit before the deadline; counts
    LATE = "late"            # would have missed the deadline (or was not among the first K)
    OFFLINE = "offline"      # its availability ended before it could finish
    EXCLUDED = "excluded"    # no submodel fits it (memory, deadline) or it has no data
    FAILED = "failed"        # its host was lost, or its update was not finite
    OOM = "oom"              # ran out of its (real) memory cap while training
    DEPLETED = "depleted"    # its battery ran empty before it finished; its update is lost


# Plain strings in arrays and tables (parquet columns are strings, not enum members).
OK, PARTIAL, LATE, OFFLINE, EXCLUDED, FAILED, OOM, DEPLETED = (s.value for s in Status)
STATUSES: tuple[str, ...] = tuple(s.value for s in Status)
TRAINED: tuple[str, ...] = (OK, PARTIAL)


# ---------------------------------------------------------------------------- what a round leaves
@dataclass
class RoundRecord:
    """One row of rounds.parquet."""

    round: int
    sim_start: float
    sim_time: float
    duration: float
    wall_s: float
    coordinator_s: float
    train_s: float
    selected: int
    trained: int
    samples_trained: int
    n_ok: int = 0
    n_partial: int = 0
    n_late: int = 0
    n_offline: int = 0
    n_excluded: int = 0
    n_failed: int = 0
    n_oom: int = 0
    n_depleted: int = 0
    bytes_down: int = 0
    bytes_up: int = 0
    energy_j: float = float("nan")  # the selected devices' joules this round (NaN: some power unknown)
    accuracy: float = float("nan")
    loss: float = float("nan")

    def row(self) -> dict[str, Any]:
        """As a plain mapping (a table row)."""
        return asdict(self)


@dataclass
class EvalRecord:
    """One row of evals.parquet: a model's test accuracy after a round."""

    round: int
    model: str      # "global" or "rate-<r>"
    rate: float
    accuracy: float
    loss: float
    sim_time: float

    def row(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ClientRecords:
    """The rows of clients.parquet of one round, column by column (one entry per selected device)."""

    round: list[int] = field(default_factory=list)
    device_id: list[int] = field(default_factory=list)
    device_class: list[str] = field(default_factory=list)
    rate: list[float] = field(default_factory=list)
    status: list[str] = field(default_factory=list)
    reason: list[str] = field(default_factory=list)
    t_download: list[float] = field(default_factory=list)
    t_compute: list[float] = field(default_factory=list)
    t_upload: list[float] = field(default_factory=list)
    t_total: list[float] = field(default_factory=list)
    t_finish: list[float] = field(default_factory=list)
    work_fraction: list[float] = field(default_factory=list)
    samples: list[int] = field(default_factory=list)
    samples_trained: list[int] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    bytes_down: list[int] = field(default_factory=list)
    bytes_up: list[int] = field(default_factory=list)
    # Joules this round (raysim.engine.energy): compute, radio transmit, receive, idle waiting,
    # and their sum; NaN where the device's power is unknown.
    energy_compute_j: list[float] = field(default_factory=list)
    energy_tx_j: list[float] = field(default_factory=list)
    energy_rx_j: list[float] = field(default_factory=list)
    energy_idle_j: list[float] = field(default_factory=list)
    energy_j: list[float] = field(default_factory=list)
    host: list[int] = field(default_factory=list)
    wall_s: list[float] = field(default_factory=list)
    # The global version the device trained from, the server step its update went into (-1:
    # none; null in clients.parquet) and the server steps between the two (sync: round - 1,
    # round and 0).
    version_start: list[int] = field(default_factory=list)
    version_applied: list[int] = field(default_factory=list)
    staleness: list[int] = field(default_factory=list)
    # Under a topology: the device's gateway and the gateway round (1..kappa2) of the row;
    # -1 and 0 in flat runs.
    gateway: list[int] = field(default_factory=list)
    gateway_round: list[int] = field(default_factory=list)

    def append(self, **row: Any) -> None:
        """Add one device's row (every column by name; the energy columns may come later, for
        all rows at once, from `add_energy`; the gateway columns default to a flat run's)."""
        for c in CLIENT_COLUMNS:
            if c in row or c not in ENERGY_COLUMNS:
                getattr(self, c).append(row[c] if c in row or c not in FLAT_DEFAULTS else FLAT_DEFAULTS[c])

    def extend(self, other: "ClientRecords") -> None:
        """Append every row of `other` (a round's rows gathered from several gateway rounds)."""
        for c in CLIENT_COLUMNS:
            getattr(self, c).extend(getattr(other, c))

    def add_energy(self, compute: Any, tx: Any, rx: Any, idle: Any) -> None:
        """Fill the energy columns of every row (joules per phase; the total is their sum)."""
        parts = [np.asarray(x, dtype=np.float64) for x in (compute, tx, rx, idle)]
        if any(len(p) != len(self) for p in parts):
            raise ValueError("energy: one value per row")
        self.energy_compute_j, self.energy_tx_j, self.energy_rx_j, self.energy_idle_j = (p.tolist() for p in parts)
        self.energy_j = (parts[0] + parts[1] + parts[2] + parts[3]).tolist()

    def columns(self) -> dict[str, list]:
        """Column name -> values (what a DataFrame is built from)."""
        return {c: getattr(self, c) for c in CLIENT_COLUMNS}

    def __getitem__(self, column: str) -> list:
        """One column by name (`records["status"]`)."""
        if column not in CLIENT_COLUMNS:
            raise KeyError(column)
        return getattr(self, column)

    def __len__(self) -> int:
        return len(self.device_id)


CLIENT_COLUMNS: list[str] = [f.name for f in fields(ClientRecords)]
ENERGY_COLUMNS: tuple[str, ...] = ("energy_compute_j", "energy_tx_j", "energy_rx_j", "energy_idle_j", "energy_j")
FLAT_DEFAULTS: dict[str, int] = {"gateway": -1, "gateway_round": 0}
# -1 in memory means "no update was applied"; the table stores a null, so a mean skips it.
NOT_APPLIED_COLUMNS: tuple[str, ...] = ("version_applied", "staleness")


@dataclass
class RoundOutput:
    """One round's records: the round, every selected device, and the evaluations."""

    record: RoundRecord
    clients: ClientRecords
    evals: list[EvalRecord] = field(default_factory=list)
    batteries: list[dict[str, Any]] = field(default_factory=list)  # rows of batteries.parquet (per class)
    gateways: list[dict[str, Any]] = field(default_factory=list)   # rows of gateways.parquet (under a topology)
    # Named metrics the driver's callbacks added (raysim.engine.callbacks): extra float columns
    # of the round's row in rounds.parquet. The engine leaves it empty.
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def round_row(self) -> dict[str, Any]:
        """The round record as a mapping (progress bars, callbacks that want a dict)."""
        return self.record.row()
