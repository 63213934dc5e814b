"""Scenario schema: YAML -> typed, validated config.

A scenario is one YAML file. Every section is a pydantic model that forbids unknown keys, so
a typo is an error that names the field, not a silently ignored setting.

    >>> cfg = load_scenario("scenarios/quickstart.yaml", overrides=["rounds=5"])
    >>> cfg.selection.per_round
    50
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from raysim.data.har import HarConfig
from raysim.data.partition import PartitionConfig
from raysim.data.synthetic import SyntheticConfig
from raysim.engine.battery import EnergyConfig
from raysim.engine.topology import TopologyConfig
from raysim.errors import BadInput, ScenarioError
from raysim.fleet.make import FleetConfig
from raysim.scenario import compat
from raysim.scenario.strict_yaml import parse_value, read_yaml_file
from raysim.settings import Section

# A run's name names its directory: letters, digits and a few marks that need no quoting, in
# segments joined by "/" (only a sweep's points use more than one).
NAME_SEGMENT = r"[A-Za-z0-9][A-Za-z0-9._=,+\[\]-]*"
_NAME = re.compile(rf"{NAME_SEGMENT}(/{NAME_SEGMENT})*")
MAX_NAME = 200


_Section = Section


def _params() -> Any:
    return Field(default_factory=dict, description="the named component's own parameters, validated by it "
                 "(its `Params` model or its signature)")


def _check_component(key: str, name: str) -> str:
    from raysim.scenario.registry import check_name  # noqa: PLC0415

    return check_name(key, name)


class DataConfig(_Section):
    """The dataset and its split over devices (docs/datasets.md: files and formats)."""

    dataset: str = Field("synthetic", description="synthetic, har (sensor time series) and digits are embedded; "
                         "mnist, fashion-mnist, "
                         "cifar10 and femnist read local files; or an import path package.module:attr to a "
                         "callable (seed) -> (x_train, y_train, x_test, y_test[, groups])")
    params: dict[str, Any] = _params()
    root: Optional[str] = Field(None, description="directory with the dataset's files")
    synthetic: SyntheticConfig = SyntheticConfig()
    har: HarConfig = HarConfig()
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="held-out share, for sets without a test split")
    partition: PartitionConfig = PartitionConfig()

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v: str) -> str:
        return _check_component("data.dataset", v)


class ModelConfig(_Section):
    """The global model's family and widths, and its rate ladder."""

    arch: str = Field("cnn", description="width-scalable family (cnn, mlp, preresnet18, mobilenetv3), or an import path "
                      "package.module:attr to a callable (input_shape, num_classes) -> torch.nn.Module or ModelSpec")
    params: dict[str, Any] = _params()
    widths: list[int] = Field(default_factory=lambda: [32, 64, 128],
                              description="global model (rate 1): conv channels per stage (cnn, "
                              "preresnet18: default [64,128,256,512]) or hidden units per layer (mlp); "
                              "mobilenetv3's block table is fixed")
    hidden: int = Field(128, ge=1, description="cnn: units of the hidden dense layer")
    rates: list[float] = Field(default_factory=lambda: [1.0, 0.5, 0.25, 0.125],
                               description="the rate ladder: width multipliers in (0, 1] a device may train; "
                               "without 1 no device trains the full model (refused with the static strategy, "
                               "whose other channels would never train)")
    norm: Literal["none", "group", "static-bn"] = Field(
        "group", description="normalisation; static-bn recomputes statistics before evaluation")
    scaler: bool = Field(True, description="divide activations by the rate in training (HeteroFL)")

    @model_validator(mode="before")
    @classmethod
    def _arch_widths(cls, data: Any) -> Any:
        # preresnet18 has four stages; its default widths are the usual ResNet-18 ones.
        if isinstance(data, dict) and data.get("arch") == "preresnet18" and "widths" not in data:
            return {**data, "widths": [64, 128, 256, 512]}
        return data

    @field_validator("arch")
    @classmethod
    def _arch(cls, v: str) -> str:
        return _check_component("model.arch", v)

    @field_validator("rates")
    @classmethod
    def _rates(cls, v: list[float]) -> list[float]:
        if not v:
            raise ValueError("needs at least one rate")
        if any(not (0.0 < r <= 1.0) for r in v):
            raise ValueError("every rate must be in (0, 1]")
        return sorted(set(v), reverse=True)

    @field_validator("widths")
    @classmethod
    def _widths(cls, v: list[int]) -> list[int]:
        if not v or any(w < 1 for w in v):
            raise ValueError("needs positive widths")
        return v


class CompressionConfig(_Section):
    """How a device's submodel is cut from the global model."""

    strategy: str = Field(
        "static", description="static: first channels (HeteroFL); rolling: a moving window (FedRolex); "
        "random: Federated Dropout; magnitude: largest L1 norm; full: no compression; or an import path "
        "package.module:attr to a Strategy")
    params: dict[str, Any] = _params()
    baseline: Literal["none", "fedavg-capable", "fedavg-smallest"] = Field(
        "none", description="instead of submodels: only devices that fit the full model take part "
        "(fedavg-capable), or the global model is the smallest rate's (fedavg-smallest)")

    @field_validator("strategy")
    @classmethod
    def _strategy(cls, v: str) -> str:
        return _check_component("compression.strategy", v)


class SelectionConfig(_Section):
    """Which devices a round asks to train."""

    per_round: int = Field(50, ge=1, description="K: results a round aggregates at most")
    overcommit: float = Field(0.0, ge=0.0, le=10.0, description="select K*(1+f), keep first K")
    policy: str = Field(
        "uniform", description="uniform (every online device equally likely), energy-aware (weighted by battery "
        "level, energy.batteries on), or an import path package.module:attr to a Selector")
    params: dict[str, Any] = _params()

    @field_validator("policy")
    @classmethod
    def _policy(cls, v: str) -> str:
        return _check_component("selection.policy", v)


class AssignmentConfig(_Section):
    """Which rate each selected device trains."""

    policy: str = Field(
        "fit-memory", description="largest rate that fits the device's memory (fit-memory; fit-deadline: and "
        "whose predicted time meets the deadline; fit-energy: and whose predicted energy fits params.budget_j and "
        "the battery above its reserve), one fixed rate (fixed), or an import path package.module:attr to an "
        "Assigner")
    fixed_rate: Optional[float] = Field(None, gt=0.0, le=1.0, description="policy=fixed: the rate")
    params: dict[str, Any] = _params()

    @field_validator("policy")
    @classmethod
    def _policy(cls, v: str) -> str:
        return _check_component("assignment.policy", v)


class ChannelConfig(_Section):
    """How updates go up and models come down: encoded by a channel, priced by its exact bytes."""

    up: str = Field("none", description="the uplink (device updates): none (float32), fp16, quantize, topk, "
                    "randomk, sign, or an import path package.module:attr to a Channel")
    up_params: dict[str, Any] = _params()
    down: str = Field("none", description="the downlink (the submodel a device downloads): the same choices")
    down_params: dict[str, Any] = _params()

    @field_validator("up")
    @classmethod
    def _up(cls, v: str) -> str:
        return _check_component("channel.up", v)

    @field_validator("down")
    @classmethod
    def _down(cls, v: str) -> str:
        return _check_component("channel.down", v)


class DeadlineConfig(_Section):
    """Stragglers: when a round closes and what late devices do."""

    seconds: Optional[float] = Field(60.0, gt=0.0, description="round deadline; null = none")
    policy: Literal["drop", "partial", "wait"] = Field(
        "drop", description="drop late devices, train only the steps that fit (partial), or wait for K")


class TrainConfig(_Section):
    """Local training on a device: the client algorithm and its budget."""

    algorithm: str = Field("sgd", description="sgd (minibatch SGD), fedprox (SGD plus a proximal term, "
                           "params.mu), scaffold (SGD corrected by control variates kept per device and on "
                           "the server), or an import path package.module:attr to a ClientAlgorithm")
    params: dict[str, Any] = _params()
    epochs: int = Field(1, ge=1, description="local epochs over the device's shard")
    batch_size: int = Field(20, ge=1, description="minibatch size")
    lr: float = Field(0.05, gt=0.0, description="learning rate")
    momentum: float = Field(0.0, ge=0.0, lt=1.0, description="SGD momentum")
    weight_decay: float = Field(0.0, ge=0.0, description="L2 weight decay")
    batched: Literal["auto", "on", "off"] = Field(
        "off", description="train the devices of a host that share a submodel shape together (grouped kernels, "
        "else torch.func vmap): on; off: one by one; auto: per rate batched where a measurement at start finds "
        "it 1.15x faster. Results equal one by one within float tolerance; runs stay bit-identical on any "
        "number of hosts. On and auto: a rate whose batched training cannot be built trains one by one, and the "
        "manifest's info.unbatched says why")

    @field_validator("algorithm")
    @classmethod
    def _algorithm(cls, v: str) -> str:
        return _check_component("train.algorithm", v)

    @field_validator("batched", mode="before")
    @classmethod
    def _batched(cls, v: Any) -> Any:
        # YAML 1.1 reads a bare on/off as a boolean: take it as the word that was written.
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v


class StalenessConfig(_Section):
    """Asynchronous modes: how much an update that is t server steps stale still counts."""

    kind: Literal["constant", "polynomial", "hinge"] = Field(
        "polynomial", description="constant: 1; polynomial: (1 + t)^-a; hinge: 1 up to b steps, then 1 / (a (t - b) + 1)")
    a: float = Field(0.5, ge=0.0, description="polynomial: exponent; hinge: slope")
    b: int = Field(4, ge=0, description="hinge: steps of staleness with full weight")


class ServerConfig(_Section):
    """How the aggregated update moves the global model."""

    mode: Literal["sync", "fedbuff", "fedasync"] = Field(
        "sync", description="sync: rounds of selected devices (deadline, over-commitment); fedbuff: C devices train "
        "at once and the server steps every K arrivals, each weighted by its staleness; fedasync: every arrival is "
        "mixed in with weight alpha x staleness. In both asynchronous modes `rounds` counts server steps and the "
        "deadline section does not apply. With topology.gateways the mode is the cloud's: gateway rounds stay "
        "synchronous, and the cloud takes gateways' models as they arrive (fedasync: each; fedbuff: every K)")
    concurrency: Optional[int] = Field(None, ge=1, description="fedbuff, fedasync: C, devices training at once; "
                                       "null = selection.per_round x (1 + selection.overcommit)")
    buffer: Optional[int] = Field(None, ge=1, description="fedbuff: K, updates per server step; "
                                  "null = selection.per_round (with gateways: half the gateways)")
    alpha: float = Field(0.6, gt=0.0, le=1.0, description="fedasync: mixing weight of an arrival")
    staleness: StalenessConfig = StalenessConfig()
    poll_s: float = Field(10.0, gt=0.0, description="fedbuff, fedasync: simulated seconds before a training slot "
                          "that found no available device tries again (with gateways: a gateway whose devices sent "
                          "nothing, in an attempt that took no time)")

    optimizer: str = Field("fedavg", description="server optimizer over the per-element mean delta: fedavg, "
                           "fedavgm, fedadam, fedyogi, or an import path package.module:attr to a ServerOptimizer")
    params: dict[str, Any] = _params()
    lr: float = Field(1.0, gt=0.0, description="server learning rate")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="fedavgm: momentum")
    beta1: float = Field(0.9, ge=0.0, lt=1.0, description="fedadam, fedyogi: first-moment decay")
    beta2: float = Field(0.99, ge=0.0, lt=1.0, description="fedadam, fedyogi: second-moment decay")
    eps: float = Field(1e-3, gt=0.0, description="fedadam, fedyogi: adaptivity")
    weighting: Literal["uniform", "samples"] = Field(
        "uniform", description="each element's mean over the devices that held it: uniform (HeteroFL) "
        "or weighted by samples trained")

    @field_validator("optimizer")
    @classmethod
    def _optimizer(cls, v: str) -> str:
        return _check_component("server.optimizer", v)


class EvalConfig(_Section):
    """Test accuracy of the global model and the submodels."""

    every: int = Field(1, ge=1, description="evaluate every E rounds (and the last)")
    per_rate: bool = Field(True, description="also evaluate each rate's submodel")
    batch_size: int = Field(512, ge=1, description="evaluation batch size")
    max_samples: Optional[int] = Field(None, ge=1, description="evaluate on the first N test samples; null = all")


class RuntimeConfig(_Section):
    """Where and how the simulation runs on Ray."""

    address: Optional[str] = Field(None, description="Ray address; null starts a local instance")
    num_cpus: Optional[int] = Field(None, ge=1, description="CPUs for a local Ray instance")
    hosts: Optional[int] = Field(None, ge=1, description="device-host actors; null = one per CPU "
                                 "(hosts_per: cpu) or per node (hosts_per: node)")
    hosts_per: Literal["cpu", "node"] = Field("cpu", description="pooled: one device host per CPU of the "
                                              "cluster, spread over its nodes, or one per node, pinned to it")
    placement: Literal["pooled", "dedicated"] = Field(
        "pooled", description="many devices per host actor, or one actor per device (throttled, capped)")
    clock: Literal["virtual", "realtime"] = Field(
        "virtual", description="time from the cost model, or measured (dedicated only)")
    time_scale: float = Field(0.01, gt=0.0, description="realtime: wall seconds per simulated second")
    torch_threads: int = Field(1, ge=1, description="torch threads per host (numbers depend on it)")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="where device hosts train and the coordinator evaluates: cuda (GPU nodes, a "
        "fraction of a GPU per host), cpu, or auto (cuda when the cluster has GPUs and placement is pooled)")
    gpus_per_host: float = Field(0.2, gt=0.0, le=1.0, description="cuda: the share of a GPU each device host "
                                 "reserves (and the share of its memory it may use); 0.2: four beside the evaluator")
    coordinator_restarts: int = Field(3, ge=0, description="times a lost coordinator is restarted from "
                                      "the last checkpoint before the run fails")


class OutputConfig(_Section):
    """The run directory."""

    dir: str = Field("runs", description="parent of run directories (--out overrides)")
    checkpoint_every: int = Field(5, ge=1, description="checkpoint every N rounds (and the last)")
    plots: bool = Field(True, description="write the report's figures at the end")
    tensorboard: bool = Field(False, description="log every round's scalars as TensorBoard events under "
                              "<run_dir>/tensorboard/ (--tensorboard switches it on; needs the tensorboard package)")


class Scenario(_Section):
    """A whole scenario."""

    name: str = Field("scenario", min_length=1, max_length=MAX_NAME,
                      description="names the run directory: letters, digits and . _ - = , + [ ]")
    seed: int = Field(0, ge=0, description="every random stream derives from it")
    rounds: int = Field(20, ge=1, description="rounds to run")
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    compression: CompressionConfig = CompressionConfig()
    channel: ChannelConfig = ChannelConfig()
    fleet: FleetConfig = FleetConfig()
    selection: SelectionConfig = SelectionConfig()
    assignment: AssignmentConfig = AssignmentConfig()
    deadline: DeadlineConfig = DeadlineConfig()
    train: TrainConfig = TrainConfig()
    server: ServerConfig = ServerConfig()
    eval: EvalConfig = EvalConfig()
    energy: EnergyConfig = EnergyConfig()
    topology: TopologyConfig = TopologyConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    output: OutputConfig = OutputConfig()

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.fullmatch(v):
            raise ValueError(f"{v!r}: use letters, digits and . _ - = , + [ ] (starting with a letter or "
                             f"digit); it names the run directory")
        return v

    @model_validator(mode="after")
    def _cross(self) -> "Scenario":
        if self.assignment.policy == "fixed" and self.assignment.fixed_rate is None:
            raise ValueError("assignment.fixed_rate: required when assignment.policy is 'fixed'")
        if self.assignment.policy == "fit-deadline" and self.deadline.seconds is None:
            raise ValueError("assignment.policy: 'fit-deadline' needs deadline.seconds")
        # which modes, topologies, placements and clocks combine with which features: one table
        compat.check(self)
        self._cross_energy()
        self._cross_topology()
        if self.selection.per_round > self.fleet.devices and self.fleet.trace is None:
            raise ValueError(
                f"selection.per_round: {self.selection.per_round} exceeds fleet.devices ({self.fleet.devices})"
            )
        return self

    def _cross_energy(self) -> None:
        e = self.energy
        if self.selection.policy == "energy-aware" and not e.batteries:
            raise ValueError("selection.policy: 'energy-aware' weighs battery levels; set energy.batteries: true")
        if e.charging:
            known = self.fleet.catalogue()
            for name in e.charging:
                if name not in known:
                    raise ValueError(f"energy.charging: {name!r} is not a device class (known: "
                                     f"{', '.join(sorted(known))})")
        for name, c in e.charging.items():
            try:
                c.hourly()
            except ValueError as err:
                raise ValueError(f"energy.charging.{name}: {err}") from None

    def _cross_topology(self) -> None:
        t = self.topology
        if not t.gateways:
            return
        if self.fleet.trace is None and t.gateways > self.fleet.devices:
            raise ValueError(f"topology.gateways: {t.gateways} gateways for {self.fleet.devices} devices")
        if t.attach == "trace" and self.fleet.trace is None:
            raise ValueError("topology.attach: 'trace' takes each device's gateway from fleet.trace's gateway column; "
                             "set fleet.trace")
        known = self.fleet.catalogue()
        if t.gateway_class not in known:
            raise ValueError(f"topology.gateway_class: {t.gateway_class!r} is not a device class (known: "
                             f"{', '.join(sorted(known))})")

    def to_yaml(self) -> str:
        """The resolved scenario as YAML (every default written out)."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _format_error(err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown field"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    elif first["type"] not in ("extra_forbidden", "missing"):
        given = first.get("input")
        if isinstance(given, (bool, int, float, str)) or given is None:
            text = repr(given)
            msg = f"{msg} (got {text if len(text) <= 40 else text[:37] + '...'})"
    if ":" in msg.split(" ")[0] and not loc:
        return msg
    more = f" (and {len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{loc}: {msg}{more}" if loc else f"{msg}{more}"


def _parse_value(text: str, key: str = "") -> Any:
    """An override value is parsed as (strict) YAML, so `--set model.rates=[1,0.5]` works."""
    try:
        return parse_value(text, f"--set {key}")
    except BadInput as err:
        raise ScenarioError(str(err)) from None


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides to a raw scenario dict (returns a new dict)."""
    out = _deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ScenarioError(f"--set {item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise ScenarioError(f"--set {item!r}: empty key")
        node = out
        for p in parts[:-1]:
            child = node.get(p)
            if child is None:
                child = {}
                node[p] = child
            if not isinstance(child, dict):
                raise ScenarioError(f"--set {key}: {p} is not a section")
            node = child
        node[parts[-1]] = _parse_value(value, key.strip())
    return out


def _deepcopy(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _deepcopy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deepcopy(v) for v in d]
    return d


def parse_scenario(raw: Any, overrides: Optional[list[str]] = None) -> Scenario:
    """Validate a raw mapping (plus overrides) into a Scenario, or raise ScenarioError."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ScenarioError("scenario: top level must be a mapping of fields")
    raw = apply_overrides(raw, overrides or [])
    try:
        return Scenario.model_validate(raw)
    except ValidationError as err:
        raise ScenarioError(_format_error(err)) from None


def load_scenario(path: str | Path, overrides: Optional[list[str]] = None) -> Scenario:
    """Read a YAML scenario with a safe loader and validate it."""
    p = Path(path)
    if not p.exists():
        raise ScenarioError(f"{p}: no such scenario file")
    try:
        raw = read_yaml_file(p)
    except BadInput as err:
        raise ScenarioError(str(err)) from None
    if raw is None:
        raise ScenarioError(f"{p}: empty scenario file (give at least a name; `raysim reference` lists every field)")
    return parse_scenario(raw, overrides)
