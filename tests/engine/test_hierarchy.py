"""Hierarchical FL through gateways: attachment, one clock for both tiers, consistent records,
determinism across hosts, exact resume, bad settings."""

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import local_sim, resumed, tiny_overrides

from raysim.engine.topology import attach
from raysim.errors import ScenarioError
from raysim.fleet.catalogue import load_catalogue
from raysim.fleet.radios import load_radios
from raysim.scenario.schema import load_scenario


def hier(rounds=3, **over):
    base = {"topology.gateways": 3, "topology.gateway_rounds": 2, "selection.per_round": 9,
            "compression.strategy": "rolling", "deadline.seconds": 30}
    return load_scenario("scenarios/quickstart.yaml", tiny_overrides(rounds=rounds, **{**base, **over}))


def run(sc, rounds, hosts=1):
    sim = local_sim(sc, hosts=hosts)
    return sim, [sim.step() for _ in range(rounds)]


def test_attachments_are_balanced_contiguous_or_by_label():
    r = attach("random", 7, 100, seed=3)
    assert sorted(np.bincount(r).tolist()) == [14, 14, 14, 14, 14, 15, 15]
    assert not np.array_equal(r, attach("random", 7, 100, seed=4))
    b = attach("blocks", 4, 10, seed=0)
    assert b.tolist() == sorted(b.tolist()) and set(b.tolist()) == {0, 1, 2, 3}
    labels = np.array([2, 0, 1, 0, 2, 1, 0, 1, 2])
    by_label = attach("label", 3, 9, seed=0, labels=labels)
    assert all(len(set(labels[by_label == g])) == 1 for g in range(3))


def test_device_rows_sum_to_gateway_rows_and_gateway_rows_to_the_cloud_round():
    sim, outs = run(hier(), 3)
    for out in outs:
        rec, c, g = out.record, pd.DataFrame(out.clients.columns()), pd.DataFrame(out.gateways)
        assert len(g) == 3 * 2 and set(g["gateway_round"]) == {1, 2}
        assert (c["gateway"].to_numpy() == sim.mode.cycles.gateway_of[np.searchsorted(sim.setup.fleet.device_id,
                                                                           c["device_id"])]).all()
        per = c.groupby(["gateway", "gateway_round"])
        gi = g.set_index(["gateway", "gateway_round"]).sort_index()
        for col in ("bytes_up", "bytes_down"):
            assert (per[col].sum().sort_index() == gi[col]).all()
        assert (per.size().sort_index() == gi["selected"]).all()
        assert (per["status"].apply(lambda s: int((s == "ok").sum())).sort_index() == gi["n_ok"]).all()
        assert g["selected"].sum() == rec.selected and g["bytes_up"].sum() == rec.bytes_up
        assert g["trained"].sum() == rec.trained and g["samples_trained"].sum() == rec.samples_trained
        # one clock: a gateway's second round starts when its first ends; the cloud waits for the last
        for _, rows in g.groupby("gateway"):
            first, second = rows.sort_values("gateway_round").to_dict("records")
            assert second["sim_start"] == pytest.approx(first["sim_start"] + first["duration"])
            assert first["sim_start"] == pytest.approx(rec.sim_start + sim.mode.cycles.t_cloud_down)
            assert second["t_gateway_done"] == pytest.approx(second["sim_start"] + second["duration"]
                                                             + sim.mode.cycles.t_cloud_up - rec.sim_start)
        assert rec.duration == pytest.approx(g["t_gateway_done"].max())
        # the gateway's own joules: awake from its download to its upload, radio by phase
        eth = load_radios()[load_catalogue()["gateway"].radio]
        for _, rows in g.groupby("gateway"):
            awake = rows["duration"].sum()
            want = (load_catalogue()["gateway"].idle_w * rows["t_gateway_done"].max() + eth.idle_w * awake
                    + eth.rx_w * sim.mode.cycles.t_cloud_down + eth.tx_w * sim.mode.cycles.t_cloud_up)
            assert rows["gateway_energy_j"].sum() == pytest.approx(want) and want > 0
        assert g["bytes_cloud_down"].sum() == g["bytes_cloud_up"].sum() == 3 * sim.mode.cycles.model_bytes


def test_identical_across_hosts_and_exact_on_resume():
    sc = hier(rounds=4, **{"channel.up": "topk", "channel.up_params": "{fraction: 0.1, error_feedback: true}"})
    a, outs = run(sc, 4, hosts=1)
    b, _ = run(sc, 4, hosts=2)
    assert all(torch.equal(a.params[k], b.params[k]) for k in a.params)
    assert a.clock == b.clock
    c, _ = run(sc, 2)
    d = resumed(sc, c.state_dict(), 2)
    assert all(torch.equal(a.params[k], d.params[k]) for k in a.params) and a.clock == d.clock


def test_one_gateway_one_round_and_a_free_link_is_flat_fedavg_through_a_relay():
    free = {"fleet.classes": "{gateway: {down_bps: 1.0e+15, up_bps: 1.0e+15, latency_s: 0}}",
            "selection.per_round": 8, "compression.strategy": "static"}
    flat, fo = run(load_scenario("scenarios/quickstart.yaml", tiny_overrides(rounds=2, **free)), 2)
    relay, ro = run(hier(rounds=2, **{**free, "topology.gateways": 1, "topology.gateway_rounds": 1}), 2)
    for f, r in zip(fo, ro):
        assert f.clients.device_id == r.clients.device_id and f.clients.status == r.clients.status
        assert f.record.duration == pytest.approx(r.record.duration, abs=1e-6)
    # the same updates; only the second fixed-point sum (gateway -> cloud) rounds differently
    assert max(float((flat.params[k] - relay.params[k]).abs().max()) for k in flat.params) < 1e-2


def test_a_gateway_past_the_cloud_deadline_is_left_out_of_the_round():
    sim, [out] = run(hier(rounds=1, **{"topology.cloud_deadline": 1e-3}), 1)
    start = local_sim(hier(rounds=1)).params
    assert all(torch.equal(sim.params[k], start[k]) for k in start)   # nobody reached the cloud
    g = pd.DataFrame(out.gateways)
    assert not g["applied"].any() and out.record.duration == pytest.approx(1e-3)
    c = pd.DataFrame(out.clients.columns())
    assert (c["status"] == "ok").any() and (c["version_applied"] == -1).all() and out.record.samples_trained == 0
    assert c.loc[c["status"] == "ok", "reason"].str.contains("missed the cloud deadline").all()


def test_gateways_may_take_a_server_optimizer_of_their_own():
    plain, _ = run(hier(rounds=2), 2)
    named, _ = run(hier(rounds=2, **{"topology.gateway_optimizer": "fedavg"}), 2)
    assert all(torch.equal(plain.params[k], named.params[k]) for k in plain.params)   # the default is the mean
    momentum, _ = run(hier(rounds=2, **{"topology.gateway_optimizer": "fedavgm",
                                        "topology.gateway_params": "{momentum: 0.5}"}), 2)
    gateway_server = momentum.mode.cycles.gateway_server
    assert type(gateway_server).__name__ == "FedAvgM" and gateway_server.momentum == 0.5
    assert not all(torch.equal(plain.params[k], momentum.params[k]) for k in plain.params)
    # its state lasts a cloud round: the run resumes exactly from a checkpoint between them
    sc = hier(rounds=2, **{"topology.gateway_optimizer": "fedavgm"})
    first, _ = run(sc, 1)
    both, _ = run(sc, 2)
    again = resumed(sc, first.state_dict(), 1)
    assert all(torch.equal(both.params[k], again.params[k]) for k in both.params)


@pytest.mark.parametrize("over, message", [
    ({"server.mode": "fedbuff", "topology.cloud_deadline": 60}, "topology.cloud_deadline: applies to synchronous"),
    ({"server.mode": "fedasync", "server.concurrency": 4}, "server.concurrency: with topology.gateways"),
    ({"server.mode": "fedasync", "channel.up": "topk", "channel.up_params": "{fraction: 0.1, error_feedback: true}"},
     "channel.up_params.error_feedback: residuals are kept in synchronous rounds only"),
    ({"energy.batteries": True, "server.mode": "fedasync"}, "energy.batteries: tracked in synchronous rounds only"),
    ({"topology.gateway_class": "router"}, "topology.gateway_class: 'router' is not a device class"),
    ({"topology.gateways": 61}, "topology.gateways: 61 gateways for 60 devices"),
    ({"runtime.placement": "dedicated"}, "topology.gateways: runs on runtime.placement 'pooled'"),
    ({"topology.attach": "nearest"}, "topology.attach"),
    ({"topology.gateway_rounds": 0}, "topology.gateway_rounds"),
    ({"topology.gateway_optimizer": "fedsgd"}, "topology.gateway_optimizer: unknown name 'fedsgd'"),
    ({"topology.gateway_optimizer": "fedavgm", "topology.gateway_params": "{momentum: 2}"},
     "topology.gateway_params.momentum"),
])
def test_bad_topology_settings_are_one_line(over, message):
    from raysim.scenario.resolve import components

    with pytest.raises(ScenarioError) as err:
        components(hier(**{k: ("null" if v is None else v) for k, v in over.items()}))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_scaffold_through_gateways_is_refused_in_one_line():
    from raysim.scenario.resolve import components

    with pytest.raises(ScenarioError, match="does not pass through gateways yet"):
        components(hier(**{"train.algorithm": "scaffold"}))


@pytest.mark.usefixtures("ray_local")
def test_on_ray_a_stopped_and_resumed_run_writes_the_gateway_table_and_the_in_process_numbers(tmp_path):
    from raysim.rundir.reader import latest_checkpoint, load_checkpoint, load_run
    from raysim.runtime.runner import run as run_scenario

    sc = hier(rounds=2)
    part = run_scenario(sc, out_root=str(tmp_path), progress=False, stop_after=1)
    run_scenario(sc, resume=part.path, progress=False)
    r = load_run(part.path)
    assert list(r.gateways["round"].unique()) == [1, 2] and len(r.gateways) == 2 * 3 * 2
    assert set(r.clients["gateway"]) <= {0, 1, 2} and set(r.clients["gateway_round"]) == {1, 2}
    assert r.gateways.groupby("round")["bytes_up"].sum().tolist() == r.rounds["bytes_up"].tolist()
    from raysim.report.tables import load_runs

    stacked = load_runs([part.path]).gateways
    assert len(stacked) == len(r.gateways) and set(stacked["run"]) == {r.name}
    sim, _ = run(sc, 2)
    got = load_checkpoint(latest_checkpoint(part.path))["params"]
    assert all(torch.equal(got[k], sim.params[k]) for k in got)
    # the report draws the tiers and the run summary names them
    from raysim.report.markdown import summary_text, write_report
    from raysim.report.tables import Runs

    write_report(Runs([r]), tmp_path / "rep")
    assert (tmp_path / "rep" / "gateways.png").stat().st_size > 0
    assert "gateways   3 x 2 gateway rounds a cloud round" in summary_text(r)


def write_trace(path, gateways):
    rows = ["device_id,flops,memory_bytes,down_kbps,up_kbps" + (",gateway" if gateways is not None else "")]
    for d in range(30):
        rows.append(f"{d},1e9,100000000,10000,10000" + (f",{gateways[d]}" if gateways is not None else ""))
    path.write_text("\n".join(rows) + "\n")
    return path


def test_a_trace_column_attaches_devices_and_a_bad_one_is_one_line(tmp_path):
    given = [(d * 7) % 3 for d in range(30)]
    sc = hier(rounds=1, **{"fleet.trace": str(write_trace(tmp_path / "t.csv", given)), "topology.attach": "trace",
                           "selection.per_round": 6})
    sim, [out] = run(sc, 1)
    assert sim.mode.cycles.gateway_of.tolist() == given
    assert all(given[d] == g for d, g in zip(out.clients.device_id, out.clients.gateway))
    for trace, message in ((write_trace(tmp_path / "big.csv", [5] * 30), "attaches a device to gateway 5, but "
                            "topology.gateways is 3"),
                           (write_trace(tmp_path / "none.csv", None), "needs a 'gateway' column")):
        with pytest.raises(ScenarioError, match=message):
            local_sim(hier(**{"fleet.trace": str(trace), "topology.attach": "trace"}))
    with pytest.raises(ScenarioError, match="set fleet.trace"):
        hier(**{"topology.attach": "trace"})


def test_batteries_move_on_each_gateways_clock_and_resume_exactly():
    over = {"fleet.mix": "{mcu: 0.5, mcu-psram: 0.5}", "energy.batteries": "true",
            "fleet.classes": "{mcu: {battery_wh: 0.004}, mcu-psram: {battery_wh: 0.004}}",
            "energy.initial_charge": "[0.05, 1.0]", "deadline.policy": "wait", "selection.overcommit": 0}
    sc = hier(rounds=3, **over)
    sim = local_sim(sc)
    bat = sim.mode.cycles.batteries
    outs = []
    for _ in range(3):
        before = bat.charge.copy()
        out = sim.step()
        outs.append(out)
        c = pd.DataFrame(out.clients.columns())
        # every device's battery went from the cloud round's start to its end: standby for all,
        # the FL work of the selected on top (no charging here, no device ran empty)
        assert "depleted" not in set(c["status"])
        pos = np.searchsorted(sim.setup.fleet.device_id, c["device_id"])
        spent = np.zeros(len(before))
        np.add.at(spent, pos, c["energy_j"].to_numpy())
        want = np.clip(before - bat.standby_w * out.record.duration - spent, 0.0, bat.capacity)
        assert np.allclose(bat.charge, want, rtol=0, atol=1e-9)
        assert out.batteries and out.batteries[0]["sim_time"] == out.record.sim_time
    assert any("battery:" in r for o in outs for r in o.clients.reason), "small batteries exclude some devices"
    two = local_sim(sc, hosts=2)
    for _ in range(3):
        two.step()
    assert np.array_equal(two.mode.cycles.batteries.charge, bat.charge)
    first, _ = run(sc, 1)
    again = resumed(sc, first.state_dict(), 2)
    assert np.array_equal(again.mode.cycles.batteries.charge, bat.charge)
    assert all(torch.equal(again.params[k], sim.params[k]) for k in sim.params)


@pytest.mark.parametrize("mode, rounds", [("sync", 3), ("fedasync", 8)])
def test_a_gateway_optimizer_state_kept_for_the_run_resumes_exactly(mode, rounds):
    over = {"topology.gateway_optimizer": "fedavgm", "server.mode": mode}
    per_cycle, _ = run(hier(rounds=rounds, **over), rounds)
    sc = hier(rounds=rounds, **over, **{"topology.gateway_state": "run"})
    kept, outs = run(sc, rounds)
    assert not all(torch.equal(per_cycle.params[k], kept.params[k]) for k in kept.params)
    # each gateway's momentum has taken a step per gateway round of its that trained, over the run
    g = pd.concat([pd.DataFrame(o.gateways) for o in outs])
    steps = g[g["trained"] > 0].groupby("gateway").size().to_dict()
    assert {gw: s.steps for gw, s in kept.mode.cycles.gateway_states.items()} == steps and max(steps.values()) > 2
    first, _ = run(sc, rounds // 2)
    again = resumed(sc, first.state_dict(), rounds - rounds // 2)
    assert all(torch.equal(again.params[k], kept.params[k]) for k in kept.params)
