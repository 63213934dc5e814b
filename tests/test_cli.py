"""The command line: bad input gives one line and exit code 2, never a traceback.

Bad input is refused before Ray starts, so most cases call `raysim.cli.main` in this process
(capturing file descriptors 1 and 2, as a terminal would see them); the case marked `SUB` runs
`python -m raysim` as a real subprocess (tests/test_bad_inputs.py runs a few more bad inputs
that way, and every test that kills or resumes a run drives `python -m raysim run`).
"""

import json
import subprocess
import sys

import pytest

SUB = True  # run this case as `python -m raysim` in a subprocess


def raysim(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "raysim", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


def raysim_here(args, capfd, monkeypatch):
    """`raysim ARGS` in this process: (exit code, stderr). Ray must not start for bad input."""
    from raysim.cli import main

    def no_ray(*a, **kw):
        raise AssertionError("bad input must be refused before Ray starts")

    # The runner first: importing it while the session's start_ray is patched would bind the patch
    # into the runner for good.
    monkeypatch.setattr("raysim.runtime.runner.start_ray", no_ray)
    monkeypatch.setattr("raysim.runtime.session.start_ray", no_ray)
    capfd.readouterr()
    try:
        code = main(list(args))
    except SystemExit as exit_:  # what `python -m raysim` turns into its exit status
        code = exit_.code
    return code, capfd.readouterr().err


@pytest.mark.parametrize("args, needle, sub", [
    (["run", "nope.yaml"], "no such scenario file", False),
    (["run", "scenarios/quickstart.yaml", "--set", "fleet.devices=0"], "fleet.devices", False),
    (["run", "scenarios/quickstart.yaml", "--set", "model.colour=red"], "model.colour: unknown field", False),
    (["run", "scenarios/quickstart.yaml", "--set", "train.lr=fast"], "train.lr", False),
    (["run", "scenarios/quickstart.yaml", "--set", "nokey"], "KEY=VALUE", False),
    (["run", "scenarios/quickstart.yaml", "--set", "fleet.mix={toaster: 1}"], "toaster", False),
    (["run", "scenarios/quickstart.yaml", "--set", "data.dataset=mnist", "--set", "data.root=/nonexistent"], "/nonexistent",
     False),
    (["run", "scenarios/quickstart.yaml", "--bogus-flag"], "--bogus-flag", SUB),
    (["report", "/nonexistent/run"], "not a run directory", False),
])
def test_bad_input_is_one_line_and_exit_2(args, needle, sub, tmp_path, capfd, monkeypatch):
    extra = ["--out", str(tmp_path)] if args[0] == "run" else []
    if sub:
        p = raysim(*args, *extra)
        code, err = p.returncode, p.stderr
    else:
        code, err = raysim_here([*args, *extra], capfd, monkeypatch)
    assert code == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert needle in lines[0]
    assert "Traceback" not in err
    assert not list(tmp_path.iterdir()), "no run directory may be created for bad input"


def test_bad_yaml_names_the_line(tmp_path, capfd, monkeypatch):
    f = tmp_path / "bad.yaml"
    f.write_text("name: x\nrounds: [1,\n")
    code, err = raysim_here(["run", str(f)], capfd, monkeypatch)
    assert code == 2 and "line" in err and "Traceback" not in err


def test_tensorboard_flag_switches_output_tensorboard_on_for_a_new_run_and_a_resume(tmp_path, capfd, monkeypatch):
    from raysim.rundir.resume import file_sha256
    from raysim.scenario.schema import load_scenario

    seen = []

    def fake_run(sc, **kwargs):  # the flag is read before anything runs: record it and stop there
        seen.append(sc.output.tensorboard)
        raise SystemExit(0)

    monkeypatch.setattr("raysim.runtime.runner.run", fake_run)
    run_dir = tmp_path / "stopped"
    run_dir.mkdir()
    (run_dir / "scenario.yaml").write_text(load_scenario("scenarios/quickstart.yaml").to_yaml())
    (run_dir / "manifest.json").write_text(json.dumps(
        {"status": "stopped", "scenario_sha256": file_sha256(run_dir / "scenario.yaml"), "info": {}}))
    for args in (["run", "scenarios/quickstart.yaml"], ["run", "scenarios/quickstart.yaml", "--tensorboard"],
                 ["run", "--resume", str(run_dir), "--tensorboard"]):
        code, err = raysim_here([*args, "--out", str(tmp_path)], capfd, monkeypatch)
        assert code == 0, err
    assert seen == [False, True, True]  # a resume may switch it on: it changes no number


def test_fleet_command_prints_classes_and_rates(capfd):
    from raysim.cli import main

    code = main(["fleet", "scenarios/quickstart.yaml", "--set", "fleet.devices=200"])
    out, err = capfd.readouterr()
    assert code == 0, err
    assert "mcu" in out and "rate 0.125" in out
