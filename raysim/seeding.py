"""Per-purpose, per-round, per-device random streams.

Every random decision draws from a stream derived from (seed, purpose, round, device), never
from a shared global generator, so results do not depend on how devices are spread over
processes or in which order they run.
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported by the one function that needs it: reading results needs no torch
    import torch


def _tag(purpose: str) -> int:
    return zlib.crc32(purpose.encode())


def seed_sequence(seed: int, purpose: str, *keys: int) -> np.random.SeedSequence:
    """The SeedSequence of one purpose (e.g. "select") at the given keys (round, device...)."""
    return np.random.SeedSequence([int(seed), _tag(purpose), *[int(k) for k in keys]])


def rng(seed: int, purpose: str, *keys: int) -> np.random.Generator:
    """A numpy Generator for one purpose at the given keys."""
    return np.random.default_rng(seed_sequence(seed, purpose, *keys))


def torch_generator(seed: int, purpose: str, *keys: int) -> "torch.Generator":
    """A torch Generator for one purpose at the given keys."""
    import torch  # noqa: PLC0415

    g = torch.Generator()
    g.manual_seed(int(seed_sequence(seed, purpose, *keys).generate_state(1, np.uint64)[0] >> 1))
    return g
