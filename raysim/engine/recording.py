"""The round record: the one place a `RoundRecord` is made, from what the step gathered.

    record = round_record(step, span, clients, evals, trained=3, samples_trained=60, wall_s=0.2, train_s=0.1)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from raysim.records import STATUSES, ClientRecords, EvalRecord, RoundRecord

__all__ = ["round_record", "round_totals"]


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
