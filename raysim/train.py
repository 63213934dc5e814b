"""Local training of one device's submodel (pure torch; knows nothing of Ray).

The update is a plain in-place SGD step rather than `torch.optim`: the first torch optimizer
built in a process costs ~1.6 s and ~90 MB (it imports the compiler stack), and a device-host
trains thousands of tiny submodels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Optional

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class LocalResult:
    """What local training produced: the delta (new - old) of every parameter."""

    delta: dict[str, torch.Tensor]
    samples: int
    steps: int
    loss: float
    finite: bool


def local_train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, batch_size: int,
                lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
                max_steps: Optional[int] = None, generator: torch.Generator,
                start: Optional[Mapping[str, torch.Tensor]] = None) -> LocalResult:
    """Train `model` in place on (x, y) with minibatch SGD and return its delta.

    `max_steps` caps the number of minibatch steps (partial work before a deadline);
    `generator` drives the shuffling, so the result depends only on the device's stream.
    `start`, if given, must hold the model's current weights (e.g. what was just loaded into
    it): the delta is taken against it instead of a fresh copy.
    """
    if start is None:
        start = {k: p.detach().clone() for k, p in model.named_parameters()}
    params = [p for p in model.parameters()]
    bufs: list[Optional[torch.Tensor]] = [None] * len(params)
    n = int(x.shape[0])
    steps_per_epoch = max(1, math.ceil(n / batch_size))
    total = epochs * steps_per_epoch if max_steps is None else min(max_steps, epochs * steps_per_epoch)
    model.train()
    seen = 0
    loss_sum = 0.0
    step = 0
    while step < total:
        order = torch.randperm(n, generator=generator)
        for b in range(steps_per_epoch):
            if step >= total:
                break
            ix = order[b * batch_size:(b + 1) * batch_size]
            loss = F.cross_entropy(model(x[ix]), y[ix])
            for p in params:
                p.grad = None
            loss.backward()
            with torch.no_grad():
                for i, p in enumerate(params):
                    g = p.grad
                    if g is None:
                        continue
                    if weight_decay:
                        g = g.add(p, alpha=weight_decay)
                    if momentum:
                        buf = bufs[i]
                        buf = g.clone() if buf is None else buf.mul_(momentum).add_(g)
                        bufs[i] = buf
                        g = buf
                    p.add_(g, alpha=-lr)
            loss_sum += float(loss.detach()) * len(ix)
            seen += len(ix)
            step += 1
    delta = {k: p.detach() - start[k] for k, p in model.named_parameters()}
    # One check instead of one per tensor: a float64 sum of finite float32 values cannot
    # overflow, so it is finite exactly when every element is (a NaN or inf propagates).
    finite = bool(torch.isfinite(torch.stack([d.sum(dtype=torch.float64) for d in delta.values()]).sum()))
    return LocalResult(delta, seen, step, loss_sum / max(seen, 1), finite)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of `model` on (x, y)."""
    model.eval()
    correct = 0
    loss = 0.0
    for i in range(0, int(x.shape[0]), batch_size):
        out = model(x[i:i + batch_size])
        yy = y[i:i + batch_size]
        loss += float(F.cross_entropy(out, yy, reduction="sum"))
        correct += int((out.argmax(1) == yy).sum())
    n = max(int(x.shape[0]), 1)
    return correct / n, loss / n


def load_params(model: nn.Module, params: Mapping[str, torch.Tensor]) -> None:
    """Copy `params` into the module's parameters (shapes must match)."""
    with torch.no_grad():
        for k, p in model.named_parameters():
            p.copy_(params[k])
