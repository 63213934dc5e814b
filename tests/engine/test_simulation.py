"""The round loop without Ray: determinism, deadline effects, records."""

import numpy as np
import pytest
import torch
from helpers import local_sim, tiny_overrides

from raysim.scenario.build import prepare
from raysim.scenario.schema import load_scenario


def make_sim(hosts=1, **over):
    sc = load_scenario("scenarios/quickstart.yaml", tiny_overrides(**over))
    return local_sim(sc, hosts)


def run_rounds(sim, n):
    return [sim.step() for _ in range(n)]


def test_same_seed_same_numbers_whatever_the_host_count():
    a, b = make_sim(hosts=1), make_sim(hosts=3)
    ra, rb = run_rounds(a, 2), run_rounds(b, 2)
    for k in a.params:
        assert torch.equal(a.params[k], b.params[k]), k
    assert [r.round_row["accuracy"] for r in ra] == [r.round_row["accuracy"] for r in rb]
    assert ra[-1].clients["status"] == rb[-1].clients["status"]


def test_different_seed_differs():
    a, b = make_sim(), make_sim(seed=1)
    run_rounds(a, 1)
    run_rounds(b, 1)
    assert any(not torch.equal(a.params[k], b.params[k]) for k in a.params)


def test_records_are_consistent():
    sim = make_sim(**{"selection.overcommit": 0.5})
    out = sim.step()
    row, c = out.round_row, out.clients
    assert row["selected"] == len(c["device_id"]) == 12
    assert sum(row[f"n_{s}"] for s in ["ok", "partial", "late", "offline", "excluded", "failed", "oom"]) == row["selected"]
    assert row["trained"] <= 8
    trained = [s for s in c["status"] if s in ("ok", "partial")]
    assert len(trained) == row["trained"]
    assert sim.clock == pytest.approx(row["sim_time"]) and row["duration"] > 0


def test_tight_deadline_makes_devices_late_and_they_are_not_trained():
    sim = make_sim(**{"deadline.seconds": 0.5, "deadline.policy": "drop"})
    out = sim.step()
    st = np.array(out.clients["status"])
    assert (st == "late").sum() > 0
    assert all(n == 0 for n, s in zip(out.clients["samples_trained"], st) if s == "late")


def test_partial_policy_trains_fewer_steps():
    sim = make_sim(**{"deadline.seconds": 1.0, "deadline.policy": "partial", "train.epochs": 20})
    out = sim.step()
    c = out.clients
    part = [i for i, s in enumerate(c["status"]) if s == "partial"]
    assert part, "expected some partial devices with a tight deadline"
    for i in part:
        assert 0 < c["samples_trained"][i] < 20 * c["samples"][i]


def test_checkpoint_state_resumes_bit_identically():
    a = make_sim()
    run_rounds(a, 3)
    b = make_sim()
    run_rounds(b, 1)
    state = b.state_dict()
    c = make_sim()
    c.load_state_dict(state)
    run_rounds(c, 2)
    for k in a.params:
        assert torch.equal(a.params[k], c.params[k])
    assert a.clock == c.clock


def test_trace_fleet_with_sparse_ids_trains_each_device_on_its_own_shard(tmp_path):
    ids = 1000 + 7 * np.arange(60)
    rows = ["device_id,flops,memory_bytes,down_kbps,up_kbps"] + [f"{d},1e9,100000000,10000,10000" for d in ids]
    trace = tmp_path / "fleet.csv"
    trace.write_text("\n".join(rows) + "\n")
    sc = load_scenario("scenarios/quickstart.yaml", tiny_overrides(**{"fleet.trace": str(trace), "train.epochs": 1}))
    setup = prepare(sc)
    assert list(setup.fleet.device_id) == list(ids)
    out = local_sim(sc, setup=setup).step()
    ok = [i for i, s in enumerate(out.clients["status"]) if s == "ok"]
    assert ok
    for i in ok:
        assert out.clients["samples_trained"][i] == out.clients["samples"][i]
