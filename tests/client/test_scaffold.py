"""SCAFFOLD: a client algorithm with state per device and on the server, on the public contract."""

import pytest
import torch
from helpers import local_sim, resumed, tiny_overrides
from torch import nn
from torch.nn import functional as F

from raysim.api import LocalData, LocalSGD, Scaffold
from raysim.errors import ScenarioError
from raysim.scenario.schema import load_scenario


def linear_task(seed=0, n=32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    torch.manual_seed(seed)
    model = nn.Linear(5, 3)
    start = {k: p.detach().clone() for k, p in model.named_parameters()}
    return model, x, y, start


def data(x, y, epochs=3, state=None, server=None):
    # full batches: the order of samples does not matter, so a hand-written loop is the reference
    return LocalData(x, y, epochs, len(x), None, torch.Generator().manual_seed(1), state, server)


def test_without_control_variates_it_is_sgd():
    model, x, y, start = linear_task()
    a = Scaffold(lr=0.1).train(model, data(x, y), start)
    model2, *_ = linear_task()
    b = LocalSGD(lr=0.1).train(model2, data(x, y), start)
    assert all(torch.equal(a.delta[k], b.delta[k]) for k in start)
    assert a.state is not None and a.server_delta is not None


def test_steps_follow_the_corrected_gradient_and_the_variates_follow_option_two():
    model, x, y, start = linear_task()
    gen = torch.Generator().manual_seed(3)
    own = {k: torch.randn(v.shape, generator=gen) * 0.1 for k, v in start.items()}
    server = {k: torch.randn(v.shape, generator=gen) * 0.1 for k, v in start.items()}
    lr, K = 0.1, 3
    res = Scaffold(lr=lr).train(model, data(x, y, K, own, server), start)
    # the reference: y <- y - lr (g - c_i + c), K times
    ref = nn.Linear(5, 3)
    with torch.no_grad():
        for k, p in ref.named_parameters():
            p.copy_(start[k])
    for _ in range(K):
        ref.zero_grad()
        F.cross_entropy(ref(x), y).backward()
        with torch.no_grad():
            for k, p in ref.named_parameters():
                p -= lr * (p.grad - own[k] + server[k])
    for k, p in ref.named_parameters():
        assert torch.allclose(start[k] + res.delta[k], p.detach(), atol=1e-6)
        # c_i+ = c_i - c + (x - y) / (K lr); the server gets c_i+ - c_i
        expect = own[k] - server[k] - res.delta[k] / (K * lr)
        assert torch.allclose(res.state[k], expect, atol=1e-5)
        assert torch.allclose(res.server_delta[k], res.state[k] - own[k], atol=1e-6)
    assert res.steps == K


def scaffold_scenario(rounds=4, **over):
    return load_scenario("scenarios/quickstart.yaml", tiny_overrides(rounds=rounds, **{
        "train.algorithm": "scaffold", "compression.strategy": "rolling", **over}))


def test_scaffold_learns_is_identical_across_hosts_and_resumes_exactly():
    sc = scaffold_scenario()
    a, b = local_sim(sc, hosts=1), local_sim(sc, hosts=2)
    outs = [a.step() for _ in range(4)]
    for _ in range(4):
        b.step()
    assert all(torch.equal(a.params[k], b.params[k]) for k in a.params)
    assert all(torch.equal(a.mode.client_server[k], b.mode.client_server[k]) for k in a.params)
    # every device that trained keeps its control variate; the server's has moved
    trained = {d for o in outs for d, s in zip(o.clients.device_id, o.clients.status) if s == "ok"}
    assert set(a.mode.rounds.device_states._ram) == trained
    assert any(bool(v.abs().sum() > 0) for v in a.mode.client_server.values())
    # resume from round 2: the same weights and server variate
    c = local_sim(sc)
    c.step()
    c.step()
    d = resumed(sc, c.state_dict(), 2)
    assert all(torch.equal(a.params[k], d.params[k]) for k in a.params)
    assert all(torch.equal(a.mode.client_server[k], d.mode.client_server[k]) for k in a.params)
    # the variates matter: resumed without the devices' ones, the run differs
    e = resumed(sc, c.state_dict(), 2, drop_device_states=True)
    assert not all(torch.equal(a.params[k], e.params[k]) for k in a.params)


def test_scaffold_learns_on_the_quickstart_fleet():
    sc = load_scenario("scenarios/quickstart.yaml", ["rounds=5", "fleet.devices=200", "selection.per_round=20",
                                                     "eval.per_rate=false", "train.algorithm=scaffold"])
    sim = local_sim(sc)
    acc = [sim.step().record.accuracy for _ in range(5)]
    assert acc[-1] > 0.6 and acc[-1] > acc[0] + 0.3   # ten classes: chance is 0.1


def test_the_server_variate_moves_by_the_summed_changes_over_the_fleet():
    sc = scaffold_scenario(rounds=1)
    sim = local_sim(sc)
    out = sim.step()
    n = len(sim.setup.fleet)
    ok = [d for d, s in zip(out.clients.device_id, out.clients.status) if s == "ok"]
    assert ok
    # after round 1 every device started from c_i = 0 and c = 0: its state is its change, and
    # the server's c is the sum of the changes (in global coordinates) over N
    from raysim.hosts.state import unpack
    from raysim.submodel import plan_indices
    from raysim.submodel.extract import remap

    total = {k: torch.zeros_like(v) for k, v in sim.params.items()}
    for d in ok:
        st = sim.mode.rounds.device_states.get(d)
        plan = sim.mode.rounds.strategy.plan(sim.spec, st["rate"], 1, -1, sim.params, sc.seed)
        plan = type(plan)(st["rate"], st["keep"])
        full = remap(unpack(sim.spec, sim.shapes, plan, st)["client"], plan_indices(sim.spec, plan, sim.shapes),
                     sim.shapes)
        for k in total:
            total[k] += full[k]
    for k in total:
        assert torch.allclose(sim.mode.client_server[k], total[k] / n, atol=1e-5)


def test_scaffold_trains_one_device_at_a_time_and_costs_two_more_copies():
    from raysim.client.batched import batchable

    assert "keeps state" in batchable(Scaffold(), nn.Linear(2, 2))
    assert Scaffold().state_copies == 2 and Scaffold(momentum=0.9).state_copies == 3


def test_scaffold_in_asynchronous_modes_is_refused_in_one_line():
    from raysim.scenario.resolve import components

    with pytest.raises(ScenarioError) as err:
        components(scaffold_scenario(**{"server.mode": "fedbuff"}))
    assert "train.algorithm: Scaffold keeps state across rounds" in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.usefixtures("ray_local")
@pytest.mark.parametrize("placement", ["pooled", "dedicated"])
def test_on_ray_the_variates_travel_with_tasks_and_give_the_in_process_numbers(placement):
    import ray
    from helpers import coordinator

    sc = scaffold_scenario(rounds=2, **{"runtime.placement": placement, "selection.per_round": 3,
                                        "fleet.devices": 6})
    coord = coordinator(sc, 2)
    try:
        for _ in range(2):
            ray.get(coord.step.remote())
        state = ray.get(coord.state_dict.remote())
    finally:
        ray.kill(coord)
    sim = local_sim(sc)
    sim.step()
    sim.step()
    assert all(torch.equal(state["params"][k], sim.params[k]) for k in sim.params)
    assert all(torch.equal(state["client_server"][k], sim.mode.client_server[k]) for k in sim.params)
    assert len(state["device_states"]) == len(sim.mode.rounds.device_states) > 0
