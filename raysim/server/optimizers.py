"""Server optimizers: how the aggregated update moves the global model.

The round loop hands a server optimizer the per-element mean delta of the devices that held
each element (`delta`), the mask of elements anybody held (`held`) and the explicit
`ServerState`; the optimizer moves `params` in place. Elements nobody held must not move,
state included: that is what per-element (HeteroFL / FedRolex) aggregation means.

Built-ins: `FedAvg`, `FedAvgM`, and the adaptive `FedAdam` and `FedYogi`, both `FedOpt`
subclasses (Reddi et al., "Adaptive Federated Optimization", ICLR 2021). A new optimizer
subclasses `ServerOptimizer` (or `FedOpt` for another second-moment rule):

    class SignSGD(ServerOptimizer):
        class Params(BaseModel):
            lr: float = 0.01

        def __init__(self, lr: float = 0.01) -> None:
            self.lr = lr

        def step(self, params: dict[str, torch.Tensor], delta: Mapping[str, torch.Tensor],
                 held: Mapping[str, torch.Tensor], state: ServerState) -> None:
            for k, p in params.items():
                h = held[k]
                p[h] += self.lr * torch.sign(delta[k][h])
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from pydantic import BaseModel, ConfigDict, Field

Tensors = Mapping[str, torch.Tensor]


@dataclass
class ServerState:
    """The server optimizer's state, explicit (checkpointed with the global model).

    `slots[param][name]` holds per-element tensors (a momentum buffer, second moments), created
    lazily by the optimizer that needs them; `steps` counts server steps taken.
    """

    slots: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    steps: int = 0

    def copy(self) -> "ServerState":
        """A deep copy (each gateway's optimizer starts from its own)."""
        return ServerState({k: {n: t.clone() for n, t in v.items()} for k, v in self.slots.items()}, self.steps)

    def plain(self) -> dict[str, Any]:
        """The state as plain containers of tensors (what a checkpoint holds)."""
        return {"slots": {k: dict(v) for k, v in self.slots.items()}, "steps": self.steps}

    @classmethod
    def from_plain(cls, st: dict[str, Any]) -> "ServerState":
        """Restore from `plain()` (a copy: the checkpoint's tensors are not shared)."""
        return cls({k: {n: t.clone() for n, t in v.items()} for k, v in st["slots"].items()}, int(st.get("steps", 0)))


class ServerOptimizer(ABC):
    """One server step on the aggregated update (the negative pseudo-gradient).

    `Params` (a pydantic model) validates the optimizer's `server.params` from a scenario;
    the instance is built as `cls(**params)`.
    """

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

    @abstractmethod
    def step(self, params: dict[str, torch.Tensor], delta: Tensors, held: Tensors, state: ServerState) -> None:
        """Move `params` in place by `delta` where `held` is true; keep what it needs in `state`."""

    def apply(self, params: dict[str, torch.Tensor], delta: Tensors, held: Tensors, state: ServerState) -> None:
        """The server step as the engine takes it: `step`, then the state counts it (an
        optimizer overrides `step`, never this)."""
        self.step(params, delta, held, state)
        state.steps += 1

    @staticmethod
    def slot(state: ServerState, name: str, key: str, like: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """The per-element buffer `key` of parameter `name`, created filled with `fill` on first use."""
        slots = state.slots.setdefault(name, {})
        if key not in slots:
            slots[key] = torch.full_like(like, fill)
        return slots[key]


class FedAvg(ServerOptimizer):
    """x += lr * mean delta (lr = 1 is plain FedAvg)."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        lr: float = Field(1.0, gt=0.0, allow_inf_nan=False)

    def __init__(self, lr: float = 1.0) -> None:
        self.lr = lr

    def step(self, params: dict[str, torch.Tensor], delta: Tensors, held: Tensors, state: ServerState) -> None:
        for k, p in params.items():
            # a dense select, not p[h] += ...[h]: the boolean gather and scatter cost several
            # times more (once per gateway and round with gateways); unheld elements keep their bits
            p.copy_(torch.where(held[k], p + delta[k] * self.lr, p))


class FedAvgM(ServerOptimizer):
    """Heavy-ball momentum on the mean delta (Hsu et al., 2019)."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        lr: float = Field(1.0, gt=0.0, allow_inf_nan=False)
        momentum: float = Field(0.9, ge=0.0, lt=1.0)

    def __init__(self, lr: float = 1.0, momentum: float = 0.9) -> None:
        self.lr, self.momentum = lr, momentum

    def step(self, params: dict[str, torch.Tensor], delta: Tensors, held: Tensors, state: ServerState) -> None:
        for k, p in params.items():
            d, h = delta[k], held[k]
            m = self.slot(state, k, "m", p)
            m[h] = self.momentum * m[h] + d[h]
            p[h] += (self.lr * m)[h]


class FedOpt(ServerOptimizer):
    """Adaptive server optimizers: first moment m, second moment v, step lr * m / (sqrt(v) + eps).

    Subclasses give the second-moment rule (`second_moment`).
    """

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        lr: float = Field(1.0, gt=0.0, allow_inf_nan=False)
        beta1: float = Field(0.9, ge=0.0, lt=1.0)
        beta2: float = Field(0.99, ge=0.0, lt=1.0)
        eps: float = Field(1e-3, gt=0.0, allow_inf_nan=False)

    def __init__(self, lr: float = 1.0, beta1: float = 0.9, beta2: float = 0.99, eps: float = 1e-3) -> None:
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps

    @abstractmethod
    def second_moment(self, v: torch.Tensor, d2: torch.Tensor) -> torch.Tensor:
        """The new second moment of the held elements from the old one and the squared delta."""

    def step(self, params: dict[str, torch.Tensor], delta: Tensors, held: Tensors, state: ServerState) -> None:
        for k, p in params.items():
            d, h = delta[k], held[k]
            m, v = self.slot(state, k, "m", p), self.slot(state, k, "v", p, fill=self.eps**2)
            m[h] = self.beta1 * m[h] + (1 - self.beta1) * d[h]
            v[h] = self.second_moment(v[h], d[h] * d[h])
            p[h] += (self.lr * m / (v.sqrt() + self.eps))[h]


class FedAdam(FedOpt):
    """v = beta2 v + (1 - beta2) d^2."""

    def second_moment(self, v: torch.Tensor, d2: torch.Tensor) -> torch.Tensor:
        return self.beta2 * v + (1 - self.beta2) * d2


class FedYogi(FedOpt):
    """v = v - (1 - beta2) d^2 sign(v - d^2): v grows no faster than additively (Yogi)."""

    def second_moment(self, v: torch.Tensor, d2: torch.Tensor) -> torch.Tensor:
        return v - (1 - self.beta2) * d2 * torch.sign(v - d2)
