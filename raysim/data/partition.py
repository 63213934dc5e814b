"""Splitting a dataset's training samples over devices.

Every kind first decides an *owner* device for each training sample and then turns owners into
index arrays, so every kind is a true partition of `range(N)` by construction: each sample goes
to exactly one device. Each device's indices come out in ascending order.

    >>> from raysim.data import label_histograms
    >>> from raysim.scenario.resolve import load_dataset
    >>> from raysim.scenario.schema import DataConfig
    >>> ds = load_dataset(DataConfig(dataset="digits"), seed=0)
    >>> parts = partition(ds, 100, PartitionConfig(kind="dirichlet", alpha=0.1), seed=0)
    >>> label_histograms(ds.y_train, parts, ds.num_classes).shape
    (100, 10)
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import Field

from raysim.data.base import DataError, Dataset, rng_for
from raysim.data.shards import Shards
from raysim.settings import Section

DIRICHLET_REDRAWS = 10  # fresh draws tried before topping up small devices by moving samples


class PartitionConfig(Section):
    """How training samples are split over devices."""

    kind: Literal["iid", "dirichlet", "shards", "quantity", "natural"] = Field(
        "dirichlet", description="natural keeps each writer's samples on one device (femnist, synthetic)")
    alpha: float = Field(0.5, gt=0.0, description="Dirichlet concentration (label skew)")
    classes_per_device: int = Field(2, ge=1, description="for kind=shards")
    power: float = Field(1.5, gt=0.0, description="quantity skew: power-law exponent")
    min_samples: int = Field(1, ge=0, description="samples every device gets at least, where the data allows")



def partition(ds: Dataset, n_devices: int, cfg: PartitionConfig, seed: int) -> Shards:
    """One int64 index array into `ds.x_train` per device, deterministic from `seed`.

    Every device gets at least `cfg.min_samples` samples where the data allows it (at most
    `N // n_devices` each can be guaranteed); `natural` keeps writers whole and `shards` keeps
    its label bound, so they balance sizes but do not move single samples.
    """
    n = len(ds.y_train)
    if n_devices < 1:
        raise DataError(f"partition: needs at least one device, got {n_devices}")
    floor = min(cfg.min_samples, n // n_devices)
    rng = rng_for(seed, f"data.partition.{cfg.kind}")
    if cfg.kind == "iid":
        owner = _iid(n, n_devices, rng)
    elif cfg.kind == "dirichlet":
        owner = _dirichlet(ds.y_train, n_devices, cfg.alpha, floor, rng)
    elif cfg.kind == "shards":
        owner = _shards(ds.y_train, n_devices, cfg.classes_per_device, rng)
    elif cfg.kind == "quantity":
        owner = _quantity(n, n_devices, cfg.power, floor, rng)
    elif cfg.kind == "natural":
        owner = _natural(ds, n_devices, rng)
    else:  # the schema's Literal makes this unreachable from a scenario
        raise DataError(f"partition.kind: unknown kind {cfg.kind!r}")
    return _parts(owner, n_devices)


def label_histograms(y: np.ndarray, parts: Sequence[np.ndarray], num_classes: int) -> np.ndarray:
    """Samples of each class held by each device: int64 `(len(parts), num_classes)`."""
    shards = Shards.from_list(parts)
    if len(shards.flat) == 0:
        return np.zeros((len(parts), num_classes), dtype=np.int64)
    device = shards.owners()
    labels = np.asarray(y, dtype=np.int64)[shards.flat]
    flat = np.bincount(device * num_classes + labels, minlength=len(parts) * num_classes)
    return flat.reshape(len(parts), num_classes).astype(np.int64)


def _parts(owner: np.ndarray, n_devices: int) -> Shards:
    """Owner per sample -> ascending index array per device (a stable sort keeps the order)."""
    order = np.argsort(owner, kind="stable").astype(np.int64)
    offsets = np.zeros(n_devices + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(np.bincount(owner, minlength=n_devices))
    return Shards(order, offsets)


def _iid(n: int, n_devices: int, rng: np.random.Generator) -> np.ndarray:
    # Near-equal sizes: a shuffled round-robin deal gives sizes that differ by at most one.
    owner = np.empty(n, dtype=np.int64)
    owner[rng.permutation(n)] = np.arange(n) % n_devices
    return owner


def _dirichlet(y: np.ndarray, n_devices: int, alpha: float, floor: int, rng: np.random.Generator) -> np.ndarray:
    """Per class, device shares ~ Dirichlet(alpha); small alpha = each device sees few classes."""
    owner = np.empty(len(y), dtype=np.int64)
    best = None
    for _ in range(DIRICHLET_REDRAWS):
        for c in np.unique(y):
            idx = rng.permutation(np.flatnonzero(y == c))
            shares = _dirichlet_shares(rng, alpha, n_devices)
            cuts = np.round(np.cumsum(shares) * len(idx)).astype(np.int64)
            cuts[-1] = len(idx)  # rounding must not drop or invent a sample
            counts = np.diff(cuts, prepend=0)
            owner[idx] = np.repeat(np.arange(n_devices, dtype=np.int64), counts)
        short = int(np.maximum(floor - np.bincount(owner, minlength=n_devices), 0).sum())
        if best is None or short < best[0]:
            best = (short, owner.copy())
        if short == 0:
            break
    assert best is not None  # DIRICHLET_REDRAWS >= 1
    return _top_up(best[1], n_devices, floor, rng)


def _dirichlet_shares(rng: np.random.Generator, alpha: float, k: int) -> np.ndarray:
    # Normalised gammas are a Dirichlet draw; for tiny alpha every gamma can underflow to 0,
    # and the limit of that case is "one device takes the whole class".
    g = rng.gamma(alpha, 1.0, k)
    total = g.sum()
    if not np.isfinite(total) or total <= 0:
        g = np.zeros(k)
        g[rng.integers(k)] = 1.0
        total = 1.0
    return g / total


def _top_up(owner: np.ndarray, n_devices: int, floor: int, rng: np.random.Generator) -> np.ndarray:
    """Move samples from the largest devices to those below `floor`, one at a time.

    The donor is always the currently largest device (lowest id on ties), so the result is
    deterministic and the skew of the draw is disturbed as little as possible.
    """
    counts = np.bincount(owner, minlength=n_devices)
    needy = np.flatnonzero(counts < floor)
    if needy.size == 0:
        return owner
    heap = [(-int(c), int(d)) for d, c in enumerate(counts) if c > floor]
    heapq.heapify(heap)
    given = np.zeros(n_devices, dtype=np.int64)
    moves: list[tuple[int, int]] = []  # (donor, recipient)
    for r in needy:
        for _ in range(floor - int(counts[r])):
            neg, d = heapq.heappop(heap)
            moves.append((d, int(r)))
            given[d] += 1
            if -neg - 1 > floor:
                heapq.heappush(heap, (neg + 1, d))
    # Each donor gives a random subset of its samples, handed out in move order.
    by_owner = np.argsort(owner, kind="stable")
    start = np.concatenate([[0], np.cumsum(counts)])
    pools = {int(k): iter(rng.permutation(by_owner[start[k]:start[k + 1]])[: given[k]]) for k in np.flatnonzero(given)}
    owner = owner.copy()
    for donor, recipient in moves:
        owner[next(pools[donor])] = recipient
    return owner


def _shards(y: np.ndarray, n_devices: int, per_device: int, rng: np.random.Generator) -> np.ndarray:
    """Class-pure shards, `per_device` dealt to each device: at most that many labels each.

    Shards are cut within a class (never across a class boundary) so the label bound holds
    exactly; each class gets shards in proportion to its size.
    """
    classes, sizes = np.unique(y, return_counts=True)
    total = n_devices * per_device
    if total < len(classes):
        raise DataError(
            f"partition.classes_per_device: {n_devices} devices x {per_device} classes is fewer shards "
            f"than the {len(classes)} classes; every sample must go to some device"
        )
    per_class = _shard_counts(sizes, total)
    deal = rng.permutation(total)  # shard s goes to device deal[s] // per_device (empty ones unused)
    owner = np.empty(len(y), dtype=np.int64)
    s = 0
    for c, k in zip(classes, per_class):
        idx = rng.permutation(np.flatnonzero(y == c))
        # np.array_split's piece sizes: the first len % k pieces have one sample more.
        small, extra = divmod(len(idx), k)
        piece = np.repeat(np.arange(k), np.where(np.arange(k) < extra, small + 1, small))
        owner[idx] = deal[s + piece] // per_device
        s += k
    return owner


def _quantity(n: int, n_devices: int, power: float, floor: int, rng: np.random.Generator) -> np.ndarray:
    """IID labels, Pareto(`power`) sizes: a few devices hold much, most hold little.

    Smaller `power` means a heavier tail (more unequal sizes).
    """
    weights = rng.pareto(power, n_devices) + 1.0
    sizes = floor + _apportion(weights, n - floor * n_devices)
    owner = np.empty(n, dtype=np.int64)
    owner[rng.permutation(n)] = np.repeat(np.arange(n_devices, dtype=np.int64), sizes)
    return owner


def _natural(ds: Dataset, n_devices: int, rng: np.random.Generator) -> np.ndarray:
    """Whole writers per device: writers shuffled, then dealt in near-equal numbers."""
    if ds.writers is None:
        raise DataError("partition.kind natural needs a dataset with writers (femnist)")
    writers, inverse = np.unique(ds.writers, return_inverse=True)
    if n_devices > len(writers):
        raise DataError(
            f"partition.kind natural: {n_devices} devices but the {ds.name} data has only {len(writers)} writers"
        )
    device_of_writer = np.empty(len(writers), dtype=np.int64)
    device_of_writer[rng.permutation(len(writers))] = np.arange(len(writers)) % n_devices
    return device_of_writer[inverse.reshape(-1)]


def _apportion(weights: np.ndarray, total: int) -> np.ndarray:
    """Non-negative integers summing to `total`, proportional to `weights` (largest remainder)."""
    quota = np.asarray(weights, dtype=np.float64) / np.sum(weights) * total
    out = np.floor(quota).astype(np.int64)
    rest = total - int(out.sum())
    # The remaining units go to the largest fractional parts (lowest index on ties).
    order = np.lexsort((np.arange(len(quota)), -(quota - out)))
    out[order[:rest]] += 1
    return out


def _shard_counts(sizes: np.ndarray, total: int) -> np.ndarray:
    """Shards per class, at least one each, so that shard sizes are as equal as they can be.

    Greedy highest-average: the next shard always goes to the class whose shards are currently
    the largest, which minimises the largest shard (and never gives a class more shards than
    it has samples: with fewer samples than shards, the extra shards stay empty).
    """
    counts = np.ones(len(sizes), dtype=np.int64)
    heap = [(-float(sz), c) for c, sz in enumerate(sizes) if sz > 1]
    heapq.heapify(heap)
    for _ in range(total - len(sizes)):
        if not heap:
            break
        _, c = heapq.heappop(heap)
        counts[c] += 1
        if counts[c] < sizes[c]:
            heapq.heappush(heap, (-float(sizes[c]) / counts[c], c))
    return counts
