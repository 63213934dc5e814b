"""Names to objects: the one place a scenario's component names become Python objects.

A scenario names a component either by a built-in short name (`static`, `fedadam`) or by an
import path `package.module:attr` (`mylab.models:TinyNet`). The component's own parameters
come from the section's `params:` mapping and are validated by the component's own pydantic
model: a class's `Params`, or else one derived from its signature. Errors are one line naming
the scenario key (`ScenarioError`).

    >>> cls = resolve("compression.strategy", "rolling")
    >>> strategy = instantiate("compression.strategy", cls, {})
"""

from __future__ import annotations

import functools
import importlib
import inspect
import typing
from typing import Any, Callable, Literal, Mapping, Optional, cast

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from raysim.errors import PluginError, ScenarioError, gist, is_builtin, plugin_name

CHANNELS = {
    "none": "raysim.channels.codecs:Dense",
    "fp16": "raysim.channels.codecs:FP16",
    "quantize": "raysim.channels.codecs:Quantize",
    "topk": "raysim.channels.codecs:TopK",
    "randomk": "raysim.channels.codecs:RandomK",
    "sign": "raysim.channels.codecs:Sign",
}

SERVER_OPTIMIZERS = {
    "fedavg": "raysim.server.optimizers:FedAvg",
    "fedavgm": "raysim.server.optimizers:FedAvgM",
    "fedadam": "raysim.server.optimizers:FedAdam",
    "fedyogi": "raysim.server.optimizers:FedYogi",
}

# Built-in short names per scenario key, as import paths (resolved lazily: naming a built-in
# imports only its own module). Plug-ins go through exactly the same resolution.
BUILTINS: dict[str, dict[str, str]] = {
    "model.arch": {
        "cnn": "raysim.models.cnn:cnn_spec",
        "mlp": "raysim.models.mlp:mlp_spec",
        "preresnet18": "raysim.models.preresnet:preresnet18_spec",
        "mobilenetv3": "raysim.models.mobilenet:mobilenetv3_spec",
    },
    "data.dataset": {
        "synthetic": "raysim.data.load:synthetic",
        "har": "raysim.data.load:har",
        "digits": "raysim.data.load:digits",
        "mnist": "raysim.data.load:mnist",
        "fashion-mnist": "raysim.data.load:fashion_mnist",
        "cifar10": "raysim.data.load:cifar10",
        "femnist": "raysim.data.load:femnist",
    },
    "compression.strategy": {
        "static": "raysim.submodel.strategies:Static",
        "rolling": "raysim.submodel.strategies:Rolling",
        "random": "raysim.submodel.strategies:Random",
        "magnitude": "raysim.submodel.strategies:Magnitude",
        "full": "raysim.submodel.strategies:Full",
    },
    "assignment.policy": {
        "fit-memory": "raysim.engine.assignment:FitMemory",
        "fit-deadline": "raysim.engine.assignment:FitDeadline",
        "fit-energy": "raysim.engine.assignment:FitEnergy",
        "fixed": "raysim.engine.assignment:Fixed",
    },
    "channel.up": CHANNELS,
    "channel.down": CHANNELS,  # the same built-ins either way
    "selection.policy": {
        "uniform": "raysim.engine.selection:Uniform",
        "energy-aware": "raysim.engine.selection:EnergyAware",
    },
    "train.algorithm": {
        "sgd": "raysim.client.algorithms:LocalSGD",
        "fedprox": "raysim.client.algorithms:FedProx",
        "scaffold": "raysim.client.algorithms:Scaffold",
    },
    "server.optimizer": SERVER_OPTIMIZERS,
    "topology.gateway_optimizer": SERVER_OPTIMIZERS,  # the same built-ins at the gateways
}


def is_import_path(name: str) -> bool:
    """`package.module:attr` (the only form that is not a built-in short name)."""
    mod, sep, attr = name.partition(":")
    return bool(sep and mod and attr)


def check_name(key: str, name: str) -> str:
    """Validate a component name without importing anything (for the scenario schema)."""
    if name in BUILTINS[key] or is_import_path(name):
        return name
    known = ", ".join(BUILTINS[key])
    raise ValueError(f"unknown name {name!r}: a built-in ({known}) or an import path package.module:attr")


def import_object(key: str, path: str) -> Any:
    """The object an import path `package.module:attr.sub` names, or a one-line ScenarioError."""
    mod_name, _, attr = path.partition(":")
    try:
        obj: Any = importlib.import_module(mod_name)
    except ModuleNotFoundError as err:
        if err.name and (mod_name == err.name or mod_name.startswith(err.name + ".")):
            raise ScenarioError(f"{key}: cannot import {path!r}: no module named {err.name!r} "
                                f"(is its directory on PYTHONPATH?)") from None
        raise ScenarioError(f"{key}: importing {mod_name!r} failed: {type(err).__name__}: {err}") from None
    except Exception as err:  # noqa: BLE001 - a plug-in's import error is the user's bad input
        raise ScenarioError(f"{key}: importing {mod_name!r} failed: {type(err).__name__}: {err}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ScenarioError(f"{key}: {path!r}: module {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def resolve(key: str, name: str) -> Any:
    """The object a scenario names at `key` (a built-in short name or an import path)."""
    target = BUILTINS[key].get(name)
    if target is None and not is_import_path(name):
        raise ScenarioError(f"{key}: unknown name {name!r}; built-ins: "
                            f"{', '.join(BUILTINS[key])}; or an import path package.module:attr")
    return import_object(key, target or name)


def params_model(obj: Any, skip: int = 0) -> type[BaseModel]:
    """The pydantic model that validates a component's parameters.

    A class's own `Params` when it declares one; otherwise one derived from the signature of
    the callable (a class's `__init__`), leaving out its first `skip` positional parameters
    (the contract's own arguments, e.g. a model factory's `input_shape, num_classes`).
    """
    own = getattr(obj, "Params", None) if isinstance(obj, type) else None
    if isinstance(own, type) and issubclass(own, BaseModel):
        return own
    fn = cast(Any, obj).__init__ if isinstance(obj, type) else obj  # a class: its (unbound) __init__
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return create_model("Params", __config__=ConfigDict(extra="allow"))
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - unresolvable annotations: accept any value
        hints = {}
    params = list(sig.parameters.values())
    if isinstance(obj, type) and params and params[0].name == "self":  # an unbound __init__
        params = params[1:]
    fields: dict[str, Any] = {}
    extra: Literal["allow", "forbid"] = "forbid"
    positional = 0
    for p in params:
        if p.kind is p.VAR_KEYWORD:
            extra = "allow"
            continue
        if p.kind is p.VAR_POSITIONAL:
            continue
        if positional < skip and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            positional += 1
            continue
        default = ... if p.default is p.empty else p.default
        fields[p.name] = (hints.get(p.name, Any), default)
    return create_model("Params", __config__=ConfigDict(extra=extra, arbitrary_types_allowed=True), **fields)


# Components whose parameters sit beside their name, not in their section's `params`.
BESIDE = {"channel.up": "channel.up_params", "channel.down": "channel.down_params",
          "topology.gateway_optimizer": "topology.gateway_params"}


def params_key(key: str) -> str:
    """Where a component's parameters live in a scenario: `compression.params` for
    `compression.strategy`; some beside their name (`channel.up_params`, `topology.gateway_params`)."""
    section, _, slot = key.rpartition(".")
    return BESIDE.get(key, f"{section}.params")


def validate_params(key: str, obj: Any, params: Mapping[str, Any], inherited: Optional[Mapping[str, Any]] = None,
                    skip: int = 0) -> dict[str, Any]:
    """Validate a component's parameters; returns keyword arguments for it.

    `params` are the scenario's `params:` for it. `inherited` are the section's own settings
    (e.g. `train.lr`), given to the component only where its parameters declare them.
    """
    model = params_model(obj, skip)
    declared = model.model_fields
    raw = {k: v for k, v in (inherited or {}).items() if k in declared}
    raw.update(params)
    try:
        valid = model.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        where = params_key(key) + (f".{loc}" if loc else "")
        msg = "unknown parameter" if first["type"] == "extra_forbidden" else first["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        raise ScenarioError(f"{where}: {msg} (for {describe(obj)})") from None
    out = {k: getattr(valid, k) for k in declared}
    out.update({k: v for k, v in (valid.model_extra or {}).items()})
    return out


def instantiate(key: str, obj: Any, params: Mapping[str, Any], inherited: Optional[Mapping[str, Any]] = None) -> Any:
    """A component instance: a class is built with its validated parameters; an instance is
    taken as it is (and then takes no parameters)."""
    if isinstance(obj, type):
        kwargs = validate_params(key, obj, params, inherited)
        try:
            return obj(**kwargs)
        except Exception as err:  # noqa: BLE001 - a component refusing its parameters is bad input
            if is_builtin(obj):
                raise ScenarioError(f"{key}: {describe(obj)}({_kwargs(kwargs)}) failed: {gist(err)}") from None
            raise PluginError(obj, key, f"raised {gist(err)} when built as {obj.__name__}({_kwargs(kwargs)}); "
                              f"expected an instance built from the parameters it declares") from None
    if params:
        raise ScenarioError(f"{key.rsplit('.', 1)[0]}.params: {describe(obj)} is an instance and takes no parameters")
    return obj


def bind(key: str, fn: Callable[..., Any], params: Mapping[str, Any], inherited: Optional[Mapping[str, Any]] = None,
         skip: int = 0) -> Callable[..., Any]:
    """A factory with its validated keyword parameters bound (model and dataset factories)."""
    if not callable(fn):
        raise ScenarioError(f"{key}: {describe(fn)} is not callable")
    kwargs = validate_params(key, fn, params, inherited, skip)
    return functools.partial(fn, **kwargs) if kwargs else fn


def describe(obj: Any) -> str:
    """`module:qualname` of a class or function (of an instance: of its class; of a partial: of
    its function), as `raysim.errors.plugin_name` names a component."""
    return plugin_name(obj)


def _kwargs(kwargs: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
