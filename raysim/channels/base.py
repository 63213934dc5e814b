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

from raysim.errors import broken

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


def roundtrip(channel: Channel, update: Mapping[str, torch.Tensor], gen: torch.Generator,
              role: str = "channel") -> dict[str, torch.Tensor]:
    """What arrives: `update` encoded and decoded (on the update's device). A channel that
    breaks its contract (a payload that is not one, a decoded tensor missing or of another
    shape) is a `raysim.errors.PluginError` naming it as `role` (`channel.up`, `channel.down`)."""
    dev = next(iter(update.values())).device if update else torch.device("cpu")
    shapes = {k: tuple(v.shape) for k, v in update.items()}
    payload = channel.encode(update, gen)
    if not isinstance(payload, Payload):
        raise broken(channel, role, f"encode() returned a {type(payload).__name__}; expected a raysim Payload")
    out = channel.decode(payload, shapes)
    why = decoded_problem(out, shapes)
    if why is not None:
        raise broken(channel, role, f"decode() {why} (docs/channels.md)")
    return {k: v.to(dev) for k, v in out.items()}


def decoded_problem(out: object, shapes: Shapes) -> Optional[str]:
    """What is wrong with a decoded update, in a few words (None: nothing): it holds a tensor of
    every encoded name, each of the shape it was encoded with."""
    if not isinstance(out, Mapping):
        return f"returned a {type(out).__name__}; expected a dict of tensors named as encoded"
    for k, shape in shapes.items():
        v = out.get(k)
        if not isinstance(v, torch.Tensor):
            got = "nothing" if v is None else f"a {type(v).__name__}"
            return f"returned {got} for {k!r}; expected a float tensor of shape {tuple(shape)}"
        if tuple(v.shape) != tuple(shape):
            return f"returned {k!r} of shape {tuple(v.shape)}; expected {tuple(shape)}, the shape it was encoded with"
    extra = sorted(set(out) - set(shapes))
    if extra:
        return f"returned {extra[0]!r}, which was not encoded; expected only {', '.join(map(repr, shapes))}"
    return None


def with_feedback(channel: Channel, update: Mapping[str, torch.Tensor], residual: Optional[Mapping[str, torch.Tensor]],
                  gen: torch.Generator, role: str = "channel") -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Error feedback: send `update + residual`, keep what the channel dropped.

    Returns (what arrives, the new residual); `residual` None is zero. The residual is exactly
    `update + residual - arrived`, so nothing is lost over rounds, only delayed.
    """
    corrected = {k: v + residual[k].to(v.device) if residual is not None and k in residual else v.clone()
                 for k, v in update.items()}
    arrived = roundtrip(channel, corrected, gen, role)
    return arrived, {k: corrected[k] - arrived[k] for k in corrected}
