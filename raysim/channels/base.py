"""The channel contract: how a model update (or the model a device downloads) goes on the wire.

A `Channel` encodes a dict of tensors (a submodel's update, in the submodel's coordinates) to a
`Payload` of numpy arrays in their wire types, and decodes it back. Its byte count is exact and
known ahead from the shapes alone (`nbytes`), so the cost model prices transfers before anything
is trained, and a test checks it against the arrays of an encoded payload:

    ch = Quantize(bits=8)
    p = ch.encode({"w": torch.randn(64, 32)}, torch.Generator().manual_seed(0))
    assert p.nbytes == ch.nbytes({"w": (64, 32)})
    update = ch.decode(p, {"w": (64, 32)})

A channel with `error_feedback` keeps what it dropped: the device adds its residual to the next
update before encoding (`with_feedback`), and the engine keeps each device's residual across
rounds, whichever host trains it. Tensors are encoded one by one, in sorted name order.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Mapping, Optional

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

__all__ = ["Channel", "Payload", "roundtrip", "with_feedback"]

Shapes = Mapping[str, tuple[int, ...]]


@dataclass(frozen=True)
class Payload:
    """What goes on the wire: per tensor, named numpy arrays in their wire dtypes."""

    arrays: dict[str, dict[str, np.ndarray]]

    @property
    def nbytes(self) -> int:
        """Bytes on the wire: every array's bytes (no framing header)."""
        return int(sum(a.nbytes for parts in self.arrays.values() for a in parts.values()))


class Channel(ABC):
    """Encodes updates to payloads with an exact byte count, and back. `Params` validates a
    scenario's `channel.up_params` / `channel.down_params`."""

    error_feedback: bool = False
    name: str = "channel"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

    @abstractmethod
    def encode_tensor(self, x: torch.Tensor, gen: torch.Generator) -> dict[str, np.ndarray]:
        """One tensor (float32, on the CPU) to its wire arrays."""

    @abstractmethod
    def decode_tensor(self, parts: Mapping[str, np.ndarray], shape: tuple[int, ...]) -> torch.Tensor:
        """The wire arrays of one tensor back to a float32 tensor of `shape`."""

    @abstractmethod
    def tensor_bytes(self, shape: tuple[int, ...]) -> int:
        """Exact wire bytes of one tensor of this shape."""

    def encode(self, update: Mapping[str, torch.Tensor], gen: torch.Generator) -> Payload:
        """Every tensor of `update`, in sorted name order, drawing randomness from `gen`."""
        return Payload({k: self.encode_tensor(update[k].detach().to("cpu", torch.float32), gen)
                        for k in sorted(update)})

    def decode(self, payload: Payload, shapes: Shapes) -> dict[str, torch.Tensor]:
        """The update a payload carries (float32 tensors of `shapes`)."""
        return {k: self.decode_tensor(parts, tuple(shapes[k])) for k, parts in payload.arrays.items()}

    def nbytes(self, shapes: Shapes) -> int:
        """Exact bytes of a payload for tensors of these shapes."""
        return int(sum(self.tensor_bytes(tuple(s)) for s in shapes.values()))

    def describe(self) -> str:
        """A short label (tables, manifests)."""
        return self.name


def roundtrip(channel: Channel, update: Mapping[str, torch.Tensor], gen: torch.Generator) -> dict[str, torch.Tensor]:
    """What arrives: `update` encoded and decoded (on the update's device)."""
    dev = next(iter(update.values())).device if update else torch.device("cpu")
    shapes = {k: tuple(v.shape) for k, v in update.items()}
    return {k: v.to(dev) for k, v in channel.decode(channel.encode(update, gen), shapes).items()}


def with_feedback(channel: Channel, update: Mapping[str, torch.Tensor], residual: Optional[Mapping[str, torch.Tensor]],
                  gen: torch.Generator) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Error feedback: send `update + residual`, keep what the channel dropped.

    Returns (what arrives, the new residual); `residual` None is zero. The residual is exactly
    `update + residual - arrived`, so nothing is lost over rounds, only delayed.
    """
    corrected = {k: v + residual[k].to(v.device) if residual is not None and k in residual else v.clone()
                 for k, v in update.items()}
    arrived = roundtrip(channel, corrected, gen)
    return arrived, {k: corrected[k] - arrived[k] for k in corrected}
