"""A torch.fx tracer that also runs the module on the example input, so Python code that reads
shapes (asserts on the input size, shape-dependent branches, `int()` of a size, unpacking a
shape, `len()`) is followed instead of refused.

Symbolic tracing records every op but knows no values, so `if x.shape[-1] % 2:` stops it.
Here every recorded node also gets its *concrete* value, computed from its inputs' concrete
values as the node is created. Where Python needs a value (a branch, `int`, `len`,
iteration), the tracer answers with the concrete one and the graph specialises on the example
input's shapes; the graph itself keeps the size arithmetic symbolic wherever Python let it
stay a proxy, so a narrower submodel computes its own sizes at run time. A branch on a
*tensor's values* (`if x.sum() > 0`) is still refused: it would specialise on data, not on
shapes.

Concrete values are computed on a private copy of the module in evaluation mode under
`no_grad` and a forked generator: tracing never moves the user's running statistics, their
parameters or torch's random state.

A module's `self.training`, read by a module that is traced through, is the graph module's
own `training` at run time: `F.dropout(x, p, training=self.training)` drops in training and
not in evaluation, as in the module. A Python branch on it (`if self.training:`) is taken as
in the module's mode when traced (training); `raysim.slicing.layers` makes the usual such
modules (drop-path) leaves, so they keep their branch.

    gm = concrete_trace(model, torch.zeros(2, 3, 32, 32))
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import math
from typing import Any, Callable, Iterator, Optional

import torch
from torch import fx, nn
from torch.fx.node import map_arg
from torch.fx.proxy import Attribute, Proxy, TraceError, TracerBase

try:  # fx patches nn.Module.__call__ while it traces; a concrete run must see torch unpatched
    from torch.fx._symbolic_trace import _maybe_revert_all_patches as _unpatched
except ImportError:  # pragma: no cover - an fx without it traces leaves as before
    _unpatched = contextlib.nullcontext  # type: ignore[assignment]


class _Concrete:
    """What the concrete proxies add to fx's: Python conversions answered from the value."""

    tracer: TracerBase  # always a ConcreteTracer (its `proxy` makes these)
    node: fx.Node

    def _value(self) -> Any:
        tracer = self.tracer
        assert isinstance(tracer, ConcreteTracer)
        return tracer.value_of(self.node)

    def _number(self, cast: Callable[[Any], Any]) -> Any:
        v = self._value()
        if isinstance(v, torch.Tensor):
            raise TraceError("a tensor's value used as a Python number")
        return cast(v)

    def __len__(self) -> int:
        v = self._value()
        if isinstance(v, torch.Tensor):
            raise TraceError("len() of a tensor")
        return len(v)

    def __int__(self) -> int:
        return self._number(int)

    def __index__(self) -> int:
        return self._number(int)

    def __float__(self) -> float:
        return self._number(float)

    def __ceil__(self) -> int:
        return self._number(math.ceil)

    def __floor__(self) -> int:
        return self._number(math.floor)

    def __round__(self, ndigits: Optional[int] = None) -> Any:
        return self._number(lambda v: round(v, ndigits))

    def __getattr__(self, k: str) -> Any:
        if k == "type" and isinstance(self._value(), torch.device):
            return self._value().type  # a string Python needs as one (`torch.autocast(x.device.type)`)
        return ConcreteAttribute(self, k)  # type: ignore[arg-type]


class ConcreteProxy(_Concrete, Proxy):
    pass


class ConcreteAttribute(_Concrete, Attribute):
    pass


class ConcreteTracer(fx.Tracer):
    """fx's tracer with a concrete value for every node (see the module docstring).
    `leaf(m, x)` decides which modules are leaves beyond torch's own, `m` being the module's
    private copy (safe to run) and `x` the concrete value of its first argument."""

    def __init__(self, example: torch.Tensor, leaf: Callable[[nn.Module, Any], bool]) -> None:
        super().__init__()
        self._example = example
        self._leaf = leaf
        self._values: dict[fx.Node, Any] = {}
        self._shadow: Optional[nn.Module] = None
        self._first_arg: Any = None

    # ------------------------------------------------------------------ values
    def value_of(self, node: fx.Node) -> Any:
        return self._values[node]

    def _evaluate(self, node: fx.Node) -> Any:
        args = map_arg(node.args, self.value_of)
        kwargs = map_arg(node.kwargs, self.value_of)
        if node.op == "placeholder":
            first = not any(n.op == "placeholder" for n in self._values)
            return self._example if first else (args[0] if args else None)
        if node.op == "get_attr":
            if node.target == "training":
                return self._modes[self.root]
            try:
                return _fetch(self._shadow, str(node.target))
            except AttributeError:  # a constant fx stored on the module being traced
                return _fetch(self.root, str(node.target))
        if node.op == "call_module":
            assert self._shadow is not None  # set for the length of `trace`
            return self._shadow.get_submodule(str(node.target))(*args, **kwargs)
        if node.op == "call_function":
            return node.target(*args, **kwargs)  # type: ignore[operator]  # a call_function target is callable
        if node.op == "call_method":
            return getattr(args[0], str(node.target))(*args[1:], **kwargs)
        return None

    # ------------------------------------------------------------------ fx hooks
    def trace(self, root: Any, concrete_args: Optional[dict[str, Any]] = None) -> fx.Graph:
        self._shadow = copy.deepcopy(root).eval()
        self._values.clear()
        self._modes = {m: m.training for m in root.modules()}
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            try:
                graph = super().trace(root, concrete_args=_defaults(root, concrete_args))
            finally:
                for m, mode in self._modes.items():
                    m.__dict__["training"] = mode
                self._shadow = None
        for node in graph.nodes:
            if node.op == "get_attr" and node.target == "training" and not node.users:
                graph.erase_node(node)
        return graph

    def create_args_for_root(self, root_fn: Any, is_module: bool, concrete_args: Any = None) -> Any:
        # The graph exists now: every module's `training` becomes the graph's own flag.
        flag = self.create_proxy("get_attr", "training", (), {})
        for m in self._modes:
            m.__dict__["training"] = flag
        return super().create_args_for_root(root_fn, is_module, concrete_args)

    def proxy(self, node: fx.Node) -> Proxy:
        return ConcreteProxy(node, self)

    def create_node(self, kind: str, target: Any, args: tuple, kwargs: dict, name: Optional[str] = None,
                    type_expr: Any = None) -> fx.Node:
        # Every node, including those fx makes without a proxy (a buffer passed as an argument).
        node = super().create_node(kind, target, args, kwargs, name, type_expr)
        if kind != "output":
            with _unpatched():
                self._values[node] = self._evaluate(node)
        return node

    def call_module(self, m: nn.Module, forward: Any, args: Any, kwargs: Any) -> Any:
        first = args[0] if args else None
        self._first_arg = self.value_of(first.node) if isinstance(first, Proxy) else first
        return super().call_module(m, forward, args, kwargs)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if super().is_leaf_module(m, module_qualified_name):
            return True
        assert self._shadow is not None  # set for the length of `trace`
        with _unpatched():
            return self._leaf(self._shadow.get_submodule(module_qualified_name), self._first_arg)

    def to_bool(self, obj: Proxy) -> bool:
        v = self.value_of(obj.node)
        if isinstance(v, torch.Tensor):
            raise TraceError("a branch on a tensor's value")
        return bool(v)

    def iter(self, obj: Proxy) -> Iterator:
        v = self.value_of(obj.node)
        if isinstance(v, torch.Tensor):
            raise TraceError("iteration over a tensor")
        return iter([obj[i] for i in range(len(v))])  # type: ignore[index]  # fx adds Proxy's __getitem__ at import


def _defaults(root: nn.Module, given: Optional[dict[str, Any]]) -> dict[str, Any]:
    """Every forward argument after the first that has a default is fixed to it (an optional
    attention mask left out is None): the model is sliced for one input tensor."""
    out = dict(given or {})
    params = list(inspect.signature(root.forward).parameters.values())[1:]
    for p in params:
        if p.default is not inspect.Parameter.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            out.setdefault(p.name, p.default)
    return out


def _fetch(root: Optional[nn.Module], target: str) -> Any:
    obj: Any = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj
