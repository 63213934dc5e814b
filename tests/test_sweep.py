"""Sweeps: grid parsing and validation up front, then a real two-point sweep into one parent."""

import contextlib
import io
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from helpers import tiny_overrides

from raysim.cli import main
from raysim.report.markdown import FIGURES
from raysim.report.tables import load_runs
from raysim.sweep import SweepError, expand, parse_grid, plan_sweep, run_sweep, split_values

QUICKSTART = "scenarios/quickstart.yaml"


def raysim(*args):
    return subprocess.run([sys.executable, "-m", "raysim", *args], capture_output=True, text=True, timeout=300)


def test_values_split_at_commas_outside_brackets():
    assert split_values("1,2") == ["1", "2"]
    assert split_values("[1,0.5],[1, 0.25]") == ["[1,0.5]", "[1, 0.25]"]
    assert split_values("{mcu: 1, rpi4: 1},{mcu: 1}") == ["{mcu: 1, rpi4: 1}", "{mcu: 1}"]


def test_grid_expands_to_the_product_in_the_order_given():
    grid = parse_grid(["deadline.seconds=30,120", "compression.strategy=static,rolling"])
    assert expand(grid) == [
        ("deadline.seconds=30", "compression.strategy=static"),
        ("deadline.seconds=30", "compression.strategy=rolling"),
        ("deadline.seconds=120", "compression.strategy=static"),
        ("deadline.seconds=120", "compression.strategy=rolling"),
    ]


@pytest.mark.parametrize("items, needle", [
    ([], "at least one --grid"),
    (["seed"], "expected KEY=V1,V2"),
    (["=1,2"], "empty key"),
    (["seed="], "no values"),
    (["seed=1,,2"], "empty value"),
    (["seed=1,1"], "given twice"),
    (["seed=1", "seed=2"], "given twice"),
    (["model.rates=[1,0.5"], "unbalanced brackets"),
])
def test_malformed_grids_are_named(items, needle):
    with pytest.raises(SweepError, match=needle):
        parse_grid(items)


def test_every_point_is_validated_and_named_after_the_scenario():
    plan = plan_sweep(QUICKSTART, ["deadline.seconds=30,120", "model.rates=[1,0.5],[1,0.25]"], ["rounds=2"])
    assert [p.dirname for p in plan.points] == [
        "deadline.seconds=30,model.rates=[1,0.5]", "deadline.seconds=30,model.rates=[1,0.25]",
        "deadline.seconds=120,model.rates=[1,0.5]", "deadline.seconds=120,model.rates=[1,0.25]"]
    last = plan.points[-1].scenario
    assert last.name == "quickstart/deadline.seconds=120,model.rates=[1,0.25]"
    assert last.deadline.seconds == 120 and last.model.rates == [1.0, 0.25] and last.rounds == 2
    # The second value is bad: the whole plan fails, naming that point.
    with pytest.raises(SweepError, match=r"^--grid deadline.seconds=-1: deadline.seconds"):
        plan_sweep(QUICKSTART, ["deadline.seconds=30,-1"])


@pytest.mark.parametrize("grid, needle", [
    (["--grid", "deadline.seconds=30,-5"], "--grid deadline.seconds=-5: deadline.seconds"),
    (["--grid", "model.colour=red,blue"], "model.colour: unknown field"),
    (["--grid", "seed"], "expected KEY=V1,V2"),
])
def test_a_bad_grid_fails_in_one_line_before_anything_runs(grid, needle, tmp_path, capfd, monkeypatch):
    # In this process (a bad grid is refused before Ray starts); the first case also as a real
    # `python -m raysim` subprocess, to show that nothing but the one line reaches the terminal.
    if grid == ["--grid", "deadline.seconds=30,-5"]:
        p = raysim("sweep", QUICKSTART, *grid, "--out", str(tmp_path))
        code, err = p.returncode, p.stderr
    else:
        def no_ray(*args, **kwargs):
            raise AssertionError("a bad grid must be refused before Ray starts")

        # The runner first: importing it while the session's start_ray is patched would bind the patch
        # into the runner for good.
        monkeypatch.setattr("raysim.runtime.runner.start_ray", no_ray)
        monkeypatch.setattr("raysim.runtime.session.start_ray", no_ray)
        capfd.readouterr()
        code, err = main(["sweep", QUICKSTART, *grid, "--out", str(tmp_path)]), capfd.readouterr().err
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err
    assert not list(tmp_path.iterdir()), "a bad grid may not create anything"


GRID = "deadline.seconds=1,60"


@pytest.fixture(scope="module")
def swept(ray_local, tmp_path_factory):
    """A real sweep of two points through the CLI, both points at once (in this process, on the
    session's Ray instance of 2 CPUs: the sweep's own start finds it running), with TensorBoard on."""
    out = tmp_path_factory.mktemp("sweeps")
    sets = [a for kv in tiny_overrides() for a in ("--set", kv)]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["sweep", QUICKSTART, *sets, "--grid", GRID, "--out", str(out), "--quiet", "--parallel", "2",
                    "--tensorboard"])
    assert code == 0, printed.getvalue()
    (parent,) = list(out.iterdir())
    return parent, printed.getvalue()


@pytest.mark.slow
def test_sweep_runs_each_point_into_one_parent_and_reports_it(swept):
    parent, stdout = swept
    assert parent.name.startswith("tiny-sweep-")
    book = json.loads((parent / "sweep.json").read_text())
    assert book["status"] == "complete" and book["grid"] == {"deadline.seconds": ["1", "60"]}
    assert [v["status"] for v in book["points"].values()] == ["complete", "complete"]
    for value in ("1", "60"):
        run = parent / f"deadline.seconds={value}"
        manifest = json.loads((run / "manifest.json").read_text())
        assert manifest["status"] == "complete" and manifest["name"] == f"tiny/deadline.seconds={value}"
    for f in [*(fig.file for fig in FIGURES if fig.file not in ("staleness.png", "batteries.png", "gateways.png")), "report.md"]:
        assert (parent / f).is_file(), f
    assert "report.md" in stdout
    runs = load_runs(parent)
    assert runs.labels == ["tiny/deadline.seconds=1", "tiny/deadline.seconds=60"]
    assert runs.varying == ["deadline.seconds"]
    assert runs.rounds.groupby("deadline.seconds").size().to_dict() == {1.0: 3, 60.0: 3}
    # A 1 s deadline drops stragglers that a 60 s one keeps.
    c = runs.clients
    missed = c[c["reason"].str.contains("deadline")].groupby("deadline.seconds").size()
    assert missed.get(1.0, 0) > 0 and missed.get(60.0, 0) == 0


@pytest.mark.slow
def test_sweep_with_tensorboard_logs_each_point_as_a_run_of_its_own_under_the_sweep(swept):
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    parent, stdout = swept
    assert f"events   tensorboard --logdir {parent}  (one run per point)" in stdout
    mux = EventMultiplexer()
    mux.AddRunsFromDirectory(str(parent))  # as `tensorboard --logdir <sweep>` finds them
    mux.Reload()
    runs = sorted(mux.Runs())
    assert runs == ["deadline.seconds=1/tensorboard", "deadline.seconds=60/tensorboard"]
    for run in runs:
        rounds = pd.read_parquet(parent / run.split("/")[0] / "rounds.parquet")
        got = [(e.step, e.value) for e in mux.Scalars(run, "sim_time")]
        assert got == [(int(r), np.float32(t)) for r, t in zip(rounds["round"], rounds["sim_time"])] and len(got) == 3


@pytest.mark.slow
def test_one_point_at_a_time_gives_the_same_numbers(swept, ray_local, tmp_path):
    parent, _ = swept
    plan = plan_sweep(QUICKSTART, ["deadline.seconds=1"], tiny_overrides())
    finished = []
    result = run_sweep(plan, out_root=tmp_path, progress=False, parallel=1, on_point=finished.append)
    assert [(r.point.label, r.status) for r in finished] == [("deadline.seconds=1", "complete")]
    again = load_runs(result.path)
    before = load_runs(parent / "deadline.seconds=1")
    assert again[again.labels[0]].manifest["info"]["hosts"] == 2
    assert before[before.labels[0]].manifest["info"]["hosts"] == 1
    # Alone on two device hosts, the point gives what it gave on one host beside another point.
    cols = ["run", "round", "sim_time", "accuracy", "trained", "n_late"]
    pd.testing.assert_frame_equal(again.rounds[cols], before.rounds[cols])
    pd.testing.assert_frame_equal(again.clients.drop(columns=["host", "wall_s"]),
                                  before.clients.drop(columns=["host", "wall_s"]))
