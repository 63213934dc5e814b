"""A device's transfers through the run's channels: the model it downloads, the update it sends.

Randomness (stochastic rounding, random-k indices) comes from streams keyed by what is being
sent, never by the host, so a run is bit-identical on any number of hosts:

    start = receive(trainer, start, key=round_idx, version=0, plan_id=0)
    delta, residual = send(trainer, delta, key=round_idx, device_id=7, residual=None)
"""

from __future__ import annotations

from typing import Mapping, Optional

import torch

from raysim.channels import Dense, roundtrip, with_feedback
from raysim.client.trainer import Trainer
from raysim.seeding import torch_generator

__all__ = ["receive", "send"]

Tensors = Mapping[str, torch.Tensor]


def receive(trainer: Trainer, start: Tensors, key: int, version: int, plan_id: int) -> dict[str, torch.Tensor]:
    """The submodel weights a device starts from, as its downlink channel delivers them."""
    if isinstance(trainer.down, Dense):
        return dict(start)
    return roundtrip(trainer.down, start, torch_generator(trainer.seed, "channel-down", key, version, plan_id),
                     "channel.down")


def send(trainer: Trainer, delta: Tensors, key: int, device_id: int, residual: Optional[Tensors]
         ) -> tuple[dict[str, torch.Tensor], Optional[dict[str, torch.Tensor]]]:
    """What arrives of a device's update through its uplink channel, and (with error feedback)
    the residual it keeps for next time (None without)."""
    ch = trainer.up
    if isinstance(ch, Dense):
        return dict(delta), None
    gen = torch_generator(trainer.seed, "channel-up", key, device_id)
    if ch.error_feedback:
        return with_feedback(ch, delta, residual, gen, "channel.up")
    return roundtrip(ch, delta, gen, "channel.up"), None
