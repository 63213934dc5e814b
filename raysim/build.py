"""The builder: a scenario (plus any component given as an object) becomes the engine's components.

This is the edge where names become objects: it resolves every component a scenario names
(built-in short names or `package.module:attr`, through `raysim.registry`), validates their
parameters, turns the `compression.baseline` shorthands into the strategy-and-assigner pairs
they stand for, and derives what the round loop needs (`Setup`, `RoundConfig`, the hosts'
`Trainer`). Nothing past this module reads a scenario.

    >>> sc = load_scenario("scenarios/quickstart.yaml")
    >>> comps = components(sc)                        # or components(sc, client=FedProx(mu=0.1))
    >>> setup = build_setup(sc, comps, comps.load_dataset(sc.seed))
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional, Union

import numpy as np
import torch
from torch import nn

from raysim import registry
from raysim.client import ClientAlgorithm
from raysim.config import Scenario, ScenarioError, rate_sizes
from raysim.data.base import DataError, Dataset, dataset_from
from raysim.models.base import ModelSpec
from raysim.policy import Assigner
from raysim.seeding import seed_sequence
from raysim.server import ServerOptimizer
from raysim.simulation import RoundConfig, Setup
from raysim.submodel.strategies import Strategy
from raysim.trainer import Trainer

ModelFactory = Callable[[tuple, int], Union[nn.Module, ModelSpec]]
DatasetFactory = Callable[[int], Any]


@dataclass
class Components:
    """The components of one run, as objects.

    `model(input_shape, num_classes)` gives the global model (a torch module, or a
    `ModelSpec` that declares its channel groups); `dataset(seed)` gives the data.
    `sources` says where each came from (a built-in name, an import path, or `object`),
    for the manifest.
    """

    model: ModelFactory
    dataset: DatasetFactory
    strategy: Strategy
    assigner: Assigner
    client: ClientAlgorithm
    server: ServerOptimizer
    model_name: str = "model"
    dataset_name: str = "dataset"
    smallest: Optional[float] = None   # fedavg-smallest: the global model is narrowed to this rate
    narrow: bool = True                # devices train narrower submodels (a plain module is sliced)
    scaler: bool = True                # sliced submodels scale activations by 1/rate in training
    sources: dict[str, str] = field(default_factory=dict)

    def load_dataset(self, seed: int) -> Dataset:
        """The dataset, checked (one-line DataError on bad output)."""
        return _load(self.dataset, self.dataset_name, self.sources.get("dataset") == "built-in", seed)

    @property
    def from_objects(self) -> list[str]:
        """The components given as Python objects (a CLI resume cannot rebuild those)."""
        return [k for k, v in self.sources.items() if v == "object"]


def _source(name: str) -> str:
    return "built-in" if not registry.is_import_path(name) else name


def components(sc: Scenario, *, model: Optional[ModelFactory] = None, dataset: Optional[DatasetFactory] = None,
               strategy: Optional[Strategy] = None, assigner: Optional[Assigner] = None,
               client: Optional[ClientAlgorithm] = None, server: Optional[ServerOptimizer] = None) -> Components:
    """Resolve the scenario's components; an object given here replaces the scenario's choice.

    `compression.baseline` turns into pairs: `fedavg-capable` is the full model (`Full`) with
    `FitMemory` on the ladder [1] (only devices that hold it train); `fedavg-smallest` is the
    model narrowed to its smallest rate, trained whole by every device that fits it.
    """
    sources: dict[str, str] = {}
    m, d = sc.model, sc.data
    model, model_name = _factory(sources, "model", model, lambda: model_factory(m), m.arch)
    dataset, dataset_name = _factory(sources, "dataset", dataset, lambda: dataset_factory(d), d.dataset)

    baseline = sc.compression.baseline
    a, t, s = sc.assignment, sc.train, sc.server
    # A baseline is a strategy-and-assigner pair: the whole model, assigned by memory.
    strategy = _choose(sources, "strategy", "compression.strategy", Strategy, strategy,
                       "full" if baseline != "none" else sc.compression.strategy,
                       sc.compression.params if baseline == "none" else {})
    assigner = _choose(sources, "assigner", "assignment.policy", Assigner, assigner,
                       "fit-memory" if baseline != "none" else a.policy, a.params if baseline == "none" else {},
                       {"rate": a.fixed_rate} if a.fixed_rate is not None and baseline == "none" else {})
    client = _choose(sources, "client", "train.algorithm", ClientAlgorithm, client, t.algorithm, t.params,
                     {"lr": t.lr, "momentum": t.momentum, "weight_decay": t.weight_decay})
    server = _choose(sources, "server", "server.optimizer", ServerOptimizer, server, s.optimizer, s.params,
                     {"lr": s.lr, "momentum": s.momentum, "beta1": s.beta1, "beta2": s.beta2, "eps": s.eps})
    smallest = min(m.rates) if baseline == "fedavg-smallest" else None
    narrow = smallest is not None or (strategy.compresses and baseline == "none" and list(m.rates) != [1.0])
    return Components(model, dataset, strategy, assigner, client, server, model_name, dataset_name, smallest,
                      narrow, m.scaler, sources)


def _factory(sources: dict[str, str], slot: str, given: Optional[Callable], make: Callable[[], Callable],
             name: str) -> tuple[Callable, str]:
    """The factory given for the model or the dataset, or the one the scenario names; and its name."""
    if given is None:
        sources[slot] = _source(name)
        return make(), name
    _check_type(slot, given, None)
    sources[slot] = "object"
    return given, registry.describe(given)


def _choose(sources: dict[str, str], slot: str, key: str, base: type, given: Any, name: str,
            params: dict[str, Any], inherited: Optional[dict[str, Any]] = None) -> Any:
    """The object given for a component, or the one the scenario names; checked against its base."""
    if given is None:
        given = registry.instantiate(key, registry.resolve(key, name), params, inherited)
        sources[slot] = _source(name)
    else:
        sources[slot] = "object"
    _check_type(key, given, base)
    return given


def _check_type(key: str, obj: Any, base: Optional[type]) -> None:
    if base is None:
        if not callable(obj):
            raise ScenarioError(f"{key}: {registry.describe(obj)} is not callable")
        return
    if not isinstance(obj, base):
        raise ScenarioError(f"{key}: {registry.describe(obj)} is not a {base.__module__}.{base.__name__} "
                            f"(subclass it: docs/plugins.md)")


def model_spec(comps: Components, input_shape: tuple[int, ...], num_classes: int, seed: int = 0) -> ModelSpec:
    """The global model as a width family: the factory's `ModelSpec`, or a plain module as a
    family of one width (no channel groups: it trains whole).

    The factory runs under a generator seeded from `seed` (and torch's own is left as it was):
    a plain module's tensors that slicing cannot rebuild by a layer's constructor (a weight its
    forward reads by name, a layer scale) keep the values the module was made with, so those
    must not depend on what ran before."""
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed_sequence(seed, "model.init").generate_state(1, np.uint64)[0] >> 1))
            out = comps.model(tuple(input_shape), int(num_classes))
    except ScenarioError:
        raise
    except Exception as err:  # noqa: BLE001 - a plug-in model failing to build is bad input
        if comps.sources.get("model") == "built-in":
            raise
        raise ScenarioError(f"model.arch: {comps.model_name}{tuple(input_shape)} failed: "
                            f"{type(err).__name__}: {err}") from None
    if isinstance(out, ModelSpec):
        spec = out
    elif isinstance(out, nn.Module) and comps.narrow:
        spec = sliced(comps.model_name, out, input_shape, num_classes, comps.scaler)
    elif isinstance(out, nn.Module):
        # Trained whole by everyone: no slicing needed, and the module is exactly the user's.
        spec = ModelSpec.whole(comps.model_name, comps.model, tuple(input_shape), int(num_classes))
    else:
        raise ScenarioError(f"model.arch: {comps.model_name} returned {type(out).__name__}, "
                            f"not a torch.nn.Module or ModelSpec")
    if not any(True for _ in spec.build().parameters()):
        raise ScenarioError(f"model.arch: {comps.model_name} has no parameters to train")
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
    if sc.assignment.policy == "fixed" and sc.assignment.fixed_rate is not None and sc.assignment.fixed_rate not in rates:
        raise ScenarioError(f"assignment.fixed_rate: {sc.assignment.fixed_rate:g} is not on model.rates {rates}")
    return rates


def build_setup(sc: Scenario, comps: Components, dataset: Dataset) -> Setup:
    """Model family, rate ladder and costs, fleet, availability and data shards."""
    from raysim.cost import profile_ladder  # noqa: PLC0415
    from raysim.data import partition  # noqa: PLC0415
    from raysim.fleet import Availability, make_fleet  # noqa: PLC0415

    from raysim.slicing.trace import TRACE_LOCK  # noqa: PLC0415

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
    fleet = make_fleet(sc.fleet, sc.seed, reference_flops=ref.forward_flops_per_sample)
    if sc.selection.per_round > len(fleet):
        raise ScenarioError(f"selection.per_round: {sc.selection.per_round} exceeds the fleet's {len(fleet)} devices")
    async_config(sc, len(fleet))  # a concurrency the fleet cannot fill is refused before anything runs
    availability = Availability(fleet, sc.fleet.availability, sc.seed)
    shards = partition(dataset, len(fleet), sc.data.partition, sc.seed)
    return Setup(spec, rates, costs, fleet, availability, shards, dataset)


def round_config(sc: Scenario) -> RoundConfig:
    """The round loop's settings from a scenario."""
    return RoundConfig(seed=sc.seed, rounds=sc.rounds, per_round=sc.selection.per_round,
                       overcommit=sc.selection.overcommit, deadline=sc.deadline.seconds,
                       deadline_policy=sc.deadline.policy, epochs=sc.train.epochs, batch_size=sc.train.batch_size,
                       weighting=sc.server.weighting, eval_every=sc.eval.every, eval_per_rate=sc.eval.per_rate,
                       eval_batch_size=sc.eval.batch_size, eval_max_samples=sc.eval.max_samples,
                       torch_threads=sc.runtime.torch_threads)


def async_config(sc: Scenario, fleet_size: Optional[int] = None):
    """The asynchronous server a scenario's `server.mode` asks for (None: sync rounds)."""
    from raysim.asynchronous import AsyncConfig  # noqa: PLC0415
    from raysim.staleness import staleness_fn  # noqa: PLC0415

    sv = sc.server
    if sv.mode == "sync":
        return None
    sel = sc.selection
    c = sv.concurrency or max(1, math.ceil(sel.per_round * (1 + sel.overcommit) - 1e-9))
    if fleet_size is not None and c > fleet_size:
        raise ScenarioError(f"server.concurrency: {c} devices training at once exceeds the fleet's {fleet_size} devices")
    return AsyncConfig(sv.mode, c, sv.buffer or sel.per_round, staleness_fn(sv.staleness.kind, sv.staleness.a,
                       sv.staleness.b), sv.alpha, sv.poll_s)


def trainer(sc: Scenario, comps: Components) -> Trainer:
    """What device hosts train with: the client algorithm and the local budget."""
    return Trainer(comps.client, sc.train.epochs, sc.train.batch_size, sc.seed, sc.runtime.torch_threads,
                   device="cpu", gpu_share=sc.runtime.gpus_per_host,
                   batched=sc.train.batched if sc.runtime.placement == "pooled" else "off")


def model_factory(cfg: Any) -> ModelFactory:
    """`(input_shape, num_classes) -> module or ModelSpec` for a scenario's `model` section.

        >>> spec = model_factory(ModelConfig(arch="cnn", widths=[8, 16]))((1, 12, 12), 10)
    """
    obj = registry.resolve("model.arch", cfg.arch)
    inherited = {"widths": list(cfg.widths), "hidden": cfg.hidden, "norm": cfg.norm, "scaler": cfg.scaler}
    return registry.bind("model.arch", obj, cfg.params, inherited, skip=2)


def dataset_factory(cfg: Any) -> DatasetFactory:
    """`(seed) -> dataset` for a scenario's `data` section (unchecked: see `load_dataset`)."""
    obj = registry.resolve("data.dataset", cfg.dataset)
    inherited = {"root": cfg.root, "synthetic": cfg.synthetic, "har": cfg.har, "test_fraction": cfg.test_fraction}
    return registry.bind("data.dataset", obj, cfg.params, inherited, skip=1)


def load_dataset(cfg: Any, seed: int) -> Dataset:
    """The dataset a scenario's `data` section names (built-in or plug-in), loaded and checked.

        >>> ds = load_dataset(DataConfig(dataset="digits"), seed=0)
    """
    return _load(dataset_factory(cfg), cfg.dataset, not registry.is_import_path(cfg.dataset), seed)


def _load(fn: DatasetFactory, name: str, builtin: bool, seed: int) -> Dataset:
    try:
        out = fn(seed)
    except (DataError, ScenarioError):
        raise
    except Exception as err:  # noqa: BLE001 - a plug-in loader failing is bad input, not a bug here
        if builtin:
            raise
        raise DataError(f"data.dataset: {name} failed: {type(err).__name__}: {err}") from None
    ds = dataset_from(name, out)
    for split, y in (("training", ds.y_train), ("test", ds.y_test)):
        if len(y) == 0:  # whatever the loader: a set to train on and one to test with
            raise DataError(f"data.dataset {name}: holds no {split} samples")
    return ds


def engine(sc: Scenario, comps: Components):
    """The coordinator's `Engine`: the components plus the placement and clock the scenario picks."""
    from raysim.clock import RealtimeClock, VirtualClock  # noqa: PLC0415
    from raysim.runtime.coordinator import Engine  # noqa: PLC0415
    from raysim.runtime.dedicated import RealTime  # noqa: PLC0415
    from raysim.runtime.placement import Dedicated, Pooled  # noqa: PLC0415

    rt = sc.runtime
    realtime = rt.clock == "realtime"
    if rt.placement == "dedicated":
        timing = RealTime(rt.time_scale, sc.selection.per_round, sc.deadline.policy == "partial") if realtime else None
        placement = Dedicated(rt.hosts, timing)
    else:
        placement = Pooled(rt.hosts, rt.hosts_per)
    clock = RealtimeClock(rt.time_scale) if realtime else VirtualClock()
    return Engine(comps.strategy, comps.assigner, comps.server, trainer(sc, comps), round_config(sc), placement, clock,
                  async_config(sc))


def local_simulation(sc: Scenario, comps: Optional[Components] = None, hosts: int = 1, setup: Optional[Setup] = None):
    """The whole engine in this process, no Ray (tests, debugging, notebooks): `hosts`
    in-process device hosts, the scenario's clock. Same numbers as a Ray run.

        >>> sim = local_simulation(load_scenario("scenarios/quickstart.yaml", ["rounds=2"]))
        >>> sim.step().record.accuracy
    """
    from raysim.clock import VirtualClock  # noqa: PLC0415
    from raysim.runtime.local import LocalBackend  # noqa: PLC0415
    from raysim.simulation import Simulation  # noqa: PLC0415

    from raysim.runtime.gpu import local_device  # noqa: PLC0415

    comps = comps or components(sc)
    setup = setup or build_setup(sc, comps, comps.load_dataset(sc.seed))
    device = local_device(sc.runtime.device)
    backend = LocalBackend(setup.spec, replace(trainer(sc, comps), device=device), setup.dataset.x_train,
                           setup.dataset.y_train, setup.shards, hosts, setup.fleet.device_id, setup.rates)
    cfg = replace(round_config(sc), device=device)
    acfg = async_config(sc, len(setup.fleet))
    if acfg is not None:
        from raysim.asynchronous import AsyncSimulation  # noqa: PLC0415

        return AsyncSimulation(setup, comps.strategy, comps.assigner, comps.server, backend, cfg, acfg)
    return Simulation(setup, comps.strategy, comps.assigner, comps.server, backend, cfg, VirtualClock())
