"""Batteries on the simulated clock: charge, standby, charging, exclusion, running empty, resume."""

import math

import numpy as np
import pytest
from helpers import local_sim, tiny_overrides

from raysim.engine.battery import Batteries, ChargingConfig, death_time
from raysim.records import DEPLETED, EXCLUDED, OK
from raysim.scenario.schema import load_scenario

DAY = 86400.0


def one_class(capacity, charge, reserve=0.0, standby=0.0, profile=None, offset=0.0):
    n = len(capacity)
    prof = np.zeros((1, 24)) if profile is None else np.asarray(profile, dtype=float).reshape(1, 24)
    return Batteries(np.array(capacity, float), np.array(charge, float), np.full(n, reserve), np.zeros(n, np.int64),
                     np.full(n, float(standby)), prof, offset, "work", ("c",))


def test_charging_profiles_integrate_exactly_over_days_and_hours():
    solar = ChargingConfig(profile="solar", w=2.0).hourly()
    assert solar.sum() * 3600 == pytest.approx(2.0 * 24 / math.pi * 3600)  # a half-sine day: 24/pi peak-hours
    assert solar[:6].sum() == 0 and solar[18:].sum() == 0 and solar[11] == solar[12] == solar.max()
    night = ChargingConfig(profile="night", w=5.0).hourly()
    assert night.sum() == 9 * 5.0 and night[22] == night[6] == 5.0 and night[7] == night[21] == 0
    b = one_class([1e9], [0.0], profile=night)
    assert b.harvest(0.0, 1.5 * DAY)[0] == pytest.approx(5.0 * 3600 * (9 + 7))  # a day, then 00:00-12:00
    assert b.harvest(7 * 3600, 22 * 3600)[0] == 0.0  # daytime: unplugged
    b2 = one_class([1e9], [0.0], profile=night, offset=12 * 3600)  # t = 0 is noon
    assert b2.harvest(0.0, 12 * 3600)[0] == pytest.approx(5.0 * 3600 * 2)  # 22:00 to midnight
    with pytest.raises(ValueError, match="24 values"):
        ChargingConfig(profile="hourly", w=[1.0] * 23).hourly()


def test_advance_drains_standby_and_fl_work_charges_and_clips_to_capacity():
    b = one_class([100.0, 100.0, np.inf], [50.0, 99.0, np.inf], standby=0.5, profile=np.full(24, 1.0))
    b.advance(0.0, 10.0, np.array([0]), np.array([30.0]))
    # 50 + 10 (charging) - 5 (standby) - 30 (FL work); 99 + 5 clipped at 100; mains stays inf
    assert b.charge.tolist() == [25.0, 100.0, np.inf]
    b.advance(10.0, 20.0, np.array([0]), np.array([1000.0]))
    assert b.charge[0] == 0.0 and b.empty(np.array([0, 1, 2])).tolist() == [True, False, False]


def test_levels_and_availability_are_measured_above_the_reserve():
    b = one_class([100.0, 100.0, np.inf], [60.0, 5.0, np.inf], reserve=10.0)
    assert b.available(np.arange(3)).tolist() == [50.0, 0.0, np.inf]
    assert b.level(np.arange(3)).tolist() == pytest.approx([50 / 90, 0.0, 1.0])


def test_a_battery_runs_empty_in_the_phase_where_its_charge_ends():
    # 1 s at 1 W, 2 s at 2 W, 1 s at 1 W: 6 J of work
    t = death_time(np.array([0.5, 3.0, 5.5, 6.0]), np.ones(4), np.full(4, 2.0), np.ones(4), np.ones(4),
                   np.full(4, 2.0), np.ones(4))
    assert t.tolist() == [0.5, 2.0, 3.5, np.inf]  # download, compute, upload, never (6 J is exactly the work)


def battery_scenario(**extra):
    over = {"fleet.mix": "{mcu: 0.5, mcu-psram: 0.5}", "energy.batteries": "true",
            "fleet.classes": "{mcu: {battery_wh: 0.004}, mcu-psram: {battery_wh: 0.004}}",
            "energy.initial_charge": "[0.05, 1.0]", "rounds": 4, "deadline.policy": "wait",
            "selection.overcommit": 0}
    over.update(extra)
    return load_scenario("scenarios/quickstart.yaml", tiny_overrides(**over))


def run(sc, rounds, hosts=1):
    sim = local_sim(sc, hosts=hosts)
    return sim, [sim.step() for _ in range(rounds)]


def cols(outs, *names):
    return {n: np.concatenate([np.asarray(o.clients.columns()[n]) for o in outs]) for n in names}


def test_devices_refuse_work_their_battery_cannot_cover_and_none_runs_empty():
    sim, outs = run(battery_scenario(), 4)
    c = cols(outs, "status", "reason", "energy_compute_j", "energy_j")
    battery = np.array([r.startswith("battery:") for r in c["reason"]])
    assert battery.any(), "the small batteries exclude some devices"
    assert set(c["status"][battery]) == {EXCLUDED}
    assert np.all(c["energy_j"][battery] == 0) and np.all(c["energy_compute_j"][c["status"] == EXCLUDED] == 0)
    assert DEPLETED not in set(c["status"])
    assert all(out.batteries for out in outs) and {b["device_class"] for b in outs[-1].batteries} == {"mcu", "mcu-psram"}
    bat = sim.mode.rounds.batteries
    assert np.all(bat.charge >= 0) and np.all(bat.charge <= bat.capacity)


def test_devices_that_know_only_their_charge_run_empty_mid_round_and_lose_their_update():
    sim, outs = run(battery_scenario(**{"energy.check": "reserve", "energy.reserve": 0.0,
                                        "energy.initial_charge": "[0.0, 0.05]"}), 3)
    c = cols(outs, "status", "reason", "samples_trained", "bytes_up", "device_id", "energy_j", "round")
    dead = c["status"] == DEPLETED
    assert dead.any()
    assert np.all(c["samples_trained"][dead] == 0) and np.all(c["bytes_up"][dead] == 0)
    assert all("battery ran empty" in r for r in c["reason"][dead])
    assert sum(o.record.n_depleted for o in outs) == int(dead.sum())
    # a device that ran empty and was not selected again is still empty (no charging here)
    last = {int(d): r for d, r in zip(c["device_id"][dead], c["round"][dead])}
    later = {int(d) for d, r in zip(c["device_id"], c["round"]) if any(int(d) == k and r > v for k, v in last.items())}
    for dev in set(last) - later:
        assert sim.mode.rounds.batteries.charge[np.searchsorted(sim.setup.fleet.device_id, dev)] == 0.0


def test_batteries_are_bit_identical_across_host_counts_and_resume_exactly():
    sc = battery_scenario(**{"energy.charging": "{mcu: {profile: constant, w: 0.002}}"})
    a, outs_a = run(sc, 4, hosts=1)
    b, outs_b = run(sc, 4, hosts=2)
    assert np.array_equal(a.mode.rounds.batteries.charge, b.mode.rounds.batteries.charge)
    for x, y in zip(outs_a, outs_b):
        assert x.batteries == y.batteries
        assert x.clients.columns()["energy_j"] == y.clients.columns()["energy_j"]
    c, _ = run(sc, 2)
    state = c.state_dict()
    d = local_sim(sc)
    d.load_state_dict(state)
    rest = [d.step() for _ in range(2)]
    assert np.array_equal(d.mode.rounds.batteries.charge, a.mode.rounds.batteries.charge)
    assert [o.batteries for o in rest] == [o.batteries for o in outs_a[2:]]
    assert [o.clients.columns()["status"] for o in rest] == [o.clients.columns()["status"] for o in outs_a[2:]]


def test_charging_raises_the_charge_of_idle_devices():
    plain, _ = run(battery_scenario(), 2)
    charged, _ = run(battery_scenario(**{"energy.charging": "{mcu: {profile: constant, w: 1.0}}"}), 2)
    mcu = plain.setup.fleet.classes() == "mcu"
    assert np.all(charged.mode.rounds.batteries.charge[mcu] >= plain.mode.rounds.batteries.charge[mcu])
    assert np.any(charged.mode.rounds.batteries.charge[mcu] > plain.mode.rounds.batteries.charge[mcu])
    assert np.all(charged.mode.rounds.batteries.charge[~mcu] == plain.mode.rounds.batteries.charge[~mcu])


def test_batteries_off_leave_a_run_as_it_was():
    sc = load_scenario("scenarios/quickstart.yaml", tiny_overrides(rounds=2))
    on = load_scenario("scenarios/quickstart.yaml", tiny_overrides(rounds=2, **{"energy.batteries": "true"}))
    _, a = run(sc, 2)
    s, b = run(on, 2)  # full batteries: nothing is refused in two short rounds
    assert s.mode.rounds.batteries is not None and not a[0].batteries
    for x, y in zip(a, b):
        assert x.clients.columns()["status"] == y.clients.columns()["status"]
        assert x.record.accuracy == y.record.accuracy
    assert set(np.concatenate([o.clients.columns()["status"] for o in b])) <= {OK, EXCLUDED, "late", "offline"}
