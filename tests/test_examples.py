"""The bring-your-own examples run as a user runs them: `python examples/<name>.py`."""

import ast
import runpy
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name, tmp_path, capsys, monkeypatch):
    """Run the script as `python examples/<name> --tiny`, in this process (on the session's Ray
    instance: the script's own start finds it running), so its classes live in a `__main__`."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [str(EXAMPLES / name), "--tiny", "--out", str(tmp_path)])
    runpy.run_path(str(EXAMPLES / name), run_name="__main__")
    return capsys.readouterr().out


@pytest.mark.slow
def test_own_model_and_non_image_data_trains_sliced_submodels(tmp_path, capsys, monkeypatch, ray_local):
    out = run_example("own_model_and_data.py", tmp_path, capsys, monkeypatch)
    per_rate = ast.literal_eval(out.split("devices trained per rate:")[1].strip())
    assert any(r < 1 for r in per_rate), out
    assert float(out.split("final accuracy ")[1].split("%")[0]) > 25.0, out  # above chance


@pytest.mark.slow
def test_own_compression_strategy_runs(tmp_path, capsys, monkeypatch, ray_local):
    out = run_example("own_strategy.py", tmp_path, capsys, monkeypatch)
    assert "devices trained per rate:" in out and "run " in out


@pytest.mark.slow
def test_fedprox_with_own_server_optimizer_runs(tmp_path, capsys, monkeypatch, ray_local):
    out = run_example("fedprox_own_server.py", tmp_path, capsys, monkeypatch)
    assert "'client': 'object'" in out and "'server': 'object'" in out


def test_every_example_has_a_tiny_mode_and_a_docstring():
    for path in EXAMPLES.glob("*.py"):
        text = path.read_text()
        assert ast.get_docstring(ast.parse(text)), path
        assert "--tiny" in text, path
