"""What a scenario will allocate, estimated before anything is allocated.

An absurd size (a trillion devices, a model a million channels wide) would otherwise exhaust
memory while the data is generated or the model is built, long before any check could speak.
`check_sizes` estimates the large allocations of the driver from the scenario alone (the model
is built on torch's `meta` device, which allocates nothing) and refuses, in one line naming the
field, a scenario whose estimate exceeds the memory this machine has available.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, cast

from raysim.errors import ScenarioError
from raysim.scenario.registry import is_import_path
from raysim.scenario.resolve import model_factory
from raysim.scenario.schema import Scenario

if TYPE_CHECKING:
    from raysim.models.base import ModelSpec

# Shapes and classes of the file datasets (their sizes come from the files themselves).
INPUTS = {"digits": ((1, 8, 8), 10), "mnist": ((1, 28, 28), 10), "fashion-mnist": ((1, 28, 28), 10),
          "femnist": ((1, 28, 28), 62), "cifar10": ((3, 32, 32), 10)}
DATA_COPIES = 3        # generated images, their normalised copy, one chunk's temporaries
FLEET_BYTES = 512      # per device: profile arrays, availability, shard offsets, fleet table row
MODEL_COPIES = 12      # global weights, server state, deltas, int64 sums, per-rate models
GIB = 1 << 30


@dataclass(frozen=True)
class Need:
    """One large allocation: the field that sizes it, and its estimated bytes."""

    field: str
    what: str
    bytes: int


def available_memory() -> Optional[int]:
    """Bytes of memory available to new allocations (Linux MemAvailable), or None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def input_shape(sc: Scenario) -> Optional[tuple[tuple[int, int, int], int]]:
    """(C, H, W) of one image and the number of classes, from the scenario alone (None for a
    dataset whose shape only its loader knows: a plug-in, or sensor series)."""
    if sc.data.dataset == "synthetic":
        s = sc.data.synthetic
        return (s.channels, s.image_size, s.image_size), s.classes
    return INPUTS.get(sc.data.dataset)


def model_params(sc: Scenario) -> int:
    """Parameters of the global model, counted on the meta device (nothing is allocated)."""
    import torch  # noqa: PLC0415

    shape, classes = input_shape(sc)  # type: ignore[misc]
    with torch.device("meta"):
        # A built-in arch (plug-ins were left out above): a ModelSpec.
        model = cast("ModelSpec", model_factory(sc.model)(shape, classes)).build()
    return sum(p.numel() for p in model.parameters())


def needs(sc: Scenario) -> list[Need]:
    """The scenario's large allocations in the driver and in each device host."""
    out = [Need("fleet.devices", f"{sc.fleet.devices:,} devices", sc.fleet.devices * FLEET_BYTES)]

    known = input_shape(sc)
    if known is None or is_import_path(sc.model.arch):
        return out  # a plug-in's sizes are known only once it runs
    (c, h, w), _ = known
    if sc.data.dataset == "synthetic":
        n = sc.data.synthetic.samples
        out.append(Need("data.synthetic.samples", f"{n:,} images of {c}x{h}x{w}", n * c * h * w * 4 * DATA_COPIES))
    widest = max(sc.model.widths) if sc.model.widths else 1
    batch = max(sc.train.batch_size, sc.eval.batch_size)
    out.append(Need("model.widths", f"activations of a batch of {batch}",
                    batch * widest * h * w * 4 * 2 * len(sc.model.widths)))
    params = model_params(sc)
    out.append(Need("model.widths", f"a model of {params:,} parameters", params * 4 * MODEL_COPIES))
    return out


def check_sizes(sc: Scenario, available: Optional[int] = None) -> None:
    """ScenarioError naming the field when the scenario cannot fit this machine's memory."""
    avail = available_memory() if available is None else available
    if avail is None:
        return
    items = needs(sc)
    total = sum(n.bytes for n in items)
    if total <= avail:
        return
    big = max(items, key=lambda n: n.bytes)
    raise ScenarioError(f"{big.field}: {big.what} would take about {big.bytes / GIB:,.1f} GiB (all told "
                        f"{total / GIB:,.1f} GiB), more than the {avail / GIB:,.1f} GiB of memory available here")
