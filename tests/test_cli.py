"""The command line: bad input gives one line and exit code 2, never a traceback."""

import subprocess
import sys

import pytest


def raysim(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "raysim", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


@pytest.mark.parametrize("args, needle", [
    (["run", "nope.yaml"], "no such scenario file"),
    (["run", "scenarios/quickstart.yaml", "--set", "fleet.devices=0"], "fleet.devices"),
    (["run", "scenarios/quickstart.yaml", "--set", "model.colour=red"], "model.colour: unknown field"),
    (["run", "scenarios/quickstart.yaml", "--set", "train.lr=fast"], "train.lr"),
    (["run", "scenarios/quickstart.yaml", "--set", "nokey"], "KEY=VALUE"),
    (["run", "scenarios/quickstart.yaml", "--set", "fleet.mix={toaster: 1}"], "toaster"),
    (["run", "scenarios/quickstart.yaml", "--set", "data.dataset=mnist", "--set", "data.root=/nonexistent"], "/nonexistent"),
    (["run", "scenarios/quickstart.yaml", "--bogus-flag"], "--bogus-flag"),
    (["report", "/nonexistent/run"], "not a run directory"),
])
def test_bad_input_is_one_line_and_exit_2(args, needle, tmp_path):
    extra = ["--out", str(tmp_path)] if args[0] == "run" else []
    p = raysim(*args, *extra)
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, p.stderr
    assert needle in lines[0]
    assert "Traceback" not in p.stderr
    assert not list(tmp_path.iterdir()), "no run directory may be created for bad input"


def test_bad_yaml_names_the_line(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("name: x\nrounds: [1,\n")
    p = raysim("run", str(f))
    assert p.returncode == 2 and "line" in p.stderr and "Traceback" not in p.stderr


def test_fleet_command_prints_classes_and_rates():
    p = raysim("fleet", "scenarios/quickstart.yaml", "--set", "fleet.devices=200")
    assert p.returncode == 0, p.stderr
    assert "mcu" in p.stdout and "rate 0.125" in p.stdout
