"""Fleets drawn from a mix of catalogue classes.

Counts per class are exact (largest remainder on exact fractions), classes are shuffled over
device ids (so any prefix or sample of ids is a mix, not one class), and every device gets
its own log-normal deviation from its class's figures.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Mapping

import numpy as np

from raysim.errors import FleetError
from raysim.fleet.catalogue import DeviceClass
from raysim.fleet.fleet import Fleet
from raysim.fleet.power import PowerStates

__all__ = ["largest_remainder", "fleet_from_mix"]

# Distinguishes the fleet's random stream from every other stream derived from the seed.
_FLEET_STREAM = 0x666C656574  # "fleet"


def largest_remainder(shares: Mapping[str, float], total: int) -> dict[str, int]:
    """Split `total` items by `shares` (any non-negative weights), summing exactly to `total`.

    Each class gets the floor of its exact quota; the items left go one each to the largest
    remainders, ties broken by class name, so the result depends on the shares only (not on
    dict order or float rounding of a normalisation).
    """
    if total < 0:
        raise ValueError("total must be non-negative")
    weights = {k: Fraction(v) for k, v in shares.items()}
    whole = sum(weights.values(), Fraction(0))
    if whole <= 0 or any(w < 0 for w in weights.values()):
        raise ValueError("shares must be non-negative and not all zero")
    quotas = {k: w * total / whole for k, w in weights.items()}
    counts = {k: int(q) for k, q in quotas.items()}  # floor: quotas are non-negative
    left = total - sum(counts.values())
    by_remainder = sorted(quotas, key=lambda k: (-(quotas[k] - counts[k]), k))
    for k in by_remainder[:left]:
        counts[k] += 1
    return counts


def check_classes(names: list[str], catalogue: Mapping[str, DeviceClass]) -> None:
    """FleetError naming the first unknown class and listing the known ones."""
    for name in names:
        if name not in catalogue:
            known = ", ".join(sorted(catalogue))
            raise FleetError(f"fleet.mix: unknown device class {name!r} (known: {known})")


def fleet_from_mix(mix: Mapping[str, float], devices: int, spread: float, seed: int,
                   catalogue: Mapping[str, DeviceClass]) -> Fleet:
    """`devices` devices with ids 0..devices-1, classes in the proportions of `mix`.

    A device's figures are its class's times exp(spread * N(0, 1)), independently per
    attribute (speed, memory, links, latency, on/off means), so class figures are medians.
    """
    names = list(mix)
    check_classes(names, catalogue)
    counts = largest_remainder(mix, devices)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _FLEET_STREAM]))
    class_idx = np.repeat(np.arange(len(names), dtype=np.int16), [counts[k] for k in names])
    class_idx = rng.permutation(class_idx)

    def column(attr: str) -> np.ndarray:
        base = np.array([getattr(catalogue[k], attr) for k in names], dtype=np.float64)
        return base[class_idx]

    attrs = ("flops", "memory_bytes", "down_bps", "up_bps", "latency_s", "mean_online_s", "mean_offline_s")
    # One block of normals in a fixed attribute order: the fleet is a function of the seed.
    factors = np.exp(spread * rng.standard_normal((len(attrs), devices))) if spread > 0 else np.ones((len(attrs), devices))
    values = {a: column(a) * factors[i] for i, a in enumerate(attrs)}
    return Fleet(
        device_id=np.arange(devices, dtype=np.int64),
        class_idx=class_idx,
        class_names=names,
        flops=values["flops"],
        memory=np.floor(values["memory_bytes"]).astype(np.int64),
        down_bps=values["down_bps"],
        up_bps=values["up_bps"],
        latency=values["latency_s"],
        mean_online=values["mean_online_s"],
        mean_offline=values["mean_offline_s"],
        power=PowerStates.of(names, catalogue),
    )
