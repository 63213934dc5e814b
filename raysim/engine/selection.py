"""Client selection: which online devices a round asks to train.

A `Selector` sees the round's online devices (ids, sorted) and how many to pick, and returns
that many of them. It may look at each online device's battery level (the share of its charge
above its reserve: 1 when full or mains-powered, 0 at the reserve). Built-ins:

- `Uniform`: a uniform sample without replacement (the default; FedAvg's selection).
- `EnergyAware`: a sample without replacement weighted by battery level ** `exponent`, so
  charged devices are preferred and devices at their reserve are picked only when too few
  others are online. In the spirit of EAFL's battery-aware selection (which also weighs
  Oort-style statistical utility; this rule looks at the battery alone).

A new rule subclasses `Selector`:

    class FewestRounds(Selector):
        def select(self, req):
            ...  # return req.want ids from req.online
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from raysim.errors import PluginError
from raysim.seeding import rng

__all__ = ["SelectRequest", "Selector", "Uniform", "EnergyAware", "check_selection"]


@dataclass(frozen=True)
class SelectRequest:
    """What a selector may look at in one round.

    `online`: ids of the devices online at the round's start (sorted); `want`: how many to pick
    (never more than are online); `battery_level()`: per online device, charge above its reserve
    as a share (1 for mains-powered devices and when batteries are off); `seed`: the scenario's
    seed, for the selector's own random stream (`req.rng()`: `raysim.rng(seed, "select", round,
    *key)`); `key`: what tells apart several selections in one round (a gateway and its gateway
    round under a topology; empty in flat rounds).
    """

    round: int
    online: np.ndarray
    want: int
    seed: int
    clock: float
    battery_level: Callable[[], np.ndarray]
    key: tuple[int, ...] = ()

    def rng(self) -> np.random.Generator:
        """This selection's own random stream."""
        return rng(self.seed, "select", self.round, *self.key)


class Selector(ABC):
    """Turns a round's online devices into the devices asked to train. `Params` validates `selection.params`."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

    @abstractmethod
    def select(self, req: SelectRequest) -> np.ndarray:
        """`req.want` distinct ids from `req.online` (any order; the engine sorts them)."""


class Uniform(Selector):
    """Every online device equally likely (without replacement)."""

    def select(self, req: SelectRequest) -> np.ndarray:
        pick = req.rng().choice(len(req.online), size=req.want, replace=False)
        return req.online[pick]


class EnergyAware(Selector):
    """Online devices sampled with weight battery level ** exponent, without replacement
    (Efraimidis-Spirakis keys: one uniform draw per online device)."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        exponent: float = Field(1.0, ge=0.0, le=16.0, description="0: uniform; larger: more strongly charged first")

    def __init__(self, exponent: float = 1.0) -> None:
        self.exponent = float(exponent)

    def select(self, req: SelectRequest) -> np.ndarray:
        level = np.asarray(req.battery_level(), dtype=np.float64)
        u = req.rng().random(len(req.online))
        w = level ** self.exponent if self.exponent > 0 else np.ones_like(level)
        with np.errstate(divide="ignore"):
            key = np.where(w > 0, np.log(np.maximum(u, 1e-300)) / np.where(w > 0, w, 1.0), -np.inf)
        # devices of weight 0 (at their reserve) come last, in random order among themselves
        order = np.lexsort((-u, -key))
        return req.online[order[:req.want]]


def check_selection(selector: object, picked: np.ndarray, want: int, online: np.ndarray) -> None:
    """Raise `PluginError` naming `selector` unless `picked` is `want` distinct ids of `online`.

        >>> check_selection(Uniform(), np.array([3, 1]), 2, np.array([1, 2, 3]))
        >>> try:
        ...     check_selection(Uniform(), np.array([3, 3]), 2, np.array([1, 2, 3]))
        ... except PluginError as err:
        ...     print(str(err)[:64])
        selector raysim.engine.selection:Uniform returned device 3 twice
    """
    expected = f"expected {want} distinct ids of devices online at the round's start"
    if len(picked) != want:
        raise PluginError(selector, "selector", f"returned {len(picked)} device ids; {expected}")
    ids, counts = np.unique(picked, return_counts=True)
    if (counts > 1).any():
        raise PluginError(selector, "selector", f"returned device {int(ids[counts > 1][0])} "
                          f"{'twice' if counts.max() == 2 else f'{int(counts.max())} times'}; {expected}")
    off = ~np.isin(picked, online)
    if off.any():
        raise PluginError(selector, "selector", f"returned device {int(picked[off][0])}, which is offline or not in "
                          f"the pool it draws from; {expected}")
