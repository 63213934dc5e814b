"""`train.batched: auto`: batched or per device, per rate, from a measurement when hosts start.

Host 0 measures each rate once, on random data of the real shapes, and every host of the run
adopts its choices (the pool hands them out; the manifest records them and a resume reuses
them): batched and per-device training agree only within float tolerance, so all hosts must
train a rate alike for a run's numbers not to depend on how many hosts it has. Given the
recorded choices a run is bit-identical on any number of hosts; two fresh `auto` runs can
choose differently where the two paths are close.

The measurement times what a host call does: `devices` devices (half a chunk by default) of
`steps` minibatches each (a typical shard's local epochs), per device and batched, the two
interleaved `repeats` times; the fastest of each is compared, because on a shared machine
interference only ever adds time. Batched is chosen only when it is clearly faster (`GAIN`).

    loop_s, batched_s = measure(cnn, LocalSGD(), (1, 12, 12), 10, 20, torch.device("cpu"), steps=4)
    prefer_batched(loop_s, batched_s)
"""

from __future__ import annotations

import math
import time
from typing import Callable, Optional

import torch
from torch import nn

from raysim.client.algorithms import ClientAlgorithm, LocalData
from raysim.client.batched import DeviceWork, live_parameters, slots_for, train_group

# Loop steps slower than this are FLOP-bound: batching mainly saves per-step overhead (a few
# ms a step on a CPU core), so on the CPU such a shape trains per device without a measurement.
FLOP_BOUND_STEP_S = 0.05
# Batched is chosen when the loop takes at least this many times as long: a near tie keeps
# the loop, the path every other setting of `train.batched` is compared against.
GAIN = 1.15


def measure(module: nn.Module, client: ClientAlgorithm, x_shape: tuple[int, ...], classes: int, batch_size: int,
            device: torch.device, devices: Optional[int] = None, steps: int = 4, repeats: int = 3
            ) -> tuple[float, float]:
    """(loop seconds, batched seconds) for `devices` devices of `steps` minibatches each: the
    fastest of `repeats` interleaved timings of each, after one warm-up of each. When one loop
    step is FLOP-bound on a CPU, batched is not timed (returned as inf)."""
    devices = slots_for(device) // 2 if devices is None else devices
    g = torch.Generator().manual_seed(0)
    n = batch_size * steps   # one epoch of `steps` full minibatches per device
    x = torch.randn((devices * n, *x_shape), generator=g).to(device)
    y = torch.randint(0, classes, (devices * n,), generator=g).to(device)
    start = {k: p.detach().clone() for k, p in module.named_parameters()}
    works = [DeviceWork(torch.arange(s * n, (s + 1) * n), torch.Generator().manual_seed(s)) for s in range(devices)]
    live = live_parameters(module, x_shape, device)

    def loop(k: int) -> None:
        for w in works[:k]:
            with torch.no_grad():
                for name, p in module.named_parameters():
                    p.copy_(start[name])
            ix = w.indices.to(device)
            client.train(module, LocalData(x[ix], y[ix], 1, batch_size, None, torch.Generator().manual_seed(0)), start)

    def batched() -> None:
        train_group(module, client, start, x, y, works, 1, batch_size, live=live)

    first = _timed(lambda: loop(1), device)  # the loop's warm-up, and the FLOP-bound check
    if device.type == "cpu" and first / steps > FLOP_BOUND_STEP_S:
        out = first * devices, math.inf
    else:
        _timed(batched, device)              # warm-up: the grouped program, first kernels
        loop_s, batched_s = math.inf, math.inf
        for r in range(repeats):
            pair = [lambda: loop(devices), batched]
            times = [_timed(f, device) for f in (pair if r % 2 == 0 else pair[::-1])]
            lt, bt = times if r % 2 == 0 else times[::-1]
            loop_s, batched_s = min(loop_s, lt), min(batched_s, bt)
        out = loop_s, batched_s
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(start[name])
    return out


def prefer_batched(loop_s: float, batched_s: float) -> bool:
    """Whether a measurement favours batching clearly (by `GAIN`; a near tie keeps the loop)."""
    return batched_s * GAIN <= loop_s


def _timed(fn: Callable[[], None], device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
