"""Grouped forward passes: one module's forward for S devices at once, layer by layer.

`raysim.client.batched` trains the devices that share a submodel shape together. Under `vmap` every
layer already becomes one batched kernel, but the dispatch costs more than the kernels of an
IoT-size submodel. A `GroupedProgram` writes the same batched forward directly, from the
module's fx graph: S devices' weights are stacked along a leading slot axis, and

- a convolution is one convolution with `groups = S * groups` over channel-stacked inputs,
- a linear layer is one batched matrix product (`baddbmm`),
- GroupNorm(G, C) is GroupNorm(S * G, S * C), its groups being contiguous channels,
- activations, scalers and pooling act per channel, so they run unchanged.

Autograd differentiates it like any module, so training the sum of the devices' losses gives
every device exactly its own gradient (nothing mixes slots). Activations live in one of two
layouts: channel-stacked `(B, S*F, ...)`, which convolutions, norms and pooling need, and
slot-major `(S, B, ...)`, which batched matrix products need; a value moves between them only
where a layer needs the other. A graph with anything else (a layer this module does not know,
a reshape by runtime sizes, a parameter read directly, a functional call with arguments it
does not know) gets no program: `compile_grouped` says why, and `raysim.client.batched` falls back to
`vmap`. Functional calls are bound to their parameters by name when the program is built, so
`F.max_pool2d(x, 2)` (which torch.fx records with all its keywords) and `F.avg_pool2d(x, 2,
stride=2)` alike take their grouped form; `check_grouped` compares a program's forward with
the module's once, and a program that fails or differs is not used.

    prog, why = compile_grouped(module, input_rank=4)
    logits = prog(stacked_params, stack_input(x, idx), slots)      # (S, B, classes)
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence, cast

import torch
from torch import fx, nn
from torch.nn import functional as F

from raysim.models.base import Scaler

Params = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class Act:
    """An activation of S devices: `t` is `(S, B, ...)` when `slots`, else `(B, S*F, ...)`;
    `rank` is one device's rank (batch dimension included)."""

    t: torch.Tensor
    slots: bool
    rank: int


def to_slots(a: Act, s: int) -> torch.Tensor:
    """The activation as `(S, B, F, ...)` (a view where the layout allows)."""
    if a.slots:
        return a.t
    t = a.t
    return t.reshape(t.shape[0], s, t.shape[1] // s, *t.shape[2:]).transpose(0, 1)


def to_channels(a: Act, s: int) -> torch.Tensor:
    """The activation as `(B, S*F, ...)`."""
    if not a.slots:
        return a.t
    t = a.t.transpose(0, 1)
    return t.reshape(t.shape[0], s * t.shape[2], *t.shape[3:])


# A step computes one node's activation from its inputs' (and the stacked parameters).
Step = Callable[[Sequence[Act], Params, int], Act]

# Modules without parameters that act on each element alone.
_ELEMENTWISE_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh,
                        nn.Hardswish, nn.Hardsigmoid, nn.Mish, nn.Identity, Scaler)
# Modules that act on each channel (dimension 1) alone, over the dimensions after it.
_CHANNEL_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
                    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
                    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
# Functions that act on each element alone, and the parameters each takes after its input (a
# call's positional and keyword arguments are bound to these names when the program is built;
# anything else is no grouped form, never an error when it runs).
_INPLACE = ("inplace",)
_ELEMENTWISE_FUNCTIONS: dict[Callable[..., Any], tuple[str, ...]] = {
    torch.relu: (), torch.sigmoid: (), torch.tanh: (), F.sigmoid: (), F.tanh: (),
    F.relu: _INPLACE, F.relu6: _INPLACE, F.silu: _INPLACE, F.hardswish: _INPLACE, F.hardsigmoid: _INPLACE,
    F.mish: _INPLACE, F.selu: _INPLACE, F.gelu: ("approximate",), F.leaky_relu: ("negative_slope", "inplace"),
    F.elu: ("alpha", "inplace"), F.celu: ("alpha", "inplace"), F.hardtanh: ("min_val", "max_val", "inplace"),
    F.softplus: ("beta", "threshold")}
# Functions that act on each channel (dimension 1) alone, and their parameters after the input.
_MAX_POOL = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
_AVG_POOL = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")
_CHANNEL_FUNCTIONS: dict[Callable[..., Any], tuple[str, ...]] = {
    F.max_pool1d: _MAX_POOL, F.max_pool2d: _MAX_POOL, F.max_pool3d: _MAX_POOL,
    F.avg_pool1d: _AVG_POOL[:-1], F.avg_pool2d: _AVG_POOL, F.avg_pool3d: _AVG_POOL,
    F.adaptive_avg_pool1d: ("output_size",), F.adaptive_avg_pool2d: ("output_size",),
    F.adaptive_avg_pool3d: ("output_size",), F.adaptive_max_pool1d: ("output_size", "return_indices"),
    F.adaptive_max_pool2d: ("output_size", "return_indices"), F.adaptive_max_pool3d: ("output_size", "return_indices")}
_BINARY = {operator.add, operator.sub, operator.mul, operator.truediv, torch.add, torch.sub, torch.mul}
_ELEMENTWISE_METHODS = {"relu", "sigmoid", "tanh"}
_REDUCTIONS = {"mean", "sum", "amax", "amin"}
_CONV: dict[type[nn.modules.conv._ConvNd], Callable[..., torch.Tensor]] = {
    nn.Conv1d: F.conv1d, nn.Conv2d: F.conv2d, nn.Conv3d: F.conv3d}
_CONV_TYPES = tuple(_CONV)


class Unsupported(Exception):
    """A node this module cannot group (the message says which)."""


class GroupedProgram:
    """The grouped forward of one module: a list of steps, one per fx node.

    Called with the stacked parameters (name -> `(S, *shape)`), channel-stacked inputs
    `(B, S*C, ...)` (see `stack_input`) and S; returns the logits `(S, B, classes)`. The
    parameterless layers are the module's own submodules, so their training flags (scalers)
    apply as in the loop.
    """

    def __init__(self, inp: str, steps: list[tuple[str, Step, tuple[str, ...]]], output: str,
                 input_rank: int) -> None:
        self.inp = inp
        self.steps = steps
        self.output = output
        self.input_rank = input_rank

    def __call__(self, params: Params, x: torch.Tensor, slots: int) -> torch.Tensor:
        env: dict[str, Act] = {self.inp: Act(x, False, self.input_rank)}
        for name, step, args in self.steps:
            env[name] = step([env[a] for a in args], params, slots)
        out = env[self.output]
        if out.rank != 2:
            raise RuntimeError(f"grouped: the model's output has rank {out.rank}, not (batch, classes)")
        return to_slots(out, slots)


def compile_grouped(module: nn.Module, input_rank: int) -> tuple[Optional[GroupedProgram], Optional[str]]:
    """The grouped program of `module` (inputs of one device's rank `input_rank`, batch
    included), or None and why not."""
    try:
        graph = module.graph if isinstance(module, fx.GraphModule) else fx.symbolic_trace(module).graph
    except Exception as err:  # noqa: BLE001 (any tracing failure means: no program)
        return None, f"the model does not trace ({type(err).__name__})"
    mods = dict(module.named_modules())
    inp: Optional[str] = None
    output: Optional[str] = None
    steps: list[tuple[str, Step, tuple[str, ...]]] = []
    try:
        for node in graph.nodes:
            if node.op == "placeholder":
                if inp is not None:
                    raise Unsupported("a model with more than one input")
                inp = node.name
            elif node.op == "output":
                if not isinstance(node.args[0], fx.Node):
                    raise Unsupported("an output that is not one tensor")
                output = node.args[0].name
            else:
                step, args = _step(node, mods)
                steps.append((node.name, step, args))
    except Unsupported as err:
        return None, f"no grouped form for {err}"
    if inp is None or output is None:
        return None, "the model has no input or no output"
    return GroupedProgram(inp, steps, output, input_rank), None


def check_grouped(program: GroupedProgram, module: nn.Module, example: torch.Tensor) -> Optional[str]:
    """None when `program`'s forward, for two slots of `module`'s own weights, equals the
    module's on `example` (a batch, on the module's device) within float tolerance; else why
    not, in one line. A program that would fail or differ when it trains is caught here."""
    params = {k: p.detach().unsqueeze(0).repeat(2, *([1] * p.dim())) for k, p in module.named_parameters()}
    idx = torch.arange(example.shape[0], device=example.device).repeat(2, 1)
    try:
        with torch.no_grad():
            want = module(example)
            got = program(params, stack_input(example, idx), 2)
    except Exception as err:  # noqa: BLE001 (any failure means: no program)
        first = (str(err).strip().splitlines() or [""])[0][:120]
        return f"its grouped forward fails ({type(err).__name__}: {first})"
    if not isinstance(want, torch.Tensor) or got.shape[1:] != want.shape:
        return "its grouped forward has another shape than the model's"
    if not all(torch.allclose(g, want, rtol=1e-4, atol=1e-5, equal_nan=True) for g in got):
        return "its grouped forward differs from the model's"
    return None


def _tensor_args(node: fx.Node) -> tuple[str, ...]:
    """Names of the node's tensor inputs; the other arguments must be constants."""
    names = []
    for a in list(node.args) + list(node.kwargs.values()):
        if isinstance(a, fx.Node):
            names.append(a.name)
        elif isinstance(a, (list, tuple)) and any(isinstance(b, fx.Node) for b in a):
            raise Unsupported(f"{node.op} {node.target} (a list of tensors)")
    return tuple(names)


def canonical(fn: Any) -> Any:
    """`fn`, or the `torch.nn.functional` function it is a copy of. The max poolings are
    closures (`boolean_dispatch`), which a pickled graph (a submodel built in a Ray worker)
    carries as copies: they are matched by module, name and qualified name."""
    if getattr(fn, "__module__", None) != "torch.nn.functional" or not callable(fn):
        return fn
    own = getattr(F, getattr(fn, "__name__", ""), None)
    return own if own is not None and getattr(own, "__qualname__", None) == getattr(fn, "__qualname__", "") else fn


def _name(fn: Any) -> str:
    return getattr(fn, "__name__", str(fn))


def _bind(fn: Any, params: Sequence[str], rest: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """A call's arguments after its input, by parameter name (`params`, in order); arguments
    it does not know, or one given twice, are no grouped form."""
    if len(rest) > len(params):
        raise Unsupported(f"function {_name(fn)} with {len(rest)} positional arguments")
    bound = dict(zip(params, rest))
    for k, v in kwargs.items():
        if k not in params or k in bound:
            raise Unsupported(f"function {_name(fn)} with argument {k!r}")
        if isinstance(v, fx.Node):
            raise Unsupported(f"function {_name(fn)} with a tensor argument {k!r}")
        bound[k] = v
    return bound


def _step(node: fx.Node, mods: Mapping[str, nn.Module]) -> tuple[Step, tuple[str, ...]]:
    """The step of one call node and the names of its inputs."""
    if node.op == "call_module":
        m = mods[str(node.target)]
        if len(node.args) != 1 or node.kwargs or not isinstance(node.args[0], fx.Node):
            raise Unsupported(f"module {node.target} called with extra arguments")
        return _module_step(str(node.target), m), (node.args[0].name,)
    if node.op == "call_function":
        fn = canonical(node.target)
        if fn in _BINARY:
            return _binary(node), _tensor_args(node)
        args = _tensor_args(node)
        if len(args) != 1 or not isinstance(node.args[0], fx.Node):
            raise Unsupported(f"function {_name(fn)}")
        rest, kwargs = node.args[1:], dict(node.kwargs)
        if fn in _ELEMENTWISE_FUNCTIONS:
            bound = _bind(fn, _ELEMENTWISE_FUNCTIONS[fn], rest, kwargs)
            return _elementwise(lambda t: fn(t, **bound)), args
        if fn in _CHANNEL_FUNCTIONS:
            bound = _bind(fn, _CHANNEL_FUNCTIONS[fn], rest, kwargs)
            if bound.pop("return_indices", False):
                raise Unsupported(f"function {_name(fn)} with return_indices")
            if fn is F.max_pool2d:
                return _per_channel(lambda t: max_pool2d(t, **bound)), args
            return _per_channel(lambda t: fn(t, **bound)), args
        if fn is torch.flatten:
            return _flatten(*_flatten_dims(rest, kwargs)), args
        if fn in (torch.mean, torch.sum, torch.amax, torch.amin):
            return _reduction(getattr(torch.Tensor, fn.__name__), rest, kwargs), args
        raise Unsupported(f"function {_name(fn)}")
    if node.op == "call_method":
        args = _tensor_args(node)
        name = str(node.target)
        if len(args) != 1 or not isinstance(node.args[0], fx.Node):
            raise Unsupported(f"method {name}")
        rest, kwargs = node.args[1:], dict(node.kwargs)
        if name in _ELEMENTWISE_METHODS and not rest and not kwargs:
            return _elementwise(getattr(torch.Tensor, name)), args
        if name == "flatten":
            return _flatten(*_flatten_dims(rest, kwargs)), args
        if name in _REDUCTIONS:
            return _reduction(getattr(torch.Tensor, name), rest, kwargs), args
        raise Unsupported(f"method {name}")
    raise Unsupported(f"{node.op} {node.target}")


def _module_step(name: str, m: nn.Module) -> Step:
    own = [k for k, _ in m.named_parameters(recurse=False)]
    if isinstance(m, _CONV_TYPES) and getattr(m, "padding_mode", "zeros") == "zeros":
        return _conv(name, m)
    if isinstance(m, nn.Linear):
        return _linear(name, m)
    if isinstance(m, nn.GroupNorm):
        return _group_norm(name, m)
    if any(True for _ in m.parameters()) or own:
        raise Unsupported(f"module {name} ({type(m).__name__})")
    if isinstance(m, _ELEMENTWISE_MODULES):
        return _elementwise(m)
    if isinstance(m, nn.MaxPool2d) and not m.return_indices:
        return _per_channel(lambda t: max_pool2d(t, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode))
    if isinstance(m, _CHANNEL_MODULES) and not getattr(m, "return_indices", False):
        return _per_channel(m)
    if isinstance(m, nn.Flatten):
        return _flatten(m.start_dim, m.end_dim)
    raise Unsupported(f"module {name} ({type(m).__name__})")


def _conv(name: str, m: nn.modules.conv._ConvNd) -> Step:
    conv = _CONV[type(m)] if type(m) in _CONV else next(f for c, f in _CONV.items() if isinstance(m, c))
    w_key, b_key = f"{name}.weight", (f"{name}.bias" if m.bias is not None else None)
    stride, padding, dilation, groups = m.stride, m.padding, m.dilation, m.groups

    # See `_NativeConv`: oneDNN's kernel for few input channels per group depends on S.
    if isinstance(padding, str):   # 'valid' or 'same', as numbers (native kernels need them)
        pads = [0 if padding == "valid" else d * (k - 1) // 2 for k, d in zip(m.kernel_size, dilation)]
        if padding == "same" and any(d * (k - 1) % 2 for k, d in zip(m.kernel_size, dilation)):
            raise Unsupported(f"module {name} (asymmetric 'same' padding)")
        padding = tuple(pads)
    native = m.in_channels // m.groups < NATIVE_BELOW
    unfold = isinstance(m, nn.Conv2d) and m.groups == 1

    def step(a: Sequence[Act], p: Params, s: int) -> Act:
        w = p[w_key]
        b = None if b_key is None else p[b_key].reshape(-1)
        x, w = to_channels(a[0], s), w.reshape(s * w.shape[1], *w.shape[2:])
        if native and x.device.type == "cpu":
            if unfold:
                out = _conv2d_unfolded(x, w, b, s, m.kernel_size, stride, padding, dilation)
            else:
                # torch leaves `Function.apply` unannotated (no stub to fix it)
                out = _NativeConv.apply(x, w, b, stride, padding, dilation, groups * s)  # type: ignore[no-untyped-call]
        else:
            out = conv(x, w, b, stride, padding, dilation, groups * s)
        return Act(out, False, a[0].rank)
    return step


# Grouped convolutions with fewer input channels per group than this do not run in oneDNN
# on the CPU (see `_NativeConv`), but as patches times weights (2-D) or torch's own kernels.
NATIVE_BELOW = 4


def _conv2d_unfolded(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor], s: int, kernel: Any, stride: Any,
                     padding: Any, dilation: Any) -> torch.Tensor:
    """S devices' 2-D convolutions (one group each) as patches times weights: one `unfold`
    and one batched matrix product, each slot's product of the same shape whatever S."""
    bsz, h = x.shape[0], x.shape[2]
    cols = F.unfold(x, kernel, dilation, padding, stride)               # (B, S*Ci*K, L)
    oh = (h + 2 * _tuple(padding, 2)[0] - _tuple(dilation, 2)[0] * (_tuple(kernel, 2)[0] - 1) - 1) \
        // _tuple(stride, 2)[0] + 1
    ow = cols.shape[2] // oh
    cols = cols.view(bsz, s, -1, oh * ow).permute(1, 2, 0, 3).reshape(s, -1, bsz * oh * ow)
    co = w.shape[0] // s
    wm = w.reshape(s, co, -1)
    out = torch.bmm(wm, cols) if b is None else torch.baddbmm(b.view(s, co, 1), wm, cols)   # (S, Co, B*L)
    return out.view(s, co, bsz, oh, ow).permute(2, 0, 1, 3, 4).reshape(bsz, s * co, oh, ow)


class _NativeConv(torch.autograd.Function):
    """A grouped convolution in torch's own CPU kernels rather than oneDNN's (layers that
    `_conv2d_unfolded` does not take: 1-D, 3-D, grouped within a device).

    oneDNN picks its forward kernel for convolutions with 1-3 input channels per group by the
    number of groups (seen from 3-8 groups up, with 8+ outputs per group), so a device's
    first-layer outputs would depend on how many devices share its chunk. torch's own kernel
    convolves group by group, each group alike whatever their number. Only such layers (an
    image's first) take it: for wider ones oneDNN is both stable and much faster.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor], stride: Any, padding: Any,
                dilation: Any, groups: int) -> torch.Tensor:
        ctx.save_for_backward(x, w)
        ctx.args = (stride, padding, dilation, groups)
        ctx.has_bias = b is not None
        with _without_onednn():
            return F.conv2d(x, w, b, stride, padding, dilation, groups) if x.dim() == 4 else \
                (F.conv1d if x.dim() == 3 else F.conv3d)(x, w, b, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:
        x, w = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.args
        n = x.dim() - 2
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]]
        with _without_onednn():
            gx, gw, gb = torch.ops.aten.convolution_backward(
                g.contiguous(), x, w, [w.shape[0]] if ctx.has_bias else None, _tuple(stride, n), _tuple(padding, n),
                _tuple(dilation, n), False, [0] * n, groups, mask)
        return gx, gw, gb if ctx.has_bias else None, None, None, None, None


def _tuple(v: Any, n: int) -> list[int]:
    return [int(v)] * n if isinstance(v, int) else [int(a) for a in v]


class _without_onednn:
    """Within: torch's CPU convolutions do not use oneDNN."""

    def __enter__(self) -> None:
        self.was = torch._C._get_mkldnn_enabled()
        torch._C._set_mkldnn_enabled(False)

    def __exit__(self, *exc: Any) -> None:
        torch._C._set_mkldnn_enabled(self.was)


def _linear(name: str, m: nn.Linear) -> Step:
    w_key, b_key = f"{name}.weight", (f"{name}.bias" if m.bias is not None else None)

    def step(a: Sequence[Act], p: Params, s: int) -> Act:
        t = to_slots(a[0], s)                                   # (S, B, ..., in)
        flat = t.reshape(s, -1, t.shape[-1]) if t.dim() != 3 else t
        w = p[w_key].transpose(1, 2)                            # (S, in, out)
        out = torch.bmm(flat, w) if b_key is None else torch.baddbmm(p[b_key].unsqueeze(1), flat, w)
        return Act(out.reshape(*t.shape[:-1], out.shape[-1]), True, a[0].rank)
    return step


def _group_norm(name: str, m: nn.GroupNorm) -> Step:
    w_key, b_key = (f"{name}.weight", f"{name}.bias") if m.affine else (None, None)
    groups, eps = m.num_groups, m.eps

    def step(a: Sequence[Act], p: Params, s: int) -> Act:
        w = None if w_key is None else p[w_key].reshape(-1)
        b = None if b_key is None else p[b_key].reshape(-1)
        return Act(F.group_norm(to_channels(a[0], s), groups * s, w, b, eps), False, a[0].rank)
    return step


def _elementwise(fn: Callable[[torch.Tensor], torch.Tensor]) -> Step:
    def step(a: Sequence[Act], p: Params, s: int) -> Act:
        return Act(fn(a[0].t), a[0].slots, a[0].rank)
    return step


def _per_channel(fn: Callable[[torch.Tensor], torch.Tensor]) -> Step:
    def step(a: Sequence[Act], p: Params, s: int) -> Act:
        return Act(fn(to_channels(a[0], s)), False, a[0].rank)
    return step


def _binary(node: fx.Node) -> Step:
    fn = cast(Callable[..., Any], node.target)  # a call_function node's target is the function
    if node.kwargs or len(node.args) != 2:
        raise Unsupported(f"function {getattr(fn, '__name__', fn)} with options")
    left, right = node.args
    if not isinstance(left, fx.Node) and not isinstance(right, fx.Node):
        raise Unsupported(f"function {getattr(fn, '__name__', fn)} of constants")
    for c in (left, right):
        if not isinstance(c, (fx.Node, int, float)):
            raise Unsupported(f"function {getattr(fn, '__name__', fn)} with a tensor constant")
    order = [isinstance(c, fx.Node) for c in (left, right)]

    def step(a: Sequence[Act], p: Params, s: int) -> Act:
        if all(order):
            x, y = a
            # Both operands in one layout; same per-device ranks, so they line up slot by slot.
            if x.rank != y.rank:
                raise RuntimeError("grouped: operands of different ranks")
            if x.slots == y.slots:
                return Act(fn(x.t, y.t), x.slots, x.rank)
            return Act(fn(to_channels(x, s), to_channels(y, s)), False, x.rank)
        x = a[0]
        return Act(fn(x.t, right) if order[0] else fn(left, x.t), x.slots, x.rank)
    return step


def _flatten_dims(rest: Sequence[Any], kwargs: Mapping[str, Any]) -> tuple[int, int]:
    start = rest[0] if rest else kwargs.get("start_dim", 0)
    end = rest[1] if len(rest) > 1 else kwargs.get("end_dim", -1)
    return int(start), int(end)


def _flatten(start: int, end: int) -> Step:
    def step(a: Sequence[Act], p: Params, s: int) -> Act:
        x = a[0]
        lo, hi = start % x.rank, end % x.rank
        if lo == 0:
            raise RuntimeError("grouped: flattening the batch dimension")
        if x.slots:
            return Act(x.t.flatten(lo + 1, hi + 1), True, x.rank - (hi - lo))
        # Channel-stacked: each device's features are one contiguous block of dimension 1,
        # and flattening from dimension 1 keeps them so.
        return Act(x.t.flatten(lo, hi), False, x.rank - (hi - lo))
    return step


def _reduction(fn: Callable[..., torch.Tensor], rest: Sequence[Any], kwargs: Mapping[str, Any]) -> Step:
    dims = rest[0] if rest else kwargs.get("dim")
    if dims is None:
        raise Unsupported("a reduction over every dimension")
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    keep = bool(rest[1] if len(rest) > 1 else kwargs.get("keepdim", False))
    if set(kwargs) - {"dim", "keepdim"} or len(rest) > 2:
        raise Unsupported("a reduction with options")

    def step(a: Sequence[Act], p: Params, s: int) -> Act:
        x = a[0]
        ds = tuple(d % x.rank for d in dims)
        rank = x.rank if keep else x.rank - len(ds)
        if not x.slots and min(ds) >= 2:      # over spatial dimensions: per channel
            return Act(fn(x.t, ds, keepdim=keep), False, rank)
        return Act(fn(to_slots(x, s), tuple(d + 1 for d in ds), keepdim=keep), True, rank)
    return step


def _pair(v: Any) -> list[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(a) for a in v]


class _MaxPool2d(torch.autograd.Function):
    """2-D max pooling computed on a channels-last copy, returned NCHW.

    With S*C channels the CPU's NCHW pooling kernel is several times slower than its
    channels-last one. Pooling is exact (a max, and a backward that routes each gradient to
    one input), so the layout changes speed, not a bit of the result. Everything else stays
    NCHW: channels-last kernels vectorise over channels, so a channel's arithmetic would
    depend on where it falls among S*C, that is on how many devices share the chunk.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, kernel: list[int], stride: list[int], padding: list[int],
                dilation: list[int], ceil_mode: bool) -> torch.Tensor:
        out: torch.Tensor
        idx: torch.Tensor
        out, idx = torch.ops.aten.max_pool2d_with_indices(x.contiguous(memory_format=torch.channels_last), kernel,
                                                          stride, padding, dilation, ceil_mode)
        ctx.save_for_backward(x, idx.contiguous())
        ctx.args = (kernel, stride, padding, dilation, ceil_mode)
        return out.contiguous()

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:
        x, idx = ctx.saved_tensors
        gx = torch.ops.aten.max_pool2d_with_indices_backward(g.contiguous(), x, *ctx.args, idx)
        return gx, None, None, None, None, None


def max_pool2d(x: torch.Tensor, kernel_size: Any, stride: Any = None, padding: Any = 0, dilation: Any = 1,
               ceil_mode: bool = False, return_indices: bool = False) -> Any:
    """`F.max_pool2d` (every argument of it), faster on the CPU for many channels (see `_MaxPool2d`)."""
    if return_indices:
        return F.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode=ceil_mode, return_indices=True)
    if x.device.type != "cpu" or x.dim() != 4:
        return F.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode=ceil_mode)
    stride = kernel_size if stride is None or (not isinstance(stride, int) and not stride) else stride
    # torch leaves `Function.apply` unannotated (no stub to fix it)
    return _MaxPool2d.apply(x, _pair(kernel_size), _pair(stride), _pair(padding),  # type: ignore[no-untyped-call]
                            _pair(dilation), bool(ceil_mode))


def stack_input(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """The channel-stacked inputs of S devices' minibatches: `idx` `(S, B)` indexes the host's
    samples `x` `(N, C, ...)`; returns `(B, S*C, ...)` (one gather)."""
    s, b = idx.shape
    g = x[idx.t().reshape(-1)]                                  # (B*S, C, ...), slot-minor
    return g.reshape(b, s * x.shape[1], *x.shape[2:])
