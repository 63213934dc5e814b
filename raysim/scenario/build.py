"""The builder: a scenario and its resolved components become what the engine runs.

`build_setup` derives the global model's width family (slicing a plain module), the rate
ladder and its costs, the fleet, availability and data shards; `round_config`,
`async_config` and `trainer` give the round loop's settings and what device hosts train with.
Nothing past this module reads a scenario. Which runtime runs it is the runner's choice
(`raysim.runtime.runner`, or `raysim.inprocess` without Ray).

    >>> from raysim.scenario.schema import load_scenario
    >>> setup = prepare(load_scenario("scenarios/quickstart.yaml", ["fleet.devices=50"]))
    >>> len(setup.fleet), setup.rates
    (50, [1.0, 0.5, 0.25, 0.125])
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING, Callable, Optional, cast

import numpy as np
import torch
from torch import nn

from raysim.channels import Channel, Dense
from raysim.client.trainer import Trainer
from raysim.data.base import Dataset
from raysim.engine.cost import RateCost
from raysim.engine.setup import RoundConfig, Setup
from raysim.errors import BadInput, PluginError, ScenarioError, broken, gist
from raysim.models.base import ModelSpec
from raysim.scenario.preflight import check_sizes
from raysim.scenario.resolve import Components, components
from raysim.scenario.schema import Scenario
from raysim.seeding import seed_sequence
from raysim.submodel.plan import rate_sizes
from raysim.submodel.strategies import Static

if TYPE_CHECKING:
    from raysim.engine.asynchronous import AsyncConfig
    from raysim.engine.topology import Gateways


def prepare(sc: Scenario, comps: Optional[Components] = None) -> Setup:
    """Load data and derive model, costs, fleet and shards (raises one-line errors on bad input)."""
    comps = comps or components(sc)
    check_sizes(sc)  # before anything large is allocated
    return build_setup(sc, comps, comps.load_dataset(sc.seed))


MODEL_CONTRACT = "a torch.nn.Module or a raysim ModelSpec"


def model_spec(comps: Components, input_shape: tuple[int, ...], num_classes: int, seed: int = 0) -> ModelSpec:
    """The global model as a width family: the factory's `ModelSpec`, or a plain module as a
    family of one width (no channel groups: it trains whole).

    The factory runs under a generator seeded from `seed` (and torch's own is left as it was):
    a plain module's tensors that slicing cannot rebuild by a layer's constructor (a weight its
    forward reads by name, a layer scale) keep the values the module was made with, so those
    must not depend on what ran before."""
    builtin = comps.sources.get("model") == "built-in"
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed_sequence(seed, "model.init").generate_state(1, np.uint64)[0] >> 1))
            out = comps.model(tuple(input_shape), int(num_classes))
    except BadInput:
        raise
    except Exception as err:  # noqa: BLE001 - a plug-in model failing to build is bad input
        if builtin:
            raise
        raise PluginError(comps.model, "model.arch", f"raised {gist(err)} when called with ({tuple(input_shape)}, "
                          f"{int(num_classes)}); expected {MODEL_CONTRACT}") from None
    if isinstance(out, ModelSpec):
        spec = out
    elif isinstance(out, nn.Module) and comps.narrow:
        spec = sliced(comps.model_name, out, input_shape, num_classes, comps.scaler)
    elif isinstance(out, nn.Module):
        # Trained whole by everyone: no slicing needed, and the module is exactly the user's.
        factory = cast(Callable[[tuple[int, ...], int], nn.Module], comps.model)  # it made a module just now
        spec = ModelSpec.whole(comps.model_name, factory, tuple(input_shape), int(num_classes))
    else:
        raise broken(comps.model, "model.arch", f"returned a {type(out).__name__} when called with "
                     f"({tuple(input_shape)}, {int(num_classes)}); expected {MODEL_CONTRACT}")
    if not any(True for _ in spec.build().parameters()):
        raise broken(comps.model, "model.arch", "returned a model with no parameters to train; expected "
                     f"{MODEL_CONTRACT} with at least one parameter")
    if comps.smallest is not None:
        spec = scaled_spec(spec, comps.smallest)
    return spec


def sliced(name: str, module: nn.Module, input_shape: tuple[int, ...], num_classes: int, scaler: bool) -> ModelSpec:
    """A plain module's width family, its channel groups derived by tracing (`raysim.slicing`)."""
    from raysim.slicing import SlicingError, infer_spec  # noqa: PLC0415

    try:
        return infer_spec(module, tuple(input_shape), int(num_classes), name, scaler=scaler)
    except SlicingError as err:
        raise ScenarioError(f"model.arch: {name}: {str(err).removeprefix('model: ')}, or compression.baseline: "
                            f"fedavg-capable") from None
    except ValueError as err:
        raise ScenarioError(f"model.arch: {name}: {str(err).removeprefix('model: ')}") from None


def scaled_spec(spec: ModelSpec, rate: float) -> ModelSpec:
    """The same family with every group narrowed to `rate` (the global model of fedavg-smallest)."""
    groups = {g: rate_sizes(w, rate) for g, w in spec.groups.items()}
    return ModelSpec(f"{spec.name}@{rate:g}", groups, spec.axes, spec.builder, spec.input_shape, spec.num_classes)


def ladder(sc: Scenario, comps: Components, spec: ModelSpec) -> list[float]:
    """The rates devices may train: the scenario's ladder, or [1] when the strategy trains the
    whole model (then a rate is just 'the model')."""
    if not comps.strategy.compresses or comps.smallest is not None or sc.compression.baseline != "none":
        return [1.0]
    rates = list(sc.model.rates)
    if not spec.groups and rates != [1.0]:
        raise ScenarioError(
            f"model.arch: {comps.model_name} declares no channel groups, so it cannot be narrowed to rates "
            f"{rates[1:]}: use compression.strategy: full or compression.baseline: fedavg-capable, or return a "
            f"ModelSpec that declares its groups (docs/plugins.md)")
    if 1.0 not in rates and isinstance(comps.strategy, Static):
        raise ScenarioError(
            f"model.rates: {rates} has no 1, and compression.strategy static keeps the same leading channels on every "
            f"device, so the channels past rate {rates[0]:g} would never train: add 1 to the ladder, or use rolling or "
            f"random (they cover every channel over rounds)")
    if sc.assignment.policy == "fixed" and sc.assignment.fixed_rate is not None and sc.assignment.fixed_rate not in rates:
        raise ScenarioError(f"assignment.fixed_rate: {sc.assignment.fixed_rate:g} is not on model.rates {rates}")
    return rates


def ladder_note(sc: Scenario) -> Optional[str]:
    """What a ladder without rate 1 means, said once when a run starts (None: the ladder has 1)."""
    rates = sorted(sc.model.rates, reverse=True)
    if 1.0 in rates or sc.compression.baseline != "none":
        return None
    return (f"model.rates {rates} has no 1: no device trains the full global model; every channel is trained only "
            f"through submodels of at most rate {rates[0]:g} (as in FedRolex's larger-than-any-device global model)")


def build_setup(sc: Scenario, comps: Components, dataset: Dataset) -> Setup:
    """Model family, rate ladder and costs, fleet, availability and data shards."""
    from raysim.data import partition  # noqa: PLC0415
    from raysim.engine.cost import profile_ladder  # noqa: PLC0415
    from raysim.fleet import Availability, make_fleet  # noqa: PLC0415
    from raysim.slicing.walk import TRACE_LOCK  # noqa: PLC0415

    with TRACE_LOCK:  # tracing and the cost model's forward passes: one thread at a time (sweeps)
        spec = model_spec(comps, dataset.input_shape, dataset.num_classes, sc.seed)
        rates = ladder(sc, comps, spec)
        copies = comps.client.state_copies
        costs = profile_ladder(spec, rates, sc.train.batch_size, momentum=copies > 0)
        # A FedScale-style trace gives ms per sample of a reference model: the global model at
        # rate 1 (before fedavg-smallest narrows it).
        ref_spec = spec if comps.smallest is None else model_spec(
            Components(**{**comps.__dict__, "smallest": None, "narrow": False}), dataset.input_shape,
            dataset.num_classes, sc.seed)
        ref = profile_ladder(ref_spec, [1.0], sc.train.batch_size)[1.0]
        costs = wire_costs(spec, costs, comps.channel_up, comps.channel_down)
    fleet = make_fleet(sc.fleet, sc.seed, reference_flops=ref.forward_flops_per_sample)
    if sc.selection.per_round > len(fleet):
        raise ScenarioError(f"selection.per_round: {sc.selection.per_round} exceeds the fleet's {len(fleet)} devices")
    async_config(sc, len(fleet))  # a concurrency the fleet cannot fill is refused before anything runs
    if sc.topology.gateways > len(fleet):   # a trace's fleet is known only now (the schema checks fleet.devices)
        raise ScenarioError(f"topology.gateways: {sc.topology.gateways} gateways for {len(fleet)} devices")
    if sc.topology.gateways and sc.topology.attach == "trace":
        from raysim.engine.topology import check_trace_gateways  # noqa: PLC0415

        why = check_trace_gateways(fleet.gateway, sc.topology.gateways, sc.fleet.trace)
        if why is not None:
            raise ScenarioError(why)
    availability = Availability(fleet, sc.fleet.availability, sc.seed)
    shards = partition(dataset, len(fleet), sc.data.partition, sc.seed)
    return Setup(spec, rates, costs, fleet, availability, shards, dataset)


def wire_costs(spec: ModelSpec, costs: dict[float, RateCost], up: Channel, down: Channel) -> dict[float, RateCost]:
    """Each rate's costs with the exact bytes its submodel takes through the channels."""
    if isinstance(up, Dense) and isinstance(down, Dense):
        return costs
    out = {}
    for rate, c in costs.items():
        with torch.random.fork_rng(devices=[]):
            module = spec.build({g: rate_sizes(w, rate) for g, w in spec.groups.items()}, rate)
        shapes = {k: tuple(p.shape) for k, p in module.named_parameters()}
        out[rate] = replace(c, down_bytes=down.nbytes(shapes), up_bytes=up.nbytes(shapes))
    return out


def round_config(sc: Scenario) -> RoundConfig:
    """The round loop's settings from a scenario."""
    return RoundConfig(seed=sc.seed, rounds=sc.rounds, per_round=sc.selection.per_round,
                       overcommit=sc.selection.overcommit, deadline=sc.deadline.seconds,
                       deadline_policy=sc.deadline.policy, epochs=sc.train.epochs, batch_size=sc.train.batch_size,
                       weighting=sc.server.weighting, eval_every=sc.eval.every, eval_per_rate=sc.eval.per_rate,
                       eval_batch_size=sc.eval.batch_size, eval_max_samples=sc.eval.max_samples,
                       torch_threads=sc.runtime.torch_threads)


def async_config(sc: Scenario, fleet_size: Optional[int] = None) -> Optional["AsyncConfig"]:
    """The asynchronous server a scenario's `server.mode` asks for (None: sync rounds)."""
    from raysim.engine.asynchronous import AsyncConfig  # noqa: PLC0415
    from raysim.server.staleness import staleness_fn  # noqa: PLC0415

    sv = sc.server
    if sv.mode == "sync":
        return None
    sel = sc.selection
    stale = staleness_fn(sv.staleness.kind, sv.staleness.a, sv.staleness.b)
    if sc.topology.gateways:  # the cloud takes gateways' models: every gateway is always at work
        g = sc.topology.gateways
        return AsyncConfig(mode=sv.mode, concurrency=g, buffer=sv.buffer or max(1, g // 2), staleness=stale,
                           alpha=sv.alpha, poll_s=sv.poll_s)
    c = sv.concurrency or max(1, math.ceil(sel.per_round * (1 + sel.overcommit) - 1e-9))
    if fleet_size is not None and c > fleet_size:
        raise ScenarioError(f"server.concurrency: {c} devices training at once exceeds the fleet's {fleet_size} devices")
    return AsyncConfig(mode=sv.mode, concurrency=c, buffer=sv.buffer or sel.per_round, staleness=stale,
                       alpha=sv.alpha, poll_s=sv.poll_s)


def gateways(sc: Scenario) -> Optional["Gateways"]:
    """The topology a scenario's `topology` section asks for (None: flat rounds)."""
    from raysim.engine.topology import Gateways  # noqa: PLC0415

    t = sc.topology
    if not t.gateways:
        return None
    from raysim.fleet.power import PowerStates  # noqa: PLC0415

    catalogue = sc.fleet.catalogue()
    link = catalogue[t.gateway_class]
    p = PowerStates.of([t.gateway_class], catalogue)
    per = t.per_gateway or max(1, math.ceil(sc.selection.per_round / t.gateways))
    return Gateways(count=t.gateways, rounds=t.gateway_rounds, per_gateway=per, attach=t.attach,
                    down_bps=link.down_bps, up_bps=link.up_bps, latency_s=link.latency_s,
                    cloud_deadline=t.cloud_deadline, class_name=t.gateway_class, keep_state=t.gateway_state == "run",
                    idle_w=float(p.idle_w[0]), radio_idle_w=float(p.radio_idle_w[0]), rx_w=float(p.rx_w[0]),
                    tx_w=float(p.tx_w[0]))


def trainer(sc: Scenario, comps: Components) -> Trainer:
    """What device hosts train with: the client algorithm and the local budget."""
    return Trainer(comps.client, sc.train.epochs, sc.train.batch_size, sc.seed, sc.runtime.torch_threads,
                   device="cpu", gpu_share=sc.runtime.gpus_per_host,
                   batched=sc.train.batched if sc.runtime.placement == "pooled" else "off", up=comps.channel_up,
                   down=comps.channel_down)
