"""Loaders and reports over real run directories: tidy tables, every figure, report.md, the CLI."""

import contextlib
import importlib.util
import io
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import tiny_overrides

import raysim
from raysim.cli import main
from raysim.report.markdown import FIGURES, write_report
from raysim.report.summaries import outcome_shares, rate_label, time_to_target
from raysim.report.tables import flatten_params, load_runs, natural_key
from raysim.rundir.reader import RunError, load_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# a flat synchronous run without batteries
SYNC_FIGURES = [f.file for f in FIGURES if f.file not in ("staleness.png", "batteries.png", "gateways.png")]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def study(ray_local, tmp_path_factory):
    """The example study script on a tiny quickstart (3 rounds, 60 devices, one device host): its
    run and its output."""
    spec = importlib.util.spec_from_file_location("quickstart_report", ROOT / "analysis" / "quickstart_report.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    sets = [a for kv in tiny_overrides(**{"runtime.hosts": 1}) for a in ("--set", kv)]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        path = script.main([*sets, "--out", str(tmp_path_factory.mktemp("runs")), "--quiet"])
    return path, printed.getvalue()


@pytest.fixture(scope="module")
def run_dir(study):
    """One small real run, shared by this module's tests."""
    return study[0]


def variant(src, dest, **changes):
    """A copy of a run directory whose scenario.yaml says something else (tests the reader only)."""
    shutil.copytree(src, dest)
    sc = yaml.safe_load((dest / "scenario.yaml").read_text())
    for key, value in changes.items():
        node = sc
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    (dest / "scenario.yaml").write_text(yaml.safe_dump(sc, sort_keys=False))
    return dest


@pytest.fixture(scope="module")
def pair(run_dir, tmp_path_factory):
    """The real run and a copy that claims a 30 s deadline, under one parent directory."""
    parent = tmp_path_factory.mktemp("pair")
    a = shutil.copytree(run_dir, parent / "tiny-a")
    b = variant(run_dir, parent / "tiny-b", **{"deadline.seconds": 30.0})
    return parent, a, b


@pytest.mark.slow
def test_example_study_runs_reports_and_summarises(study):
    path, printed = study
    assert (path / "report.md").is_file() and all((path / f).is_file() for f in SYNC_FIGURES)
    assert f"run      {path}" in printed
    assert "participation" in printed and "mcu" in printed and "60% global accuracy" in printed


@pytest.mark.slow
def test_load_runs_gives_one_row_per_round_client_and_eval(run_dir):
    single = load_run(run_dir)
    runs = load_runs(run_dir)
    assert len(runs) == 1 and runs.labels == ["tiny"]
    assert len(runs.rounds) == 3 and list(runs.rounds["round"]) == [1, 2, 3]
    assert len(runs.clients) == int(single.rounds["selected"].sum())
    rates_below_one = len([r for r in single.scenario["model"]["rates"] if r < 1])
    assert len(runs.evals) == 3 * (1 + rates_below_one)
    for table in (runs.rounds, runs.clients, runs.evals, runs.fleet):
        assert set(table["run"]) == {"tiny"}
    # One run differs from nothing: no parameter columns unless asked for all of them.
    assert runs.varying == [] and "deadline.seconds" not in runs.rounds.columns
    everything = load_runs(run_dir, all_params=True)
    row = everything.clients.iloc[0]
    assert row["compression.strategy"] == "static"
    assert row["deadline.seconds"] == single.scenario["deadline"]["seconds"]
    assert row["seed"] == 0 and row["model.widths"] == (8, 16)


@pytest.mark.slow
def test_load_runs_adds_the_parameters_that_differ_as_columns(pair):
    parent, a, b = pair
    runs = load_runs(str(parent / "tiny-*"))
    assert runs.labels == ["tiny-a", "tiny-b"]  # same scenario name: directory names tell them apart
    assert runs.varying == ["deadline.seconds"]
    per = runs.rounds.groupby("deadline.seconds")["round"].count()
    assert per.to_dict() == {30.0: 3, 120.0: 3}
    assert runs.params.loc["tiny-b", "deadline.seconds"] == 30.0
    assert raysim.load_runs is load_runs  # exported lazily from the package
    # A parent directory stands for every run below it.
    assert load_runs(parent).labels == runs.labels


@pytest.mark.slow
def test_incomplete_runs_are_skipped_with_a_warning_unless_allowed(run_dir, tmp_path):
    done = shutil.copytree(run_dir, tmp_path / "done")
    broken = variant(run_dir, tmp_path / "broken", seed=7)
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["status"] = "failed"
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.warns(UserWarning, match="broken.*failed"):
        runs = load_runs(tmp_path)
    assert [r.path.name for r in runs] == [done.name]
    both = load_runs(tmp_path, allow_incomplete=True)
    assert len(both) == 2 and both.varying == ["seed"]


def test_missing_or_empty_paths_are_one_line_errors(tmp_path):
    with pytest.raises(RunError, match="not a run directory"):
        load_runs(tmp_path / "nope")
    with pytest.raises(RunError, match="holds none"):
        load_runs(tmp_path)
    with pytest.raises(RunError, match="no run directories match"):
        load_runs(str(tmp_path / "x-*"))


def test_flatten_params_dots_sections_and_freezes_lists():
    flat = flatten_params({"seed": 1, "model": {"rates": [1.0, 0.5], "arch": "cnn"},
                           "fleet": {"mix": {"mcu": 0.4}, "trace": None}})
    assert flat == {"seed": 1, "model.rates": (1.0, 0.5), "model.arch": "cnn", "fleet.mix.mcu": 0.4,
                    "fleet.trace": None}


def test_natural_order_compares_numbers_as_numbers():
    names = ["d=120", "d=2", "d=0.5", "d=0.25"]
    assert sorted(names, key=natural_key) == ["d=0.25", "d=0.5", "d=2", "d=120"]


def test_time_to_target_is_the_first_round_at_or_above_it():
    rounds = pd.DataFrame({"round": [1, 2, 3, 4], "sim_time": [10.0, 25.0, 40.0, 50.0],
                           "accuracy": [0.2, 0.61, 0.55, 0.7]})
    assert time_to_target(rounds, 0.6) == (2, 25.0)
    assert time_to_target(rounds, 0.9) == (None, None)


def test_rate_labels_read_as_fractions():
    assert [rate_label(r) for r in (1.0, 0.5, 0.125, 0.3, float("nan"))] == ["1", "1/2", "1/8", "0.3", "none"]


def test_outcome_shares_add_up_to_all_selections():
    clients = pd.DataFrame({"device_class": ["mcu", "mcu", "mcu", "rpi4"],
                            "rate": [0.125, 0.125, float("nan"), 1.0],
                            "status": ["ok", "late", "excluded", "ok"]})
    by_class = outcome_shares(clients, "device_class")
    assert by_class.loc["mcu", "late"] == pytest.approx(100 / 3)
    assert list(by_class["selected"]) == [3, 1]
    by_rate = outcome_shares(clients, "rate")
    assert list(by_rate.index) == ["1", "1/8", "none"]
    shares = by_rate.drop(columns="selected").sum(axis=1)
    assert shares.to_numpy() == pytest.approx([100.0, 100.0, 100.0])


@pytest.mark.slow
def test_report_writes_every_figure_and_a_markdown_summary(pair, tmp_path):
    parent, a, b = pair
    rep = write_report(load_runs([a, b]), tmp_path / "report", target=0.05)
    # synchronous runs: no staleness figure (every update is applied fresh)
    assert [p.name for p in rep.figures] == SYNC_FIGURES
    assert not (tmp_path / "report" / "staleness.png").exists()
    for png in rep.figures:
        data = png.read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 10_000, png.name
    md = rep.markdown.read_text()
    for f in SYNC_FIGURES:
        assert f"]({f})" in md
    assert "staleness.png" not in md and "## Staleness" not in md
    assert "tiny-a" in md and "tiny-b" in md and "`deadline.seconds`" in md
    assert "Target accuracy 5%" in md
    # Every round reaches 5%, so the first round is the time to target.
    assert list(rep.summary["rounds_to_target"]) == [1, 1]


def test_the_staleness_figure_comes_with_an_asynchronous_run(run_dir, tmp_path):
    asynchronous = variant(run_dir, tmp_path / "async", **{"server.mode": "fedbuff"})
    rep = write_report(load_runs([run_dir, asynchronous]), tmp_path / "report", target=0.05)
    assert [p.name for p in rep.figures] == [f.file for f in FIGURES if f.file not in ("batteries.png", "gateways.png")]
    assert "](staleness.png)" in rep.markdown.read_text()


def test_a_run_without_rounds_is_one_line_and_exit_2_and_nothing_is_written(run_dir, tmp_path, capsys):
    empty = shutil.copytree(run_dir, tmp_path / "empty")
    rounds = pd.read_parquet(empty / "rounds.parquet")
    rounds.iloc[:0].to_parquet(empty / "rounds.parquet")
    before = sorted(p.name for p in empty.iterdir())
    assert main(["report", str(empty)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no round has completed yet" in err and str(empty) in err
    assert sorted(p.name for p in empty.iterdir()) == before


def test_excluded_rows_have_null_staleness_so_means_skip_them(run_dir):
    from raysim.records import ClientRecords
    from raysim.rundir.writer import client_frame

    rows = ClientRecords()
    common = dict(round=1, device_class="mcu", reason="", t_download=0.0, t_compute=0.0, t_upload=0.0, t_total=0.0,
                  t_finish=0.0, work_fraction=1.0, samples=5, samples_trained=5, steps=1, loss=0.1, bytes_down=1,
                  bytes_up=1, host=0, wall_s=0.0, version_start=0)
    rows.append(device_id=1, rate=1.0, status="ok", version_applied=1, staleness=2, **common)
    rows.append(device_id=2, rate=float("nan"), status="excluded", version_applied=-1, staleness=-1, **common)
    rows.add_energy([1.0, 0.0], [0.5, 0.0], [0.25, 0.0], [0.125, 0.0])
    df = client_frame(rows)
    assert df["staleness"].isna().tolist() == [False, True] and df["staleness"].mean() == 2
    assert df["version_applied"].isna().tolist() == [False, True]
    assert df["energy_j"].tolist() == [1.875, 0.0]
    # and so in a real run's table: a row whose update was not applied has no staleness
    clients = load_run(run_dir).clients
    applied = clients["status"].isin(["ok", "partial"])
    assert clients.loc[applied, "staleness"].notna().all()
    assert clients.loc[~applied, "staleness"].isna().all()


@pytest.mark.slow
def test_report_command_writes_into_out_or_the_named_parent(pair, tmp_path, capsys):
    parent, a, b = pair
    assert main(["report", str(a), "--out", str(tmp_path / "rep"), "--target", "50"]) == 0
    assert "target   50% accuracy" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "rep").iterdir()) == sorted(["report.md", *SYNC_FIGURES])
    # A parent directory alone (a sweep's, say) gets the report of all its runs.
    assert main(["report", str(parent)]) == 0
    assert "tiny-a" in (parent / "report.md").read_text() and "tiny-b" in (parent / "report.md").read_text()


@pytest.mark.parametrize("args, needle", [
    (["--target", "250"], "--target 250"),
    (["--target", "0"], "--target 0"),
])
def test_report_command_rejects_a_bad_target_in_one_line(args, needle, tmp_path, capsys):
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "rep"), *args]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and needle in err
    assert not (tmp_path / "rep").exists()
