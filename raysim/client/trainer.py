"""Training one device: the one function both placements (pooled hosts, dedicated actors) call.

A `Trainer` is what a place that trains devices needs to know, and no more: the client
algorithm, the local budget (epochs, batch size) and the seed the devices' random streams
derive from. It travels to the device hosts instead of the scenario.

    trainer = Trainer(LocalSGD(lr=0.05), epochs=1, batch_size=20, seed=0)
    res = trainer.train(model, start, x, y, round_idx=1, device_id=7, max_steps=None)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Optional

import numpy as np
import torch
from torch import nn

from raysim.channels import Channel, Dense
from raysim.client.algorithms import ClientAlgorithm, LocalData, LocalResult
from raysim.seeding import seed_sequence, torch_generator


@dataclass(frozen=True)
class Trainer:
    """The client algorithm and the local budget every device of a run trains with, and how
    hosts train: on which torch device (`cpu` or `cuda`, resolved), with which share of a GPU,
    and whether devices that share a submodel shape are trained together (`batched`: auto,
    on, off; `choices`: auto's measured decision per rate, once a run has one); the channels
    updates go up and models come down through (`raysim.client.wire`).
    """

    client: ClientAlgorithm
    epochs: int
    batch_size: int
    seed: int
    torch_threads: int = 1
    device: str = "cpu"
    gpu_share: float = 1.0
    batched: str = "off"
    choices: Optional[tuple[tuple[float, bool], ...]] = None
    up: Channel = field(default_factory=Dense)
    down: Channel = field(default_factory=Dense)

    def steps_full(self, samples: int) -> int:
        """Minibatch steps of a device's full local work."""
        return max(1, math.ceil(samples / self.batch_size)) * self.epochs

    def stream(self, round_idx: int, device_id: int) -> torch.Generator:
        """A device's own random stream (its shuffles) for one training, looped or batched."""
        return torch_generator(self.seed, "train", round_idx, device_id)

    def train(self, model: nn.Module, start: Mapping[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
              round_idx: int, device_id: int, max_steps: Optional[int],
              state: Optional[Mapping[str, torch.Tensor]] = None,
              server: Optional[Mapping[str, torch.Tensor]] = None) -> LocalResult:
        """Train one device's submodel (loaded with `start`) on its data, from its own stream
        (`state`, `server`: a stateful client algorithm's, in the submodel's coordinates)."""
        data = LocalData(x, y, self.epochs, self.batch_size, max_steps, self.stream(round_idx, device_id),
                         state, server)
        # Random layers (dropout, drop-path) draw from torch's global generator: seeded per
        # device and round, they draw the same masks on any host, whatever trained before.
        # (torch.manual_seed would also visit every backend: 0.2 ms a device; this is 10 us.)
        seed = layer_seed(self.seed, round_idx, device_id)
        cuda = [torch.device(self.device).index or 0] if self.device.startswith("cuda") else []
        with torch.random.fork_rng(devices=cuda):
            torch.default_generator.manual_seed(seed)
            if cuda:
                torch.cuda.manual_seed(seed)
            return self.client.train(model, data, start)


def layer_seed(seed: int, round_idx: int, device_id: int) -> int:
    """The seed of torch's global generator while a device trains (its random layers)."""
    return int(seed_sequence(seed, "layers", round_idx, device_id).generate_state(1, np.uint64)[0] >> 1)
