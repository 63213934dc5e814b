"""The dedicated placement: one actor per device, a real memory cap, and the realtime clock."""

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import local_sim, make_strategy, tiny_overrides

from raysim.hosts.local import LocalBackend
from raysim.hosts.memcap import cap_bytes
from raysim.messages import TrainTask
from raysim.rundir.reader import load_run
from raysim.runtime.dedicated import OVERCOMMIT_REASON, DedicatedPool, RealTime
from raysim.runtime.runner import run
from raysim.runtime.shared import share_arrays
from raysim.scenario.build import prepare, trainer
from raysim.scenario.resolve import components
from raysim.scenario.schema import load_scenario
from raysim.server.aggregate import PartialSum

pytestmark = pytest.mark.usefixtures("ray_local")

MiB = 2**20


def scenario(**over):
    return load_scenario("scenarios/quickstart.yaml", tiny_overrides(**over))


def merged(results):
    """The round's merged partial sum and its reports by device, as the simulation sees them."""
    total = PartialSum.zeros({k: v.shape for k, v in results[0].partial.sums.items()})
    reports = {}
    for res in sorted(results, key=lambda h: h.host):
        total.merge(res.partial)
        reports.update({r.device_id: r for r in res.reports})
    return total, reports


def task(device, rate, plan_id, **kw):
    return TrainTask(device, rate, plan_id, None, "uniform", **kw)


# ------------------------------------------------------------------ one pool, three devices
@pytest.fixture(scope="module")
def bench():
    """The default CNN (rate 1 needs ~2.5 MiB to train) on 10 devices; a pool of at most 2 actors.

    The device with the most samples (`small`) has 0.25 MiB, every other one 64 MiB.
    """
    sc = scenario(**{"fleet.devices": 10, "model.widths": "[32,64,128]", "model.hidden": 128,
                     "runtime.placement": "dedicated"})
    setup = prepare(sc)
    ids = setup.fleet.device_id
    small = int(np.argmax([len(s) for s in setup.shards]))
    assert len(setup.shards[small]) >= sc.train.batch_size  # full batches: the predicted memory is real
    memory = np.full(len(ids), 64 * MiB)
    memory[small] = MiB // 4
    ds = setup.dataset
    pool = DedicatedPool(setup.spec, trainer(sc, components(sc)), share_arrays(ds.x_train, ds.y_train, setup.shards, ids),
                         ids, memory, capacity=2)
    torch.manual_seed(0)
    params = {k: p.detach().clone() for k, p in setup.spec.build().named_parameters()}
    static = make_strategy("static")
    plans = {i: static.plan(setup.spec, r, 1, -1, params, 0) for i, r in enumerate([1.0, 0.125])}
    others = [int(d) for d in ids if d != small and len(setup.shards[d]) > 0]
    yield sc, setup, pool, params, plans, small, others
    pool.close()


def test_an_allocation_past_the_cap_fails_inside_the_actor(bench):
    _, _, pool, _, _, _, (big, *_) = bench
    assert cap_bytes(64 * MiB) < 100 * MiB
    assert not pool.try_allocate(big, 100 * MiB), "100 MiB must not fit a 64 MiB device"
    assert pool.try_allocate(big, 16 * MiB), "16 MiB fits a 64 MiB device"


def test_training_past_the_cap_is_oom_and_the_actor_recovers(bench):
    sc, setup, pool, params, plans, small, (big, *_) = bench
    assert setup.costs[1.0].memory_bytes > 2 * MiB  # the premise: rate 1 needs far more than 0.25 MiB
    pid = pool.pid(small)
    _, reps = merged(pool.train(1, params, plans, [task(small, 1.0, 0), task(big, 1.0, 0)]))
    assert reps[small].status == "oom" and "memory" in reps[small].reason
    assert reps[big].status == "ok" and reps[big].steps > 0
    _, reps = merged(pool.train(2, params, plans, [task(small, 0.125, 1)]))
    assert reps[small].status == "ok" and reps[small].steps > 0, "the same actor trains a rate that fits"
    assert pool.pid(small) == pid, "no new process: the actor survived its oom"


def test_same_update_as_a_device_host(bench):
    sc, setup, pool, params, plans, _, others = bench
    tasks = [task(others[0], 1.0, 0), task(others[1], 0.125, 1)]
    got, reps = merged(pool.train(3, params, plans, tasks))
    ds = setup.dataset
    local = LocalBackend(setup.spec, trainer(sc, components(sc)), ds.x_train, ds.y_train, setup.shards)
    want, _ = merged(local.train(3, params, plans, tasks))
    assert {r.status for r in reps.values()} == {"ok"}
    assert got.devices == want.devices == 2
    for k in want.sums:
        assert np.array_equal(got.sums[k], want.sums[k]) and np.array_equal(got.weights[k], want.weights[k])


def test_actors_are_kept_in_a_bounded_lru(bench):
    _, _, pool, params, plans, _, others = bench
    created = pool.created
    pool.train(4, params, plans, [task(others[2], 0.125, 1)])
    pool.train(5, params, plans, [task(others[3], 0.125, 1)])
    assert len(pool.live()) == 2 and pool.live()[-1] == others[3]
    before = pool.created
    pool.train(6, params, plans, [task(others[3], 0.125, 1)])
    assert pool.created == before >= created + 2, "a device that has an actor reuses it"


# ------------------------------------------------------------------ realtime, one pool
@pytest.mark.slow
@pytest.mark.wallclock
def test_realtime_pool_sleeps_the_timeline_and_enforces_the_deadline():
    """Real time = simulated time, deadline 1.5 s; each task's timeline is given by hand."""
    sc = scenario(**{"fleet.devices": 10, "selection.per_round": 4, "runtime.placement": "dedicated",
                     "data.synthetic.samples": 3000, "runtime.clock": "realtime", "runtime.time_scale": 1.0,
                     "deadline.seconds": 1.5, "deadline.policy": "partial"})
    setup = prepare(sc)
    ds = setup.dataset
    ids = setup.fleet.device_id
    pool = DedicatedPool(setup.spec, trainer(sc, components(sc)), share_arrays(ds.x_train, ds.y_train, setup.shards, ids),
                         ids, np.full(10, 64 * MiB), realtime=RealTime(1.0, sc.selection.per_round, partial=True))
    try:
        torch.manual_seed(0)
        params = {k: p.detach().clone() for k, p in setup.spec.build().named_parameters()}
        plans = {0: make_strategy("static").plan(setup.spec, 1.0, 1, -1, params, 0)}
        dev = [int(d) for d in np.flatnonzero([len(s) >= 100 for s in setup.shards])[:3]]
        timeline = {dev[0]: (0.1, 0.3, 0.1),   # 0.5 s: in time
                    dev[1]: (0.1, 3.0, 0.1),   # less than half its compute fits: partial
                    dev[2]: (1.8, 0.1, 0.1)}   # its download alone passes the deadline: late
        tasks = [task(d, 1.0, 0, t_download=a, t_compute=b, t_upload=c, deadline=1.5)
                 for d, (a, b, c) in timeline.items()]
        _, reps = merged(pool.train(1, params, plans, tasks))
        ok, part, late = (reps[d] for d in dev)
        assert ok.status == "ok" and 0.5 <= ok.finish_s < 0.75, ok
        steps_full = int(np.ceil(len(setup.shards[dev[1]]) / sc.train.batch_size)) * sc.train.epochs
        assert part.status == "partial" and 0 < part.steps < steps_full / 2, part
        assert part.finish_s <= 1.5 + 0.25 and "deadline" in part.reason
        assert late.status == "late" and "deadline" in late.reason
    finally:
        pool.close()


# ------------------------------------------------------------------ realtime vs virtual, end to end
# 10 devices, K = 3 over-committed to 6, deadline 1 s, real time = simulated time. Seed 9 gives
# both kinds of lateness (past the deadline, and not among the first K) with every predicted
# finish at least 0.4 s from the deadline and from the K-th finish: far more than the real
# overheads (tens of ms), so the two clocks must agree device by device.
REALTIME = {"seed": 9, "fleet.devices": 10, "selection.per_round": 3, "selection.overcommit": 1.0,
            "fleet.mix": "{mcu: 1, mcu-psram: 1, rpi-zero: 1}", "deadline.seconds": 1.0,
            "deadline.policy": "drop", "rounds": 2}


def margin(clients: pd.DataFrame, deadline: float, k: int) -> float:
    """Smallest gap between a predicted finish and the deadline, or between the K-th and K+1-th."""
    gaps = []
    for _, c in clients.groupby("round"):
        t = np.sort(c["t_total"].dropna().to_numpy())
        gaps += list(np.abs(t - deadline))
        on = t[t <= deadline]
        if len(on) > k:
            gaps.append(on[k] - on[k - 1])
    return float(min(gaps))


def virtual_run(sc, path):
    """The virtual-clock run in this process (the engine without Ray gives a Ray run's numbers),
    written into a run directory as the runner writes one, and read back."""
    from raysim.rundir.writer import RunWriter  # noqa: PLC0415

    sim = local_sim(sc)
    path.mkdir(parents=True)
    writer = RunWriter(path, sc, {"hosts": 1})
    writer.write_fleet(sim.setup.fleet.to_frame())
    for _ in range(sc.rounds):
        writer.add(sim.step())
    writer.finish("complete", wall_s=0.0)
    return load_run(path)


@pytest.mark.slow
@pytest.mark.wallclock
def test_realtime_and_virtual_runs_agree_on_which_devices_are_late(tmp_path):
    virtual = virtual_run(scenario(**REALTIME), tmp_path / "v" / "virtual")
    real = load_run(run(scenario(**REALTIME, **{"runtime.placement": "dedicated", "runtime.clock": "realtime",
                                                "runtime.time_scale": 1.0}),
                        out_root=str(tmp_path / "r"), progress=False).path)
    v, r = virtual.clients, real.clients
    assert margin(v, 1.0, 3) > 0.3, "premise: no device is a close call"
    key = ["round", "device_id"]
    assert v[key].equals(r[key]), "same devices selected"
    late_v = set(map(tuple, v.loc[v["status"] == "late", key].to_numpy()))
    late_r = set(map(tuple, r.loc[r["status"] == "late", key].to_numpy()))
    over_v = set(map(tuple, v.loc[v["reason"] == OVERCOMMIT_REASON, key].to_numpy()))
    over_r = set(map(tuple, r.loc[r["reason"] == OVERCOMMIT_REASON, key].to_numpy()))
    assert late_v and over_v and over_v < late_v, "premise: both kinds of lateness occur"
    assert late_r == late_v
    # A realtime server that closes the round at the K-th result cannot tell which of the rest
    # would also have missed the deadline: all of them are "not among the first K".
    assert over_v <= over_r
    assert (r["status"] == v["status"]).all()
    # The realtime clock measured what the virtual one predicted (throttled compute, real waits).
    ok = r["status"] == "ok"
    assert (r.loc[ok, "t_finish"] >= r.loc[ok, "t_total"] - 1e-6).all()
    assert (r.loc[ok, "t_finish"] - r.loc[ok, "t_total"]).max() < 0.3
    assert np.allclose(real.rounds["duration"], virtual.rounds["duration"], atol=0.3)
    assert (r["host"][ok] == r["device_id"][ok]).all(), "each device trained in its own actor"


# ------------------------------------------------------------------ every decision has its reason
def test_every_decision_is_recorded_with_its_reason():
    sc = scenario(**{"selection.overcommit": 0.5, "deadline.seconds": 20, "deadline.policy": "partial",
                     "assignment.policy": "fit-deadline", "rounds": 2})
    sim = local_sim(sc)
    clients = pd.concat([pd.DataFrame(sim.step().clients.columns()) for _ in range(sc.rounds)])
    assert (clients["reason"].str.len() > 0).all(), clients.loc[clients["reason"] == "", ["status", "rate"]]
    ok = clients[clients["status"] == "ok"]
    assert ok["reason"].str.startswith("fit-deadline: rate").all()
    assert clients.loc[clients["status"] == "partial", "reason"].str.contains("deadline").all()
    assert len(set(clients["status"])) >= 2
