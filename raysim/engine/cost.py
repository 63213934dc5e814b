"""Cost model: what training a submodel costs, and how long a device takes to do it.

Two halves, both pure numerics (no Ray):

* `profile_rate` / `profile_ladder` *measure* a model at a width rate: parameters, bytes on the
  wire, training FLOPs per sample (torch's own flop counter around one forward+backward) and
  training memory (parameters, gradients, optimizer state, and the activations autograd saves
  for backward, caught with saved-tensor hooks).
* `device_times` turns those figures and a device profile into download, compute and upload
  durations, vectorised over devices (each device may run a different rate).

    spec = cnn_spec((1, 12, 12), 10, [32, 64, 128], 128)
    ladder = profile_ladder(spec, [1.0, 0.5], batch_size=20)
    work = Workload.of([ladder[1.0], ladder[0.5]])
    times = device_times(fleet, np.array([0, 1]), work, np.array([100, 100]), 1, rng)
    times.total
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence, Union, cast

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from raysim.models.base import Axes, ModelSpec
from raysim.submodel.plan import rate_sizes

if TYPE_CHECKING:  # only for annotations: the cost model needs no fleet machinery at import
    from raysim.fleet import Fleet

__all__ = [
    "RateCost",
    "profile_rate",
    "profile_ladder",
    "clear_profile_cache",
    "Workload",
    "DeviceTimes",
    "device_times",
    "duty_wait",
]

# Parameters travel as float32.
_WIRE_BYTES_PER_PARAM = 4


@dataclass(frozen=True)
class RateCost:
    """Measured cost of training the submodel at one width rate.

    `flops_per_sample` is forward + backward (what training costs); `forward_flops_per_sample`
    is the forward pass alone (what FedScale-style ms-per-sample traces time). Both count what
    torch's flop counter counts: convolutions and matrix products, which dominate; element-wise
    work (norms, activations, pooling) is not counted.
    """

    rate: float
    params: int
    param_bytes: int
    flops_per_sample: float
    memory_bytes: int
    forward_flops_per_sample: float
    activation_bytes: int
    batch_size: int
    down_bytes: Optional[int] = None  # bytes on the wire through the run's channels (None: dense float32)
    up_bytes: Optional[int] = None

    @property
    def wire_down(self) -> int:
        """Bytes a device downloads at this rate (the downlink channel's payload)."""
        return self.param_bytes if self.down_bytes is None else self.down_bytes

    @property
    def wire_up(self) -> int:
        """Bytes a device uploads at this rate (the uplink channel's payload)."""
        return self.param_bytes if self.up_bytes is None else self.up_bytes


def _conv_backward_flop(grad_out_shape: Sequence[int], x_shape: Sequence[int], w_shape: Sequence[int],
                        _bias: Optional[Sequence[int]], _stride: Sequence[int], _padding: Sequence[int],
                        _dilation: Sequence[int], transposed: bool, _output_padding: Sequence[int], _groups: int,
                        output_mask: Sequence[bool], out_shape: object = None, **kwargs: object) -> int:
    """FLOPs of a convolution's backward: the input gradient and the weight gradient each cost
    what the forward costs. torch's own formula (2.13) counts the weight gradient of a grouped
    conv as if it were ungrouped, `groups` times too much (a depthwise conv's backward came
    out ~C times its forward); for `groups == 1` the two agree."""
    forward = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), bool(transposed))
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def _sizes(spec: ModelSpec, rate: float) -> dict[str, int]:
    return {g: rate_sizes(w, rate) for g, w in spec.groups.items()}


def _saved_activation_bytes(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Loss of one batch, and the bytes autograd saved for its backward.

    Tensors are deduplicated by storage (a view and its base are one allocation) and the
    parameters' own storages are skipped: they are already counted as parameter bytes.
    """
    param_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in param_storages and ptr not in seen:
            seen[ptr] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = nn.functional.cross_entropy(model(x), y)
    return loss, sum(seen.values())


def profile_rate(spec: ModelSpec, rate: float, batch_size: int, momentum: bool = False) -> RateCost:
    """Measure parameters, training FLOPs and training memory of `spec` at `rate`.

    One forward+backward of a batch of `batch_size` zero inputs runs under torch's
    `FlopCounterMode`; FLOPs are reported per sample. Memory is parameters + gradients (same
    bytes) + a momentum buffer when `momentum`, + activations saved for backward at this batch
    size. Transient buffers of the backward pass and allocator overhead are not included, so
    the figure is a lower bound on a real process's peak, comparable across rates and devices.
    The global torch RNG and thread count are left as they were.
    """
    if not 0.0 < rate <= 1.0:
        raise ValueError(f"rate must be in (0, 1], got {rate}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    with torch.random.fork_rng(devices=[]):
        model = spec.build(_sizes(spec, rate), rate)
    model.train()
    x = torch.zeros((batch_size, *spec.input_shape))
    y = torch.zeros(batch_size, dtype=torch.long)

    counter = FlopCounterMode(display=False,
                              custom_mapping={torch.ops.aten.convolution_backward: _conv_backward_flop})
    # One thread: the profiled batch is tiny, and on a busy machine torch's thread pool spends
    # ~50x longer synchronising than computing. Counts do not depend on threads.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with counter:
            loss, act_bytes = _saved_activation_bytes(model, x, y)
            forward = counter.get_total_flops()
            loss.backward()
            total = counter.get_total_flops()
    finally:
        torch.set_num_threads(threads)

    params = sum(p.numel() for p in model.parameters())
    tensor_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    optimizer_bytes = tensor_bytes if momentum else 0
    return RateCost(
        rate=float(rate),
        params=int(params),
        param_bytes=int(params * _WIRE_BYTES_PER_PARAM),
        flops_per_sample=total / batch_size,
        memory_bytes=int(2 * tensor_bytes + optimizer_bytes + act_bytes),
        forward_flops_per_sample=forward / batch_size,
        activation_bytes=int(act_bytes),
        batch_size=int(batch_size),
    )


# What a spec is told apart by: its name, group widths, parameter axes, input shape and classes.
_SpecKey = tuple[str, tuple[tuple[str, int], ...], tuple[tuple[str, Axes], ...], tuple[int, ...], int]

# (spec, rates, batch size, momentum) -> ladder
_LADDER_CACHE: dict[tuple[_SpecKey, tuple[float, ...], int, bool], dict[float, RateCost]] = {}


def _spec_key(spec: ModelSpec) -> _SpecKey:
    # The builder is a closure (a new object per spec), so identity is the spec's description.
    # Axes are included because they tell norm layers apart (`none` has no norm parameters).
    axes = tuple(sorted((k, tuple(v)) for k, v in spec.axes.items()))
    return (spec.name, tuple(sorted(spec.groups.items())), axes, tuple(spec.input_shape), spec.num_classes)


def profile_ladder(spec: ModelSpec, rates: Sequence[float], batch_size: int,
                   momentum: bool = False) -> dict[float, RateCost]:
    """`profile_rate` for each rate, cached per (spec description, rates, batch size, momentum).

    Returns a fresh dict (rate -> RateCost) in the order of `rates`.
    """
    key = (_spec_key(spec), tuple(float(r) for r in rates), int(batch_size), bool(momentum))
    if key not in _LADDER_CACHE:
        _LADDER_CACHE[key] = {float(r): profile_rate(spec, float(r), batch_size, momentum) for r in rates}
    return dict(_LADDER_CACHE[key])


def clear_profile_cache() -> None:
    """Forget cached ladders (tests, or after changing a model family in place)."""
    _LADDER_CACHE.clear()


@dataclass(frozen=True)
class Workload:
    """Per-device work of one round: bytes down (`param_bytes`) and up (`up_bytes`; None: the
    same) and training FLOPs per sample.

    Devices may train different rates, so these are arrays aligned with the devices.
    """

    param_bytes: np.ndarray
    flops_per_sample: np.ndarray
    up_bytes: Optional[np.ndarray] = None

    @classmethod
    def of(cls, costs: Union[RateCost, Sequence[RateCost]]) -> "Workload":
        """From one RateCost per device (or a single RateCost, shared by all)."""
        if isinstance(costs, RateCost):
            costs = [costs]
        return cls(
            param_bytes=np.array([c.wire_down for c in costs], dtype=np.float64),
            flops_per_sample=np.array([c.flops_per_sample for c in costs], dtype=np.float64),
            up_bytes=np.array([c.wire_up for c in costs], dtype=np.float64),
        )


@dataclass(frozen=True)
class DeviceTimes:
    """Predicted durations in simulated seconds, one entry per device.

    `wait_download` / `wait_upload` are the parts of `download` / `upload` a duty-cycled radio
    spends off air between messages (0 where the radio has no duty-cycle limit).
    """

    download: np.ndarray
    compute: np.ndarray
    upload: np.ndarray
    wait_download: np.ndarray
    wait_upload: np.ndarray

    @property
    def total(self) -> np.ndarray:
        """Download, then compute, then upload (sequential on a device)."""
        return cast(np.ndarray, self.download + self.compute + self.upload)


def device_times(
    fleet: Fleet,
    idx: np.ndarray,
    work: Union[Workload, RateCost, Sequence[RateCost]],
    samples: Union[np.ndarray, int],
    epochs: int,
    rng: np.random.Generator,
    jitter: float = 0.1,
) -> DeviceTimes:
    """Download, compute and upload time of devices at positions `idx` of `fleet`.

    download = latency + param_bytes * 8 / down_bps; upload = latency + param_bytes * 8 / up_bps;
    compute = epochs * samples * flops_per_sample / flops. A duty-cycled radio (LoRa) adds the
    time it must stay off air between messages (`duty_wait`). Each is multiplied by its own
    log-normal factor exp(N(0, jitter)) per device, drawn from `rng` (3 x len(idx) normals, in
    the order download, compute, upload); `jitter == 0` draws nothing and gives the exact
    formula. `work` holds one entry per device (or one entry for all); `samples` likewise.
    """
    idx = np.asarray(idx, dtype=np.int64)
    n = idx.shape[0]
    if not isinstance(work, Workload):
        work = Workload.of(work)
    nbytes = _per_device(work.param_bytes, n, "param_bytes")
    up_nbytes = nbytes if work.up_bytes is None else _per_device(work.up_bytes, n, "up_bytes")
    fps = _per_device(work.flops_per_sample, n, "flops_per_sample")
    samples_arr = _per_device(np.asarray(samples, dtype=np.float64), n, "samples")
    if epochs < 0 or jitter < 0:
        raise ValueError("epochs and jitter must be non-negative")

    latency = fleet.latency[idx]
    air_down = nbytes * 8.0 / fleet.down_bps[idx]
    air_up = up_nbytes * 8.0 / fleet.up_bps[idx]
    wait_down, wait_up = np.zeros(n), np.zeros(n)
    duty, payload = fleet.duty_of(idx)
    if np.any(duty < 1.0):
        wait_down = duty_wait(air_down, nbytes, payload, duty)
        wait_up = duty_wait(air_up, up_nbytes, payload, duty)
        download, upload = latency + air_down + wait_down, latency + air_up + wait_up
    else:  # no duty-cycled radio: the plain formula, bit for bit
        download, upload = latency + air_down, latency + air_up
    compute = epochs * samples_arr * fps / fleet.flops[idx]
    if jitter > 0:
        factors = np.exp(rng.normal(0.0, jitter, size=(3, n)))
        download, compute, upload = download * factors[0], compute * factors[1], upload * factors[2]
        wait_down, wait_up = wait_down * factors[0], wait_up * factors[2]
    return DeviceTimes(download, compute, upload, wait_down, wait_up)


def duty_wait(air_s: np.ndarray, nbytes: np.ndarray, payload_bytes: np.ndarray, duty: np.ndarray) -> np.ndarray:
    """Seconds a duty-cycled radio must stay off air while it sends `nbytes` in messages of at
    most `payload_bytes`, `air_s` being the time on air of the whole transfer.

    A radio allowed on air a share `duty` of the time waits `(1 / duty - 1)` x a message's air
    time after each message before the next (EU868 LoRaWAN, 1%: 99 x); nothing after the last.
    One message, or no limit (`duty == 1`), waits nothing.

        >>> duty_wait(np.array([10.0]), np.array([1000.0]), np.array([100.0]), np.array([0.01])).round(1).tolist()
        [891.0]
    """
    messages = np.where(np.isfinite(payload_bytes), np.ceil(nbytes / payload_bytes), 1.0)
    last = air_s / np.maximum(messages, 1.0)  # equal messages: the last one's air time
    return np.where(duty < 1.0, (air_s - last) * (1.0 / duty - 1.0), 0.0)


def _per_device(values: np.ndarray, n: int, name: str) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 0 or values.shape == (1,):
        return np.full(n, float(values.reshape(-1)[0]))
    if values.shape != (n,):
        raise ValueError(f"{name}: expected {n} per-device values, got shape {values.shape}")
    return values
