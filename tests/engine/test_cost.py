"""Specification of raysim.engine.cost: measured FLOPs and memory per rate, and device durations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from raysim.engine.cost import DeviceTimes, RateCost, Workload, device_times, profile_ladder, profile_rate
from raysim.fleet import load_catalogue, make_fleet
from raysim.models import cnn_spec
from raysim.models.mlp import mlp_spec
from raysim.scenario.schema import FleetConfig

RATES = [1.0, 0.5, 0.25, 0.125, 0.0625]
CNN = cnn_spec((1, 12, 12), 10, [32, 64, 128], 128)
LADDER = profile_ladder(CNN, RATES, batch_size=20)


@pytest.mark.parametrize("spec", [CNN, mlp_spec((1, 12, 12), 10, [256, 128])], ids=["cnn", "mlp"])
def test_params_flops_and_memory_fall_strictly_with_rate(spec) -> None:
    ladder = profile_ladder(spec, RATES, batch_size=20)
    costs = [ladder[r] for r in RATES]
    for big, small in zip(costs, costs[1:]):
        assert big.params > small.params
        assert big.flops_per_sample > small.flops_per_sample
        assert big.memory_bytes > small.memory_bytes
        assert big.param_bytes == 4 * big.params


def test_params_match_the_built_model() -> None:
    assert LADDER[1.0].params == sum(p.numel() for p in CNN.build().parameters())


def test_backward_costs_about_twice_the_forward() -> None:
    full = LADDER[1.0]
    # The first layer computes no input gradient, so slightly under 3x.
    assert 2.6 < full.flops_per_sample / full.forward_flops_per_sample <= 3.0
    # A 3x3 conv over C_in -> C_out on an HxW map: 2 * 9 * C_in * C_out * H * W forward FLOPs.
    conv = 2 * 9 * (1 * 32 * 144 + 32 * 64 * 36 + 64 * 128 * 9)
    dense = 2 * (128 * 128 + 128 * 10)
    assert full.forward_flops_per_sample == pytest.approx(conv + dense)


@pytest.mark.parametrize("groups", [1, 4, 16], ids=["plain", "grouped", "depthwise"])
def test_a_grouped_convs_backward_costs_twice_its_forward(groups) -> None:
    # torch's formula (2.13) counts a grouped conv's weight gradient `groups` times too high;
    # raysim counts input and weight gradient at the forward's cost each.
    from raysim.models.base import ModelSpec

    def make(shape, n):
        return torch.nn.Sequential(torch.nn.Conv2d(16, 16, 3, padding=1, groups=groups),
                                   torch.nn.Conv2d(16, 16, 5, padding=2, groups=groups),
                                   torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, n))

    cost = profile_rate(ModelSpec.whole("g", make, (16, 6, 6), 4), 1.0, batch_size=2)
    conv = 2 * 36 * 16 * 16 * 9 // groups, 2 * 36 * 16 * 16 * 25 // groups
    dense = 2 * 16 * 4
    assert cost.forward_flops_per_sample == pytest.approx(sum(conv) + dense)
    # the first conv computes no input gradient: forward + weight gradient
    assert cost.flops_per_sample == pytest.approx(2 * conv[0] + 3 * conv[1] + 3 * dense)


@settings(max_examples=15, deadline=None)
@given(rate=st.sampled_from(RATES), batch=st.integers(1, 40), momentum=st.booleans())
def test_memory_covers_params_grads_optimizer_and_activations(rate: float, batch: int, momentum: bool) -> None:
    cost = profile_rate(CNN, rate, batch, momentum)
    state = 3 if momentum else 2
    assert cost.memory_bytes == state * cost.param_bytes + cost.activation_bytes
    assert cost.activation_bytes > 0
    # FLOPs per sample do not depend on the batch; saved activations grow linearly with it.
    assert cost.flops_per_sample == pytest.approx(LADDER[rate].flops_per_sample)
    per_sample = LADDER[rate].activation_bytes / 20
    assert cost.activation_bytes == pytest.approx(per_sample * batch, rel=0.05)


def test_profiling_leaves_the_torch_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    profile_rate(CNN, 0.5, 4)
    assert torch.equal(torch.rand(3), expected)


def test_ladder_is_cached_per_spec_description() -> None:
    again = profile_ladder(cnn_spec((1, 12, 12), 10, [32, 64, 128], 128), RATES, batch_size=20)
    assert all(again[r] is LADDER[r] for r in RATES)  # a new spec object, same description
    other = profile_ladder(CNN, RATES, batch_size=10)
    assert other[1.0].memory_bytes < LADDER[1.0].memory_bytes


def test_catalogue_is_calibrated_to_the_default_model() -> None:
    """MCUs train only the small rates of the default CNN; Linux-class devices train all."""
    cat = load_catalogue()
    need = {r: LADDER[r].memory_bytes for r in RATES}
    assert 1 << 20 < need[1.0] < 8 << 20  # "a few MB" at rate 1
    assert need[0.25] > cat["mcu"].memory_bytes >= need[0.125]
    assert need[1.0] > cat["mcu-psram"].memory_bytes >= need[0.5]
    for name in ("rpi-zero", "rpi3", "rpi4", "jetson-nano", "phone-low", "phone-high", "gateway"):
        assert cat[name].memory_bytes >= 10 * need[1.0], name


# --- device durations ---------------------------------------------------------------------

FLEET = make_fleet(FleetConfig(devices=200), seed=0)


def _mixed_work(idx: np.ndarray) -> list[RateCost]:
    return [LADDER[RATES[i % len(RATES)]] for i in idx]


def test_zero_jitter_gives_the_exact_formula() -> None:
    idx = np.array([3, 0, 17, 199])
    costs = _mixed_work(idx)
    samples = np.array([10, 200, 55, 1])
    t = device_times(FLEET, idx, costs, samples, epochs=2, rng=np.random.default_rng(0), jitter=0.0)
    for j, (i, c) in enumerate(zip(idx, costs)):
        assert t.download[j] == pytest.approx(FLEET.latency[i] + c.param_bytes * 8 / FLEET.down_bps[i], rel=1e-12)
        assert t.upload[j] == pytest.approx(FLEET.latency[i] + c.param_bytes * 8 / FLEET.up_bps[i], rel=1e-12)
        assert t.compute[j] == pytest.approx(2 * samples[j] * c.flops_per_sample / FLEET.flops[i], rel=1e-12)
    assert np.allclose(t.total, t.download + t.compute + t.upload)


@settings(max_examples=30, deadline=None)
@given(scale=st.integers(1, 50), epochs=st.integers(1, 5), data=st.data())
def test_times_scale_linearly_with_samples_epochs_and_bytes(scale: int, epochs: int, data) -> None:
    idx = np.array(data.draw(st.lists(st.integers(0, len(FLEET) - 1), min_size=1, max_size=20)))
    samples = np.array(data.draw(st.lists(st.integers(1, 500), min_size=len(idx), max_size=len(idx))))
    work = Workload.of(_mixed_work(idx))
    base = device_times(FLEET, idx, work, samples, 1, np.random.default_rng(0), jitter=0.0)
    more = device_times(FLEET, idx, work, samples * scale, epochs, np.random.default_rng(0), jitter=0.0)
    assert np.allclose(more.compute, base.compute * scale * epochs, rtol=1e-12)
    assert np.array_equal(more.download, base.download)
    heavy = Workload(work.param_bytes * scale, work.flops_per_sample)
    h = device_times(FLEET, idx, heavy, samples, 1, np.random.default_rng(0), jitter=0.0)
    lat = FLEET.latency[idx]
    assert np.allclose(h.upload - lat, (base.upload - lat) * scale, rtol=1e-9)
    assert np.allclose(h.download - lat, (base.download - lat) * scale, rtol=1e-9)


def test_jitter_is_seeded_lognormal_noise_around_the_formula() -> None:
    idx = np.zeros(20000, dtype=np.int64)  # one device, many draws
    exact = device_times(FLEET, idx, LADDER[0.5], 100, 1, np.random.default_rng(0), jitter=0.0)
    a = device_times(FLEET, idx, LADDER[0.5], 100, 1, np.random.default_rng(4), jitter=0.2)
    b = device_times(FLEET, idx, LADDER[0.5], 100, 1, np.random.default_rng(4), jitter=0.2)
    assert isinstance(a, DeviceTimes) and np.array_equal(a.total, b.total)
    for part in ("download", "compute", "upload"):
        logs = np.log(getattr(a, part) / getattr(exact, part))
        assert abs(np.median(logs)) < 0.01 and abs(logs.std() - 0.2) < 0.01
    # Independent factors per part.
    assert abs(np.corrcoef(np.log(a.compute), np.log(a.upload))[0, 1]) < 0.05


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="samples"):
        device_times(FLEET, np.array([0, 1]), LADDER[1.0], np.array([1, 2, 3]), 1, np.random.default_rng(0))
