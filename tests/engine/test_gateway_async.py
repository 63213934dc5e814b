"""Asynchronous gateways: the cloud takes each gateway's model as it arrives (FedAsync) or every
K arrivals (FedBuff); gateways on their own clocks, records consistent, deterministic, resumable."""

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import local_sim, resumed, tiny_overrides

from raysim.errors import NoDevices
from raysim.scenario.schema import load_scenario


def gw_async(rounds=4, **over):
    base = {"topology.gateways": 3, "topology.gateway_rounds": 2, "selection.per_round": 9,
            "compression.strategy": "rolling", "deadline.seconds": 30, "server.mode": "fedasync"}
    return load_scenario("scenarios/quickstart.yaml", tiny_overrides(rounds=rounds, **{**base, **over}))


def run(sc, rounds, hosts=1):
    sim = local_sim(sc, hosts=hosts)
    return sim, [sim.step() for _ in range(rounds)]


def test_one_gateway_mixed_in_whole_is_the_synchronous_hierarchy():
    # alpha 1, no staleness discount and one gateway: each arrival replaces the model, as a
    # synchronous cloud round through one gateway does
    one = {"topology.gateways": 1, "server.alpha": 1.0, "server.staleness.kind": "constant"}
    sync, so = run(gw_async(rounds=3, **{**one, "server.mode": "sync"}), 3)
    asyn, ao = run(gw_async(rounds=3, **one), 3)
    assert type(asyn.mode).__name__ == "GatewayEvents"
    for s, a in zip(so, ao):
        assert s.clients.device_id == a.clients.device_id and s.clients.status == a.clients.status
        assert s.clients.version_applied == a.clients.version_applied
        assert s.record.sim_time == pytest.approx(a.record.sim_time, abs=1e-9)
        assert s.record.samples_trained == a.record.samples_trained > 0
    assert max(float((sync.params[k] - asyn.params[k]).abs().max()) for k in sync.params) < 1e-6


def test_gateways_answer_on_their_own_clocks_and_records_add_up():
    sim, outs = run(gw_async(rounds=8), 8)
    t_prev, next_start = 0.0, {}
    for w, out in enumerate(outs, start=1):
        rec, c, g = out.record, pd.DataFrame(out.clients.columns()), pd.DataFrame(out.gateways)
        assert rec.round == w and rec.sim_start == pytest.approx(t_prev) and rec.sim_time >= rec.sim_start
        t_prev = rec.sim_time
        (gid,) = set(g["gateway"])                         # fedasync: one gateway's model a step
        assert list(g["gateway_round"]) == [1, 2] and g["applied"].all()
        first, second = g.to_dict("records")
        assert second["sim_start"] == pytest.approx(first["sim_start"] + first["duration"])
        began = first["sim_start"] - sim.mode.cycles.t_cloud_down
        if gid in next_start:   # it started again as soon as its previous model was up
            assert began == pytest.approx(next_start[gid])
        next_start[gid] = rec.sim_time
        assert began + second["t_gateway_done"] == pytest.approx(rec.sim_time)
        assert second["t_gateway_done"] == pytest.approx(first["duration"] + second["duration"]
                                                         + sim.mode.cycles.t_cloud_down + sim.mode.cycles.t_cloud_up)
        # device rows add up to the gateway rows, gateway rows to the step
        per = c.groupby("gateway_round")
        assert (per.size() == g.set_index("gateway_round")["selected"]).all()
        assert (per["bytes_up"].sum() == g.set_index("gateway_round")["bytes_up"]).all()
        assert g["trained"].sum() == rec.trained and g["samples_trained"].sum() == rec.samples_trained
        assert (c["round"] == w).all() and (c["gateway"] == gid).all()
        ok = c[c["version_applied"] >= 0]
        assert len(ok) == rec.trained and (ok["version_applied"] == w).all()
        assert (ok["staleness"] == w - 1 - ok["version_start"]).all()
    # all three gateways answered, and some answer came from a model the cloud had moved on from
    rows = pd.concat([pd.DataFrame(o.clients.columns()) for o in outs])
    assert rows["gateway"].nunique() == 3 and (rows["staleness"] > 0).any()


def test_fedbuff_steps_on_k_gateway_models_and_is_identical_across_hosts_and_on_resume():
    sc = gw_async(rounds=4, **{"server.mode": "fedbuff", "server.buffer": 2})
    a, outs = run(sc, 4, hosts=1)
    assert all(len({(r["gateway"], r["sim_start"]) for r in o.gateways if r["gateway_round"] == 1}) == 2
               for o in outs)
    b, _ = run(sc, 4, hosts=2)
    assert all(torch.equal(a.params[k], b.params[k]) for k in a.params) and a.clock == b.clock
    c, _ = run(sc, 2)
    d = resumed(sc, c.state_dict(), 2)
    assert all(torch.equal(a.params[k], d.params[k]) for k in a.params) and a.clock == d.clock
    # the cloud moved: not the starting model
    start = local_sim(sc).params
    assert not all(torch.equal(a.params[k], start[k]) for k in start)


def test_asynchronous_gateways_keep_their_rounds_deadline_and_fit_deadline():
    sim, outs = run(gw_async(rounds=2, **{"assignment.policy": "fit-deadline", "deadline.policy": "partial"}), 2)
    g = pd.concat([pd.DataFrame(o.gateways) for o in outs])
    assert (g["duration"] <= 30 + 1e-9).all() and np.isfinite(sim.clock)


@pytest.mark.usefixtures("ray_local")
def test_a_checkpoint_file_resumes_exactly_and_a_ray_run_gives_the_in_process_numbers(tmp_path):
    # the runner's checkpoint format: torch.save, read back with the weights-only unpickler
    import torch as t

    from raysim.report.markdown import summary_text
    from raysim.rundir.reader import latest_checkpoint, load_checkpoint, load_run
    from raysim.runtime.runner import run as run_scenario

    sc = gw_async(rounds=4, **{"server.mode": "fedbuff", "server.buffer": 2, "topology.gateway_optimizer": "fedavgm",
                               "topology.gateway_state": "run"})
    whole, _ = run(sc, 4)
    first, _ = run(sc, 2)
    t.save(first.state_dict(), tmp_path / "round-2.pt")
    state = load_checkpoint(tmp_path / "round-2.pt")
    assert state["gateways_async"]["counts"] == first.mode.counts.tolist()
    again = resumed(sc, state, 2)
    assert all(torch.equal(again.params[k], whole.params[k]) for k in whole.params)
    assert again.mode.counts.tolist() == whole.mode.counts.tolist() and again.clock == whole.clock
    r = load_run(run_scenario(sc, out_root=str(tmp_path / "runs"), progress=False).path)
    got = load_checkpoint(latest_checkpoint(r.path))["params"]
    assert all(torch.equal(got[k], whole.params[k]) for k in whole.params)
    assert r.gateways.groupby("round")["bytes_up"].sum().tolist() == r.rounds["bytes_up"].tolist()
    assert "3 gateways, 2 gateway rounds an upload, the cloud fedbuff" in summary_text(r)


def test_gateways_whose_devices_never_come_online_retry_on_the_poll_then_stop_with_a_reason(monkeypatch):
    import raysim.engine.gateway_async as ga

    sim = local_sim(gw_async(rounds=2))
    monkeypatch.setattr(sim.setup.availability, "online", lambda ids, t: np.zeros(len(ids), bool))
    monkeypatch.setattr(ga, "MAX_IDLE", 30)
    with pytest.raises(NoDevices, match="no gateway's devices sent an update in 30 tries") as err:
        sim.step()
    # each empty try waited the poll (10 s): 31 tries over 3 gateways reach ~100 simulated seconds
    t = float(str(err.value).split("simulated time ")[1].split(" s")[0])
    assert 90 <= t <= 110 and sim.round == 0
