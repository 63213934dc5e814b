"""Callbacks on the Ray runtime: one that adds metrics and stops the run at round 3 of 4, with
TensorBoard on; the stopped run's directory, its report, its events, and its resume."""

import contextlib
import io
import json

import numpy as np
import pytest
from helpers import tiny_overrides
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import raysim
from raysim.api import Callback, Stop
from raysim.errors import PluginError
from raysim.rundir.reader import latest_checkpoint, load_checkpoint, load_run
from raysim.rundir.tensorboard import SCALAR_COLUMNS

pytestmark = pytest.mark.usefixtures("ray_local")

# checkpoint_every 5: round 3 is no regular checkpoint, so the stop must write one itself.
OVER = tiny_overrides(rounds=4, **{"output.checkpoint_every": 5, "output.tensorboard": "true", "output.plots": "false",
                                    "eval.max_samples": 200})


class StopAtThree(Callback):
    """Adds two metrics every round and stops the run after round 3."""

    def __init__(self):
        self.seen, self.ended = [], None

    def on_round(self, out):
        self.seen.append(out.record.round)
        metrics = {"acc_x2": 2 * out.record.accuracy, "custom/round_sq": float(out.record.round ** 2)}
        if out.record.round == 3:
            return Stop(f"enough after round {out.record.round}", metrics=metrics)
        return metrics

    def on_end(self, run_dir, status):
        self.ended = status


class Later(Callback):
    """Runs after the stopping callback: it still sees round 3, and its metric lands too."""

    def on_round(self, out):
        return {"later": out.metrics["acc_x2"] + 1}  # sees the metrics of the callbacks before it


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    out = tmp_path_factory.mktemp("stopped")
    cb = StopAtThree()
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        run = raysim.simulate("scenarios/quickstart.yaml", overrides=OVER, out=out, callbacks=[cb, Later()])
    return run, cb, err.getvalue()


def test_a_callback_stops_the_run_with_its_name_and_reason_and_the_run_is_final(stopped):
    run, cb, stderr = stopped
    by = {"callback": "test_stop_and_metrics:StopAtThree", "reason": "enough after round 3", "round": 3}
    assert run.manifest["status"] == "stopped" and run.manifest["stopped_by"] == by
    assert load_run(run.path).manifest["stopped_by"] == by  # final: read without allow_incomplete
    assert cb.seen == [1, 2, 3] and cb.ended == "stopped"
    lines = [ln for ln in stderr.splitlines() if "stopped" in ln]
    assert lines == ["tiny: stopped after round 3 by test_stop_and_metrics:StopAtThree: enough after round 3"]


def test_the_stopped_run_holds_three_rounds_their_metrics_and_a_checkpoint_of_round_3(stopped):
    run, _, _ = stopped
    r = run.rounds
    assert list(r["round"]) == [1, 2, 3]
    assert set(run.clients["round"]) == {1, 2, 3} and run.evals["round"].max() == 3
    np.testing.assert_array_equal(r["acc_x2"], 2 * r["accuracy"])
    np.testing.assert_array_equal(r["custom/round_sq"], [1.0, 4.0, 9.0])
    np.testing.assert_array_equal(r["later"], 2 * r["accuracy"] + 1)
    assert r["acc_x2"].dtype == np.float64
    ck = latest_checkpoint(run.path)
    assert ck.name == "round-000003.pt" and load_checkpoint(ck)["round"] == 3
    assert run.manifest["checkpoint_round"] == 3


def test_raysim_report_reads_the_stopped_run(stopped, capfd):
    from raysim.cli import main

    run, _, _ = stopped
    capfd.readouterr()
    assert main(["report", str(run.path)]) == 0, capfd.readouterr().err
    assert (run.path / "report.md").is_file()


def test_tensorboard_scalars_equal_the_run_directory_tables(stopped):
    run, _, _ = stopped
    ea = EventAccumulator(str(run.path / "tensorboard"))
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    r = run.rounds
    for col in [*SCALAR_COLUMNS, "acc_x2", "custom/round_sq", "later"]:
        want = [(int(k), np.float32(v)) for k, v in zip(r["round"], r[col]) if not np.isnan(v)]
        got = [(e.step, e.value) for e in ea.Scalars(col)] if col in tags else []
        assert got == want, col
    assert {"accuracy", "n_ok", "bytes_up", "acc_x2"} <= tags  # the comparison above compared something
    c = run.clients
    ok = c[c["status"] == "ok"].groupby(["device_class", "round"]).size()
    for cls in sorted(run.fleet["device_class"].unique()):
        got = [(e.step, e.value) for e in ea.Scalars(f"participation/{cls}")]
        assert got == [(k, float(ok.get((cls, k), 0))) for k in (1, 2, 3)], cls


def test_the_stopped_run_resumes_to_complete_and_its_events_append(stopped, tmp_path):
    import shutil

    run, _, _ = stopped
    path = shutil.copytree(run.path, tmp_path / "copy")  # the other tests read the stopped run as it is
    done = raysim.simulate(resume=path)  # no callback this time: it runs to its last round
    assert done.manifest["status"] == "complete" and "stopped_by" not in done.manifest
    assert list(done.rounds["round"]) == [1, 2, 3, 4]
    assert done.rounds["acc_x2"].isna().tolist() == [False, False, False, True]
    ea = EventAccumulator(str(path / "tensorboard"))
    ea.Reload()
    assert len(list((path / "tensorboard").glob("events.out.tfevents.*"))) == 2
    assert [e.step for e in ea.Scalars("accuracy")] == [1, 2, 3, 4]
    assert [e.value for e in ea.Scalars("accuracy")] == [np.float32(v) for v in done.rounds["accuracy"]]


class Clash(Callback):
    """Gives a metric named like a column the round record has."""

    def on_round(self, out):
        return {"loss": 0.0}


def test_a_bad_metric_fails_the_run_in_one_line_naming_the_callback(tmp_path):
    with pytest.raises(PluginError) as err:
        raysim.simulate("scenarios/quickstart.yaml", overrides=tiny_overrides(), out=tmp_path, callbacks=[Clash()])
    msg = str(err.value)
    assert msg == ("callback test_stop_and_metrics:Clash returned metric 'loss', a column rounds.parquet "
                   "already has; give it a new name"), msg
    (manifest,) = tmp_path.glob("*/manifest.json")
    m = json.loads(manifest.read_text())
    assert m["status"] == "failed" and "'loss'" in m["error"]
