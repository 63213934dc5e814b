"""The built-in TensorBoard writer: every round's scalars as events under `<run_dir>/tensorboard/`.

Switched on by `output.tensorboard: true` (or `raysim run --tensorboard`), or given as a
callback (`raysim.simulate(..., callbacks=[TensorBoard()])`). The step is the round (the
server step in asynchronous modes); the tags are

* the round record's deterministic columns, named as in rounds.parquet: `accuracy`, `loss`,
  `duration`, `sim_time`, `selected`, `trained`, `samples_trained`, `n_<status>`,
  `bytes_down`, `bytes_up`, `energy_j` (wall-clock timings are left out: they differ between
  identical runs);
* every metric the other callbacks added this round, under its own name;
* `participation/<device class>`: the class's devices whose status was `ok` this round (every
  class of the fleet, 0 included, so each curve has a point every round).

A NaN (a round without evaluation, energy of an unknown power) is left out. TensorBoard keeps
scalars as 32-bit floats. Each session of a run (the first, every resume) writes an event file
of its own that starts with a restart marker at its first round (`purge_step`); rounds run
again after a lost coordinator get one in the same file. TensorBoard hides what was logged
before a marker from its round on, so a resumed run appends and every round shows once.

    tensorboard --logdir runs/quickstart-20261124-101500/tensorboard
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterator, Optional

from raysim.engine.callbacks import Callback, OnRound
from raysim.errors import BadInput
from raysim.records import OK, STATUSES, RoundOutput
from raysim.rundir.reader import read_tables

LOG_DIR = "tensorboard"
SCALAR_COLUMNS: tuple[str, ...] = (
    "accuracy", "loss", "duration", "sim_time", "selected", "trained", "samples_trained",
    *(f"n_{s}" for s in STATUSES), "bytes_down", "bytes_up", "energy_j",
)
PIN = "tensorboard==2.21.0"


def check_tensorboard() -> None:
    """BadInput (one line) when torch's SummaryWriter cannot be imported (no tensorboard package)."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401, PLC0415
    except ImportError as err:
        raise BadInput(f"output.tensorboard: needs the tensorboard package ({err}); pip install {PIN}") from None


def round_scalars(out: RoundOutput, classes: tuple[str, ...] = ()) -> Iterator[tuple[str, float]]:
    """(tag, value) of one round, in a fixed order: the record's columns, the callbacks' metrics,
    then the participation of every class in `classes` and of any other class in the round."""
    row = out.record.row()
    for col in SCALAR_COLUMNS:
        yield from _finite(col, row[col])
    for name, value in out.metrics.items():
        yield from _finite(name, value)
    ok: dict[str, int] = dict.fromkeys(classes, 0)
    for cls, status in zip(out.clients.device_class, out.clients.status):
        ok[cls] = ok.get(cls, 0) + (status == OK)
    for cls in sorted(ok):
        yield f"participation/{cls}", float(ok[cls])


def _finite(tag: str, value: Any) -> Iterator[tuple[str, float]]:
    x = float(value)
    if not math.isnan(x):
        yield tag, x


class TensorBoard(Callback):
    """Logs every round's scalars with torch's `SummaryWriter` (see the module docstring).

    `log_dir`: where the event files go (default: `<run_dir>/tensorboard`).
    """

    def __init__(self, log_dir: Optional[str | Path] = None) -> None:
        check_tensorboard()  # here, so a missing package stops the run before anything starts
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self._dir: Optional[Path] = None
        self._writer: Any = None
        self._last = 0
        self._classes: tuple[str, ...] = ()

    def on_start(self, run_dir: Path, info: dict[str, Any]) -> None:
        self._dir = self.log_dir or Path(run_dir) / LOG_DIR
        fleet = read_tables(Path(run_dir), ("fleet",)).get("fleet")
        if fleet is not None and "device_class" in fleet.columns:
            self._classes = tuple(sorted(str(c) for c in fleet["device_class"].unique()))

    def on_round(self, out: RoundOutput) -> OnRound:
        step = int(out.record.round)
        if self._writer is None:
            self._open(purge_step=step)
        elif step <= self._last:
            self._restart_at(step)
        for tag, value in round_scalars(out, self._classes):
            self._writer.add_scalar(tag, value, step)
        # Flushed every round: a run that is killed keeps its curves up to its last round.
        self._writer.flush()
        self._last = step
        return None

    def on_end(self, run_dir: Path, status: str) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _open(self, purge_step: int) -> None:
        """This session's event file; TensorBoard hides the steps >= `purge_step` that earlier
        sessions logged (a resumed run continues from its checkpoint's round)."""
        from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415 - imports tensorboard: slow

        log_dir = self._dir or self.log_dir or Path(LOG_DIR)
        self._writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def _restart_at(self, step: int) -> None:
        """Mark rounds from `step` on as run again (a lost coordinator was restarted from a
        checkpoint): the marker `purge_step` writes, in this session's file. A second file
        would do as well, but files of one second are ordered by a counter read as text."""
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog  # noqa: PLC0415

        self._writer.file_writer.add_event(Event(step=step, session_log=SessionLog(status=SessionLog.START)))
