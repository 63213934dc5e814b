"""Client algorithms: a device's local training, from its submodel and data to its update.

A `ClientAlgorithm` receives the device's submodel (already loaded with the global weights
its plan keeps), the device's data and random stream (`LocalData`), and those start weights;
it trains and returns the delta (new - start). Everything around it (which submodel, which
data, the remapping into global coordinates, the exact aggregation) stays raysim's, so an
algorithm is a few lines of ordinary torch:

    class FedProx(LocalSGD):                       # the built-in, in full
        def objective(self, model, x, y, start):
            prox = sum(((p - start[k]) ** 2).sum() for k, p in model.named_parameters())
            return F.cross_entropy(model(x), y) + 0.5 * self.mu * prox

`LocalSGD` is minibatch SGD with momentum and weight decay, its update a plain in-place step
rather than `torch.optim`: the first torch optimizer built in a process costs ~1.6 s and
~90 MB (it imports the compiler stack), and a device host trains thousands of tiny submodels.
Subclass it and override `objective` (the loss of one minibatch) to change what is optimised,
or subclass `ClientAlgorithm` to change everything.

State across rounds: an algorithm that sets `keeps_state` finds the state it returned last time
(`LocalResult.state`) in `data.state`, moved into this round's submodel, whichever host trains
the device; one that sets `server_state` also gets a model-shaped server quantity in
`data.server` (its submodel's part), and the sum of the devices' `LocalResult.server_delta` is
folded into it by `update_server` after each round. `Scaffold` is built that way.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class LocalData:
    """A device's training data and budget for one round.

    `max_steps` caps the minibatch steps (partial work before a deadline; None = all of
    `epochs`); `generator` is the device's own random stream for this round (shuffles,
    dropout masks), so results depend on neither the host nor the order devices run in.
    """

    x: torch.Tensor
    y: torch.Tensor
    epochs: int
    batch_size: int
    max_steps: Optional[int]
    generator: torch.Generator
    # Stateful algorithms only: the device's own state from its last training (None: it has
    # none yet) and the server's quantity, both in this submodel's coordinates.
    state: Optional[Mapping[str, torch.Tensor]] = None
    server: Optional[Mapping[str, torch.Tensor]] = None

    @property
    def steps(self) -> int:
        """Minibatch steps this round: every epoch's, capped by `max_steps`."""
        per_epoch = max(1, math.ceil(int(self.x.shape[0]) / self.batch_size))
        full = self.epochs * per_epoch
        return full if self.max_steps is None else min(self.max_steps, full)


@dataclass(frozen=True)
class LocalResult:
    """What local training produced: the delta (new - start) of every parameter."""

    delta: dict[str, torch.Tensor]
    samples: int   # samples processed (counting repeats over epochs)
    steps: int
    loss: float    # mean training loss over the samples processed
    finite: bool   # every element of the delta is finite (else the update is dropped)
    # Stateful algorithms only: the device's state to keep for next time, and its contribution
    # to the server quantity (summed over the round's devices in global coordinates).
    state: Optional[dict[str, torch.Tensor]] = None
    server_delta: Optional[dict[str, torch.Tensor]] = None


class ClientAlgorithm(ABC):
    """Local training on one device. Subclasses implement `train`.

    `Params` (a pydantic model) validates `train.params` from a scenario; the instance is
    built as `cls(**params)`. `state_copies` is how many extra per-parameter tensors the
    algorithm keeps while training (a momentum buffer is one): the cost model counts them in
    a device's training memory.
    """

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

    state_copies: int = 0
    keeps_state: bool = False    # per-device state across rounds (`data.state`, `LocalResult.state`)
    server_state: bool = False   # a model-shaped server quantity (`data.server`, `update_server`)

    @abstractmethod
    def train(self, model: nn.Module, data: LocalData, start: Mapping[str, torch.Tensor]) -> LocalResult:
        """Train `model` in place and return its delta against `start` (its weights on entry;
        read-only: devices that share a submodel share it)."""

    def update_server(self, server: dict[str, torch.Tensor], total: Mapping[str, torch.Tensor],
                      fleet_size: int) -> dict[str, torch.Tensor]:
        """The server quantity after a round: here (SCAFFOLD's rule) `server + total / N`, where
        `total` sums the round's `server_delta`s per global element and N is the fleet's size."""
        return {k: v + total[k] / fleet_size for k, v in server.items()}


def finite(delta: Mapping[str, torch.Tensor]) -> bool:
    """Whether every element is finite, in one reduction instead of one per tensor.

    A float64 sum of finite float32 values cannot overflow, so it is finite exactly when every
    element is (a NaN or inf propagates).
    """
    return bool(torch.isfinite(torch.stack([d.sum(dtype=torch.float64) for d in delta.values()]).sum()))


class LocalSGD(ClientAlgorithm):
    """Minibatch SGD over the device's shard: `epochs` passes, a fresh shuffle each.

    `objective(model, x, y, start)` is the loss of one minibatch (cross-entropy here);
    subclasses change it. The update runs over all parameters at once (torch's multi-tensor
    ops), not one small op per tensor.
    """

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        lr: float = Field(0.05, gt=0.0, allow_inf_nan=False, description="learning rate")
        momentum: float = Field(0.0, ge=0.0, lt=1.0, description="SGD momentum")
        weight_decay: float = Field(0.0, ge=0.0, allow_inf_nan=False, description="L2 weight decay")

    def __init__(self, lr: float = 0.05, momentum: float = 0.0, weight_decay: float = 0.0) -> None:
        self.lr, self.momentum, self.weight_decay = float(lr), float(momentum), float(weight_decay)

    @property
    def state_copies(self) -> int:  # type: ignore[override]
        return 1 if self.momentum > 0 else 0

    def objective(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                  start: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The loss of one minibatch, to be minimised."""
        return F.cross_entropy(model(x), y)

    def train(self, model: nn.Module, data: LocalData, start: Mapping[str, torch.Tensor]) -> LocalResult:
        return self._sgd(model, data, start, None)

    def _sgd(self, model: nn.Module, data: LocalData, start: Mapping[str, torch.Tensor],
             correction: Optional[list[torch.Tensor]]) -> LocalResult:
        """The SGD loop; `correction` (one tensor per parameter, in order) is added to every
        gradient before the step (SCAFFOLD's control variates)."""
        named = list(model.named_parameters())
        params = [p for _, p in named]
        bufs: Optional[list[Optional[torch.Tensor]]] = None
        n = int(data.x.shape[0])
        bs = data.batch_size
        per_epoch = max(1, math.ceil(n / bs))
        total = data.steps
        model.train()
        seen, loss_sum, step = 0, 0.0, 0
        while step < total:
            order = torch.randperm(n, generator=data.generator)
            for b in range(per_epoch):
                if step >= total:
                    break
                ix = order[b * bs:(b + 1) * bs]
                loss = self.objective(model, data.x[ix], data.y[ix], start)
                for p in params:
                    p.grad = None
                loss.backward()
                with torch.no_grad():
                    if correction is not None:
                        for p, c in zip(params, correction):
                            if p.grad is not None:
                                p.grad.add_(c)
                    bufs = self._update(params, bufs)
                loss_sum += float(loss.detach()) * len(ix)
                seen += len(ix)
                step += 1
        with torch.no_grad():
            delta = dict(zip((k for k, _ in named), torch._foreach_sub([p.detach() for p in params],
                                                                       [start[k] for k, _ in named])))
        return LocalResult(delta, seen, step, loss_sum / max(seen, 1), finite(delta))

    def _update(self, params: Sequence[torch.Tensor], bufs: Optional[list[Optional[torch.Tensor]]]
                ) -> list[Optional[torch.Tensor]]:
        """One SGD step on every parameter that got a gradient; returns the momentum buffers
        (one per parameter, None until it first gets a gradient)."""
        bufs = bufs if bufs is not None else [None] * len(params)
        live = [i for i, p in enumerate(params) if p.grad is not None]
        if not live:
            return bufs
        ps = [params[i] for i in live]
        grads: list[torch.Tensor] = [p.grad for p in ps if p.grad is not None]  # every one: `live` has a gradient
        if self.weight_decay:
            grads = list(torch._foreach_add(grads, ps, alpha=self.weight_decay))
        if self.momentum:
            old = [bufs[i] for i in live]
            started = [b for b in old if b is not None]
            if len(started) == len(old):
                torch._foreach_mul_(started, self.momentum)
                torch._foreach_add_(started, grads)
                new = started
            else:  # first step (or a parameter's first gradient): the buffer starts as the gradient
                new = [g.clone() if b is None else b.mul_(self.momentum).add_(g) for b, g in zip(old, grads)]
            for i, b in zip(live, new):
                bufs[i] = b
            grads = new
        torch._foreach_add_(ps, grads, alpha=-self.lr)
        return bufs


class FedProx(LocalSGD):
    """FedProx (Li et al., MLSys 2020): the local objective plus (mu/2) ||w - w_start||^2.

    The proximal term keeps a device's model near the global weights it started from, which
    bounds client drift on non-IID data and lets partial work (fewer local steps) still help.
    `mu = 0` is plain `LocalSGD`.
    """

    class Params(LocalSGD.Params):
        mu: float = Field(0.01, ge=0.0, allow_inf_nan=False, description="weight of the proximal term")

    def __init__(self, lr: float = 0.05, momentum: float = 0.0, weight_decay: float = 0.0, mu: float = 0.01) -> None:
        super().__init__(lr, momentum, weight_decay)
        self.mu = float(mu)

    def objective(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                  start: Mapping[str, torch.Tensor]) -> torch.Tensor:
        loss = F.cross_entropy(model(x), y)
        if self.mu:
            prox = sum(((p - start[k]) ** 2).sum() for k, p in model.named_parameters())
            loss = loss + 0.5 * self.mu * prox
        return loss


class Scaffold(LocalSGD):
    """SCAFFOLD (Karimireddy et al., ICML 2020), option II: local steps corrected by control variates.

    Each step follows `g - c_i + c` instead of the gradient g, where c_i is the device's control
    variate (its state, zero the first time) and c the server's (`data.server`). After K steps
    from x to y, c_i+ = c_i - c + (x - y) / (K lr); the device keeps c_i+ and sends its change
    c_i+ - c_i, and the server moves c by the sum of the changes over the fleet's size N.

    On a submodel both variates live in the submodel's coordinates: the device's moves between
    plans through the global model's (entries its new plan lacks are dropped), the server's is
    cut from the global one like the weights. `state_copies` counts both (and momentum).
    """

    keeps_state = True
    server_state = True

    @property
    def state_copies(self) -> int:  # type: ignore[override]
        return 2 + (1 if self.momentum > 0 else 0)

    def train(self, model: nn.Module, data: LocalData, start: Mapping[str, torch.Tensor]) -> LocalResult:
        names = [k for k, _ in model.named_parameters()]

        def part(src: Optional[Mapping[str, torch.Tensor]], k: str) -> torch.Tensor:
            return src[k] if src is not None and k in src else torch.zeros_like(start[k])

        server = {k: part(data.server, k) for k in names}
        own = {k: part(data.state, k) for k in names}
        # c - c_i is fixed for the round and added to every step's gradient
        res = self._sgd(model, data, start, [server[k] - own[k] for k in names])
        if res.steps == 0:
            return res
        # c_i+ - c_i = -c + (x - y) / (K lr), and x - y is minus the delta
        scale = 1.0 / (res.steps * self.lr)
        change = {k: -server[k] - res.delta[k] * scale for k in names}
        keep = {k: own[k] + change[k] for k in names}
        return LocalResult(res.delta, res.samples, res.steps, res.loss, res.finite and finite(change), keep, change)
