"""The TensorBoard writer without Ray: which scalars a round gives, and that a resumed run or
rounds run again show every round once, with the values of the last session."""

import time

import numpy as np
import pandas as pd
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from raysim.records import ClientRecords, RoundOutput, RoundRecord
from raysim.rundir.tensorboard import SCALAR_COLUMNS, TensorBoard, round_scalars


def round_output(r, acc, classes=("phone", "phone", "sensor"), statuses=("ok", "late", "ok")):
    rec = RoundRecord(round=r, sim_start=10.0 * (r - 1), sim_time=10.0 * r, duration=10.0, wall_s=0.3,
                      coordinator_s=0.1, train_s=0.2, selected=len(classes), trained=2, samples_trained=60,
                      n_ok=2, n_late=1, bytes_down=3_000_000, bytes_up=1_500_001, energy_j=float("nan"),
                      accuracy=acc, loss=1.0 / r)
    clients = ClientRecords()
    clients.device_class, clients.status = list(classes), list(statuses)
    return RoundOutput(rec, clients)


def scalars(log_dir):
    ea = EventAccumulator(str(log_dir))
    ea.Reload()
    return {tag: [(e.step, e.value) for e in ea.Scalars(tag)] for tag in ea.Tags()["scalars"]}


def test_a_round_gives_its_record_metrics_and_participation_per_class_in_a_fixed_order():
    out = round_output(2, float("nan"))
    out.metrics["gap"] = 0.25
    got = list(round_scalars(out, classes=("gateway", "phone", "sensor")))
    tags = [t for t, _ in got]
    # NaNs (no evaluation this round, unknown power) are left out; wall-clock timings never logged
    assert "accuracy" not in tags and "energy_j" not in tags and "wall_s" not in tags
    assert tags[:3] == ["loss", "duration", "sim_time"] and set(tags) <= {*SCALAR_COLUMNS, "gap", *(
        f"participation/{c}" for c in ("gateway", "phone", "sensor"))}
    d = dict(got)
    assert d["gap"] == 0.25 and d["bytes_up"] == 1_500_001.0 and d["n_ok"] == 2.0 and d["n_late"] == 1.0
    # a fleet class with no device this round is 0; `late` does not count
    assert [(t, v) for t, v in got if t.startswith("participation/")] == [
        ("participation/gateway", 0.0), ("participation/phone", 1.0), ("participation/sensor", 1.0)]


def test_a_resumed_run_and_rounds_run_again_show_each_round_once_with_the_last_values(tmp_path):
    pd.DataFrame({"device_class": ["sensor", "phone", "phone"]}).to_parquet(tmp_path / "fleet.parquet")
    first = TensorBoard()
    first.on_start(tmp_path, {})
    for r, acc in [(1, 0.1), (2, 0.2), (3, 0.3), (2, 0.25), (3, 0.35), (4, 0.45)]:  # 2, 3 again: a lost coordinator
        first.on_round(round_output(r, acc))
    first.on_end(tmp_path, "interrupted")
    # Event files of one session sort by their creation second first: the next session is later.
    time.sleep(1.1)
    resumed = TensorBoard()  # a resume from the checkpoint of round 3
    resumed.on_start(tmp_path, {})
    for r, acc in [(4, 0.5), (5, 0.6)]:
        resumed.on_round(round_output(r, acc))
    resumed.on_end(tmp_path, "complete")
    assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 2
    got = scalars(tmp_path / "tensorboard")
    assert [s for s, _ in got["accuracy"]] == [1, 2, 3, 4, 5]
    assert [v for _, v in got["accuracy"]] == [np.float32(x) for x in (0.1, 0.25, 0.35, 0.5, 0.6)]
    assert got["participation/phone"] == [(r, 1.0) for r in range(1, 6)]
    assert got["bytes_up"][0] == (1, np.float32(1_500_001))  # a 32-bit float, as TensorBoard keeps it
    assert "energy_j" not in got  # NaN every round


def test_log_dir_overrides_the_run_directory(tmp_path):
    tb = TensorBoard(log_dir=tmp_path / "elsewhere")
    tb.on_start(tmp_path / "run", {})  # no fleet table: the classes come from the rounds
    tb.on_round(round_output(1, 0.5))
    tb.on_end(tmp_path / "run", "complete")
    assert not (tmp_path / "run").exists()
    assert scalars(tmp_path / "elsewhere")["participation/sensor"] == [(1, 1.0)]


def test_without_the_tensorboard_package_it_is_one_line(monkeypatch):
    import builtins

    from raysim.errors import BadInput

    real = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(BadInput, match=r"output.tensorboard: needs the tensorboard package .*pip install tensorboard=="):
        TensorBoard()
