"""Small scenarios shared by the tests."""


def tiny_overrides(**extra):
    """A scenario small enough for a test: 60 devices, 8 per round, 3 rounds."""
    base = {
        "name": "tiny", "rounds": 3, "fleet.devices": 60, "selection.per_round": 8,
        "data.synthetic.samples": 1200, "model.widths": "[8,16]", "model.hidden": 16,
        "eval.every": 1, "output.checkpoint_every": 1, "runtime.num_cpus": 2,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def make_strategy(name, **params):
    """A built-in strategy by its scenario name, as the builder makes it."""
    from raysim.scenario import registry

    return registry.instantiate("compression.strategy", registry.resolve("compression.strategy", name), params)


def local_sim(sc, hosts=1, comps=None, setup=None):
    """The engine in-process (no Ray) for a scenario."""
    from raysim.inprocess import local_simulation

    return local_simulation(sc, comps, hosts, setup)


def make_spec(model_cfg, input_shape, num_classes):
    """A built-in model family from a scenario's model section."""
    from raysim.scenario.resolve import model_factory

    return model_factory(model_cfg)(tuple(input_shape), num_classes)


def coordinator(sc, hosts=None):
    """A coordinator actor for a scenario, as the driver starts it (`hosts` overrides runtime.hosts)."""
    from raysim.runtime.coordinator import start_coordinator
    from raysim.runtime.runner import engine
    from raysim.scenario.build import prepare
    from raysim.scenario.resolve import components

    if hosts is not None:
        sc = sc.model_copy(update={"runtime": sc.runtime.model_copy(update={"hosts": hosts})})
    comps = components(sc)
    return start_coordinator(engine(sc, comps), prepare(sc, comps))


def resumed(sc, state, rounds, drop_device_states=False):
    """A fresh in-process engine continued `rounds` rounds from a `state_dict()` (optionally
    without the devices' own states, to show they matter)."""
    sim = local_sim(sc)
    sim.load_state_dict({**state, "device_states": {}} if drop_device_states else state)
    for _ in range(rounds):
        sim.step()
    return sim
