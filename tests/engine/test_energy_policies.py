"""Energy-aware assignment (fit-energy) and selection (energy-aware), built in and by import path."""

import sys
import textwrap

import numpy as np
import pytest
from helpers import local_sim, tiny_overrides

from raysim.engine.assignment import AssignRequest, FitEnergy
from raysim.engine.selection import EnergyAware, SelectRequest, Uniform
from raysim.errors import ScenarioError
from raysim.records import OK
from raysim.scenario.schema import load_scenario

RATES = [1.0, 0.5, 0.25]
NEED = {1.0: 400, 0.5: 200, 0.25: 100}
JOULES = {1.0: 8.0, 0.5: 3.0, 0.25: 1.0}


def request(cap, available=None, deadline=None, times=None):
    n = len(cap)
    return AssignRequest(1, np.arange(n), RATES, NEED, np.array(cap), lambda r: np.full(n, 10.0) if times is None
                         else times[r], deadline, lambda r: np.full(n, JOULES[r]),
                         None if available is None else np.array(available, float))


def test_fit_energy_takes_the_largest_rate_within_the_budget_and_the_battery():
    a = FitEnergy(budget_j=5.0).assign(request([400, 400, 400, 50], [np.inf, 2.0, 0.5, np.inf]))
    assert a.rate[:2].tolist() == [0.5, 0.25] and np.isnan(a.rate[2]) and np.isnan(a.rate[3])
    assert a.reason[0].startswith("fit-energy: rate 0.5 needs 3 J of the budget 5 J; rate 1 does not fit")
    assert a.reason[1].startswith("fit-energy: rate 0.25 needs 1 J of its battery 2 J")
    assert a.reason[2] == "battery: rate 0.25 needs 1 J, 0.5 J above its reserve"
    assert a.reason[3].startswith("memory:")
    nobudget = FitEnergy().assign(request([400, 400], [np.inf, 8.0]))
    assert nobudget.rate.tolist() == [1.0, 1.0]
    with_deadline = FitEnergy(deadline=True).assign(
        request([400], [np.inf], deadline=5.0, times={1.0: np.array([9.0]), 0.5: np.array([4.0]), 0.25: np.array([1.0])}))
    assert with_deadline.rate.tolist() == [0.5]
    with pytest.raises(ValueError, match="needs deadline.seconds"):
        FitEnergy(deadline=True).assign(request([400]))


def select(selector, level, want, r=1):
    online = np.arange(100, 100 + len(level))
    return selector.select(SelectRequest(r, online, want, 7, 0.0, lambda: np.asarray(level, float)))


def test_energy_aware_selection_prefers_charged_devices_and_takes_empty_ones_last():
    level = [0.0] * 50 + [1.0] * 10 + [0.2] * 40
    picks = [select(EnergyAware(exponent=2.0), level, 10, r) for r in range(1, 41)]
    share_full = np.mean([np.mean((p >= 150) & (p < 160)) for p in picks])
    assert share_full > 0.4  # 10 of 50 charged devices: uniform would give 0.2 (0.1 of the picks here)
    assert all(not np.any(p < 150) for p in picks)  # never one at its reserve while charged ones are left
    forced = select(EnergyAware(), [0.0] * 5 + [1.0] * 3, 5)
    assert set(forced) >= {105, 106, 107} and len(set(forced)) == 5
    assert np.array_equal(select(EnergyAware(), level, 10), select(EnergyAware(), level, 10))  # deterministic
    # exponent 0 ignores the battery: every device may be picked
    anywhere = np.concatenate([select(EnergyAware(exponent=0.0), level, 10, r) for r in range(1, 30)])
    assert np.any(anywhere < 150)
    assert len(set(select(Uniform(), level, 10))) == 10


def test_energy_aware_selection_and_fit_energy_run_from_yaml():
    over = {"energy.batteries": "true", "selection.policy": "energy-aware", "assignment.policy": "fit-energy",
            "assignment.params": "{budget_j: 0.5}", "rounds": 2}
    sc = load_scenario("scenarios/quickstart.yaml", tiny_overrides(**over))
    sim = local_sim(sc)
    outs = [sim.step() for _ in range(2)]
    for out in outs:
        c = {k: np.asarray(v) for k, v in out.clients.columns().items()}
        ok = c["status"] == OK
        assert ok.any()
        work = c["energy_compute_j"] + c["energy_tx_j"] + c["energy_rx_j"]
        assert np.all(work[ok] <= 0.5 + 1e-9)
        refused = [r for r in c["reason"] if "0.5 J budget" in r]
        assert all(r.startswith("battery:") or r.startswith("energy budget:") for r in refused)


SELECTOR = textwrap.dedent('''
    import numpy as np
    from raysim.api import Selector


    class LowestIds(Selector):
        """The online devices with the smallest ids (a toy rule)."""

        def select(self, req):
            return np.sort(req.online)[: req.want]
''')


def test_a_selector_by_import_path(tmp_path, monkeypatch):
    (tmp_path / "myselect.py").write_text(SELECTOR)
    monkeypatch.syspath_prepend(str(tmp_path))
    sc = load_scenario("scenarios/quickstart.yaml", tiny_overrides(**{"selection.policy": "myselect:LowestIds",
                                                                      "rounds": 1}))
    sim = local_sim(sc)
    online = np.flatnonzero(sim.setup.availability.online(np.arange(60), 0.0))
    ids = sim.step().clients.columns()["device_id"]
    assert len(ids) == 10 and ids == online[:10].tolist()  # K = 8, over-committed by a quarter
    sys.modules.pop("myselect", None)


@pytest.mark.parametrize("overrides, message", [
    ({"selection.policy": "energy-aware"}, "selection.policy: 'energy-aware' weighs battery levels; set "
                                           "energy.batteries: true"),
    ({"energy.batteries": "true", "server.mode": "fedbuff"}, "energy.batteries: tracked in synchronous rounds only"),
    ({"energy.charging": "{toaster: {profile: solar, w: 1}}"}, "energy.charging: 'toaster' is not a device class"),
    ({"energy.charging": "{mcu: {profile: hourly, w: [1, 2]}}"}, "energy.charging.mcu: profile 'hourly' needs w as a "
                                                                 "list of 24 values"),
    ({"energy.charging": "{mcu: {profile: solar, w: -1}}"}, "power must be finite and non-negative"),
    ({"energy.initial_charge": "[0.9, 0.1]"}, "energy.initial_charge: shares of capacity with 0 <= low <= high <= 1"),
    ({"energy.reserve": 1.5}, "energy.reserve"),
    ({"fleet.classes": "{mcu: {battery_wh: -2}}"}, "fleet.classes: class 'mcu' field 'battery_wh' must be a positive"),
    ({"fleet.classes": "{mcu: {radio: zigbee}}"}, "fleet.classes: mcu.radio: 'zigbee' is a technology the catalogue "
                                                  "lacks"),
    ({"assignment.policy": "fit-energy", "assignment.params": "{budget_j: -1}"}, "assignment.params.budget_j"),
    ({"selection.policy": "nope"}, "selection.policy: unknown name 'nope'"),
])
def test_bad_energy_settings_are_one_line(overrides, message):
    with pytest.raises(ScenarioError) as err:
        sc = load_scenario("scenarios/quickstart.yaml", tiny_overrides(**overrides))
        from raysim.scenario.resolve import components

        components(sc)
    assert message in str(err.value) and "\n" not in str(err.value)
