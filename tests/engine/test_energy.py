"""Energy per device and round: predicted seconds per phase x the power of each state."""

import numpy as np
import pytest
from helpers import local_sim, tiny_overrides

from raysim.engine.energy import Phases, phase_energy, seconds
from raysim.scenario.schema import load_scenario

POWER = {"compute_w": np.array([2.0, 2.0, 2.0, np.nan]), "idle_w": np.array([0.5] * 4),
         "tx_w": np.array([1.0] * 4), "rx_w": np.array([0.25] * 4), "radio_idle_w": np.array([0.1] * 4),
         "tail_j": np.array([0.0, 3.0, 0.0, 0.0])}


def test_each_phase_costs_its_seconds_times_its_power_and_the_rest_of_the_round_is_idle():
    # device 0 finishes at 7 s of a 10 s round; device 1 adds a cellular tail per transfer
    p = Phases(np.array([1.0, 1.0, 1.0, 1.0]), np.array([4.0] * 4), np.array([2.0] * 4), np.ones(4),
               np.array([True, True, False, False]))
    s = seconds(p, 10.0)
    e = phase_energy(s, POWER)
    assert (s.download[0], s.compute[0], s.upload[0], s.idle[0]) == (1.0, 4.0, 2.0, 3.0)
    assert (e.compute[0], e.tx[0], e.rx[0], e.idle[0]) == (8.0, 2.0, 0.25, 3 * 0.6)
    assert (e.tx[1], e.rx[1]) == (2.0 + 3.0, 0.25 + 3.0)
    # not sent: nothing, even where the power is unknown
    for x in (e.compute, e.tx, e.rx, e.idle, e.total):
        assert x[2] == 0.0 and x[3] == 0.0
    assert np.array_equal(e.total, e.compute + e.tx + e.rx + e.idle)


def test_the_round_close_cuts_a_late_device_and_a_partial_one_computes_its_share():
    p = Phases(np.array([2.0, 2.0]), np.array([10.0, 10.0]), np.array([3.0, 3.0]), np.array([1.0, 0.3]),
               np.array([True, True]))
    s = seconds(p, 5.0)
    assert (s.download[0], s.compute[0], s.upload[0], s.idle[0]) == (2.0, 3.0, 0.0, 0.0)  # cut mid-compute
    assert (s.download[1], s.compute[1], s.upload[1], s.idle[1]) == (2.0, 3.0, 0.0, 0.0)
    s = seconds(p, 20.0)
    assert s.compute[1] == pytest.approx(3.0) and s.upload[1] == 3.0 and s.idle[1] == pytest.approx(12.0)


def test_with_no_round_close_every_phase_runs_in_full_and_nobody_waits():
    p = Phases(np.array([1.0]), np.array([5.0]), np.array([2.0]), np.ones(1), np.array([True]))
    s = seconds(p, np.inf)
    assert (s.download[0], s.compute[0], s.upload[0], s.idle[0]) == (1.0, 5.0, 2.0, 0.0)


@pytest.fixture(scope="module")
def rounds():
    sc = load_scenario("scenarios/quickstart.yaml", tiny_overrides(**{"deadline.seconds": 20}))
    sim = local_sim(sc)
    return sim, [sim.step() for _ in range(2)]


def test_a_run_s_energy_columns_add_up_and_follow_the_predicted_times(rounds):
    sim, outs = rounds
    fleet = sim.setup.fleet
    for out in outs:
        c = {k: np.array(v) for k, v in out.clients.columns().items()}
        parts = c["energy_compute_j"] + c["energy_tx_j"] + c["energy_rx_j"] + c["energy_idle_j"]
        assert np.array_equal(parts, c["energy_j"])
        assert np.all(c["energy_j"] >= 0) and np.isfinite(c["energy_j"]).all()
        excluded = c["status"] == "excluded"
        assert np.all(c["energy_j"][excluded] == 0.0)
        power = fleet.power_of(fleet.index_of(c["device_id"]))
        ok = c["status"] == "ok"
        assert ok.any()
        assert np.array_equal(c["energy_compute_j"][ok], c["t_compute"][ok] * power["compute_w"][ok])
        assert np.allclose(c["energy_tx_j"][ok], c["t_upload"][ok] * power["tx_w"][ok] + power["tail_j"][ok])
        assert out.record.energy_j == pytest.approx(float(c["energy_j"].sum()))
        # a late device (predicted past the 20 s deadline) is cut off when the round closes:
        # it spends less than its whole work would cost, and nothing waiting
        late = c["status"] == "late"
        whole = (c["t_download"] * power["rx_w"] + c["t_compute"] * power["compute_w"]
                 + c["t_upload"] * power["tx_w"] + 2 * power["tail_j"])
        assert np.all(c["energy_j"][late] < whole[late]) and np.all(c["energy_idle_j"][late] == 0.0)


def test_energy_is_the_same_on_any_number_of_hosts(rounds):
    _, outs = rounds
    sc = load_scenario("scenarios/quickstart.yaml", tiny_overrides(**{"deadline.seconds": 20}))
    sim = local_sim(sc, hosts=2)
    for out in outs:
        again = sim.step()
        assert again.clients.energy_j == out.clients.energy_j


def test_asynchronous_rows_spend_their_whole_timeline_and_never_wait():
    sc = load_scenario("scenarios/quickstart.yaml", tiny_overrides(**{"server.mode": "fedbuff", "rounds": 2}))
    sim = local_sim(sc)
    for _ in range(2):
        c = {k: np.array(v) for k, v in sim.step().clients.columns().items()}
        assert np.all(c["energy_idle_j"] == 0.0)
        sent = c["status"] != "excluded"
        assert np.all(c["energy_compute_j"][sent] > 0) and np.all(c["energy_j"][~sent] == 0.0)
