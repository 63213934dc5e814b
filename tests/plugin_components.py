"""Components a researcher might write, as ordinary torch/numpy code (used by the plug-in tests).

Nothing here is raysim-specific except the base classes it subclasses.
"""

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from raysim.api import LocalSGD, ServerOptimizer, Strategy, SubmodelPlan
from raysim.submodel.plan import rate_sizes


class TinyMLP(nn.Module):
    """A plain MLP over tabular features; raysim slices it by itself."""

    def __init__(self, features: int, classes: int, hidden: int = 24) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.head(self.body(x))


def tiny_mlp(input_shape, num_classes, hidden: int = 24):
    return TinyMLP(input_shape[0], num_classes, hidden)


def blobs(seed: int, n: int = 1500, features: int = 12, classes: int = 3, users: int = 40):
    """Tabular data: Gaussian blobs per class, shifted per user; groups = users."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 2.0, (classes, features))
    shift = rng.normal(0, 0.5, (users, features))
    y = rng.integers(0, classes, n)
    g = rng.integers(0, users, n)
    x = (centres[y] + shift[g] + rng.normal(0, 1.0, (n, features))).astype(np.float32)
    cut = int(0.8 * n)
    return x[:cut], y[:cut], x[cut:], y[cut:], g[:cut]


class LastChannels(Strategy):
    """Keeps the *last* channels of every group (the mirror image of HeteroFL's static rule)."""

    def plan(self, spec, rate, round_idx, device_id, global_params, seed):
        return SubmodelPlan(rate, {g: np.arange(w - rate_sizes(w, rate), w, dtype=np.int64)
                                   for g, w in spec.groups.items()})


class StepsAsLoss(LocalSGD):
    """Plain SGD that reports its step count as its loss (so a test can see it ran)."""

    def train(self, model, data, start):
        res = super().train(model, data, start)
        return type(res)(res.delta, res.samples, res.steps, float(res.steps), res.finite)


class CountingAvg(ServerOptimizer):
    """FedAvg that counts, per element, the server steps that moved it (in the server state)."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        lr: float = Field(1.0, gt=0)

    def __init__(self, lr: float = 1.0) -> None:
        self.lr = lr

    def step(self, params, delta, held, state):
        for k, p in params.items():
            h = held[k]
            p[h] += self.lr * delta[k][h]
            self.slot(state, k, "moves", p)[h] += 1


class Unsliceable(nn.Module):
    """Data-dependent control flow: cannot be traced, so it can only train whole."""

    def __init__(self, features: int, classes: int) -> None:
        super().__init__()
        self.a = nn.Linear(features, 16)
        self.b = nn.Linear(16, classes)

    def forward(self, x):
        h = self.a(x)
        if h.sum() > 0:
            h = torch.relu(h)
        return self.b(h)


def unsliceable(input_shape, num_classes):
    return Unsliceable(input_shape[0], num_classes)
