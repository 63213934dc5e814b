"""Radio technologies in link times: a duty-cycled radio (LoRa, 1%) waits off air between messages."""

import numpy as np
import pytest
from helpers import local_sim, tiny_overrides

from raysim.engine.cost import RateCost, device_times, duty_wait
from raysim.engine.energy import Phases, phase_energy, seconds
from raysim.fleet import make_fleet
from raysim.fleet.make import FleetConfig
from raysim.fleet.radios import load_radios
from raysim.records import LATE
from raysim.scenario.schema import load_scenario


def cost(nbytes):
    return RateCost(1.0, nbytes // 4, nbytes, 1e6, 0, 5e5, 0, 20)


def test_a_lora_update_waits_99_times_each_message_s_air_time_between_messages():
    fleet = make_fleet(FleetConfig(devices=4, mix={"mcu-lora": 1.0}, spread=0.0), seed=0)
    t = device_times(fleet, np.arange(4), cost(1150), 10, 1, np.random.default_rng(0), jitter=0.0)
    lora = load_radios()["lora"]
    air = 1150 * 8 / lora.up_bps
    # 1150 bytes = 10 messages of 115; 9 gaps of 99 x a message's air time
    assert t.wait_upload[0] == pytest.approx(9 * 99 * air / 10)
    assert t.upload[0] == pytest.approx(lora.latency_s + air + t.wait_upload[0])
    # one message: no wait at all
    t1 = device_times(fleet, np.arange(4), cost(100), 10, 1, np.random.default_rng(0), jitter=0.0)
    assert t1.wait_upload[0] == 0.0 and t1.upload[0] == pytest.approx(lora.latency_s + 100 * 8 / lora.up_bps)


def test_radios_without_a_duty_cycle_keep_the_plain_formula_bit_for_bit():
    fleet = make_fleet(FleetConfig(devices=50, mix={"mcu": 0.5, "rpi4": 0.5}), seed=1)
    t = device_times(fleet, np.arange(50), cost(40000), 10, 1, np.random.default_rng(3))
    f = np.exp(np.random.default_rng(3).normal(0.0, 0.1, size=(3, 50)))
    assert np.array_equal(t.upload, (fleet.latency + 40000 * 8.0 / fleet.up_bps) * f[2])
    assert not t.wait_upload.any() and not t.wait_download.any()
    assert duty_wait(np.array([5.0]), np.array([1e6]), np.array([np.inf]), np.array([1.0]))[0] == 0.0


def test_off_air_waiting_costs_radio_idle_power_not_transmit_power():
    power = {"compute_w": np.array([1.0]), "idle_w": np.array([0.0]), "tx_w": np.array([0.1]),
             "rx_w": np.array([0.04]), "radio_idle_w": np.array([1e-6]), "tail_j": np.array([0.0])}
    p = Phases(np.array([0.0]), np.array([0.0]), np.array([100.0]), np.ones(1), np.ones(1, bool),
               np.array([0.0]), np.array([99.0]))
    e = phase_energy(seconds(p, np.inf), power)
    assert e.tx[0] == pytest.approx(1.0 * 0.1 + 99.0 * 1e-6)
    half = phase_energy(seconds(p, 50.0), power)  # cut mid-upload: the same share on air
    assert half.tx[0] == pytest.approx(0.5 * e.tx[0])


def test_a_lora_node_late_because_of_its_duty_cycle_says_so():
    sc = load_scenario("scenarios/quickstart.yaml", tiny_overrides(**{
        "fleet.mix": "{mcu-lora: 1.0}", "fleet.classes": "{mcu-lora: {memory_bytes: 4000000, flops: 1.0e+9}}",
        "model.widths": "[2,4]", "model.hidden": 4, "deadline.seconds": 400, "rounds": 1}))
    out = local_sim(sc).step()
    c = out.clients.columns()
    late = [r for s, r in zip(c["status"], c["reason"]) if s == LATE]
    assert late and all(r.startswith("radio duty cycle: lora may be on air 1% of the time") for r in late)
    assert out.record.n_late == len(late)
