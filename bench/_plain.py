"""Plain local training shared by the benchmark baselines (the compute floor, the Flower client).

The same shuffles and update as `raysim.client.algorithms.LocalSGD` (same torch generator, batches and
in-place SGD step) without its bookkeeping, so a baseline trains exactly what raysim trains.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F


def plain_sgd(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, batch_size: int,
              lr: float, gen: torch.Generator) -> None:
    """Minibatch SGD on (x, y) in place: momentum 0, weight decay 0."""
    params = list(model.parameters())
    n = int(x.shape[0])
    steps = max(1, math.ceil(n / batch_size))
    model.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for b in range(steps):
            ix = order[b * batch_size:(b + 1) * batch_size]
            loss = F.cross_entropy(model(x[ix]), y[ix])
            for p in params:
                p.grad = None
            loss.backward()
            with torch.no_grad():
                for p in params:
                    if p.grad is not None:
                        p.add_(p.grad, alpha=-lr)
