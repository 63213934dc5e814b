"""Tensor functions and methods the slicer understands, and how channels flow through them.

A rule maps the layouts of an op's tensor inputs to its output's layout. Ops not listed here
stop the analysis with a `SlicingError` naming the op: guessing how an unknown op treats its
channels could silently train a different model than the one asked for.
"""

from __future__ import annotations

import math
import operator
from typing import Any, Optional, Sequence, cast

import torch
import torch.nn.functional as F
from torch import fx
from torch.fx.passes.shape_prop import TensorMetadata

from raysim.slicing.analysis import Analysis, ReshapeUse, SplitUse
from raysim.slicing.functional import FUNCTIONAL_RULES
from raysim.slicing.layout import Dim, Layout, Seg, dim_size, fixed
from raysim.slicing.opcall import OTHER, OpCall, OpRule, Other, Parts, Unsupported, Value, first_tensor
from raysim.slicing.opcall import norm_dim as _norm_dim


def elementwise(ctx: Analysis, call: OpCall) -> Value:
    """Activations and other shape-preserving ops of one tensor."""
    x = first_tensor(call)
    if call.out_shape is None or tuple(dim_size(d) for d in x) != call.out_shape:
        raise Unsupported("changes the shape")
    return x


def broadcast(ctx: Analysis, call: OpCall) -> Value:
    """Binary arithmetic: dimensions that meet element by element keep the same channels (a
    residual add is one group); broadcast dimensions of size 1 impose nothing."""
    ts = call.tensors()
    if call.out_shape is None:
        return OTHER
    if not ts:
        return OTHER
    n = len(call.out_shape)
    out: list[Dim] = []
    for d in range(n):
        present = []
        for t in ts:
            k = d - (n - len(t))
            if k >= 0 and dim_size(t[k]) != 1:
                present.append(t[k])
        for other in present[1:]:
            ctx.atoms.unify(present[0], other)
        out.append(present[0] if present else fixed(1))
    return tuple(out)


def cat(ctx: Analysis, call: OpCall) -> Value:
    """Concatenation: the parts of the joined dimension side by side; the others meet."""
    seq = call.arg(0, "tensors")
    whole = call.value(seq) if isinstance(seq, fx.Node) else None
    values = list(whole.layouts) if isinstance(whole, Parts) else [call.value(t) for t in seq]
    parts = [p for p in values if not isinstance(p, Other)]
    if len(parts) != len(values):
        raise Unsupported("joins non-tensors")
    n = len(parts[0])
    d = _norm_dim(int(call.arg(1, "dim", 0)), n)
    out: list[Dim] = []
    for k in range(n):
        if k == d:
            out.append(tuple(s for p in parts for s in p[k]))
        else:
            for p in parts[1:]:
                ctx.atoms.unify(parts[0][k], p[k])
            out.append(parts[0][k])
    return tuple(out)


def _merge(ctx: Analysis, dims: list[Dim], sizes: list[int]) -> Optional[Dim]:
    """Dimensions flattened into one (row-major), or None when that cannot be expressed:
    only the first may shrink, and its channels then own blocks of the trailing entries."""
    if any(ctx.atoms.sliced(d) for d in dims[1:]):
        return None
    inner = math.prod(sizes[1:])
    return tuple(Seg(s.atom, s.width, s.block * inner) if s.atom is not None else Seg(None, s.size * inner)
                 for s in ctx.atoms.canonical(dims[0]))


def _split(dim: Dim, sizes: list[int]) -> Optional[list[Dim]]:
    """One dimension unflattened into `sizes`; None unless every channel's block divides."""
    inner = math.prod(sizes[1:])
    if any((s.block if s.atom is not None else s.size) % inner for s in dim):
        return None
    first = tuple(Seg(s.atom, s.width, s.block // inner) if s.atom is not None else Seg(None, s.size // inner)
                  for s in dim)
    return [first] + [fixed(n) for n in sizes[1:]]


def _split_heads(ctx: Analysis, dim: Dim, sizes: list[int]) -> Optional[list[Dim]]:
    """A layer's channels unflattened into (parts..., heads, head_dim): attention's
    `qkv.reshape(B, N, 3, H, D // H)`. The heads shrink, the head dimension never does: the
    channels are cut into the parts (q, k, v), each part is seen as whole heads
    (`Atoms.coarsen`), and every part keeps the same heads. None when the channels are not one
    class of single entries."""
    c = ctx.atoms.canonical(dim)
    if len(sizes) < 2 or len(c) != 1 or c[0].atom is None or c[0].block != 1:
        return None
    *lead, heads, head_dim = sizes
    parts = math.prod(lead)
    name = f"{ctx.atoms.origin[c[0].atom]}.heads"
    pieces = ctx.atoms.cut(dim, [heads * head_dim] * parts) if parts > 1 else [dim]
    if pieces is None or not all(ctx.atoms.coarsen(p, heads, name) for p in pieces):
        return None
    if not all(ctx.atoms.same_units(pieces[0], p) for p in pieces[1:]):
        return None
    unit = ctx.atoms.canonical(pieces[0])[0]
    return [fixed(n) for n in lead] + [(Seg(unit.atom, heads),), fixed(head_dim)]


def reshape_layout(ctx: Analysis, x: Layout, out_shape: tuple[int, ...]) -> Layout:
    """Layout after any reshape (view, flatten, squeeze, unflatten).

    Dimensions of size 1 carry nothing and are set aside; the rest are matched in the
    smallest runs whose sizes multiply to the same number, and each run is merged and split
    again. A run that cannot be expressed (a shrinking dimension flattened behind another) is
    kept whole.
    """
    in_shape = [dim_size(d) for d in x]
    ins = [i for i, n in enumerate(in_shape) if n != 1]
    outs = [j for j, n in enumerate(out_shape) if n != 1]
    result: list[Dim] = [fixed(n) for n in out_shape]
    a = b = 0
    while a < len(ins) and b < len(outs):
        run_in, run_out = [ins[a]], [outs[b]]
        pa, pb = in_shape[ins[a]], out_shape[outs[b]]
        a, b = a + 1, b + 1
        while pa != pb:
            if pa < pb:
                run_in.append(ins[a])
                pa *= in_shape[ins[a]]
                a += 1
            else:
                run_out.append(outs[b])
                pb *= out_shape[outs[b]]
                b += 1
        dims = [x[i] for i in run_in]
        merged = _merge(ctx, dims, [in_shape[i] for i in run_in])
        split = None if merged is None else _split(merged, [out_shape[j] for j in run_out])
        if split is None and len(run_in) == 1:
            split = _split_heads(ctx, dims[0], [out_shape[j] for j in run_out])
        if split is None:
            for d in dims:
                ctx.atoms.pin_dim(d)
            continue
        for j, dim in zip(run_out, split):
            result[j] = dim
    return tuple(result)


def _shape_args(node: fx.Node) -> list:
    """The target shape of a view/reshape node, one entry per dimension."""
    for key in ("shape", "size"):
        if key in node.kwargs:
            return list(cast(Sequence[Any], node.kwargs[key]))  # a shape: a list or tuple of sizes
    args = list(node.args[1:])
    return list(args[0]) if len(args) == 1 and isinstance(args[0], (tuple, list)) else args


def _reads_batch(a: object) -> bool:
    """Whether a size computed in the graph depends on the batch size (`x.shape[0]`,
    `x.size(0)`, `b * c` after `b, c, h, w = x.shape`)."""
    if not isinstance(a, fx.Node):
        return False
    if a.op == "call_method" and a.target == "size" and len(a.args) > 1:
        return bool(a.args[1] == 0)
    if a.op == "call_function" and a.target is operator.getitem and isinstance(a.args[0], fx.Node):
        src = a.args[0]
        if (src.op == "call_function" and src.target is getattr and src.args[1] == "shape") or \
                (src.op == "call_method" and src.target == "size" and len(src.args) == 1):
            return bool(a.args[1] == 0)
    if "tensor_meta" in a.meta:  # a tensor: not a size
        return False
    return any(_reads_batch(n) for n in a.all_input_nodes)


def reshape(ctx: Analysis, call: OpCall) -> Value:
    x = first_tensor(call)
    assert call.out_shape is not None
    out = reshape_layout(ctx, x, call.out_shape)
    if call.node.op == "call_method" and call.node.target in ("view", "reshape") or \
            call.node.target is torch.reshape:
        # Literal widths follow the submodel; sizes computed from a shape are rewritten too,
        # since one read from a shrinking dimension may size a dimension kept whole.
        target = _shape_args(call.node)
        if not (len(target) == 1 and isinstance(target[0], fx.Node)):  # not `reshape(y.shape)`
            ctx.reshapes[call.node.name] = ReshapeUse(out, tuple(_reads_batch(a) for a in target))
    return out


def _piece_shapes(node: fx.Node) -> Optional[list[tuple[int, ...]]]:
    meta = node.meta.get("tensor_meta")
    if isinstance(meta, (tuple, list)) and meta and all(isinstance(m, TensorMetadata) for m in meta):
        return [tuple(int(n) for n in m.shape) for m in meta]
    return None


def split(ctx: Analysis, call: OpCall) -> Value:
    """split / chunk: consecutive pieces of one dimension. A class of channels a cut falls
    inside is refined into parts (a conv's outputs chunked into gates). The submodel's
    `split` gets its pieces' widths written in; its `chunk` cuts its own width evenly, so the
    pieces of a chunk keep the same channels (one group, appearing once per piece)."""
    x = first_tensor(call)
    shapes = _piece_shapes(call.node)
    if shapes is None:
        raise Unsupported("returns no tensors")
    d = _norm_dim(int(call.arg(2, "dim", 0)), len(x))
    sizes = [s[d] for s in shapes]
    chunk = _FUNCTIONS.get(id(call.node.target)) == "chunk" or call.node.target == "chunk"
    pieces = ctx.atoms.cut(x[d], sizes)
    if pieces is None or (chunk and len(set(sizes)) > 1):
        ctx.atoms.pin_dim(x[d])  # a cut inside a flatten block, or uneven chunks: kept whole
        pieces = [fixed(n) for n in sizes]
    if chunk:
        for p in pieces[1:]:
            ctx.atoms.unify(pieces[0], p)
    elif ctx.atoms.sliced(x[d]):
        ctx.splits[call.node.name] = SplitUse(tuple(pieces))
    return Parts(tuple(x[:d] + (p,) + x[d + 1:] for p in pieces))


def permute(ctx: Analysis, call: OpCall) -> Value:
    """permute / transpose / t: dimensions move with their channels."""
    x = first_tensor(call)
    n = len(x)
    name = call.node.target if isinstance(call.node.target, str) else call.node.target.__name__
    if name == "permute":
        dims: Sequence[Any] = call.node.args[1:]
        if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
            dims = tuple(dims[0])
        order = [_norm_dim(int(d), n) for d in dims]
    else:
        if name == "t":
            i, j = 0, n - 1
        else:
            i, j = _norm_dim(int(call.arg(1, "dim0")), n), _norm_dim(int(call.arg(2, "dim1")), n)
        order = list(range(n))
        order[i], order[j] = order[j], order[i]
    return tuple(x[d] for d in order)


def reduce(ctx: Analysis, call: OpCall) -> Value:
    """mean / sum / amax / amin / var / std over some dimensions (global average pooling)."""
    x = first_tensor(call)
    n = len(x)
    dims = call.arg(1, "dim")
    name = _FUNCTIONS.get(id(call.node.target)) or str(call.node.target)
    # var(x, dim, unbiased, keepdim): keepdim comes one later than in mean(x, dim, keepdim)
    keep = bool(call.arg(3 if name in ("var", "std") else 2, "keepdim", False))
    if dims is None:
        return tuple(fixed(1) for _ in range(n)) if keep else ()
    dims = {_norm_dim(int(d), n) for d in (dims if isinstance(dims, (tuple, list)) else (dims,))}
    return tuple(fixed(1) if k in dims else x[k] for k in range(n) if keep or k not in dims)


def spatial(ctx: Analysis, call: OpCall) -> Value:
    """Functional pooling and resizing: batch and channels pass, the rest is fixed."""
    x = first_tensor(call)
    if call.out_shape is None or len(call.out_shape) != len(x) or \
            call.out_shape[:2] != tuple(dim_size(d) for d in x[:2]):
        raise Unsupported("changes the batch or channel dimension")
    for d in x[2:]:
        ctx.atoms.pin_dim(d)
    return (x[0], x[1]) + tuple(fixed(n) for n in call.out_shape[2:])


def not_a_tensor(ctx: Analysis, call: OpCall) -> Value:
    """size(), shape, dim(): numbers that follow the submodel's own shape at run time."""
    return OTHER


def getitem(ctx: Analysis, call: OpCall) -> Value:
    """Indexing: of a shape it is a number; of a tensor, whole-dimension slices pass channels,
    a number removes its dimension, None adds one; any other slice keeps its dimension whole,
    except a slice from 0 that keeps a whole concatenated part (GhostNet's `cat(...)[:, :n]`):
    its stop is then rewritten to the submodel's width."""
    src = call.value(call.node.args[0])
    if isinstance(src, Parts):
        i = call.node.args[1]
        if not isinstance(i, int):
            raise Unsupported("indexes the pieces of a split with a slice")
        return src.layouts[i]
    if isinstance(src, Other) or call.out_shape is None:
        return OTHER
    idx = call.node.args[1]
    idx = idx if isinstance(idx, tuple) else (idx,)
    if sum(i is Ellipsis for i in idx) > 1:
        raise Unsupported("indexes with two ellipses")
    if any(isinstance(i, (fx.Node, list)) or (isinstance(i, slice) and not _plain_slice(i)) for i in idx):
        # Tensor indices (a relative-position table read by an index buffer) or bounds computed
        # at run time: whatever they touch is kept whole.
        ctx.atoms.pin_layout(src)
        for i in idx:
            v = call.value(i) if isinstance(i, fx.Node) else OTHER
            if not isinstance(v, Other):
                ctx.atoms.pin_layout(v)
        return tuple(fixed(n) for n in call.out_shape)
    n = len(src)
    used = sum(1 for i in idx if i is not None and i is not Ellipsis)
    if Ellipsis in idx:
        e = idx.index(Ellipsis)
        idx = idx[:e] + (slice(None),) * (n - used) + idx[e + 1:]
    idx = idx + (slice(None),) * (n - sum(1 for i in idx if i is not None))
    out: list[Dim] = []
    k = 0  # the source dimension
    for pos, i in enumerate(idx):
        if i is None:
            out.append(fixed(1))
            continue
        d = src[k]
        k += 1
        size = dim_size(d)
        if isinstance(i, int):
            ctx.atoms.pin_dim(d)
            continue
        start, stop, step = i.indices(size)
        if (start, stop, step) == (0, size, 1):
            out.append(d)
            continue
        head = ctx.atoms.cut(d, [stop, size - stop]) if start == 0 and step == 1 and 0 < stop < size else None
        if head is not None and ctx.atoms.sliced(head[0]):
            ctx.literal(call.node.name, pos, "stop", (head[0],), i)
            out.append(head[0])
            continue
        ctx.atoms.pin_dim(d)
        out.append(fixed(len(range(start, stop, step))))
    return tuple(out)


def _plain_slice(i: slice) -> bool:
    return all(b is None or isinstance(b, int) for b in (i.start, i.stop, i.step))


def stack(ctx: Analysis, call: OpCall) -> Value:
    """torch.stack: a new dimension of fixed size; the stacked tensors' dimensions meet."""
    seq = call.arg(0, "tensors")
    whole = call.value(seq) if isinstance(seq, fx.Node) else None
    parts = list(whole.layouts) if isinstance(whole, Parts) else [call.value(t) for t in seq]
    if any(isinstance(p, Other) for p in parts) or call.out_shape is None:
        raise Unsupported("stacks non-tensors")
    for p in parts[1:]:
        for a, b in zip(parts[0], p):  # type: ignore[arg-type]
            ctx.atoms.unify(a, b)
    d = _norm_dim(int(call.arg(1, "dim", 0)), len(parts[0]) + 1)  # type: ignore[arg-type]
    first = list(parts[0])  # type: ignore[arg-type]
    return tuple(first[:d] + [fixed(len(parts))] + first[d:])


def norm(ctx: Analysis, call: OpCall) -> Value:
    """Tensor.norm / torch.norm / linalg.vector_norm(x, p, dim, keepdim): a reduction."""
    x = first_tensor(call)
    n = len(x)
    dims = call.arg(2, "dim")
    keep = bool(call.arg(3, "keepdim", False))
    if dims is None:
        return tuple(fixed(1) for _ in range(n)) if keep else ()
    dims = {_norm_dim(int(d), n) for d in (dims if isinstance(dims, (tuple, list)) else (dims,))}
    return tuple(fixed(1) if k in dims else x[k] for k in range(n) if keep or k not in dims)


def repeat_interleave(ctx: Analysis, call: OpCall) -> Value:
    """repeat_interleave(x, repeats, dim): the repeated dimension is kept whole (its entries
    are copied, not channels of their own); without `dim` the tensor is flattened first."""
    x = first_tensor(call)
    if call.out_shape is None:
        raise Unsupported("returns no tensor")
    d = call.arg(2, "dim")
    if d is None:
        ctx.atoms.pin_layout(x)
        return tuple(fixed(n) for n in call.out_shape)
    d = _norm_dim(int(d), len(x))
    ctx.atoms.pin_dim(x[d])
    return x[:d] + (fixed(call.out_shape[d]),) + x[d + 1:]


def scan(ctx: Analysis, call: OpCall) -> Value:
    """cumsum / cumprod / flip / roll along a dimension: its entries mix, so it is kept whole."""
    x = first_tensor(call)
    d = call.arg(1, "dim" if call.node.target not in ("roll", torch.roll) else "shifts")
    dims = call.arg(2, "dims") if call.node.target in ("roll", torch.roll) else d
    if call.node.target in ("flip", torch.flip):
        dims = call.arg(1, "dims")
    for k in (dims if isinstance(dims, (tuple, list)) else (dims,)):
        if isinstance(k, int):
            ctx.atoms.pin_dim(x[_norm_dim(k, len(x))])
        else:
            ctx.atoms.pin_layout(x)
    return x


def factory(ctx: Analysis, call: OpCall) -> Value:
    """A tensor made from sizes (`x.new_zeros(n, 1)`, a drop-path mask): it never shrinks."""
    if call.out_shape is None:
        return OTHER
    return tuple(fixed(n) for n in call.out_shape)


def reshape_as(ctx: Analysis, call: OpCall) -> Value:
    """x.reshape_as(y) / x.view_as(y): a reshape to y's shape whose dimensions meet y's."""
    x, y = call.tensors()[:2]
    out = reshape_layout(ctx, x, tuple(dim_size(d) for d in y))
    for a, b in zip(out, y):
        ctx.atoms.unify(a, b)
    return out


# Ops whose result depends on the values of the data, not only on shapes: a submodel cannot
# be derived for them by following channels.
DATA_DEPENDENT = {"topk", "sort", "argsort", "argmax", "argmin", "nonzero", "masked_select", "unique",
                  "multinomial", "where", "gather", "index_select", "masked_scatter", "bincount"}

_ELEMENTWISE_NAMES = {
    "relu", "relu_", "relu6", "leaky_relu", "elu", "selu", "gelu", "silu", "mish", "sigmoid", "tanh",
    "hardswish", "hardsigmoid", "hardtanh", "softplus", "softmax", "log_softmax", "dropout",
    "dropout1d", "dropout2d", "alpha_dropout", "abs", "neg", "exp", "log", "sqrt", "rsqrt", "square",
    "clamp", "clip", "contiguous", "clone", "float", "detach", "sigmoid_", "tanh_", "long", "int",
    "hardswish_", "hardsigmoid_", "relu6_", "silu_", "gelu_", "clamp_", "clamp_min", "clamp_max", "erf",
    "zeros_like", "ones_like", "empty_like", "rand_like", "randn_like", "full_like", "bernoulli_",
    "uniform_", "normal_", "fill_", "zero_", "floor_", "floor", "to", "type_as", "half", "double", "bfloat16",
    "invert", "logical_not", "bitwise_not", "not_", "reciprocal", "sign", "sin", "cos", "softsign", "tanhshrink",
    "hardshrink", "logsigmoid", "glu_",
}
_BINARY_NAMES = {"eq", "ne", "lt", "le", "gt", "ge", "and_", "or_", "xor", "logical_and", "logical_or",
                 "addcmul", "addcdiv", "lerp", "add", "sub", "mul", "div", "truediv", "pow", "iadd", "isub", "imul", "itruediv",
                 "add_", "sub_", "mul_", "div_", "maximum", "minimum", "floordiv", "rsub"}
_RESHAPE_NAMES = {"view", "reshape", "flatten", "squeeze", "unsqueeze", "unflatten"}
_PERMUTE_NAMES = {"permute", "transpose", "t"}
_REDUCE_NAMES = {"mean", "sum", "amax", "amin", "var", "std"}
_SPATIAL_NAMES = {"max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
                  "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
                  "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d", "interpolate"}
_OTHER_NAMES = {"size", "dim", "numel", "getattr"}
_FACTORY_NAMES = {"new_zeros", "new_ones", "new_empty", "new_full", "new_tensor"}

_BY_NAME: dict[str, OpRule] = {}
for _names, _rule in ((_ELEMENTWISE_NAMES, elementwise), (_BINARY_NAMES, broadcast),
                      (_RESHAPE_NAMES, reshape), (_PERMUTE_NAMES, permute), (_REDUCE_NAMES, reduce),
                      (_SPATIAL_NAMES, spatial), (_OTHER_NAMES, not_a_tensor)):
    _BY_NAME.update({n: _rule for n in _names})
_BY_NAME.update({n: factory for n in _FACTORY_NAMES})
_BY_NAME.update(FUNCTIONAL_RULES)
_BY_NAME["reshape_as"] = reshape_as
_BY_NAME["view_as"] = reshape_as
_BY_NAME["upsample"] = spatial
_BY_NAME["stack"] = stack
_BY_NAME.update({n: scan for n in ("cumsum", "cumprod", "flip", "roll")})
_BY_NAME["repeat_interleave"] = repeat_interleave
_BY_NAME["norm"] = norm
_BY_NAME["vector_norm"] = norm
_BY_NAME["cat"] = cat
_BY_NAME["concat"] = cat
_BY_NAME["getitem"] = getitem
_BY_NAME["split"] = split
_BY_NAME["chunk"] = split

# A function is one of the ops above when it is the object of that name in one of these
# modules (F.max_pool2d is a dispatch wrapper whose own __name__ says nothing).
_KNOWN_HOMES = (torch, F, operator, torch.Tensor, torch.linalg)
_FUNCTIONS: dict[int, str] = {id(getattr): "getattr"}
for _name in list(_BY_NAME) + sorted(DATA_DEPENDENT):
    for _home in _KNOWN_HOMES:
        _obj = getattr(_home, _name, None)
        if _obj is not None:
            _FUNCTIONS.setdefault(id(_obj), _name)


def op_name(node: fx.Node) -> str:
    """How an error names the op: `torch.topk`, `Tensor.view`, `operator.add`."""
    t = node.target
    if node.op == "call_method":
        return f"Tensor.{t}"
    mod = getattr(t, "__module__", None) or "torch"
    mod = {"_operator": "operator", "torch._C._nn": "torch.nn.functional"}.get(mod, mod)
    name = _FUNCTIONS.get(id(t)) or getattr(t, "__name__", str(t))
    return f"{mod}.{name}"


def rule_of(node: fx.Node) -> tuple[Optional[OpRule], str]:
    """The rule of a call_function/call_method node and, when there is none, why."""
    name = str(node.target) if node.op == "call_method" else _FUNCTIONS.get(id(node.target), "")
    if name in DATA_DEPENDENT:
        return None, "data-dependent"
    rule = _BY_NAME.get(name)
    return (rule, "") if rule is not None else (None, "unknown op")
