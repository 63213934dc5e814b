"""Aggregation rules: how the updates a server step receives become one update per element.

A step receives `Arrival`s: an exact partial sum of deltas in global coordinates, the global
version its devices started from and, for a rule that needs it, that version's weights. The
rule turns them into the mean `delta` and the `held` mask the server optimizer takes:

- `Mean`: the per-element weighted mean of one summed arrival (synchronous rounds: every
  update started from the current model).
- `Buffered(staleness)`: FedBuff (Nguyen et al., 2022): the per-element mean of
  s(staleness) x delta over the holders of each element, arrivals in their given order.
- `Mixed(alpha, staleness)`: FedAsync (Xie et al., 2019): one arrival mixed into the model,
  x <- x + alpha s(t) (x_start + delta - x), on the elements it held.

This is the one place an asynchronous server's mode is looked at.

    >>> from raysim.server.staleness import Polynomial
    >>> rule_for("fedbuff", Polynomial(0.5), alpha=0.6).per_step(10)
    10
    >>> rule_for("fedasync", Polynomial(0.5), alpha=0.6).per_step(10)
    1
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

import torch

from raysim.messages import PartialSum
from raysim.server.aggregate import buffered_mean, mean_delta, mixed_update
from raysim.server.staleness import Staleness

__all__ = ["Arrival", "Rule", "Mean", "Buffered", "Mixed", "rule_for", "MODES"]

MODES = ("fedbuff", "fedasync")
Update = tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class Arrival:
    """Updates that reach a server step together: their exact sum, the global version they
    started from, and that version's weights (`start`; only `Mixed` reads them)."""

    part: PartialSum
    version: int
    start: Optional[Mapping[str, torch.Tensor]] = None


class Rule:
    """Combines a step's arrivals into (delta, held), or None when nothing arrived."""

    def combine(self, step: int, arrivals: list[Arrival], params: Mapping[str, torch.Tensor],
                shapes: Mapping[str, tuple[int, ...]]) -> Optional[Update]:
        raise NotImplementedError

    def per_step(self, buffer: int) -> int:
        """Arrivals that make a server step, for a buffer of `buffer`."""
        return buffer


@dataclass(frozen=True)
class Mean(Rule):
    """Synchronous rounds: the per-element mean of the round's one summed arrival."""

    def combine(self, step: int, arrivals: list[Arrival], params: Mapping[str, torch.Tensor],
                shapes: Mapping[str, tuple[int, ...]]) -> Optional[Update]:
        if not arrivals or not arrivals[0].part.devices:
            return None
        (one,) = arrivals
        return mean_delta(one.part)


@dataclass(frozen=True)
class Buffered(Rule):
    """FedBuff: staleness-weighted per-element mean over the buffered arrivals."""

    staleness: Staleness

    def combine(self, step: int, arrivals: list[Arrival], params: Mapping[str, torch.Tensor],
                shapes: Mapping[str, tuple[int, ...]]) -> Optional[Update]:
        if not arrivals:
            return None
        return buffered_mean([(self.staleness(step - 1 - a.version), a.part) for a in arrivals], shapes)


@dataclass(frozen=True)
class Mixed(Rule):
    """FedAsync: one arrival mixed in with weight alpha x s(staleness)."""

    alpha: float
    staleness: Staleness

    def combine(self, step: int, arrivals: list[Arrival], params: Mapping[str, torch.Tensor],
                shapes: Mapping[str, tuple[int, ...]]) -> Optional[Update]:
        if not arrivals:
            return None
        (one,) = arrivals  # one arrival per step
        assert one.start is not None, "FedAsync mixes against the weights the arrival started from"
        return mixed_update(one.part, self.alpha * self.staleness(step - 1 - one.version), one.start, params)

    def per_step(self, buffer: int) -> int:
        return 1


def rule_for(mode: str, staleness: Staleness, alpha: float) -> Rule:
    """The rule of an asynchronous server mode (`fedbuff` or `fedasync`)."""
    if mode == "fedbuff":
        return Buffered(staleness)
    if mode == "fedasync":
        return Mixed(alpha, staleness)
    raise ValueError(f"server.mode: {mode!r} is not one of {MODES}")
