"""Specification of raysim.fleet: catalogue, fleets from mixes and traces, availability."""

from __future__ import annotations

import math
import re
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raysim.fleet import Availability, Fleet, FleetError, largest_remainder, load_catalogue, make_fleet
from raysim.fleet.availability import AvailabilityConfig
from raysim.scenario.schema import FleetConfig

CLASSES = ["mcu", "mcu-thread", "mcu-lora", "mcu-psram",
           "rpi-zero", "rpi3", "rpi4", "jetson-nano", "phone-low", "phone-high", "gateway"]


# --- catalogue ----------------------------------------------------------------------------

def test_catalogue_has_every_class_with_sane_figures() -> None:
    cat = load_catalogue()
    assert list(cat) == CLASSES
    for name, c in cat.items():
        assert c.name == name
        assert c.flops > 0 and c.down_bps > 0 and c.up_bps > 0 and c.memory_bytes > 0
        assert c.mean_online_s > 0 and c.mean_offline_s > 0 and c.latency_s >= 0
        assert len(c.source) > 40 and c.description
    # Orders of magnitude the classes are defined by.
    assert cat["mcu"].memory_bytes < 1_000_000 and cat["mcu"].flops < 1e9
    assert cat["mcu"].flops < cat["rpi-zero"].flops < cat["rpi4"].flops < cat["jetson-nano"].flops
    assert cat["phone-low"].flops < cat["phone-high"].flops
    assert cat["mcu"].up_bps < cat["mcu-psram"].up_bps
    # batteries: the microcontrollers and phones carry one, Linux boards and gateways are mains-powered
    assert all(cat[c].battery_wh for c in ("mcu", "mcu-thread", "mcu-lora", "mcu-psram", "phone-low", "phone-high"))
    assert all(cat[c].battery_wh is None for c in ("rpi-zero", "rpi3", "rpi4", "jetson-nano", "gateway"))
    assert all(0 <= c.standby_w <= c.idle_w or c.battery_wh is None for c in cat.values())


CLASS_YAML = ("x:\n  description: d\n  flops: {flops}\n  memory_bytes: 1\n  down_bps: 1\n  up_bps: 1\n"
              "  latency_s: 0\n  radio: {radio}\n  compute_w: {compute_w}\n  idle_w: 0.1\n  battery_wh: {battery_wh}\n"
              "  standby_w: 0.01\n  mean_online_s: 1\n  mean_offline_s: 1\n  source: s\n")


@pytest.mark.parametrize("fields, needle", [
    ({"flops": -1}, "'flops' must be positive"),
    ({"compute_w": -2}, "'compute_w' must be positive"),
    ({"compute_w": "2 W"}, "'compute_w' must be a finite number"),
    ({"radio": "zigbee-pro"}, "names radio 'zigbee-pro', a technology the catalogue lacks (known: 802.15.4, ble,"),
    ({"battery_wh": -1}, "'battery_wh' must be a positive capacity in Wh or null"),
    ({"battery_wh": "big"}, "'battery_wh' must be a finite number"),
])
def test_catalogue_rejects_bad_figures(tmp_path: Path, fields, needle) -> None:
    bad = tmp_path / "cat.yaml"
    bad.write_text(CLASS_YAML.format(**{"flops": 1, "radio": "ble", "compute_w": 1.0, "battery_wh": "null", **fields}))
    with pytest.raises(FleetError, match=re.escape(needle)):
        load_catalogue(bad)


def test_every_class_has_a_known_radio_and_power_figures() -> None:
    from raysim.fleet.radios import load_radios

    radios = load_radios()
    assert set(radios) == {"ble", "802.15.4", "lora", "nbiot", "ltem", "lte", "wifi", "ethernet"}
    assert radios["lora"].duty_cycle == 0.01 and radios["lte"].tail_j > 0 and radios["ble"].tail_j == 0
    for c in load_catalogue().values():
        assert c.radio in radios and c.compute_w > c.idle_w > 0, c.name
        assert "Power" in c.source, c.name  # every power figure says where it comes from


@pytest.mark.parametrize("change, needle", [
    ("tx_w: -1", "'tx_w' must be non-negative"),
    ("duty_cycle: 2", "'duty_cycle' is a share of time in (0, 1]"),
    ("max_payload_bytes: 0.5", "'max_payload_bytes' must be a whole number"),
])
def test_radios_reject_bad_figures(tmp_path: Path, change, needle) -> None:
    from raysim.fleet.radios import load_radios

    key = change.split(":")[0]
    base = {"description": "d", "down_bps": 1, "up_bps": 1, "latency_s": 0, "tx_w": 1, "rx_w": 1, "idle_w": 0,
            "tail_j": 0, "duty_cycle": 1, "max_payload_bytes": None, "overhead_bytes": 0, "source": "s"}
    lines = [f"  {k}: {'null' if v is None else v}" for k, v in base.items() if k != key] + [f"  {change}"]
    bad = tmp_path / "radios.yaml"
    bad.write_text("r:\n" + "\n".join(lines) + "\n")
    with pytest.raises(FleetError, match=re.escape(needle)):
        load_radios(bad)


# --- fleets from a mix ----------------------------------------------------------------------

@given(
    shares=st.dictionaries(st.sampled_from(CLASSES), st.floats(0.0, 10.0, allow_nan=False), min_size=1)
    .filter(lambda d: sum(d.values()) > 0),
    total=st.integers(0, 5000),
)
def test_largest_remainder_is_exact_and_fair(shares: dict[str, float], total: int) -> None:
    counts = largest_remainder(shares, total)
    assert sum(counts.values()) == total
    whole = sum(Fraction(v) for v in shares.values())
    for k, v in shares.items():
        quota = Fraction(v) * total / whole
        assert math.floor(quota) <= counts[k] <= math.ceil(quota)
    # Order of the mix does not matter.
    assert largest_remainder(dict(reversed(list(shares.items()))), total) == counts


def test_counts_per_class_match_the_mix_exactly() -> None:
    # quotas 3.5, 2.1, 1.4 -> floors 3, 2, 1; the one left goes to the largest remainder.
    fleet = make_fleet(FleetConfig(devices=7, mix={"mcu": 0.5, "rpi4": 0.3, "gateway": 0.2}), seed=1)
    assert fleet.class_counts() == {"mcu": 4, "rpi4": 2, "gateway": 1}
    fleet = make_fleet(FleetConfig(devices=1000), seed=3)
    assert fleet.class_counts() == {"mcu": 400, "mcu-psram": 300, "rpi-zero": 200, "rpi4": 100}
    assert len(fleet) == 1000 and list(fleet.device_id) == list(range(1000))


def test_fleet_is_deterministic_by_seed_and_classes_are_shuffled() -> None:
    cfg = FleetConfig(devices=500)
    a, b, c = make_fleet(cfg, 7), make_fleet(cfg, 7), make_fleet(cfg, 8)
    for name in ("class_idx", "flops", "memory", "down_bps", "up_bps", "latency", "mean_online", "mean_offline"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert not np.array_equal(a.flops, c.flops)
    # Not one block per class: the first 50 ids already hold several classes.
    assert len(set(a.classes()[:50])) > 1


def test_spread_zero_gives_class_figures_and_spread_is_lognormal() -> None:
    cat = load_catalogue()
    flat = make_fleet(FleetConfig(devices=20, mix={"rpi4": 1}, spread=0.0), seed=0)
    assert np.all(flat.flops == cat["rpi4"].flops) and np.all(flat.memory == cat["rpi4"].memory_bytes)
    assert np.all(flat.latency == cat["rpi4"].latency_s)
    wide = make_fleet(FleetConfig(devices=20000, mix={"rpi4": 1}, spread=0.5), seed=0)
    logs = np.log(wide.flops / cat["rpi4"].flops)
    assert abs(np.median(logs)) < 0.02 and abs(logs.std() - 0.5) < 0.02
    assert abs(np.log(wide.memory / cat["rpi4"].memory_bytes).std() - 0.5) < 0.02


def test_unknown_class_names_it_and_lists_known() -> None:
    with pytest.raises(FleetError) as err:
        make_fleet(FleetConfig(devices=10, mix={"mcu": 1, "toaster": 1}), seed=0)
    msg = str(err.value)
    assert "'toaster'" in msg and "rpi4" in msg and "\n" not in msg


def test_fleet_frame_and_ids() -> None:
    fleet = make_fleet(FleetConfig(devices=30), seed=0)
    frame = fleet.to_frame()
    assert list(frame.columns) == ["device_id", "device_class", "flops", "memory_bytes", "down_bps", "up_bps",
                                   "latency_s", "mean_online_s", "mean_offline_s", "radio", "compute_w", "idle_w",
                                   "tx_w", "rx_w", "radio_idle_w", "tail_j"]
    assert list(frame["device_class"].astype(str)) == list(fleet.classes())
    cat = load_catalogue()
    assert list(frame["radio"]) == [cat[c].radio for c in fleet.classes()]
    assert list(frame["compute_w"]) == [cat[c].compute_w for c in fleet.classes()]
    assert np.array_equal(fleet.index_of(np.array([5, 0, 29])), [5, 0, 29])
    with pytest.raises(FleetError, match="30"):
        fleet.index_of(np.array([30]))


# --- fleets from traces -------------------------------------------------------------------

TRACE = pd.DataFrame({
    "device_id": [12, 3, 7],
    "flops": [1e9, 2e8, 5e10],
    "memory_mb": [512, 0.5, 4096],
    "down_kbps": [20000, 250, 100000],
    "up_kbps": [5000, 100, 50000],
    "device_class": ["phone-low", "mcu", "edge-box"],
    "extra": ["ignored", "x", "y"],
})


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_trace_fleet_loads_csv_and_parquet(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"devices.{fmt}"
    TRACE.to_csv(path, index=False) if fmt == "csv" else TRACE.to_parquet(path, index=False)
    fleet = make_fleet(FleetConfig(trace=str(path), devices=1), seed=0)
    cat = load_catalogue()
    assert len(fleet) == 3  # the trace is the fleet; `devices` is ignored
    assert list(fleet.device_id) == [3, 7, 12]  # sorted by id
    assert list(fleet.classes()) == ["mcu", "edge-box", "phone-low"]
    assert np.allclose(fleet.flops, [2e8, 5e10, 1e9])
    assert list(fleet.memory) == [2**19, 4096 * 2**20, 512 * 2**20]
    assert np.allclose(fleet.down_bps, [250e3, 100e6, 20e6]) and np.allclose(fleet.up_bps, [100e3, 50e6, 5e6])
    # No latency column: catalogue class latency, else 0; availability means likewise (NaN).
    assert np.allclose(fleet.latency, [cat["mcu"].latency_s, 0.0, cat["phone-low"].latency_s])
    assert math.isnan(fleet.mean_online[1]) and fleet.mean_online[0] == cat["mcu"].mean_online_s
    assert np.array_equal(fleet.index_of(np.array([12, 3])), [2, 0])


def test_trace_ms_per_sample_uses_the_reference_model(tmp_path: Path) -> None:
    path = tmp_path / "fedscale.csv"
    path.write_text("device_id,ms_per_sample,memory_bytes,down_kbps,up_kbps,latency_ms\n0,50,1000000,5000,1000,40\n")
    fleet = make_fleet(FleetConfig(trace=str(path)), seed=0, reference_flops=2e6)
    # 2e6 forward FLOPs in 50 ms -> 4e7 FLOP/s.
    assert fleet.flops[0] == pytest.approx(4e7) and fleet.latency[0] == pytest.approx(0.04)
    with pytest.raises(FleetError, match="reference_flops"):
        make_fleet(FleetConfig(trace=str(path)), seed=0)


def test_a_trace_gives_power_and_batteries_per_device(tmp_path: Path) -> None:
    from raysim.engine.battery import Batteries, EnergyConfig

    path = tmp_path / "devices.csv"
    path.write_text("device_id,flops,memory_bytes,down_kbps,up_kbps,device_class,compute_w,battery_wh,standby_w\n"
                    "0,1e8,100000,200,100,mcu,0.9,,\n1,1e8,100000,200,100,mcu,,0.5,0.002\n"
                    "2,1e9,1e9,9000,9000,rpi4,,2,\n")
    fleet = make_fleet(FleetConfig(trace=str(path)), seed=0)
    cat = load_catalogue()
    p = fleet.power_of(np.arange(3))
    assert p["compute_w"].tolist() == [0.9, cat["mcu"].compute_w, cat["rpi4"].compute_w]
    assert p["idle_w"].tolist() == [cat["mcu"].idle_w, cat["mcu"].idle_w, cat["rpi4"].idle_w]
    assert fleet.to_frame()["compute_w"].tolist() == p["compute_w"].tolist()
    b = Batteries.of(fleet, EnergyConfig(batteries=True), seed=0)
    # a blank cell keeps the class's battery; a trace's capacity gives a mains class a battery
    assert b.capacity.tolist() == [cat["mcu"].battery_wh * 3600, 0.5 * 3600, 2 * 3600]
    assert b.standby_w.tolist() == [cat["mcu"].standby_w, 0.002, cat["rpi4"].standby_w]
    path.write_text("device_id,flops,memory_bytes,down_kbps,up_kbps,battery_wh\n0,1e8,1,1,1,0\n")
    with pytest.raises(FleetError, match=r"line 2, column 6 \(battery_wh\): must be positive"):
        make_fleet(FleetConfig(trace=str(path)), seed=0)


HEADER = "device_id,flops,memory_bytes,down_kbps,up_kbps"


@pytest.mark.parametrize(("body", "expected"), [
    ("device_id,flops,memory_bytes,down_kbps\n0,1,1,1\n", r"missing column 'up_kbps'"),
    ("device_id,memory_bytes,down_kbps,up_kbps\n0,1,1,1\n", r"missing column 'flops'"),
    (f"{HEADER}\n0,1e9,100,1,1\n1,fast,100,1,1\n", r"line 3, column 2 \(flops\): 'fast' is not a number"),
    (f"{HEADER}\n0,1e9,100,1,1\n\n1,1e9,-5,1,1\n", r"line 4, column 3 \(memory_bytes\): negative value -5"),
    (f"{HEADER}\n0,1e9,100,1,1\n1,1e9,100,0,1\n", r"line 3, column 4 \(down_kbps\): must be positive"),
    (f"{HEADER}\n0,1e9,100,1,1\n1,1e9,100,1,\n", r"line 3, column 5 \(up_kbps\): empty cell"),
    (f"{HEADER}\n0,1e9,100,1,1\n1.5,1e9,100,1,1\n", r"line 3, column 1 \(device_id\): 1.5 is not an integer"),
    (f"{HEADER}\n4,1e9,100,1,1\n5,1e9,100,1,1\n4,1e9,100,1,1\n",
     r"line 4, column 1 \(device_id\): duplicate device id 4 \(first at line 2\)"),
    (f"{HEADER}\n0,inf,100,1,1\n", r"line 2, column 2 \(flops\): 'inf' is not a number"),
    (f"{HEADER}\n", r"empty device trace"),
    ("", r"empty file"),
])
def test_malformed_csv_trace_errors_name_line_and_column(tmp_path: Path, body: str, expected: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(body)
    with pytest.raises(FleetError, match=expected) as err:
        make_fleet(FleetConfig(trace=str(path)), seed=0)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_malformed_parquet_trace_errors_name_row_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.parquet"
    frame = TRACE.drop(columns=["extra"]).astype({"up_kbps": str})
    frame.loc[1, "up_kbps"] = "n/a"
    frame.to_parquet(path, index=False)
    with pytest.raises(FleetError, match=r"row 2, column 5 \(up_kbps\): 'n/a' is not a number"):
        make_fleet(FleetConfig(trace=str(path)), seed=0)
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(FleetError, match="not a readable parquet file"):
        make_fleet(FleetConfig(trace=str(tmp_path / "junk.parquet")), seed=0)
    with pytest.raises(FleetError, match="no such device trace file"):
        make_fleet(FleetConfig(trace=str(tmp_path / "absent.csv")), seed=0)


# --- availability ---------------------------------------------------------------------------

MARKOV = AvailabilityConfig(kind="markov")


def _fleet(n: int = 2000, **mix: float) -> Fleet:
    return make_fleet(FleetConfig(devices=n, mix=mix or {"mcu": 1, "phone-low": 1, "rpi4": 1}), seed=5)


def test_always_online() -> None:
    fleet = _fleet(50)
    av = Availability(fleet, AvailabilityConfig(kind="always"), seed=0)
    assert av.online(fleet.device_id, 123.0).all() and av.online_during(fleet.device_id, 0.0, 1e9).all()


def test_markov_is_deterministic_by_seed() -> None:
    fleet = _fleet()
    times = [0.0, 500.0, 86_400.0]
    a = [Availability(fleet, MARKOV, seed=1).online(fleet.device_id, t) for t in times]
    b = [Availability(fleet, MARKOV, seed=1).online(fleet.device_id, t) for t in times]
    c = [Availability(fleet, MARKOV, seed=2).online(fleet.device_id, t) for t in times]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


FLEET = _fleet(300)


@settings(max_examples=25, deadline=None)
@given(
    queries=st.lists(st.tuples(st.lists(st.integers(0, 299), min_size=1, max_size=40),
                               st.floats(0.0, 200_000.0), st.floats(0.0, 5_000.0)), min_size=1, max_size=8),
)
def test_markov_answers_do_not_depend_on_query_order_or_company(queries) -> None:
    busy = Availability(FLEET, MARKOV, seed=9)
    answers = [(ids, t, d, busy.online_during(np.array(ids), t, t + d), busy.online(np.array(ids), t))
               for ids, t, d in queries]
    # A fresh instance asked about one device at a time, in reverse order, agrees bit for bit.
    fresh = Availability(FLEET, MARKOV, seed=9)
    for ids, t, d, during, at in reversed(answers):
        for j, i in enumerate(ids):
            assert fresh.online_during(np.array([i]), t, t + d)[0] == during[j]
            assert fresh.online(np.array([i]), t)[0] == at[j]
        assert not np.any(during & ~at)  # online through [t, t+d] implies online at t


@pytest.mark.parametrize("kind", ["markov", "trace"])
def test_online_during_takes_one_end_time_per_device(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "avail.csv"
    rows = [f"{i},{10 * (i % 7)},{10 * (i % 7) + 5 + i % 50}" for i in range(300)]
    path.write_text("device_id,start_s,end_s\n" + "\n".join(rows) + "\n")
    av = Availability(FLEET, AvailabilityConfig(kind=kind, trace=str(path) if kind == "trace" else None), seed=2)
    ids = FLEET.device_id
    t0 = 30.0
    finish = t0 + np.linspace(0.0, 40.0, len(ids))
    one_by_one = [av.online_during(np.array([i]), t0, f)[0] for i, f in zip(ids, finish)]
    together = av.online_during(ids, t0, finish)
    assert list(together) == one_by_one and 0 < together.sum() < len(ids)
    with pytest.raises(ValueError):
        av.online_during(ids, t0, finish - 31.0)


def test_markov_long_run_online_fraction() -> None:
    fleet = make_fleet(FleetConfig(devices=20000, mix={"mcu": 1}, spread=0.0), seed=0)
    fleet.mean_online[:] = 100.0  # p(online) = 100 / (100 + 300) = 0.25
    fleet.mean_offline[:] = 300.0
    av = Availability(fleet, MARKOV, seed=3)
    # Stationary from the start: across devices at t=0 and at a later time.
    for t in (0.0, 12_345.0):
        assert av.online(fleet.device_id, t).mean() == pytest.approx(0.25, abs=0.015)
    # Ergodic: one device over a long time.
    one = np.array([17])
    frac = np.mean([av.online(one, t)[0] for t in np.arange(0.0, 400_000.0, 97.0)])
    assert frac == pytest.approx(0.25, abs=0.04)
    # Online for a whole window of length d: p * exp(-d / mean_online).
    during = av.online_during(fleet.device_id, 5_000.0, 5_100.0).mean()
    assert during == pytest.approx(0.25 * math.exp(-1.0), abs=0.015)


def test_markov_needs_means(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("device_id,flops,memory_bytes,down_kbps,up_kbps\n0,1e9,1,1,1\n")
    fleet = make_fleet(FleetConfig(trace=str(path)), seed=0)
    with pytest.raises(FleetError, match="class 'trace'"):
        Availability(fleet, MARKOV, seed=0)


def _interval_fleet() -> Fleet:
    return make_fleet(FleetConfig(devices=4, mix={"rpi4": 1}), seed=0)


def test_trace_availability_intervals_merge_and_loop(tmp_path: Path) -> None:
    path = tmp_path / "avail.csv"
    # Device 0: [0,10) and [20,30) + [25,40) merged to [20,40); device 1: [5,100) (trace end);
    # device 2: [90,100) then wraps into its [0,5); device 3 not listed: never online.
    path.write_text("device_id,start_s,end_s\n0,0,10\n0,25,40\n0,20,30\n1,5,100\n2,90,100\n2,0,5\n")
    fleet = _interval_fleet()
    av = Availability(fleet, AvailabilityConfig(kind="trace", trace=str(path)), seed=0)
    ids = fleet.device_id
    assert list(av.online(ids, 0.0)) == [True, False, True, False]
    assert list(av.online(ids, 10.0)) == [False, True, False, False]  # [start, end)
    assert list(av.online_during(ids, 21.0, 39.0)) == [True, True, False, False]
    assert list(av.online_during(ids, 95.0, 104.0)) == [False, False, True, False]  # wraps to [100, 105)
    assert list(av.online(ids, 120.0)) == [True, True, False, False]  # 120 = 20 into the 2nd cycle
    no_loop = Availability(fleet, AvailabilityConfig(kind="trace", trace=str(path), loop=False), seed=0)
    assert not no_loop.online(ids, 120.0).any()
    assert not no_loop.online_during(ids, 95.0, 104.0).any()


@pytest.mark.parametrize(("body", "expected"), [
    ("device_id,start_s,end_s\n0,5,5\n", r"line 2, column 3 \(end_s\): end_s 5 must be greater than start_s 5"),
    ("device_id,start_s\n0,5\n", r"missing column 'end_s'"),
    ("device_id,start_s,end_s\n0,-1,5\n", r"line 2, column 2 \(start_s\): negative value -1"),
    ("device_id,start_s,end_s\n99,0,5\n", r"no device of the fleet"),
])
def test_bad_availability_traces(tmp_path: Path, body: str, expected: str) -> None:
    path = tmp_path / "avail.csv"
    path.write_text(body)
    with pytest.raises(FleetError, match=expected):
        Availability(_interval_fleet(), AvailabilityConfig(kind="trace", trace=str(path)), seed=0)
