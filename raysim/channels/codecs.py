"""The built-in channels: dense float32, fp16, b-bit quantization, top-k, random-k, sign.

Bytes per tensor of n elements (exact; `Channel.nbytes`):

    none       4n                                     float32 values
    fp16       2n                                     float16 values
    quantize   ceil(n b / 8) + 8 g                    b-bit codes, packed; (min, step) float32 per group
                                                      (g = 1 per tensor, or one per output channel)
    topk       4k + min(4k, ceil(n / 8))              the k largest |x|: float32 values, and int32
                                                      indices or a bitmap, whichever is smaller
    randomk    4k + 8                                 k values at indices drawn from a shared 8-byte seed
    sign       ceil(n / 8) + 4                        one bit per element and a float32 scale (mean |x|)

with k = ceil(fraction x n) (at least 1). Error bounds of one round trip: `quantize` with
nearest rounding is within half a step of each value (step = (max - min) / (2^b - 1) of its
group), stochastic rounding within one step and unbiased; `topk` and `randomk` send their k
values exactly (random-k scales them by n / k when it has no error feedback, so that it is
unbiased); `sign` sends mean |x| x sign(x).

    >>> import torch
    >>> q = Quantize(bits=4)
    >>> x = torch.linspace(-1, 1, 9)
    >>> p = q.encode({"x": x}, torch.Generator())
    >>> p.nbytes, q.nbytes({"x": (9,)})
    (13, 13)
    >>> bool((q.decode(p, {"x": (9,)})["x"] - x).abs().max() <= 1 / 15 + 1e-6)
    True
"""

from __future__ import annotations

import math
from typing import Literal, Mapping

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from raysim.channels.base import Channel

__all__ = ["Dense", "FP16", "Quantize", "TopK", "RandomK", "Sign", "keep_count"]


def _n(shape: tuple[int, ...]) -> int:
    return int(math.prod(shape))


def keep_count(n: int, fraction: float) -> int:
    """How many of n elements top-k and random-k send: ceil(fraction x n), at least 1 (0 of 0)."""
    return 0 if n == 0 else min(n, max(1, math.ceil(fraction * n - 1e-9)))


def _pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """b-bit codes (uint8) packed into ceil(n b / 8) bytes."""
    planes = np.unpackbits(codes.astype(np.uint8)[:, None], axis=1)[:, 8 - bits:]
    return np.packbits(planes.reshape(-1))


def _unpack(packed: np.ndarray, n: int, bits: int) -> np.ndarray:
    planes = np.unpackbits(packed)[: n * bits].reshape(n, bits)
    full = np.concatenate([np.zeros((n, 8 - bits), np.uint8), planes], axis=1)
    return np.packbits(full, axis=1).reshape(n)


class Dense(Channel):
    """float32, as is (the default: what a run without compression sends)."""

    name = "none"

    def encode_tensor(self, x: torch.Tensor, gen: torch.Generator) -> dict[str, np.ndarray]:
        return {"values": x.numpy().astype(np.float32, copy=True).reshape(-1)}

    def decode_tensor(self, parts: Mapping[str, np.ndarray], shape: tuple[int, ...]) -> torch.Tensor:
        return torch.from_numpy(parts["values"].astype(np.float32).reshape(shape))

    def tensor_bytes(self, shape: tuple[int, ...]) -> int:
        return 4 * _n(shape)


class FP16(Channel):
    """Half precision (values beyond +-65504 saturate)."""

    name = "fp16"

    def encode_tensor(self, x: torch.Tensor, gen: torch.Generator) -> dict[str, np.ndarray]:
        return {"values": x.clamp(-65504.0, 65504.0).numpy().astype(np.float16).reshape(-1)}

    def decode_tensor(self, parts: Mapping[str, np.ndarray], shape: tuple[int, ...]) -> torch.Tensor:
        return torch.from_numpy(parts["values"].astype(np.float32).reshape(shape))

    def tensor_bytes(self, shape: tuple[int, ...]) -> int:
        return 2 * _n(shape)


class Quantize(Channel):
    """b-bit uniform quantization between each group's min and max (QSGD-style scalar quantization)."""

    name = "quantize"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        bits: int = Field(8, ge=1, le=8, description="bits per value")
        scale: Literal["tensor", "channel"] = Field("tensor", description="one (min, step) per tensor, or per "
                                                    "output channel (dim 0) of tensors of 2 or more dims")
        rounding: Literal["nearest", "stochastic"] = Field("nearest", description="stochastic: unbiased")
        error_feedback: bool = Field(False, description="keep the rounding error and send it next time")

    def __init__(self, bits: int = 8, scale: str = "tensor", rounding: str = "nearest",
                 error_feedback: bool = False) -> None:
        if not 1 <= int(bits) <= 8:
            raise ValueError(f"bits must be 1..8, got {bits}")
        self.bits, self.scale, self.rounding = int(bits), scale, rounding
        self.error_feedback = bool(error_feedback)

    def describe(self) -> str:
        return f"quantize {self.bits}-bit" + (" +EF" if self.error_feedback else "")

    def _groups(self, shape: tuple[int, ...]) -> int:
        return shape[0] if self.scale == "channel" and len(shape) >= 2 else 1

    def encode_tensor(self, x: torch.Tensor, gen: torch.Generator) -> dict[str, np.ndarray]:
        g = self._groups(tuple(x.shape))
        rows = x.reshape(g, -1).double()
        lo = rows.min(dim=1).values if rows.numel() else torch.zeros(g, dtype=torch.float64)
        hi = rows.max(dim=1).values if rows.numel() else torch.zeros(g, dtype=torch.float64)
        levels = (1 << self.bits) - 1
        step = ((hi - lo) / levels).float()
        lo32 = lo.float()
        safe = torch.where(step > 0, step, torch.ones_like(step)).double()
        q = (rows - lo32.double()[:, None]) / safe[:, None]
        if self.rounding == "stochastic":
            q = torch.floor(q + torch.rand(q.shape, generator=gen, dtype=torch.float64))
        else:
            q = torch.round(q)
        codes = q.clamp(0, levels).to(torch.uint8).reshape(-1).numpy()
        return {"codes": _pack(codes, self.bits), "min": lo32.numpy().astype(np.float32),
                "step": step.numpy().astype(np.float32)}

    def decode_tensor(self, parts: Mapping[str, np.ndarray], shape: tuple[int, ...]) -> torch.Tensor:
        n, g = _n(shape), self._groups(shape)
        codes = torch.from_numpy(_unpack(parts["codes"], n, self.bits).astype(np.float32)).reshape(g, -1)
        lo = torch.from_numpy(parts["min"])[:, None]
        step = torch.from_numpy(parts["step"])[:, None]
        return (lo + codes * step).reshape(shape)

    def tensor_bytes(self, shape: tuple[int, ...]) -> int:
        return math.ceil(_n(shape) * self.bits / 8) + 8 * self._groups(shape)


class _Sparse(Channel):
    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        fraction: float = Field(0.01, gt=0.0, le=1.0, description="share of each tensor's values sent")
        error_feedback: bool = Field(False, description="keep the values not sent and add them to the next update")

    def __init__(self, fraction: float = 0.01, error_feedback: bool = False) -> None:
        if not 0.0 < float(fraction) <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        self.fraction = float(fraction)
        self.error_feedback = bool(error_feedback)

    def describe(self) -> str:
        return f"{self.name} {self.fraction:g}" + (" +EF" if self.error_feedback else "")


class TopK(_Sparse):
    """The k = ceil(fraction x n) values of largest magnitude of each tensor (ties: lowest index)."""

    name = "topk"

    def encode_tensor(self, x: torch.Tensor, gen: torch.Generator) -> dict[str, np.ndarray]:
        flat = x.reshape(-1)
        n = flat.numel()
        k = keep_count(n, self.fraction)
        order = torch.sort(flat.abs(), descending=True, stable=True).indices[:k]
        idx = torch.sort(order).values
        values = flat[idx].numpy().astype(np.float32)
        if 4 * k <= math.ceil(n / 8):
            return {"values": values, "indices": idx.numpy().astype(np.int32)}
        mask = np.zeros(n, np.uint8)
        mask[idx.numpy()] = 1
        return {"values": values, "bitmap": np.packbits(mask)}

    def decode_tensor(self, parts: Mapping[str, np.ndarray], shape: tuple[int, ...]) -> torch.Tensor:
        n = _n(shape)
        out = np.zeros(n, np.float32)
        idx = parts["indices"] if "indices" in parts else np.flatnonzero(np.unpackbits(parts["bitmap"])[:n])
        out[idx] = parts["values"]
        return torch.from_numpy(out.reshape(shape))

    def tensor_bytes(self, shape: tuple[int, ...]) -> int:
        n = _n(shape)
        k = keep_count(n, self.fraction)
        return 4 * k + min(4 * k, math.ceil(n / 8))


class RandomK(_Sparse):
    """k = ceil(fraction x n) values at random indices; the receiver redraws the indices from the
    8-byte seed sent along. Without error feedback the values are scaled by n / k (unbiased)."""

    name = "randomk"

    def _indices(self, seed: int, n: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(int(seed))
        return torch.sort(torch.randperm(n, generator=g)[: keep_count(n, self.fraction)]).values

    def encode_tensor(self, x: torch.Tensor, gen: torch.Generator) -> dict[str, np.ndarray]:
        flat = x.reshape(-1)
        seed = int(torch.randint(0, 2**62, (1,), generator=gen).item())
        idx = self._indices(seed, flat.numel())
        return {"values": flat[idx].numpy().astype(np.float32), "seed": np.array([seed], np.int64)}

    def decode_tensor(self, parts: Mapping[str, np.ndarray], shape: tuple[int, ...]) -> torch.Tensor:
        n = _n(shape)
        idx = self._indices(int(parts["seed"][0]), n).numpy()
        out = np.zeros(n, np.float32)
        scale = 1.0 if self.error_feedback or len(idx) == 0 else n / len(idx)
        out[idx] = parts["values"] * np.float32(scale)
        return torch.from_numpy(out.reshape(shape))

    def tensor_bytes(self, shape: tuple[int, ...]) -> int:
        return 4 * keep_count(_n(shape), self.fraction) + 8


class Sign(Channel):
    """One bit per value and one scale per tensor: mean |x| x sign(x) (signSGD with a scale;
    with error feedback, EF-SignSGD)."""

    name = "sign"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        error_feedback: bool = Field(False, description="keep what the sign dropped and add it to the next update")

    def __init__(self, error_feedback: bool = False) -> None:
        self.error_feedback = bool(error_feedback)

    def describe(self) -> str:
        return "sign" + (" +EF" if self.error_feedback else "")

    def encode_tensor(self, x: torch.Tensor, gen: torch.Generator) -> dict[str, np.ndarray]:
        flat = x.reshape(-1)
        scale = flat.abs().mean() if flat.numel() else torch.zeros(())
        return {"bits": np.packbits((flat >= 0).numpy().astype(np.uint8)),
                "scale": np.array([float(scale)], np.float32)}

    def decode_tensor(self, parts: Mapping[str, np.ndarray], shape: tuple[int, ...]) -> torch.Tensor:
        n = _n(shape)
        signs = np.unpackbits(parts["bits"])[:n].astype(np.float32) * 2.0 - 1.0
        return torch.from_numpy((signs * parts["scale"][0]).astype(np.float32).reshape(shape))

    def tensor_bytes(self, shape: tuple[int, ...]) -> int:
        return math.ceil(_n(shape) / 8) + 4
