"""Staleness weights of asynchronous aggregation: how much a late update still counts.

Staleness is the number of server steps between the version a device downloaded and the step
its update goes into. A weight function maps it to a factor in (0, 1] (FedAsync, Xie et al.
2019; FedBuff, Nguyen et al. 2022):

- `Constant`: s(t) = 1
- `Polynomial(a)`: s(t) = (1 + t)^-a (FedBuff's default is a = 0.5)
- `Hinge(a, b)`: s(t) = 1 for t <= b, else 1 / (a (t - b) + 1)

    >>> Polynomial(0.5)(3)
    0.5
"""

from __future__ import annotations

from dataclasses import dataclass


class Staleness:
    """A weight for an update that is `t` server steps stale (t >= 0)."""

    def __call__(self, t: int) -> float:
        raise NotImplementedError


@dataclass(frozen=True)
class Constant(Staleness):
    """Every update counts fully."""

    def __call__(self, t: int) -> float:
        return 1.0


@dataclass(frozen=True)
class Polynomial(Staleness):
    """(1 + t)^-a."""

    a: float = 0.5

    def __call__(self, t: int) -> float:
        return float((1.0 + t) ** -self.a)


@dataclass(frozen=True)
class Hinge(Staleness):
    """Full weight up to `b` steps stale, then 1 / (a (t - b) + 1)."""

    a: float = 10.0
    b: int = 4

    def __call__(self, t: int) -> float:
        return 1.0 if t <= self.b else 1.0 / (self.a * (t - self.b) + 1.0)


def staleness_fn(kind: str, a: float, b: int) -> Staleness:
    """The weight function a scenario's `server.staleness` names.

        >>> staleness_fn("hinge", a=10, b=4)(5)
        0.09090909090909091
    """
    if kind == "constant":
        return Constant()
    if kind == "polynomial":
        return Polynomial(a)
    if kind == "hinge":
        return Hinge(a, b)
    raise ValueError(f"server.staleness: unknown kind {kind!r} (constant, polynomial, hinge)")
