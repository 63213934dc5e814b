"""Batched local training: the devices that share a submodel shape trained in one pass.

IoT-size submodels are bound by per-step overhead (Python, autograd, one small kernel per
layer), not by FLOPs. Devices that share a plan in a round have the same submodel and start
weights; `train_group` stacks their weights and trains them together. A module whose fx graph
`raysim.client.batched_forward` knows (the built-in CNN and MLP: convolutions, linear layers, GroupNorm,
activations, scalers, pooling) trains through its grouped program: one grouped convolution or
batched matrix product per layer for all devices, differentiated by autograd on the sum of
the devices' losses. Any other batchable module trains under `torch.func` (`functional_call`
under `vmap`). Pure torch, no Ray:

    works = [DeviceWork(shard_indices, torch_generator(seed, "train", r, dev), None) for ...]
    results = train_group(module, LocalSGD(lr=0.05), start, x, y, works, epochs=1, batch_size=20)

Each device keeps its own math. Its minibatches are drawn from its own stream in the same
order as `LocalSGD.train` draws them (one `randperm` per epoch), its step count is its own
(`max_steps` for partial work; a device that is done, or a padding slot, is masked out of the
update), and its loss is the mean over its own samples: a short last minibatch is padded to
the full batch size and the padded samples are masked out of the loss. Results equal the
per-device loop within float tolerance.

Deterministic and independent of the company a device keeps: nothing reduces across
devices, every minibatch is padded to the batch size, and a group is cut into chunks of
`SLOTS` devices (`GPU_SLOTS` on a GPU; `chunking` says which). On a GPU the last chunk is
padded with empty slots too (`pad=True`), so every kernel sees the same shapes whichever
devices share the chunk and however many devices a host got (GPU libraries pick kernels by
shape). On the CPU, with one torch thread (the default
`runtime.torch_threads`), a slot's arithmetic is the same for any chunk of two or more
devices, so the last chunk is only padded to `MIN_SLOTS` and no time is spent on empty slots
(the grouped program keeps first-layer convolutions off the one oneDNN kernel that is not:
see `raysim.client.batched_forward`). A device's result is then the same on one host or twenty
(`tests/client/test_batched.py` checks it bit for bit, for chunks of 2 to 17 and 64). With several torch
threads, reductions split their work by tensor size, and that no longer holds.

What batches: the built-in client algorithms (`LocalSGD`, `FedProx`; a subclass that changes
`objective`, `train` or the update trains per device) on modules without buffers or
batch-statistics layers (BatchNorm would see the padded samples) or random layers (dropout
would not draw from the device's own stream). `batchable` says why not. A model that passes
but whose batched training cannot be built (functional dropout under `vmap`, say) is found by
`trial` when the hosts start, and its devices train one by one (`raysim.hosts.host`).
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence

import torch
from torch import fx, nn
from torch.func import functional_call, grad_and_value, vmap
from torch.nn import functional as F

from raysim.client.algorithms import ClientAlgorithm, FedProx, LocalResult, LocalSGD, finite
from raysim.client.batched_forward import GroupedProgram, check_grouped, compile_grouped, stack_input
from raysim.errors import gist

# Devices per batched call. Fixed, so that kernel shapes never depend on how many devices a
# host got (see the module docstring). On the CPU, 16 amortises the per-step overhead over
# enough devices while wasting little on a host's last, partly empty chunk. A GPU is bound by
# kernel launches, not FLOPs, for IoT-size submodels: a step of 64 slots costs about what one
# of 16 does, and 16 slots would cap batching's gain near 16x, so a GPU chunk holds 64.
SLOTS = 16
GPU_SLOTS = 64
# The narrowest chunk: a vmap over one slot takes other kernels than over two or more (seen
# on the CPU), so a lone device is batched beside one empty slot.
MIN_SLOTS = 2


# On the CPU a chunk's step costs about in proportion to its width, and every slot computes
# until the chunk's longest device is done: a new chunk starts at a device with at most this
# share of the steps of its chunk's first (longest) device.
SPLIT_AT = 0.5


@dataclass(frozen=True)
class Chunking:
    """How a device type cuts a plan's devices: `slots` a chunk; `padded`: every chunk has
    all its slots (GPU libraries pick kernels by shape) and chunks are not split by step
    count; else (the CPU) the last is only padded to `MIN_SLOTS` and chunks split."""

    slots: int
    padded: bool


def chunking(device: torch.device) -> Chunking:
    """The CPU's chunking (`SLOTS`, unpadded) or a GPU's (`GPU_SLOTS`, padded)."""
    return Chunking(SLOTS, False) if device.type == "cpu" else Chunking(GPU_SLOTS, True)


def slots_for(device: torch.device) -> int:
    """Devices per batched chunk on `device`: `SLOTS` on the CPU, `GPU_SLOTS` on a GPU."""
    return chunking(device).slots


def chunks(steps: Sequence[int], slots: int = SLOTS, split: bool = True) -> list[list[int]]:
    """Positions of a plan's devices, cut into chunks of at most `slots`: longest work first,
    and (`split`, on the CPU) a new chunk where a device has at most `SPLIT_AT` of its chunk's
    longest step count. Results do not depend on the cut (see the module docstring); time does.

        >>> chunks([2, 10, 9, 1, 2], slots=16)
        [[1, 2], [0, 4], [3]]
    """
    out: list[list[int]] = []
    for i in sorted(range(len(steps)), key=lambda i: -steps[i]):
        if out and len(out[-1]) < slots and not (split and steps[i] <= SPLIT_AT * steps[out[-1][0]]):
            out[-1].append(i)
        else:
            out.append([i])
    return out


@dataclass(frozen=True)
class DeviceWork:
    """One device's part of a group: its sample indices (into the host's x, y), its own
    random stream for this round, and its step cap (None = all epochs)."""

    indices: torch.Tensor
    generator: torch.Generator
    max_steps: Optional[int] = None


def _objective_mu(client: ClientAlgorithm) -> Optional[float]:
    """The proximal weight of a client whose objective this module knows (0 for plain SGD),
    or None when it does not know it."""
    if not isinstance(client, LocalSGD):
        return None
    cls = type(client)
    if cls.train is not LocalSGD.train or cls._update is not LocalSGD._update:
        return None
    if cls.objective is LocalSGD.objective:
        return 0.0
    if cls.objective is FedProx.objective:
        return float(client.mu)  # type: ignore[attr-defined]
    return None


def batchable(client: ClientAlgorithm, module: nn.Module) -> Optional[str]:
    """None when devices training `module` with `client` can be batched, else why not.

        >>> cnn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 10 * 10, 10))
        >>> batchable(LocalSGD(), cnn) is None
        True
        >>> class MyAlgorithm(LocalSGD):
        ...     def train(self, model, data, start):
        ...         return super().train(model, data, start)
        >>> batchable(MyAlgorithm(), cnn)
        'the client algorithm MyAlgorithm is not LocalSGD or FedProx as built in'
    """
    if client.keeps_state or client.server_state:
        return f"the client algorithm {type(client).__name__} keeps state across rounds"
    if _objective_mu(client) is None:
        return f"the client algorithm {type(client).__name__} is not LocalSGD or FedProx as built in"
    if any(True for _ in module.buffers()):
        return "the model has buffers (running statistics) that training updates"
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            return "the model has batch-statistics layers, which would see the padded samples"
        if isinstance(m, nn.modules.dropout._DropoutNd) or isinstance(m, nn.Dropout):
            return "the model has random layers, which would not draw from each device's stream"
        graph = getattr(m, "graph", None)
        if isinstance(graph, fx.Graph) and any(n.op == "call_function" and n.target in _BATCH_STATISTICS
                                               for n in graph.nodes):
            return "the model has batch-statistics layers, which would see the padded samples"
    return None


# Functional forms of batch statistics (a traced-through norm layer calls them directly).
_BATCH_STATISTICS = (F.batch_norm, F.instance_norm, torch.batch_norm, torch.instance_norm)


def _schedule(work: DeviceWork, epochs: int, batch_size: int) -> list[torch.Tensor]:
    """The device's minibatches (indices into the host's data), drawn exactly as
    `LocalSGD.train` draws them: a fresh permutation per epoch from its own stream."""
    n = int(work.indices.shape[0])
    per_epoch = max(1, math.ceil(n / batch_size))
    total = epochs * per_epoch if work.max_steps is None else min(work.max_steps, epochs * per_epoch)
    out: list[torch.Tensor] = []
    while len(out) < total:
        order = torch.randperm(n, generator=work.generator)
        for b in range(per_epoch):
            if len(out) >= total:
                break
            out.append(work.indices[order[b * batch_size:(b + 1) * batch_size]])
    return out


def _plan_steps(works: Sequence[DeviceWork], slots: int, epochs: int, batch_size: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per step and slot: sample indices padded to the batch size (T, S, B), which of them are
    real (T, S, B) and how many (T, S); a slot past its device's last step has none.

    Padding repeats one of the device's own samples (its minibatch's first, or its shard's
    first once it is done): a padded sample adds exact zeros to the gradient, except where its
    activations are not finite (0 * NaN), and then only in its own device's slot.
    """
    sched = [_schedule(w, epochs, batch_size) for w in works]
    steps = max((len(s) for s in sched), default=0)
    idx = torch.zeros((steps, slots, batch_size), dtype=torch.long)
    valid = torch.zeros((steps, slots, batch_size), dtype=torch.bool)
    for s, (w, batches) in enumerate(zip(works, sched)):
        if len(w.indices):
            idx[:, s] = w.indices[0]
        for t, ix in enumerate(batches):
            idx[t, s] = ix[0]
            idx[t, s, :len(ix)] = ix
            valid[t, s, :len(ix)] = True
    return idx, valid, valid.sum(dim=2)


def _loss_fn(module: nn.Module, names: list[str], mu: float, start: Mapping[str, torch.Tensor]
             ) -> Callable[[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """One device's minibatch loss as a function of its weights: mean cross-entropy over its
    real samples (plus FedProx's proximal term), for `grad_and_value` under `vmap`."""

    def loss(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, valid: torch.Tensor,
             count: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(functional_call(module, params, (x,)), y, reduction="none")
        # where, not a multiply: a padded sample's loss never reaches the sum (not even a NaN)
        value = torch.where(valid, ce, torch.zeros_like(ce)).sum() / count.clamp(min=1)
        if mu:
            value = value + 0.5 * mu * sum(((params[k] - start[k]) ** 2).sum() for k in names)
        return value

    return loss


def live_parameters(module: nn.Module, x_shape: tuple[int, ...], device: torch.device) -> list[str]:
    """Names of the parameters that get a gradient (`LocalSGD` leaves the others untouched:
    not even weight decay moves them). One backward pass on one zero sample."""
    for p in module.parameters():
        p.grad = None
    module.train()
    out = module(torch.zeros((1, *x_shape), device=device))
    out.sum().backward()
    names = [k for k, p in module.named_parameters() if p.grad is not None]
    for p in module.parameters():
        p.grad = None
    return names


def train_group(module: nn.Module, client: ClientAlgorithm, start: Mapping[str, torch.Tensor], x: torch.Tensor,
                y: torch.Tensor, works: Sequence[DeviceWork], epochs: int, batch_size: int,
                slots: Optional[int] = None,
                live: Optional[Sequence[str]] = None, pad: Optional[bool] = None,
                grouped: Optional[bool] = None) -> list[LocalResult]:
    """Train every device of `works` from `start` (one submodel shape, `module`'s), `slots`
    at a time (default: `slots_for` the data's device); one `LocalResult` per device, in
    order, as `client.train` would give it (its delta on the CPU).

    `x`, `y` are the host's whole training set (on the training device); `live`: the
    parameters that get gradients (default: all; see `live_parameters`); `pad`: pad the last
    chunk to `slots` (default: on a GPU; see the module docstring); `grouped`: train through
    the module's grouped program (`raysim.client.batched_forward`; default: when it has one), else `vmap`.
    """
    pad = chunking(x.device).padded if pad is None else pad
    slots = slots_for(x.device) if slots is None else slots
    mu = _objective_mu(client)
    if mu is None:
        raise ValueError(f"train_group: {batchable(client, module)}")
    program = grouped_program(module, tuple(x.shape[1:]), x.device) if grouped is not False else None
    if grouped and program is None:
        raise ValueError(f"train_group: {_PROGRAMS[module][1]}")
    sgd: LocalSGD = client  # type: ignore[assignment]
    out: list[LocalResult] = []
    for c in range(0, len(works), slots):
        chunk = works[c:c + slots]
        width = slots if pad else max(MIN_SLOTS, len(chunk))
        out += _train_chunk(module, program, sgd, mu, start, x, y, chunk, epochs, batch_size, width, live)
    return out


# Grouped programs per module (a host builds one module per submodel shape and keeps it).
_PROGRAMS: "weakref.WeakKeyDictionary[nn.Module, tuple[Optional[GroupedProgram], Optional[str]]]" = \
    weakref.WeakKeyDictionary()


def grouped_program(module: nn.Module, x_shape: tuple[int, ...], device: torch.device) -> Optional[GroupedProgram]:
    """The module's grouped program (compiled and checked against the module once per module,
    on an example of one sample's shape `x_shape`), or None: it trains under `vmap`."""
    if module not in _PROGRAMS:
        program, why = compile_grouped(module, len(x_shape) + 1)
        if program is not None:
            n = 3 * math.prod(x_shape)
            example = torch.linspace(-2.0, 2.0, n, device=device).reshape(3, *x_shape)
            why = check_grouped(program, module, example)
            program = None if why else program
        _PROGRAMS[module] = program, why
    return _PROGRAMS[module][0]


def trial(module: nn.Module, client: ClientAlgorithm, x_shape: tuple[int, ...], classes: int, batch_size: int,
          device: torch.device, live: Optional[Sequence[str]] = None) -> Optional[str]:
    """None when `module`'s devices train batched on `device` (two devices of one minibatch
    each, on random data), else why not, in one short line: a host trains a shape whose
    batched training cannot be built one device at a time instead of failing the run."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn((2 * batch_size, *x_shape), generator=g).to(device)
    y = torch.randint(0, classes, (2 * batch_size,), generator=g).to(device)
    start = {k: p.detach().clone() for k, p in module.named_parameters()}
    works = [DeviceWork(torch.arange(s * batch_size, (s + 1) * batch_size), torch.Generator().manual_seed(s))
             for s in range(2)]
    try:
        train_group(module, client, start, x, y, works, 1, batch_size, live=live)
    except torch.cuda.OutOfMemoryError:
        return None   # not a failure to build: a chunk that does not fit trains one by one (the host)
    except Exception as err:  # noqa: BLE001 (whatever it is, these devices train one by one)
        return f"batched training fails ({gist(err, 120)})"
    return None


# One step of a chunk: (stacked params, sample indices (S, B), real (S, B), count (S,)) ->
# (gradients of the moving parameters, None where one got none; per-slot objective (S,)).
Stepper = Callable[[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor],
                   tuple[list[Optional[torch.Tensor]], torch.Tensor]]


def _vmap_stepper(module: nn.Module, names: list[str], moving: list[str], mu: float,
                  start: Mapping[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> Stepper:
    step_fn = vmap(grad_and_value(_loss_fn(module, names, mu, start)))

    def step(params: dict[str, torch.Tensor], idx: torch.Tensor, valid: torch.Tensor, count: torch.Tensor
             ) -> tuple[list[Optional[torch.Tensor]], torch.Tensor]:
        s, b = idx.shape
        flat = idx.reshape(-1)
        grads, loss = step_fn(params, x[flat].reshape(s, b, *x.shape[1:]), y[flat].reshape(s, b), valid, count)
        return [grads[k] for k in moving], loss
    return step


def _grouped_stepper(program: GroupedProgram, names: list[str], moving: list[str], mu: float,
                     start: Mapping[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> Stepper:
    def step(params: dict[str, torch.Tensor], idx: torch.Tensor, valid: torch.Tensor, count: torch.Tensor
             ) -> tuple[list[Optional[torch.Tensor]], torch.Tensor]:
        s, b = idx.shape
        xb = stack_input(x, idx)
        logits = program(params, xb, s)                                   # (S, B, classes)
        ce = F.cross_entropy(logits.reshape(s * b, -1), y[idx.reshape(-1)], reduction="none").view(s, b)
        # where, not a multiply: a padded sample's loss never reaches the sum (not even a NaN)
        value = torch.where(valid, ce, torch.zeros_like(ce)).sum(dim=1) / count.clamp(min=1)
        if mu:
            value = value + 0.5 * mu * sum(((params[k] - _stack_like(start[k], params[k])) ** 2)
                                           .flatten(1).sum(dim=1) for k in names)
        # The sum of the devices' objectives: each device's gradient is exactly its own.
        grads = torch.autograd.grad(value.sum(), [params[k] for k in moving], allow_unused=True)
        return list(grads), value.detach()
    return step


def _stack_like(t: torch.Tensor, stacked: torch.Tensor) -> torch.Tensor:
    """One device's tensor broadcast over the slots of a stacked one."""
    return t.unsqueeze(0).expand_as(stacked)


def _train_chunk(module: nn.Module, program: Optional[GroupedProgram], sgd: LocalSGD, mu: float,
                 start: Mapping[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, works: Sequence[DeviceWork],
                 epochs: int, batch_size: int, slots: int, live: Optional[Sequence[str]]) -> list[LocalResult]:
    dev = x.device
    names = [k for k, _ in module.named_parameters()]
    moving = [k for k in names if live is None or k in set(live)]
    idx, valid, count = _plan_steps(works, slots, epochs, batch_size)
    idx, valid, count = idx.to(dev), valid.to(dev), count.to(dev)
    active = count > 0                                                   # (T, S): the slot steps
    every = active.all(dim=1).tolist()                                   # per step: no slot idles
    params = {k: start[k].unsqueeze(0).repeat(slots, *([1] * start[k].dim())) for k in names}
    if program is not None:
        for k in moving:
            params[k].requires_grad_(True)
        stepper = _grouped_stepper(program, names, moving, mu, start, x, y)
    else:
        stepper = _vmap_stepper(module, names, moving, mu, start, x, y)
    bufs: list[Optional[torch.Tensor]] = [None] * len(moving)
    loss_sum = torch.zeros(slots, dtype=torch.float64, device=dev)
    module.train()
    for t in range(idx.shape[0]):
        grads, loss = stepper(params, idx[t], valid[t], count[t])
        with torch.no_grad():
            _sgd_step(sgd, [params[k] for k in moving], grads, bufs, None if every[t] else active[t])
            loss_sum += torch.where(active[t], loss.double() * count[t], torch.zeros_like(loss_sum))
    steps = active.sum(dim=0).tolist() if idx.shape[0] else [0] * slots
    seen = count.sum(dim=0).tolist() if idx.shape[0] else [0] * slots
    losses = loss_sum.tolist()
    # One copy per tensor to the CPU (where deltas are folded), not one per device.
    with torch.no_grad():
        deltas = {k: (params[k][:len(works)] - start[k]).cpu() for k in names}
    results = []
    for s in range(len(works)):
        delta = {k: deltas[k][s] for k in names}
        results.append(LocalResult(delta, int(seen[s]), int(steps[s]), losses[s] / max(int(seen[s]), 1), finite(delta)))
    return results


def _sgd_step(sgd: LocalSGD, params: list[torch.Tensor], grads: list[Optional[torch.Tensor]],
              bufs: list[Optional[torch.Tensor]], on: Optional[torch.Tensor]) -> None:
    """The update of `LocalSGD._update`, term for term, on all slots at once, in place.

    `on` (per slot) masks the slots that have no step now (None: every slot has one): they
    keep their weights and momentum (where, so a NaN stays in its slot). A parameter without
    a gradient is left alone, as the loop leaves it. `bufs` (momentum, per parameter) is
    updated in place.
    """
    live = [i for i, g in enumerate(grads) if g is not None]
    ps = [params[i] for i in live]
    gs: list[torch.Tensor] = [g for g in grads if g is not None]  # the gradients of `live`, in order
    if not ps:
        return
    if sgd.weight_decay:
        gs = list(torch._foreach_add(gs, ps, alpha=sgd.weight_decay))
    if sgd.momentum:
        # A buffer starts as the gradient, as in the loop (0 * momentum + g is g exactly).
        old = [torch.zeros_like(ps[j]) if (b := bufs[i]) is None else b for j, i in enumerate(live)]
        new = list(torch._foreach_add(torch._foreach_mul(old, sgd.momentum), gs))
        if on is not None:
            new = [torch.where(_expand(on, b), nb, b) for b, nb in zip(old, new)]
        for j, i in enumerate(live):
            bufs[i] = new[j]
        gs = new
    if on is None:
        torch._foreach_add_(ps, gs, alpha=-sgd.lr)
        return
    stepped = torch._foreach_add(ps, gs, alpha=-sgd.lr)
    for p, q in zip(ps, stepped):
        p.copy_(torch.where(_expand(on, p), q, p))


def _expand(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-slot mask shaped to broadcast over a stacked tensor."""
    return mask.view(-1, *([1] * (like.dim() - 1)))
