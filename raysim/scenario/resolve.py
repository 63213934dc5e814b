"""Resolution: the components a scenario names become objects (the edge where names become objects).

Every component (built-in short names or `package.module:attr`, through
`raysim.scenario.registry`) is resolved and its parameters validated; the
`compression.baseline` shorthands turn into the strategy-and-assigner pairs they stand for. An
object given by the caller replaces the scenario's choice.

    >>> from raysim.scenario.schema import load_scenario
    >>> comps = components(load_scenario("scenarios/quickstart.yaml"))
    >>> comps.sources["model"], type(comps.client).__name__
    ('built-in', 'LocalSGD')
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import numpy as np
from torch import nn

from raysim.channels import Channel, Dense
from raysim.client.algorithms import ClientAlgorithm
from raysim.data.base import DataError, Dataset, dataset_from
from raysim.engine.assignment import Assigner
from raysim.engine.selection import Selector, Uniform
from raysim.errors import BadInput, PluginError, ScenarioError, gist
from raysim.models.base import ModelSpec
from raysim.scenario import compat, registry
from raysim.scenario.schema import Scenario
from raysim.server.optimizers import ServerOptimizer
from raysim.submodel.strategies import Strategy

ModelFactory = Callable[[tuple, int], Union[nn.Module, ModelSpec]]
DatasetFactory = Callable[[int], Any]


@dataclass(kw_only=True)
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
    selector: Selector = field(default_factory=Uniform)
    channel_up: Channel = field(default_factory=Dense)
    channel_down: Channel = field(default_factory=Dense)
    gateway_server: Optional[ServerOptimizer] = None   # how gateways aggregate (topology.gateways)

    def load_dataset(self, seed: int) -> Dataset:
        """The dataset, checked (one-line DataError on bad data, PluginError when a plug-in's
        factory raises or returns something else than arrays)."""
        return _load(self.dataset, self.dataset_name, self.sources.get("dataset") == "built-in", seed)

    @property
    def from_objects(self) -> list[str]:
        """The components given as Python objects (a CLI resume cannot rebuild those)."""
        return [k for k, v in self.sources.items() if v == "object"]


def _source(name: str) -> str:
    return "built-in" if not registry.is_import_path(name) else name


def components(sc: Scenario, *, model: Optional[ModelFactory] = None, dataset: Optional[DatasetFactory] = None,
               strategy: Optional[Strategy] = None, assigner: Optional[Assigner] = None,
               client: Optional[ClientAlgorithm] = None, server: Optional[ServerOptimizer] = None,
               selector: Optional[Selector] = None, channel_up: Optional[Channel] = None,
               channel_down: Optional[Channel] = None) -> Components:
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
    selector = _choose(sources, "selector", "selection.policy", Selector, selector, sc.selection.policy,
                       sc.selection.params)
    ch = sc.channel
    up = _choose(sources, "channel_up", "channel.up", Channel, channel_up, ch.up, ch.up_params)
    down = _choose(sources, "channel_down", "channel.down", Channel, channel_down, ch.down, ch.down_params)
    if down.error_feedback:   # not a matter of mode: a downlink has no residual to keep in any
        raise ScenarioError("channel.down_params.error_feedback: error feedback keeps what a device's update lost; "
                            "it applies to channel.up only")
    topo = sc.topology
    gateway_server = (_choose(sources, "gateway_server", "topology.gateway_optimizer", ServerOptimizer, None,
                              topo.gateway_optimizer, topo.gateway_params) if topo.gateways else None)
    smallest = min(m.rates) if baseline == "fedavg-smallest" else None
    narrow = smallest is not None or (strategy.compresses and baseline == "none" and list(m.rates) != [1.0])
    comps = Components(model=model, dataset=dataset, strategy=strategy, assigner=assigner, client=client,
                       server=server, model_name=model_name, dataset_name=dataset_name, smallest=smallest,
                       narrow=narrow, scaler=m.scaler, sources=sources, selector=selector, channel_up=up,
                       channel_down=down, gateway_server=gateway_server)
    # The mode-and-feature table's rows that only the objects can answer (a channel's error
    # feedback, a client algorithm's state); the scenario's own were checked when it was validated.
    compat.check(sc, comps)
    return comps


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


def model_factory(cfg: Any) -> ModelFactory:
    """`(input_shape, num_classes) -> module or ModelSpec` for a scenario's `model` section.

        >>> from raysim.scenario.schema import ModelConfig
        >>> model_factory(ModelConfig(arch="cnn", widths=[8, 16]))((1, 12, 12), 10).groups
        {'conv0': 8, 'conv1': 16, 'hidden': 128}
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

        >>> from raysim.scenario.schema import DataConfig
        >>> load_dataset(DataConfig(dataset="digits"), seed=0).num_classes
        10
    """
    return _load(dataset_factory(cfg), cfg.dataset, not registry.is_import_path(cfg.dataset), seed)


DATASET_CONTRACT = "a Dataset or a tuple (x_train, y_train, x_test, y_test[, groups]) of numpy arrays"


def _load(fn: DatasetFactory, name: str, builtin: bool, seed: int) -> Dataset:
    try:
        out = fn(seed)
    except BadInput:
        raise
    except Exception as err:  # noqa: BLE001 - a plug-in loader failing is bad input, not a bug here
        if builtin:
            raise
        raise PluginError(fn, "data.dataset", f"raised {gist(err)} when called with seed {seed}; expected "
                          f"{DATASET_CONTRACT}") from None
    if not builtin:
        arrays = out if isinstance(out, (tuple, list)) else None
        if not isinstance(out, Dataset) and (arrays is None or len(arrays) not in (4, 5)
                                             or not all(isinstance(a, np.ndarray) for a in arrays)):
            raise PluginError(fn, "data.dataset", f"returned {_shown(out)}; expected {DATASET_CONTRACT}")
    ds = dataset_from(name, out)
    for split, y in (("training", ds.y_train), ("test", ds.y_test)):
        if len(y) == 0:  # whatever the loader: a set to train on and one to test with
            raise DataError(f"data.dataset {name}: holds no {split} samples")
    return ds


def _shown(out: Any) -> str:
    """What a factory returned, in a few words: its type, and for a tuple or list its items' types."""
    if isinstance(out, (tuple, list)):
        items = ", ".join(type(a).__name__ for a in out[:6]) + (", ..." if len(out) > 6 else "")
        return f"a {type(out).__name__} of {len(out)} ({items})"
    return f"a {type(out).__name__}"
