"""A selector or an assigner that breaks its contract is named as the culprit: one line, exit 2,
never raysim's "please report it"."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest

from raysim.cli import main
from raysim.errors import PluginError
from raysim.inprocess import local_simulation
from raysim.scenario.schema import load_scenario

SCRATCH = '''
import numpy as np
from raysim.api import Assigner, Assignment, Selector


class Twice(Selector):
    """Picks its first device twice."""

    def select(self, req):
        ids = np.asarray(req.online)[: req.want].copy()
        ids[-1] = ids[0]
        return ids


class Offline(Selector):
    """Picks ids past the fleet."""

    def select(self, req):
        return np.arange(req.want) + 10**6


class OffLadder(Assigner):
    """Assigns a rate the model has no width for."""

    def assign(self, req):
        return Assignment(np.full(len(req.device_ids), 0.3), [""] * len(req.device_ids))
'''

SMALL = ["rounds=1", "fleet.devices=40", "selection.per_round=4", "eval.max_samples=100",
         "data.synthetic.samples=2000"]


@pytest.fixture()
def scratch(tmp_path, monkeypatch):
    """A researcher's scratch module outside the repository, importable by path."""
    (tmp_path / "scratch_plugins.py").write_text(textwrap.dedent(SCRATCH))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "scratch_plugins"
    sys.modules.pop("scratch_plugins", None)


@pytest.mark.parametrize("key, value, says", [
    ("selection.policy", "Twice", "selector scratch_plugins:Twice returned device"),
    ("selection.policy", "Offline", "selector scratch_plugins:Offline returned device 1000000, which is offline"),
    ("assignment.policy", "OffLadder", "assigner scratch_plugins:OffLadder assigned rate 0.3, which is not on the "
                                       "ladder"),
])
def test_a_plugin_that_breaks_its_contract_is_named_in_process(scratch, key, value, says):
    sc = load_scenario("scenarios/quickstart.yaml", [*SMALL, f"{key}={scratch}:{value}"])
    with pytest.raises(PluginError, match=says):
        local_simulation(sc).step()


def test_a_scratch_selector_returning_an_id_twice_is_one_line_through_ray(ray_local, scratch, tmp_path, capsys):
    code = main(["run", "scenarios/quickstart.yaml", *[a for s in [*SMALL, f"selection.policy={scratch}:Twice"]
                                                       for a in ("--set", s)],
                 "--out", str(tmp_path / "runs"), "--quiet", "--no-report"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("raysim: error: selector scratch_plugins:Twice returned device ") and " twice; " in err
    assert len(err.splitlines()) == 1 and "report it" not in err and "Traceback" not in err


def test_a_valid_selection_passes_the_check():
    from raysim.engine.selection import Uniform, check_selection

    check_selection(Uniform(), np.array([4, 2]), 2, np.array([2, 3, 4]))
    with pytest.raises(PluginError, match="returned 1 device ids; expected 2"):
        check_selection(Uniform(), np.array([4]), 2, np.array([2, 3, 4]))
