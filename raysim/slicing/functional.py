"""Functional forms of layers, and attention: how channels flow through `F.linear`,
`F.conv2d`, the functional norms, `F.pad`, `matmul` and `F.scaled_dot_product_attention`.

A layer written with its weights read by name (a subclass that overrides `forward`, a model
that calls `F.linear(x, self.w)`) is traced down to these calls; its weights are then tensors
the graph reads by name. A weight's output dimension read by a functional conv or linear makes
new channels, as a layer's would (`Atoms.claim`); its other dimensions meet what they multiply.
Numbers in the arguments that follow channel widths (a depthwise conv's `groups`, a layer
norm's `normalized_shape`, a group norm's group count) are recorded for the builder to rewrite.
"""

from __future__ import annotations

from typing import Optional

from torch import fx

from raysim.slicing.analysis import Analysis
from raysim.slicing.layout import Dim, Layout, dim_size, fixed
from raysim.slicing.opcall import OpCall, OpRule, Parts, Unsupported, Value, first_tensor, norm_dim


def _origin(call: OpCall, i: int, name: str) -> str:
    """The module a weight belongs to: its attribute path without the last name."""
    a = call.arg(i, name)
    target = str(a.target) if isinstance(a, fx.Node) and a.op == "get_attr" else call.node.name
    return target.rsplit(".", 1)[0]


def _weight(call: OpCall, i: int, name: str) -> Layout:
    w = call.tensor(i, name)
    if w is None:
        raise Unsupported("its weight is not a tensor")
    return w


def linear(ctx: Analysis, call: OpCall) -> Value:
    """F.linear(x, w, b): the outputs are the weight's rows, a new group."""
    x = first_tensor(call)
    w = _weight(call, 1, "weight")
    ctx.atoms.claim(w[0], _origin(call, 1, "weight"))
    ctx.atoms.unify(w[1], x[-1])
    b = call.tensor(2, "bias")
    if b is not None:
        ctx.atoms.unify(b[0], w[0])
    return x[:-1] + (w[0],)


def conv(ctx: Analysis, call: OpCall) -> Value:
    """F.conv1d/2d/3d: ungrouped, the outputs are a new group; depthwise, the outputs are the
    inputs (its `groups` is rewritten to the submodel's width); grouped convs are kept whole."""
    x = first_tensor(call)
    w = _weight(call, 1, "weight")
    b = call.tensor(2, "bias")
    groups = call.arg(6, "groups", 1)
    cin, cout = dim_size(x[1]), dim_size(w[0])
    if not isinstance(groups, int):
        raise Unsupported("its groups is not a number")
    if groups == 1:
        ctx.atoms.claim(w[0], _origin(call, 1, "weight"))
        ctx.atoms.unify(w[1], x[1])
        out = w[0]
    elif groups == cin == cout:
        ctx.atoms.unify(w[0], x[1])
        ctx.literal(call.node.name, call.position(6, "groups"), "width", (x[1],), groups)
        out = x[1]
    else:
        ctx.atoms.pin_dim(x[1])
        ctx.atoms.pin_dim(w[0])
        out = w[0]
    if b is not None:
        ctx.atoms.unify(b[0], out)
    assert call.out_shape is not None
    return (x[0], out) + tuple(fixed(n) for n in call.out_shape[2:])


def batch_norm(ctx: Analysis, call: OpCall) -> Value:
    """F.batch_norm / F.instance_norm: statistics and affine per channel of dimension 1."""
    x = first_tensor(call)
    for i, name in ((1, "running_mean"), (2, "running_var"), (3, "weight"), (4, "bias")):
        t = call.tensor(i, name)
        if t is not None:
            ctx.atoms.unify(t[0], x[1])
    return x


def group_norm(ctx: Analysis, call: OpCall) -> Value:
    """F.group_norm(x, num_groups, w, b): affine per channel; the group count narrows with
    the channels (as `nn.GroupNorm` does)."""
    x = first_tensor(call)
    for i, name in ((2, "weight"), (3, "bias")):
        t = call.tensor(i, name)
        if t is not None:
            ctx.atoms.unify(t[0], x[1])
    groups = call.arg(1, "num_groups")
    if isinstance(groups, int) and groups > 1:
        ctx.literal(call.node.name, call.position(1, "num_groups"), "groups", (x[1],), groups)
    return x


def layer_norm(ctx: Analysis, call: OpCall) -> Value:
    """F.layer_norm(x, normalized_shape, w, b): over the trailing dimensions, whose widths are
    written into `normalized_shape` (channels-last LayerNorm2d: permute, normalise, permute
    back)."""
    x = first_tensor(call)
    shape = call.arg(1, "normalized_shape")
    if isinstance(shape, int):
        shape = (shape,)
    if not isinstance(shape, (tuple, list)):
        raise Unsupported("its normalized_shape is not a tuple")
    dims = x[len(x) - len(shape):]
    for i, name in ((2, "weight"), (3, "bias")):
        t = call.tensor(i, name)
        if t is not None:
            for a, d in zip(t, dims):
                ctx.atoms.unify(a, d)
    if all(isinstance(n, int) for n in shape):
        ctx.literal(call.node.name, call.position(1, "normalized_shape"), "shape", tuple(dims), tuple(shape))
    return x


def pad(ctx: Analysis, call: OpCall) -> Value:
    """F.pad: padded dimensions (counted from the last) are fixed; the others pass."""
    x = first_tensor(call)
    widths = call.arg(1, "pad")
    if not isinstance(widths, (tuple, list)) or call.out_shape is None:
        raise Unsupported("its padding is not a tuple of numbers")
    n = len(x)
    padded = {n - 1 - k for k in range(len(widths) // 2)
              if widths[2 * k] != 0 or (2 * k + 1 < len(widths) and widths[2 * k + 1] != 0)}
    out: list[Dim] = []
    for d in range(n):
        if d in padded:
            ctx.atoms.pin_dim(x[d])
            out.append(fixed(call.out_shape[d]))
        else:
            out.append(x[d])
    return tuple(out)


def matmul(ctx: Analysis, call: OpCall) -> Value:
    """a @ b: a's last dimension meets b's second-last; leading (batch) dimensions broadcast."""
    ts = call.tensors()
    if len(ts) != 2 or call.out_shape is None:
        raise Unsupported("multiplies other than two tensors")
    a, b = ts
    if len(a) < 2 or len(b) < 2:
        raise Unsupported("multiplies a vector")
    ctx.atoms.unify(a[-1], b[-2])
    batch = _broadcast(ctx, [a[:-2], b[:-2]], len(call.out_shape) - 2)
    return batch + (a[-2], b[-1])


def _broadcast(ctx: Analysis, layouts: list[Layout], n: int) -> Layout:
    out: list[Dim] = []
    for d in range(n):
        present = [t[d - (n - len(t))] for t in layouts
                   if d - (n - len(t)) >= 0 and dim_size(t[d - (n - len(t))]) != 1]
        for other in present[1:]:
            ctx.atoms.unify(present[0], other)
        out.append(present[0] if present else fixed(1))
    return tuple(out)


def attention(ctx: Analysis, call: OpCall) -> Value:
    """F.scaled_dot_product_attention(q, k, v, attn_mask): q and k meet over the head
    dimension; the result has q's rows and v's head dimension; a mask adds to the scores."""
    q, k, v = (call.tensor(i, n) for i, n in ((0, "query"), (1, "key"), (2, "value")))
    if q is None or k is None or v is None or call.out_shape is None:
        raise Unsupported("its query, key or value is not a tensor")
    ctx.atoms.unify(q[-1], k[-1])
    n = len(call.out_shape)
    mask = call.tensor(3, "attn_mask")
    # A mask (or relative-position bias) adds to the scores: its head dimension meets q's.
    batch = _broadcast(ctx, [q[:-2], k[:-2], v[:-2]] + ([mask[:-2]] if mask is not None else []), n - 2)
    if mask is not None:
        for d in mask[-2:]:
            ctx.atoms.pin_dim(d)
    return batch + (q[-2], v[-1])


def normalize(ctx: Analysis, call: OpCall) -> Value:
    """F.normalize: divides by a norm over one dimension; every dimension passes."""
    return first_tensor(call)


def expand(ctx: Analysis, call: OpCall) -> Value:
    """expand / expand_as / broadcast_to: dimensions of size 1 grow to fixed ones; the others
    pass (their literal sizes, where written, follow the channels)."""
    x = first_tensor(call)
    if call.out_shape is None:
        raise Unsupported("returns no tensor")
    n = len(call.out_shape)
    lead = n - len(x)
    out: list[Dim] = []
    target = call.tensors()[1] if call.node.target in ("expand_as",) and len(call.tensors()) > 1 else None
    for d in range(n):
        k = d - lead
        if k >= 0 and dim_size(x[k]) == call.out_shape[d]:
            if target is not None:
                ctx.atoms.unify(x[k], target[d])
            out.append(x[k])
        else:
            out.append(target[d] if target is not None else fixed(call.out_shape[d]))
    sizes = _expand_sizes(call)
    if sizes is not None:
        at, literal = sizes
        for s, dim in zip(literal, out):
            if isinstance(s, int) and s != -1 and ctx.atoms.sliced(dim):
                ctx.literal(call.node.name, at, "expand", tuple(out), tuple(literal))
                break
    return tuple(out)


def repeat(ctx: Analysis, call: OpCall) -> Value:
    """x.repeat(*sizes): a dimension repeated once passes; one repeated more tiles its entries
    into a fixed dimension (so a sliced one is kept whole: its copies would interleave)."""
    x = first_tensor(call)
    if call.out_shape is None:
        raise Unsupported("returns no tensor")
    lead = len(call.out_shape) - len(x)
    out: list[Dim] = []
    for d, size in enumerate(call.out_shape):
        k = d - lead
        if k >= 0 and dim_size(x[k]) == size:
            out.append(x[k])
            continue
        if k >= 0:
            ctx.atoms.pin_dim(x[k])
        out.append(fixed(size))
    return tuple(out)


def _expand_sizes(call: OpCall) -> Optional[tuple["int | str", tuple]]:
    if call.node.target != "expand":
        return None
    args = call.node.args[1:]
    if len(args) == 1 and isinstance(args[0], (tuple, list)):
        return 1, tuple(args[0])
    return "*", tuple(args)  # the sizes are the arguments after the tensor


def unbind(ctx: Analysis, call: OpCall) -> Value:
    """unbind(x, d): one piece per entry of dimension d, each without it."""
    x = first_tensor(call)
    d = norm_dim(int(call.arg(1, "dim", 0)), len(x))
    ctx.atoms.pin_dim(x[d])
    return Parts(tuple(x[:d] + x[d + 1:] for _ in range(dim_size(x[d]))))


FUNCTIONAL_RULES: dict[str, OpRule] = {
    "linear": linear, "conv1d": conv, "conv2d": conv, "conv3d": conv,
    "batch_norm": batch_norm, "instance_norm": batch_norm, "group_norm": group_norm, "layer_norm": layer_norm,
    "rms_norm": layer_norm,
    "pad": pad, "matmul": matmul, "bmm": matmul, "scaled_dot_product_attention": attention,
    "normalize": normalize, "expand": expand, "expand_as": expand, "broadcast_to": expand, "unbind": unbind,
    "repeat": repeat,
}
