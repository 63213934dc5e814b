"""The zoos' edge constructs run end to end: each replica, named by import path in a scenario,
trains submodels at rates 1/2 to 1/8 through the engine, and the rounds move the global model."""

import pytest
import torch

import raysim
from zoo_replicas import REPLICAS


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
    from raysim.build import local_simulation

    sim = local_simulation(replica_scenario(name, rate))
    before = {k: v.clone() for k, v in sim.params.items()}
    out = sim.step()
    ok = [(r, loss) for r, s, loss in zip(out.clients.rate, out.clients.status, out.clients.loss) if s == "ok"]
    assert ok and {r for r, _ in ok} == {rate}
    assert all(torch.isfinite(torch.tensor(loss)) for _, loss in ok)
    moved = [k for k in before if not torch.equal(before[k], sim.params[k])]
    assert moved and all(torch.isfinite(sim.params[k]).all() for k in moved)
