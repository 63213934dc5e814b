"""Messages and records: the bottom layer every other module speaks (numpy only: no torch, no Ray).

What crosses between the round loop and the places devices train (tasks in, reports and
pre-aggregated partial sums out), and what a round leaves behind (one round record, one
client record per selected device, eval records). `runtime`, `results` and `tables` import
these; nothing here imports them back.

    >>> task = TrainTask(device_id=7, rate=0.5, plan_id=0, max_steps=None, weight="uniform")
    >>> Status.LATE.value
    'late'
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from typing import Any, Mapping, Optional

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


# Plain strings in arrays and tables (parquet columns are strings, not enum members).
OK, PARTIAL, LATE, OFFLINE, EXCLUDED, FAILED, OOM = (s.value for s in Status)
STATUSES: tuple[str, ...] = tuple(s.value for s in Status)
TRAINED: tuple[str, ...] = (OK, PARTIAL)


# ---------------------------------------------------------------------------- aggregation payload
@dataclass
class PartialSum:
    """Running sum of weighted, quantised deltas in global coordinates.

    `sums[k]` holds sum_i w_i * q(delta_i) and `weights[k]` sum_i w_i over the devices i that
    held each element. Both are int64, so merging is exact and order-free: this is the
    aggregation contract that makes runs bit-identical on any number of hosts.
    """

    sums: dict[str, np.ndarray]
    weights: dict[str, np.ndarray]
    devices: int = 0
    samples: int = 0

    @classmethod
    def zeros(cls, shapes: Mapping[str, tuple[int, ...]]) -> "PartialSum":
        """An empty sum for a model with these parameter shapes."""
        return cls({k: np.zeros(s, np.int64) for k, s in shapes.items()},
                   {k: np.zeros(s, np.int64) for k, s in shapes.items()})

    def merge(self, other: "PartialSum") -> "PartialSum":
        """Add another partial sum into this one (in place) and return self."""
        for k in self.sums:
            self.sums[k] += other.sums[k]
            self.weights[k] += other.weights[k]
        self.devices += other.devices
        self.samples += other.samples
        return self


# ---------------------------------------------------------------------------- round loop <-> placements
@dataclass(frozen=True)
class TrainTask:
    """One device's work in one round."""

    device_id: int
    rate: float
    plan_id: int             # key into the round's plan table
    max_steps: Optional[int]  # None = full local work; else partial work before the deadline
    weight: str              # "uniform" or "samples"
    cost_hint: float = 0.0   # predicted compute, for balancing hosts
    # Predicted simulated seconds of the device's timeline; a realtime placement sleeps them
    # (times its time scale). `deadline`: set only under the realtime clock, where real
    # timeouts (not predictions) decide who is late.
    t_download: float = 0.0
    t_compute: float = 0.0
    t_upload: float = 0.0
    deadline: Optional[float] = None
    # Asynchronous modes: the global version the device downloaded, the key of the partial sum
    # its update is folded into (devices of one key share their staleness), and its own
    # random stream (-1: the round's).
    version: int = 0
    group: int = 0
    stream: int = -1


@dataclass(frozen=True)
class TrainReport:
    """What happened to one task."""

    device_id: int
    status: str          # ok | failed | oom; realtime placements also report late | partial
    samples: int
    steps: int
    loss: float
    wall_s: float
    host: int
    reason: str = ""
    finish_s: float = float("nan")  # realtime: measured simulated seconds from round start to result
    job: int = -1                   # asynchronous modes: the task's stream (one device may train twice)


@dataclass
class HostResult:
    """A host's answer for a round: one pre-aggregated partial sum and the reports."""

    partial: PartialSum
    reports: list[TrainReport]
    host: int
    wall_s: float


@dataclass
class GroupResult:
    """A host's answer in asynchronous modes: one partial sum per task group (`TrainTask.group`)."""

    partials: dict[int, PartialSum]
    reports: list[TrainReport]
    host: int
    wall_s: float


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
    bytes_down: int = 0
    bytes_up: int = 0
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
    host: list[int] = field(default_factory=list)
    wall_s: list[float] = field(default_factory=list)
    # The global version the device trained from, the server step its update went into (-1:
    # none) and the server steps between the two (sync: round - 1, round and 0).
    version_start: list[int] = field(default_factory=list)
    version_applied: list[int] = field(default_factory=list)
    staleness: list[int] = field(default_factory=list)

    def append(self, **row: Any) -> None:
        """Add one device's row (every column, by name)."""
        for c in CLIENT_COLUMNS:
            getattr(self, c).append(row[c])

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


@dataclass
class RoundOutput:
    """One round's records: the round, every selected device, and the evaluations."""

    record: RoundRecord
    clients: ClientRecords
    evals: list[EvalRecord] = field(default_factory=list)

    @property
    def round_row(self) -> dict[str, Any]:
        """The round record as a mapping (progress bars, callbacks that want a dict)."""
        return self.record.row()


# ---------------------------------------------------------------------------- server state
@dataclass
class ServerState:
    """The server optimizer's state, explicit (checkpointed with the global model).

    `slots[param][name]` holds per-element tensors (a momentum buffer, second moments), created
    lazily by the optimizer that needs them; `steps` counts server steps taken.
    """

    slots: dict[str, dict[str, Any]] = field(default_factory=dict)
    steps: int = 0
