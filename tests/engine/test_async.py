"""Asynchronous FL (FedBuff, FedAsync) on the event-queue clock: timeline, aggregation, records."""

import hashlib
from dataclasses import replace

import numpy as np
import pytest
import torch
from helpers import local_sim, tiny_overrides

from raysim.engine.asynchronous import FlatEvents
from raysim.engine.events import Dispatched, Job, Timeline
from raysim.scenario.schema import ScenarioError, load_scenario
from raysim.server.staleness import Constant, Hinge, Polynomial, staleness_fn


def async_scenario(mode="fedbuff", **extra):
    over = {"server.mode": mode, "server.concurrency": 12, "server.buffer": 4, "rounds": 6,
            "eval.per_rate": "false", "eval.every": 3, **extra}
    return load_scenario("scenarios/quickstart.yaml", tiny_overrides(**over))


def weights_hash(params):
    h = hashlib.sha256()
    for k in sorted(params):
        h.update(params[k].numpy().tobytes())
    return h.hexdigest()


def run(sim, steps):
    return [sim.step() for _ in range(steps)]


# ------------------------------------------------------------------ staleness functions
def test_staleness_functions_follow_their_formulas():
    assert Constant()(7) == 1.0
    assert Polynomial(0.5)(3) == pytest.approx(0.5)
    assert Polynomial(1.0)(0) == 1.0
    h = Hinge(a=10, b=4)
    assert h(4) == 1.0 and h(5) == pytest.approx(1 / 11)
    assert staleness_fn("hinge", 10, 4)(6) == pytest.approx(1 / 21)
    with pytest.raises(ValueError, match="unknown kind"):
        staleness_fn("linear", 1, 1)


# ------------------------------------------------------------------ the timeline alone
def fixed_dispatch(durations, lost=()):
    """A dispatcher over devices 0..n-1 with fixed training times (first idle device first)."""
    def dispatch(n, t, version, first_job, busy):
        jobs = []
        for dev in range(len(durations)):
            if len(jobs) == n:
                break
            if dev in busy:
                continue
            jobs.append(Job(first_job + len(jobs), dev, dev, 1.0, version, t, 0.0, durations[dev], 0.0, 10,
                            dev in lost))
        return Dispatched(jobs, [], len(jobs))
    return dispatch


def test_timeline_keeps_c_devices_busy_and_steps_every_k_arrivals():
    tl = Timeline(fixed_dispatch([1.0, 2.0, 3.0, 5.0, 8.0, 13.0]), concurrency=4, buffer=2)
    last = 0.0
    for step in range(1, 30):
        win = tl.next_window()
        assert win.step == step and len(win.arrivals) == 2
        assert win.time >= last and win.start == last
        last = win.time
        assert len(tl.in_flight()) == 4  # a new device is dispatched whenever one finishes
        for j in win.arrivals:
            assert j.version <= step - 1  # trained from a version that existed
            assert j.finish == pytest.approx(win.time) or j.finish <= win.time
    # The fastest device trains most often; the slowest never holds the server back.
    assert tl.next_job > 40


def test_timeline_staleness_is_steps_between_download_and_arrival():
    # Device 3 takes 10x longer: by the time it arrives the server has moved on.
    tl = Timeline(fixed_dispatch([1.0, 1.0, 1.0, 10.0]), concurrency=4, buffer=1)
    windows = [tl.next_window() for _ in range(40)]
    slow = [(w.step, j.version) for w in windows for j in w.arrivals if j.device == 3]
    assert slow, "the slow device arrives"
    step, version = slow[0]
    assert version == 0 and step - 1 - version >= 9


def test_timeline_lost_update_frees_the_slot_and_is_reported():
    tl = Timeline(fixed_dispatch([1.0, 1.5, 2.0], lost={1}), concurrency=3, buffer=2)
    wins = [tl.next_window() for _ in range(6)]
    lost = [j for w in wins for j in w.lost]
    assert lost and all(j.device == 1 for j in lost)
    assert all(j.device != 1 for w in wins for j in w.arrivals)


def test_timeline_without_any_available_device_fails_in_one_line():
    from raysim.errors import RunFailed

    tl = Timeline(lambda n, t, v, j, busy: Dispatched([], [], 0), concurrency=2, buffer=1, poll_s=5.0,
                  max_idle_polls=50)
    with pytest.raises(RunFailed, match="no device could be dispatched"):
        tl.next_window()


def test_timeline_state_round_trips_to_the_same_future():
    disp = fixed_dispatch([1.0, 1.7, 2.3, 4.1])
    a = Timeline(disp, 3, 2)
    for _ in range(5):
        a.next_window()
    b = Timeline(disp, 3, 2)
    b.load_state(a.state())
    for _ in range(10):
        wa, wb = a.next_window(), b.next_window()
        assert (wa.time, [j.job for j in wa.arrivals]) == (wb.time, [j.job for j in wb.arrivals])


# ------------------------------------------------------------------ the engine
def test_fedbuff_is_bit_identical_across_hosts_and_training_batches():
    sc = async_scenario()
    ref = local_sim(sc, hosts=1)
    run(ref, 6)
    other = local_sim(sc, hosts=3)
    other.mode.acfg = replace(other.mode.acfg, batch=1)  # a backend call per step, not several steps ahead
    run(other, 6)
    assert weights_hash(ref.params) == weights_hash(other.params)


@pytest.mark.parametrize("extra", [
    {"compression.strategy": "rolling"},
    {"compression.strategy": "random", "server.weighting": "samples"},
    {"compression.strategy": "magnitude", "server.optimizer": "fedadam", "server.lr": 0.01},
    {"server.mode": "fedasync", "server.staleness.kind": "hinge", "server.optimizer": "fedavgm"},
], ids=["rolling", "random-samples", "magnitude-fedadam", "fedasync-hinge-fedavgm"])
def test_every_strategy_and_server_optimizer_is_identical_across_hosts(extra):
    sc = async_scenario(**extra)
    a, b = local_sim(sc, hosts=1), local_sim(sc, hosts=2)
    outs = run(a, 4)
    run(b, 4)
    assert weights_hash(a.params) == weights_hash(b.params)
    assert sum(o.record.trained for o in outs) > 0


def test_fedbuff_with_batched_training_matches_across_hosts_and_the_loop():
    sc = async_scenario(**{"train.batched": "on"})
    a, b = local_sim(sc, hosts=1), local_sim(sc, hosts=2)
    run(a, 4)
    run(b, 4)
    assert weights_hash(a.params) == weights_hash(b.params)
    loop = local_sim(async_scenario(**{"train.batched": "off"}))
    run(loop, 4)
    assert all(torch.allclose(a.params[k], loop.params[k], atol=1e-4) for k in a.params)


def test_records_one_row_per_server_step_and_staleness_columns():
    sc = async_scenario(**{"server.concurrency": 16, "server.buffer": 3})
    sim = local_sim(sc)
    outs = run(sim, 6)
    times = [o.record.sim_time for o in outs]
    assert [o.record.round for o in outs] == list(range(1, 7))
    assert times == sorted(times) and times[-1] > 0
    for o in outs:
        c = o.clients
        ok = [i for i, s in enumerate(c["status"]) if s == "ok"]
        assert o.record.trained == len(ok) <= 3
        for i in ok:
            assert c["version_applied"][i] == o.record.round
            assert c["staleness"][i] == c["version_applied"][i] - 1 - c["version_start"][i] >= 0
    assert max(s for o in outs for s in o.clients["staleness"]) > 0  # C > K: some updates arrive stale
    # Only versions some device still trains from (or will arrive from) are kept.
    in_flight = {j.version for j in sim.mode.timeline.in_flight()}
    assert in_flight <= set(sim.mode.versions) <= in_flight | {sim.round} | {
        j.version for w in sim.mode.windows.values() for j in w.arrivals}


def test_elements_no_update_held_do_not_move():
    # Every device trains the static half-width submodel: the other half of the global model
    # must stay as it was initialised.
    sc = async_scenario(**{"assignment.policy": "fixed", "assignment.fixed_rate": 0.5})
    sim = local_sim(sc)
    init = {k: v.clone() for k, v in sim.params.items()}
    run(sim, 3)
    name = next(k for k in init if init[k].dim() == 4)  # a conv weight: (out, in, kh, kw)
    out = init[name].shape[0]
    assert not torch.equal(sim.params[name][: out // 2], init[name][: out // 2])
    assert torch.equal(sim.params[name][out // 2:], init[name][out // 2:])


def test_fedasync_mixes_each_arrival_into_the_model():
    sc = async_scenario("fedasync", **{"server.alpha": 1.0, "server.staleness.kind": "constant"})
    sim = local_sim(sc)
    assert isinstance(sim.mode, FlatEvents) and sim.mode.acfg.per_step == 1
    outs = run(sim, 3)
    assert all(o.record.trained <= 1 for o in outs)
    # alpha = 1, constant staleness: after a step the elements the arrival held equal its own
    # model (the version it downloaded plus its delta), whatever the global model was before.
    win = sim.mode.window(4)
    if any(j.job not in sim.mode.trained for j in win.arrivals):
        sim.mode.train_ahead(4)
    (arrival,) = win.arrivals
    part = sim.mode.results[(4, arrival.version)]
    start = {k: v.clone() for k, v in sim.mode.versions[arrival.version].items()}
    before = {k: v.clone() for k, v in sim.params.items()}
    sim.step()
    for k in before:
        held = torch.from_numpy(part.weights[k] > 0)
        own = torch.from_numpy(part.sums[k] / np.maximum(part.weights[k], 1) / 2.0**24).float()
        assert torch.allclose(sim.params[k][held], (start[k] + own)[held], atol=1e-5)
        assert torch.equal(sim.params[k][~held], before[k][~held])


def test_resume_from_a_checkpoint_reaches_the_same_weights(tmp_path):
    sc = async_scenario(**{"rounds": 8})
    full = local_sim(sc)
    run(full, 8)
    first = local_sim(sc)
    run(first, 4)
    state = first.state_dict()
    torch.save(state, tmp_path / "ck.pt")
    state = torch.load(tmp_path / "ck.pt", weights_only=True)  # as the run directory loads it
    again = local_sim(sc)
    again.load_state_dict(state)
    run(again, 4)
    assert weights_hash(again.params) == weights_hash(full.params)


def test_markov_availability_loses_updates_of_devices_that_go_offline():
    sc = async_scenario(**{"fleet.availability.kind": "markov", "rounds": 12})
    sim = local_sim(sc)
    outs = run(sim, 12)
    status = [s for o in outs for s in o.clients["status"]]
    assert "ok" in status
    lost = [(o.clients["version_applied"][i], o.clients["bytes_up"][i]) for o in outs
            for i, s in enumerate(o.clients["status"]) if s == "offline"]
    assert all(v == -1 and b == 0 for v, b in lost)


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("extra,msg", [
    ({"runtime.placement": "dedicated"}, "runtime.placement 'pooled'"),
    ({"assignment.policy": "fit-deadline"}, "fit-deadline"),
    ({"server.mode": "fedsgd"}, "server.mode"),
    ({"server.staleness.kind": "linear"}, "server.staleness.kind"),
    ({"server.alpha": 0}, "server.alpha"),
])
def test_bad_async_settings_are_one_line(extra, msg):
    with pytest.raises(ScenarioError, match=msg):
        async_scenario(**extra)


def test_concurrency_beyond_the_fleet_is_refused():
    sc = async_scenario(**{"server.concurrency": 500})
    with pytest.raises(ScenarioError, match="server.concurrency: 500"):
        local_sim(sc)


def test_sync_rounds_fill_the_version_columns():
    sc = load_scenario("scenarios/quickstart.yaml", tiny_overrides(**{"rounds": 2}))
    out = local_sim(sc).step()
    c = out.clients
    for i, s in enumerate(c["status"]):
        assert c["version_start"][i] == 0
        assert (c["version_applied"][i], c["staleness"][i]) == ((1, 0) if s in ("ok", "partial") else (-1, -1))
    assert np.all(np.array(c["staleness"]) <= 0)


# ------------------------------------------------------------------ on Ray, through the run directory
@pytest.mark.usefixtures("ray_local")
def test_on_ray_fedbuff_matches_the_in_process_engine_and_resumes(tmp_path):
    import pandas as pd

    from raysim.rundir.reader import latest_checkpoint, load_checkpoint, load_run
    from raysim.runtime.runner import run as run_scenario

    sc = async_scenario(**{"runtime.hosts": 2, "rounds": 6, "output.checkpoint_every": 2})
    full = run_scenario(sc, out_root=str(tmp_path / "full"), progress=False)
    part = run_scenario(sc, out_root=str(tmp_path / "part"), progress=False, stop_after=3)
    run_scenario(sc, resume=part.path, progress=False)
    local = local_sim(sc, hosts=1)
    run(local, 6)
    a, b = load_run(full.path), load_run(part.path)
    params = load_checkpoint(latest_checkpoint(full.path))["params"]
    assert weights_hash(params) == weights_hash(local.params)
    assert weights_hash(load_checkpoint(latest_checkpoint(part.path))["params"]) == weights_hash(params)
    cols = ["round", "device_id", "status", "version_start", "version_applied", "staleness", "t_finish"]
    pd.testing.assert_frame_equal(a.clients[cols], b.clients[cols])
    assert list(a.rounds["round"]) == list(range(1, 7)) and a.rounds["sim_time"].is_monotonic_increasing
    assert set(a.clients["host"]) - {-1} == {0, 1}
