"""The zoos' edge constructs run end to end: each replica, named by import path in a scenario,
trains submodels at rates 1/2 to 1/8 through the engine, and the rounds move the global model."""

import pytest
import torch
from zoo_replicas import REPLICAS

import raysim


def replica_scenario(name, rate, **train):
    return raysim.api.as_scenario({
        "name": f"zoo-{name}", "seed": 1, "rounds": 1, "fleet": {"devices": 24}, "selection": {"per_round": 4},
        "data": {"dataset": "zoo_replicas:images", "params": {"name": name}, "partition": {"kind": "natural"}},
        "model": {"arch": "zoo_replicas:replica", "params": {"name": name}, "rates": [1.0, 0.5, 0.25, 0.125]},
        "compression": {"strategy": "rolling"}, "assignment": {"policy": "fixed", "fixed_rate": rate},
        "deadline": {"seconds": None}, "train": {"epochs": 1, "batch_size": 16, "lr": 0.05, **train},
        "runtime": {"hosts": 1}, "output": {"plots": False}})


@pytest.mark.parametrize("name", sorted(REPLICAS))
@pytest.mark.parametrize("rate", [0.5, 0.125])
def test_a_replica_named_by_import_path_trains_its_submodels(name, rate):
    from raysim.inprocess import local_simulation

    sim = local_simulation(replica_scenario(name, rate))
    before = {k: v.clone() for k, v in sim.params.items()}
    out = sim.step()
    ok = [(r, loss) for r, s, loss in zip(out.clients.rate, out.clients.status, out.clients.loss) if s == "ok"]
    assert ok and {r for r, _ in ok} == {rate}
    assert all(torch.isfinite(torch.tensor(loss)) for _, loss in ok)
    moved = [k for k in before if not torch.equal(before[k], sim.params[k])]
    assert moved and all(torch.isfinite(sim.params[k]).all() for k in moved)


@pytest.mark.parametrize("name", sorted(REPLICAS))
def test_a_replica_trains_batched_as_it_trains_one_device_at_a_time(name):
    """`train.batched: on` gives the loop's global model within float tolerance, whether the
    rate trains batched or (recorded with its reason) falls back to the loop."""
    from raysim.inprocess import local_simulation

    runs = {}
    for mode in ("off", "on"):
        sim = local_simulation(replica_scenario(name, 0.25, batched=mode))
        sim.step()
        runs[mode] = sim
    loop, batched = runs["off"].params, runs["on"].params
    assert all(torch.allclose(loop[k], batched[k], atol=1e-5, rtol=1e-4) for k in loop)
    backend = runs["on"].mode.backend
    assert set(backend.choices) == {1.0, 0.5, 0.25, 0.125}
    assert all(backend.choices[r] or backend.reasons.get(r) for r in backend.choices)


def test_a_model_with_random_layers_and_weights_read_by_name_is_bit_identical_on_any_hosts():
    """Dropout and drop-path masks come from each device's own seed, and weights read by name
    (kept as the module made them) from the scenario's seed: a run is the same on one host or
    two, and made twice."""
    from raysim.inprocess import local_simulation

    def final(hosts):
        sc = replica_scenario("MobileNetV3ish", 0.5)
        sim = local_simulation(raysim.api.as_scenario({**sc.model_dump(), "runtime": {"hosts": hosts}}))
        sim.step()
        return sim.params

    one, two, again = final(1), final(2), final(1)
    assert all(torch.equal(one[k], two[k]) and torch.equal(one[k], again[k]) for k in one)
