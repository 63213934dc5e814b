"""`infer_spec`: the channel groups of any plain torch module, and a builder of its submodels.

    >>> model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Flatten(),
    ...                       nn.Linear(16 * 8 * 8, 10))
    >>> spec = infer_spec(model, (1, 8, 8), 10)
    >>> spec.groups
    {'0': 16}
    >>> spec.axes["3.weight"]
    (None, Span(parts=(Block(group='0', block=64),)))
    >>> sub = spec.build({"0": 4}, rate=0.25)   # a new module, 4 channels wide
    >>> sub(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 10])

The analysis runs once; `builder(sizes, rate)` then makes a new module of the same
architecture at those group widths: every leaf layer is rebuilt narrower by its own
constructor, in the order the module registered its layers (so under one seed the global
model is initialised exactly as the module itself was), the traced graph is copied with
literal view/reshape widths rewritten, and, at rates below 1 with `scaler`, HeteroFL's scaler
divides activations by the rate in training. A module that places raysim's `Scaler` itself
(the built-in families) keeps its scalers where they are, rebuilt at the rate; any other
module gets one after every conv or linear whose inputs and outputs both shrink (the ones that
sum over fewer inputs than in the global model; the first layer's inputs and the classifier's
outputs never shrink). Parameters keep the global module's names, so plans, `extract`,
`remap`, the strategies and the cost model work on the result unchanged.
"""

from __future__ import annotations

import copy
import operator
from dataclasses import dataclass, replace
from typing import Any, Mapping, Optional, Sequence, cast

import numpy as np
import torch
from torch import fx, nn

from raysim.models.base import ModelSpec, Scaler
from raysim.models.span import Axis, Span, axis_width, span_indices
from raysim.slicing.analysis import Analysis, BuildOptions, LayerRule
from raysim.slicing.layers import narrowed_num_groups
from raysim.slicing.layout import Layout, dim_size
from raysim.slicing.walk import EXAMPLE_BATCH, walk

SCALER_NAME = "rate_scaler"


@dataclass(frozen=True)
class LayerPlan:
    """A leaf layer of the sliced model: its rule and the axes of its constructor widths."""

    rule: LayerRule
    axes: tuple[Axis, ...]
    sizes: tuple[int, ...]  # the same widths in the global model


@dataclass(frozen=True)
class Dims:
    """The axes of a tensor's dimensions and their global sizes."""

    axes: tuple[Axis, ...]
    sizes: tuple[int, ...]

    def widths(self, sizes: Mapping[str, int]) -> tuple[int, ...]:
        return tuple(axis_width(a, sizes, n) for a, n in zip(self.axes, self.sizes))


@dataclass(frozen=True)
class Slicing:
    """Everything the builder needs, worked out once by `infer_spec`."""

    graph: fx.Graph
    class_name: str
    # Every leaf layer the graph calls, in graph order, as a weightless (meta-device) copy:
    # rebuilding needs a layer's settings, not its weights, and the spec travels to every
    # worker process.
    leaves: dict[str, nn.Module]
    groups: dict[str, int]
    layers: dict[str, LayerPlan]
    attrs: dict[str, Dims]      # tensors the graph reads by name (parameters and buffers)
    attr_values: dict[str, torch.Tensor]
    param_names: frozenset[str]  # which of them are parameters (the rest are buffers)
    reshapes: dict[str, tuple[Dims, tuple[bool, ...]]]  # view/reshape nodes: output dims, batch sizes
    splits: dict[str, Dims]     # split nodes of a shrinking dimension: their pieces
    literals: dict[str, list[tuple["int | str", str, Dims, object]]]  # see `LiteralUse`
    scaled: tuple[str, ...]     # layers followed by an inserted rate scaler
    options: BuildOptions


def _dims(ctx: Analysis, layout: Layout) -> Dims:
    return Dims(tuple(ctx.atoms.axis(d) for d in layout), tuple(dim_size(d) for d in layout))


def _settle(ctx: Analysis, group_names: Mapping[str, str]) -> None:
    """Pin the classes no layer created, then name the groups."""
    ctx.atoms.pin_orphans()
    ctx.atoms.name_groups(_given_names(ctx, group_names))


def _given_names(ctx: Analysis, group_names: Mapping[str, str]) -> dict[int, str]:
    """The atom of each group the caller names by a layer whose outputs carry it."""
    out: dict[int, str] = {}
    for path, name in group_names.items():
        use = ctx.layers.get(path)
        dim = use.dims[-1] if use is not None and use.dims else None
        if dim is None or not ctx.atoms.plain(dim):
            raise ValueError(f"group_names: '{path}' is not a layer whose outputs are one channel group")
        root = ctx.atoms.find(ctx.atoms.canonical(dim)[0].atom)  # type: ignore[arg-type]
        if root in out or name in out.values():
            raise ValueError(f"group_names: '{path}' -> '{name}' names a group or a name twice")
        out[root] = name
    return out


def _slicing(module: nn.Module, input_shape: tuple[int, ...], opts: BuildOptions,
             group_names: Mapping[str, str]) -> tuple[Slicing, dict[str, tuple[Axis, ...]], tuple[int, ...]]:
    """The builder's recipe, every parameter's axes, and the output shape of the example."""
    w = walk(module, input_shape)
    ctx = w.analysis
    _settle(ctx, group_names)
    layers = {}
    for path, use in ctx.layers.items():
        d = _dims(ctx, use.dims)
        layers[path] = LayerPlan(use.rule, d.axes, d.sizes)
    attrs = {k: _dims(ctx, v) for k, v in {**ctx.params, **ctx.buffers}.items() if k not in _layer_params(ctx)}
    reshapes = {k: (_dims(ctx, r.out), r.batch) for k, r in ctx.reshapes.items()}
    splits = {k: _dims(ctx, u.pieces) for k, u in ctx.splits.items()}
    literals = {k: [(u.at, u.kind, _dims(ctx, u.dims), u.value) for u in uses] for k, uses in ctx.literals.items()}
    # Registration order, not call order: a layer's constructor draws from torch's generator,
    # and the module drew in this order (a shortcut called before the conv registered first).
    order = {p: i for i, (p, _) in enumerate(module.named_modules())}
    called = dict.fromkeys(str(n.target) for n in w.gm.graph.nodes if n.op == "call_module")
    leaves = {p: _weightless(w.gm.get_submodule(p)) for p in sorted(called, key=lambda p: order.get(p, len(order)))}
    declared = any(isinstance(m, Scaler) for m in leaves.values())
    scaled = () if declared else tuple(
        p for p, use in ctx.layers.items()
        if use.io is not None and ctx.atoms.sliced(use.io[0]) and ctx.atoms.sliced(use.io[1]))
    params = dict(w.gm.named_parameters())
    values = {k: (params[k] if k in params else w.gm.get_buffer(k)).detach().clone() for k in attrs}
    graph = copy.deepcopy(w.gm.graph)
    for node in graph.nodes:
        # The analysis is done with the shapes and module stacks in the meta. Dropped: the spec
        # travels to every worker, and a pickled memory format names the driver's own module
        # (`__main__` of a script that imports torch), which no worker can import.
        node.meta = {}
    sl = Slicing(graph, w.gm.__class__.__name__, leaves, ctx.atoms.groups_used(),
                 layers, attrs, values, frozenset(k for k in attrs if k in params), reshapes, splits, literals, scaled, opts)
    return sl, {k: _dims(ctx, v).axes for k, v in ctx.params.items()}, tuple(w.output_shape)


def _weightless(m: nn.Module) -> nn.Module:
    """A copy of a layer with its tensors on the meta device (no storage); the user's module
    is left as it is."""
    return copy.deepcopy(m).to("meta")


def _layer_params(ctx: Analysis) -> set[str]:
    prefixes = tuple(f"{p}." for p in ctx.layers)
    return {k for k in ctx.params if k.startswith(prefixes)}


def _owner(root: nn.Module, path: str) -> tuple[nn.Module, str]:
    """The module that holds `path` (plain containers made on the way) and the last name."""
    *parents, leaf = path.split(".")
    node = root
    for p in parents:
        if not hasattr(node, p):
            node.add_module(p, nn.Module())
        node = getattr(node, p)
    return node, leaf


def _prefix_index(dims: Dims, sizes: Mapping[str, int], widths: Mapping[str, int]) -> tuple:
    """The first channels of every group, as an index into a global-sized tensor."""
    keep = {g: np.arange(n, dtype=np.int64) for g, n in sizes.items()}
    out: list = []
    for a in dims.axes:
        if a is None:
            out.append(slice(None))
        elif isinstance(a, Span):
            out.append(torch.from_numpy(span_indices(a, keep, widths)))
        else:
            out.append(slice(0, sizes[a]))
    return tuple(out)


def _rewrite_shape(node: fx.Node, widths: tuple[int, ...], dims: Dims, batch: tuple[bool, ...]) -> None:
    """Write the submodel's sizes into a view/reshape target: a shrinking dimension gets its
    width; a dimension kept whole whose size is computed at run time gets its global size (a
    size read from a shrinking dimension, `c // heads`, would otherwise size a dimension kept
    whole), except one computed from the batch size; literal sizes of whole dimensions and -1
    stay."""
    def fix(shape: list) -> list:
        out = []
        for k, (s, w, a, n) in enumerate(zip(shape, widths, dims.axes, dims.sizes)):
            if isinstance(s, int) and s == -1:
                out.append(s)
            elif a is not None:
                out.append(w)
            elif isinstance(s, fx.Node) and not (k < len(batch) and batch[k]):
                out.append(n)
            else:
                out.append(s)
        return out + list(shape[len(out):])

    if "shape" in node.kwargs or "size" in node.kwargs:
        key = "shape" if "shape" in node.kwargs else "size"
        node.kwargs = {**node.kwargs, key: tuple(fix(list(cast(Sequence[Any], node.kwargs[key]))))}  # a shape
        return
    args = list(node.args)
    if len(args) == 2 and isinstance(args[1], (tuple, list)):
        node.args = (args[0], tuple(fix(list(args[1]))))
    else:
        node.args = (args[0], *fix(args[1:]))


def _rewrite_split(node: fx.Node, widths: list[int]) -> None:
    """Write the submodel's piece widths into a split's sizes (one size or a list)."""
    for key in ("split_size_or_sections", "split_size"):
        if key in node.kwargs:
            node.kwargs = {**node.kwargs, key: widths}
            return
    node.args = (node.args[0], widths, *node.args[2:])


def _literal(kind: str, dims: Dims, value: object, sizes: Mapping[str, int]) -> object:
    """The submodel's value of a literal argument that follows channel widths."""
    widths = dims.widths(sizes)
    if kind == "width":
        return widths[0]
    if kind == "shape":
        return tuple(widths)
    if kind == "groups":
        return narrowed_num_groups(int(value), dims.sizes[0], widths[0])  # type: ignore[call-overload]
    if kind == "stop":
        assert isinstance(value, slice)
        return slice(value.start, widths[0], value.step)
    if kind == "expand":  # literal sizes: a width where the dimension shrinks, else as written
        return tuple(w if isinstance(v, int) and v != -1 and a is not None else v
                     for v, w, a in zip(value, widths, dims.axes))  # type: ignore[call-overload]
    raise AssertionError(f"literal kind {kind}")


def _rewrite_literal(node: fx.Node, at: "int | str", value: Any) -> None:
    """Write `value` into a node's argument `at`: a position, a keyword, "*" for the
    arguments after the first, or a position inside an indexing tuple ("stop")."""
    if isinstance(at, str):
        if at == "*":
            node.args = (node.args[0], *value)
        else:
            node.kwargs = {**node.kwargs, at: value}
    elif node.target is operator.getitem:
        index = node.args[1]
        if isinstance(index, tuple):
            index = index[:at] + (value,) + index[at + 1:]
        else:
            index = value
        node.args = (node.args[0], index)
    else:
        node.args = node.args[:at] + (value,) + node.args[at + 1:]


def build(s: Slicing, sizes: Mapping[str, int], rate: float) -> nn.Module:
    """The sliced model at group widths `sizes` (see the module docstring)."""
    root = nn.Module()
    opts = replace(s.options, rate=float(rate))
    for path, template in s.leaves.items():
        lp = s.layers.get(path)
        if lp is None:  # a layer without widths (an activation, a pooling): copied
            owner, leaf = _owner(root, path)
            owner.add_module(leaf, copy.deepcopy(template))
            continue
        widths = Dims(lp.axes, lp.sizes).widths(sizes)
        owner, leaf = _owner(root, path)
        owner.add_module(leaf, lp.rule.rebuild(template, widths, opts))
    for name, dims in s.attrs.items():
        value = s.attr_values[name][_prefix_index(dims, sizes, s.groups)].clone()
        owner, leaf = _owner(root, name)
        if name in s.param_names:
            owner.register_parameter(leaf, nn.Parameter(value))
        else:
            owner.register_buffer(leaf, value)
    graph = copy.deepcopy(s.graph)
    by_name = {n.name: n for n in graph.nodes}
    for name, (dims, batch) in s.reshapes.items():
        _rewrite_shape(by_name[name], dims.widths(sizes), dims, batch)
    for name, pieces in s.splits.items():
        _rewrite_split(by_name[name], list(pieces.widths(sizes)))
    for name, uses in s.literals.items():
        for at, kind, dims, literal in uses:
            _rewrite_literal(by_name[name], at, _literal(kind, dims, literal, sizes))
    if s.options.scaler and rate < 1.0 and s.scaled:
        root.add_module(SCALER_NAME, Scaler(rate))
        scaled = set(s.scaled)
        for node in list(graph.nodes):
            if node.op == "call_module" and node.target in scaled:
                with graph.inserting_after(node):
                    out = graph.call_module(SCALER_NAME, (node,))
                node.replace_all_uses_with(out, delete_user_cb=lambda user: user is not out)  # noqa: B023 - used at once
    return _registration_order(fx.GraphModule(root, graph, s.class_name), root)


def _registration_order(gm: fx.GraphModule, root: nn.Module) -> fx.GraphModule:
    """fx installs the layers in the order the graph calls them; put them back in the order
    the module registered them, which is the order of its parameters (what the server, the
    strategies and the checkpoints iterate)."""
    for name, src in root.named_modules():
        dst = gm.get_submodule(name)
        keys = [k for k in src._modules if k in dst._modules]
        keys += [k for k in dst._modules if k not in keys]
        reordered = [(k, dst._modules[k]) for k in keys]
        dst._modules.clear()
        dst._modules.update(reordered)
    return gm


def infer_spec(module: nn.Module, input_shape: tuple[int, ...], num_classes: int,
               name: Optional[str] = None, *, scaler: bool = True, static_bn: bool = True,
               group_names: Optional[Mapping[str, str]] = None) -> ModelSpec:
    """The width-scalable family of a plain torch module, its groups derived by tracing.

    `input_shape` is one sample's shape (no batch dimension); the module must map
    `(N, *input_shape)` to `(N, num_classes)`. `scaler` inserts HeteroFL's training-time
    scaler in submodels; `static_bn` rebuilds BatchNorm without running statistics (raysim
    recomputes them before evaluation). `group_names` names groups by a layer whose outputs
    carry each (`{"features.0": "conv0"}`); those come first in `spec.groups`, in that order,
    and the others are named after the module that creates them. Raises `SlicingError` (one
    line naming the module and the op) for a model that cannot be sliced: data-dependent
    control flow or an unknown op.

        spec = infer_spec(MyNet(), (6, 64), num_classes=8)
        plan = make_strategy("rolling").plan(spec, 0.5, round_idx, device_id, params, seed)
        sub = spec.build(plan.sizes(), plan.rate)
    """
    input_shape = tuple(int(n) for n in input_shape)
    s, param_axes, out_shape = _slicing(module, input_shape, BuildOptions(static_bn=static_bn, scaler=scaler),
                                        group_names or {})
    if out_shape != (EXAMPLE_BATCH, num_classes):
        raise ValueError(f"model: {type(module).__name__} maps a batch of {EXAMPLE_BATCH} to shape "
                         f"{out_shape}, expected ({EXAMPLE_BATCH}, {num_classes}) for {num_classes} classes")
    with torch.random.fork_rng(devices=[]):
        names = [k for k, _ in build(s, s.groups, 1.0).named_parameters()]
    missing = [k for k in names if k not in param_axes]
    if missing:  # a rule forgot a parameter: a bug here, not in the user's model
        raise AssertionError(f"slicing: no axes for parameters {missing}")
    axes = {k: param_axes[k] for k in names}

    def builder(sizes: Mapping[str, int], rate: float) -> nn.Module:
        return build(s, sizes, rate)

    return ModelSpec(name or type(module).__name__.lower(), dict(s.groups), axes, builder,
                     input_shape, int(num_classes))
