"""What a run simulates and how its round loop is set: the world fixed before round 1 (`Setup`),
the loop's own settings (`RoundConfig`) and the contract of the places devices train (`Backend`).

    cfg = RoundConfig(seed=0, rounds=5, per_round=10)
    cfg.enforced_deadline      # None when rounds wait for K
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol

import torch

from raysim.data import Dataset, Shards
from raysim.engine.cost import RateCost
from raysim.fleet import Availability, Fleet
from raysim.messages import GroupResult, HostResult, TrainTask
from raysim.models import ModelSpec
from raysim.submodel import SubmodelPlan

__all__ = ["Backend", "Setup", "RoundConfig", "host_work", "STEP_OVERHEAD_FLOPS"]


class Backend(Protocol):
    """Runs a round's training tasks somewhere and returns the hosts' results.

    `server` is a stateful client algorithm's server quantity (SCAFFOLD's control variate),
    sent to every device with the weights. `train_groups` is the asynchronous form: tasks start from several global versions and
    each host answers with one partial sum per task group; `live` names the versions still
    needed later (a backend may keep those and drop the rest).
    """

    def train(self, round_idx: int, params: dict[str, torch.Tensor], plans: dict[int, SubmodelPlan],
              tasks: list[TrainTask], server: Optional[dict[str, torch.Tensor]] = None) -> list[HostResult]:
        ...

    def train_groups(self, versions: dict[int, dict[str, torch.Tensor]], plans: dict[int, SubmodelPlan],
                     tasks: list[TrainTask], live: set[int]) -> list[GroupResult]:
        ...


# What one minibatch step costs a host besides its FLOPs (Python, autograd and the update), in
# FLOP-equivalents of a CPU core: measured ~1.9 ms a step against ~16 us per MFLOP of training.
STEP_OVERHEAD_FLOPS = 1.2e8


def host_work(steps: int, batch_size: int, flops_per_sample: float) -> float:
    """A device's real training work on a host, for balancing hosts. (Its simulated compute time
    is no guide: a slow microcontroller and a fast phone may train the same submodel.)"""
    return steps * (STEP_OVERHEAD_FLOPS + batch_size * flops_per_sample)


@dataclass
class Setup:
    """The world a run simulates, fixed before round 1 (deterministic from the seed): the model
    family with its rate ladder and measured costs, the fleet and its availability, the data
    and its shards over the fleet."""

    spec: ModelSpec
    rates: list[float]
    costs: dict[float, RateCost]
    fleet: Fleet
    availability: Availability
    shards: Shards
    dataset: Dataset


@dataclass(frozen=True)
class RoundConfig:
    """The round loop's own settings (the scenario's selection, deadline, budget, evaluation)."""

    seed: int
    rounds: int
    per_round: int                  # K: results a round aggregates at most
    overcommit: float = 0.0         # select K * (1 + overcommit)
    deadline: Optional[float] = None
    deadline_policy: str = "drop"   # drop | partial | wait
    epochs: int = 1
    batch_size: int = 20
    weighting: str = "uniform"      # uniform | samples
    eval_every: int = 1
    eval_per_rate: bool = True
    eval_batch_size: int = 512
    eval_max_samples: Optional[int] = None
    torch_threads: int = 1
    device: str = "cpu"             # cuda: evaluate on the GPU (where this process has one)

    @property
    def enforced_deadline(self) -> Optional[float]:
        """The deadline rounds close at (None when they wait for K)."""
        return self.deadline if self.deadline_policy != "wait" else None
