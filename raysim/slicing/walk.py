"""Trace a module with torch.fx and follow its channels through the graph.

`symbolic_trace` turns the forward into a graph of leaf layers (torch.nn modules) and tensor
ops, and refuses Python control flow that depends on tensor values, which is exactly what a
submodel cannot be derived for. `ShapeProp` runs the graph once on an example batch to learn
every tensor's shape; the walk then applies a rule per node (`raysim.slicing.layers`,
`raysim.slicing.ops`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from raysim.models.base import Scaler
from raysim.slicing.analysis import Analysis
from raysim.slicing.concrete import ConcreteTracer
from raysim.slicing.errors import SlicingError
from raysim.slicing.layers import is_leaf, rule_for
from raysim.slicing.layout import Dim, Layout, Seg, fixed, fixed_layout
from raysim.slicing.ops import OTHER, OpCall, Other, Parts, Unsupported, Value, op_name, rule_of

# An example batch of 2: one sample would make BatchNorm refuse a 1x1 map in training mode.
EXAMPLE_BATCH = 2


class _Tracer(ConcreteTracer):
    """The concrete tracer, remembering the innermost module whose forward failed to trace.
    Leaves: torch's own layers, raysim's `Scaler` (its forward reads `self.training`, which
    a trace would freeze) and subclasses of known layers (`raysim.slicing.layers.is_leaf`)."""

    def __init__(self, example: torch.Tensor) -> None:
        super().__init__(example, lambda m, x: isinstance(m, Scaler) or is_leaf(m, x))

    def call_module(self, m: nn.Module, forward: Any, args: Any, kwargs: Any) -> Any:
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception as e:
            if not hasattr(e, "slicing_path"):
                e.slicing_path = self.path_of_module(m)  # type: ignore[attr-defined]
            raise


# torch.fx patches nn.Module.__call__ for the whole process while it traces, so a module run
# by another thread meanwhile would be traced instead (sweeps build their points in threads).
# Tracing, and whatever runs modules beside it at set-up (the cost model), hold this lock.
TRACE_LOCK = threading.RLock()


def trace(module: nn.Module, input_shape: tuple[int, ...]) -> fx.GraphModule:
    """The module's graph, specialised on an example input of shape `(2, *input_shape)` (see
    `raysim.slicing.concrete`); Python control flow on tensor values is a `SlicingError`."""
    tracer = _Tracer(torch.zeros((EXAMPLE_BATCH, *input_shape)))
    try:
        with TRACE_LOCK:
            graph = tracer.trace(module)
    except fx.proxy.TraceError as e:
        raise SlicingError(getattr(e, "slicing_path", ""), "Python control flow on a tensor",
                           "data-dependent") from None
    except Exception as e:  # fx gives many kinds; the one line is what the user needs
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SlicingError(getattr(e, "slicing_path", ""), "code torch.fx cannot trace", first) from None
    return fx.GraphModule(tracer.root, graph, module.__class__.__name__)


def _shapes(gm: fx.GraphModule, input_shape: tuple[int, ...]) -> None:
    """Store every node's output shape in its meta (`tensor_meta`)."""
    was = [m.training for m in gm.modules()]
    gm.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            ShapeProp(gm).propagate(torch.zeros((EXAMPLE_BATCH, *input_shape)))
    finally:
        for m, t in zip(gm.modules(), was):
            m.training = t


def _out_shape(node: fx.Node) -> Optional[tuple[int, ...]]:
    meta = node.meta.get("tensor_meta")
    return tuple(int(n) for n in meta.shape) if isinstance(meta, TensorMetadata) else None


def _path(node: fx.Node) -> str:
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack") or {}
    return next(reversed(stack)) if stack else ""


@dataclass
class Walk:
    """The traced graph and what following its channels learned."""

    gm: fx.GraphModule
    analysis: Analysis
    output_shape: tuple[int, ...]


def _attr_layout(ctx: Analysis, name: str, t: torch.Tensor) -> Layout:
    # A tensor read by name (a layer-scale vector, a mask) takes its groups from what it
    # meets; a dimension that meets no channel stays whole (`Atoms.pin_orphans`).
    dims: list[Dim] = []
    for d, n in enumerate(t.shape):
        dims.append(fixed(n) if n == 1 else (Seg(ctx.atoms.new(n, f"{name}@{d}", layer=False), int(n)),))
    return tuple(dims)


def _tensors_in(x: Any, values: dict[fx.Node, Value]) -> list[Layout]:
    if isinstance(x, fx.Node):
        v = values[x]
        if isinstance(v, Parts):
            return list(v.layouts)
        return [] if isinstance(v, Other) else [v]
    if isinstance(x, (tuple, list)):
        return [t for a in x for t in _tensors_in(a, values)]
    if isinstance(x, dict):
        return [t for a in x.values() for t in _tensors_in(a, values)]
    return []


def walk(module: nn.Module, input_shape: tuple[int, ...]) -> Walk:
    """Trace `module` and follow its channels from an input of shape `(N, *input_shape)`."""
    with TRACE_LOCK:
        gm = trace(module, input_shape)
        _shapes(gm, input_shape)
    ctx = Analysis()
    values: dict[fx.Node, Value] = {}

    def value(a: Any) -> Value:
        return values[a] if isinstance(a, fx.Node) else OTHER

    output_shape: tuple[int, ...] = ()
    placeholders = 0
    for node in gm.graph.nodes:
        shape = _out_shape(node)
        path = _path(node)
        if node.op == "placeholder":
            placeholders += 1
            if placeholders > 1 and not node.args:  # an argument without a default
                raise SlicingError("", f"a second input '{node.target}'", "one input tensor only")
            values[node] = fixed_layout(shape or ()) if placeholders == 1 else OTHER
        elif node.op == "get_attr":
            t = gm
            for part in str(node.target).split("."):
                t = getattr(t, part)
            if not isinstance(t, torch.Tensor):
                values[node] = OTHER
                continue
            layout = _attr_layout(ctx, str(node.target), t)
            (ctx.params if isinstance(t, nn.Parameter) else ctx.buffers)[str(node.target)] = layout
            values[node] = layout
        elif node.op == "call_module":
            m = gm.get_submodule(str(node.target))
            layer_rule = rule_for(m)
            if layer_rule is None:
                raise SlicingError(path, f"nn.{type(m).__name__}", "unknown layer")
            x = value(node.args[0]) if node.args else OTHER
            if isinstance(x, Other) or len(node.args) > 1 or node.kwargs or shape is None:
                raise SlicingError(path, f"nn.{type(m).__name__}", "expects one tensor in and out")
            values[node] = layer_rule.propagate(ctx, path, m, x, shape)
        elif node.op in ("call_function", "call_method"):
            rule, why = rule_of(node)
            if why != "data-dependent" and not _tensors_in((node.args, node.kwargs), values):
                # Arithmetic on sizes, an assert, a tensor made from numbers: nothing to follow.
                values[node] = OTHER if shape is None else fixed_layout(shape)
                continue
            if rule is None:
                raise SlicingError(path, op_name(node), why)
            try:
                values[node] = rule(ctx, OpCall(node, value, shape))
            except Unsupported as e:
                raise SlicingError(path, op_name(node), e.reason) from None
        elif node.op == "output":
            outs = _tensors_in(node.args[0], values)
            for out in outs:  # the classifier's outputs never shrink
                ctx.atoms.pin_layout(out)
            meta = node.args[0].meta.get("tensor_meta") if isinstance(node.args[0], fx.Node) else None
            output_shape = tuple(meta.shape) if isinstance(meta, TensorMetadata) else ()
    return Walk(gm, ctx, output_shape)
