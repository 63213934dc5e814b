"""The report on energy and batteries: batteries.parquet, the figures, the summary lines."""

import numpy as np
import pandas as pd
import pytest
from helpers import local_sim, tiny_overrides

from raysim.report.markdown import summary_text, write_report
from raysim.report.tables import Runs
from raysim.rundir.reader import load_run
from raysim.rundir.writer import RunWriter
from raysim.scenario.schema import load_scenario


def write_run(path, overrides, rounds=3):
    sc = load_scenario("scenarios/quickstart.yaml", tiny_overrides(**overrides))
    sim = local_sim(sc)
    w = RunWriter(path, sc)
    for _ in range(rounds):
        w.add(sim.step())
    w.finish()
    return path


BATTERY = {"energy.batteries": "true", "energy.check": "reserve", "energy.reserve": 0.0,
           "fleet.mix": "{mcu: 0.5, mcu-psram: 0.5}", "energy.initial_charge": "[0.0, 0.05]",
           "fleet.classes": "{mcu: {battery_wh: 0.004}, mcu-psram: {battery_wh: 0.004}}",
           "deadline.policy": "wait", "selection.overcommit": 0}


def test_a_battery_run_writes_its_table_and_reports_charge_and_devices_lost(tmp_path):
    run = load_run(write_run(tmp_path / "bat", BATTERY))
    b = run.batteries
    assert set(b["device_class"]) == {"mcu", "mcu-psram"} and sorted(set(b["round"])) == [1, 2, 3]
    assert (b["charge_p10"] <= b["charge_p50"]).all() and (b["charge_p50"] <= b["charge_p90"]).all()
    assert (b["empty"] <= b["devices"]).all()
    depleted = int((run.clients["status"] == "depleted").sum())
    assert depleted > 0 and int(run.rounds["n_depleted"].sum()) == depleted
    text = summary_text(run)
    assert f"ran empty mid-round {depleted}" in text
    plain = load_run(write_run(tmp_path / "plain", {}, rounds=1))
    assert plain.batteries.empty and "batteries" not in summary_text(plain)
    rep = write_report(Runs([run, plain]), tmp_path / "report")
    names = {p.name for p in rep.figures}
    assert {"energy.png", "batteries.png"} <= names
    md = rep.markdown.read_text()
    assert "## Batteries" in md and "battery: ran empty" in md and "energy (kJ)" in md
    assert rep.summary.loc[rep.summary.index[0], "battery_depleted"] == depleted
    assert np.isfinite(rep.summary["energy_kj"]).all()


def test_resume_keeps_the_battery_rows_of_the_rounds_it_keeps(tmp_path):
    path = write_run(tmp_path / "bat", BATTERY)
    sc = load_scenario("scenarios/quickstart.yaml", tiny_overrides(**BATTERY))
    w = RunWriter.resume(path, sc, upto=2)
    assert sorted({b["round"] for b in w.batteries}) == [1, 2]
    w.flush()
    assert sorted(set(load_run(path, allow_incomplete=True).batteries["round"])) == [1, 2]


def test_the_energy_study_summarises_a_run(tmp_path, monkeypatch):
    import importlib.util
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("energy_study", root / "analysis" / "energy_study.py")
    study = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "energy_study", study)  # its dataclasses look their module up
    spec.loader.exec_module(study)
    run = load_run(write_run(tmp_path / "bat", {**BATTERY, "fleet.mix": "{mcu: 0.4, mcu-psram: 0.4, rpi4: 0.2}"}))
    row = study.summarise(run, study.ARMS[0], target=0.0)
    assert row["rounds_to_target"] == 1 and row["ran_empty"] == int((run.clients["status"] == "depleted").sum())
    first = run.clients[run.clients["round"] == 1]
    assert row["mains_j_to_target"] == pytest.approx(first.loc[first["device_class"] == "rpi4", "energy_j"].sum())
    assert row["battery_j_to_target"] + row["mains_j_to_target"] == pytest.approx(first["energy_j"].sum())
    table = pd.DataFrame([{**row, "seed": 0}])
    text = study.markdown(table, 0.5)
    assert text.startswith("| arm | final accuracy") and "| static |" in text
    unreached = study.summarise(run, study.ARMS[0], target=1.01)
    assert unreached["rounds_to_target"] is None and np.isnan(unreached["battery_j_to_target"])
