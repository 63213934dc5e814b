"""The records of a step: the one place a `RoundRecord` is made (`round_record`) and the one
place a device's row of clients.parquet is (`add_device_row`).

    add_device_row(clients, round=3, device_id=7, device_class="mcu", rate=0.5, status="ok", reason="",
                   times=(1.0, 4.0, 2.0), t_finish=7.0, work_fraction=1.0, samples=20, report=report,
                   applied=True, bytes_down=5000, bytes_up=5000, version_start=2)
    record = round_record(3, start, end, duration, clients, evals, trained=1, samples_trained=20,
                          wall_s=0.2, train_s=0.1)
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from raysim.messages import TrainReport
from raysim.records import STATUSES, ClientRecords, EvalRecord, RoundRecord

__all__ = ["round_record", "round_totals", "add_device_row"]


def round_totals(clients: ClientRecords, evals: list[EvalRecord]) -> dict[str, Any]:
    """The round record's counts per status, bytes, and the global model's accuracy and loss."""
    status = np.array(clients.status, dtype=object)
    row: dict[str, Any] = {f"n_{s}": int(np.sum(status == s)) for s in STATUSES}
    row["bytes_down"] = int(np.sum(clients.bytes_down))
    row["bytes_up"] = int(np.sum(clients.bytes_up))
    row["energy_j"] = float(np.sum(clients.energy_j))
    glob = [e for e in evals if e.model == "global"]
    row["accuracy"] = glob[0].accuracy if glob else float("nan")
    row["loss"] = glob[0].loss if glob else float("nan")
    return row



def round_record(step: int, start: float, end: float, duration: float, clients: ClientRecords,
                 evals: list[EvalRecord], trained: int, samples_trained: int, wall_s: float,
                 train_s: float) -> RoundRecord:
    """Step `step`'s record. `selected` counts its rows of clients.parquet: the devices whose
    selection (or dispatch) concluded in this step, whatever became of them."""
    return RoundRecord(round=step, sim_start=start, sim_time=end, duration=duration, wall_s=wall_s,
                       coordinator_s=wall_s - train_s, train_s=train_s, selected=len(clients), trained=int(trained),
                       samples_trained=int(samples_trained), **round_totals(clients, evals))


def add_device_row(out: ClientRecords, *, round: int, device_id: int, device_class: str, rate: float, status: str,
                   reason: str, times: tuple[float, float, float], t_finish: float, work_fraction: float,
                   samples: int, report: Optional[TrainReport], applied: bool, bytes_down: int, bytes_up: int,
                   version_start: int) -> None:
    """Append one device's row of step `round`: what was decided (rate, status, predicted
    download, compute and upload seconds), what its host reported (`report`: steps, loss, host,
    wall seconds; None when it never trained or was lost), and whether its update went into the
    step (`applied`: then its samples count as trained and its staleness is the server steps
    between its start version and `round`)."""
    nan = float("nan")
    t_down, t_comp, t_up = times
    out.append(round=round, device_id=device_id, device_class=device_class, rate=rate, status=status, reason=reason,
               t_download=t_down, t_compute=t_comp, t_upload=t_up, t_total=t_down + t_comp + t_up,
               t_finish=t_finish, work_fraction=work_fraction, samples=samples,
               samples_trained=int(report.samples) if applied and report is not None else 0,
               steps=int(report.steps) if report is not None else 0,
               loss=float(report.loss) if report is not None else nan, bytes_down=bytes_down, bytes_up=bytes_up,
               host=int(report.host) if report is not None else -1,
               wall_s=float(report.wall_s) if report is not None else 0.0, version_start=version_start,
               version_applied=round if applied else -1, staleness=round - 1 - version_start if applied else -1)
