"""Aggregation as a specification: per-element weighted means of remapped submodel deltas."""

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from raysim.models import cnn_spec, mlp_spec
from raysim.server.aggregate import FRAC_BITS, PartialSum, fold, mean_delta
from raysim.server.optimizers import FedAdam, FedAvg, FedAvgM, FedYogi, ServerState
from raysim.submodel import SubmodelPlan, extract, full_plan, plan_indices, remap

SPEC = mlp_spec((1, 4, 4), 3, [6, 5])
SHAPES = SPEC.global_shapes()
TOL = 2.0 ** -(FRAC_BITS - 2)


def random_plan(rng: np.random.Generator) -> SubmodelPlan:
    keep = {}
    for g, w in SPEC.groups.items():
        k = int(rng.integers(1, w + 1))
        keep[g] = np.sort(rng.choice(w, size=k, replace=False)).astype(np.int64)
    return SubmodelPlan(1.0, keep)


def random_delta(plan: SubmodelPlan, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    idx = plan_indices(SPEC, plan, SHAPES)
    base = {k: torch.zeros(s) for k, s in SHAPES.items()}
    sub = extract(base, idx)
    return {k: torch.from_numpy(rng.normal(size=tuple(v.shape)).astype(np.float32)) for k, v in sub.items()}


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 6))
def test_full_rate_equals_plain_fedavg(seed, n):
    rng = np.random.default_rng(seed)
    plan = full_plan(SPEC)
    idx = plan_indices(SPEC, plan, SHAPES)
    acc = PartialSum.zeros(SHAPES)
    deltas, weights = [], []
    for _ in range(n):
        d = random_delta(plan, rng)
        w = int(rng.integers(1, 50))
        fold(acc, d, idx, w)
        deltas.append(d)
        weights.append(w)
    mean, held = mean_delta(acc)
    for k in SHAPES:
        expect = sum(w * d[k].double() for w, d in zip(weights, deltas)) / sum(weights)
        assert bool(held[k].all())
        assert torch.allclose(mean[k].double(), expect, atol=TOL)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 6))
def test_random_plans_match_brute_force_per_element_mean(seed, n):
    rng = np.random.default_rng(seed)
    acc = PartialSum.zeros(SHAPES)
    num = {k: np.zeros(s) for k, s in SHAPES.items()}
    den = {k: np.zeros(s) for k, s in SHAPES.items()}
    for _ in range(n):
        plan = random_plan(rng)
        idx = plan_indices(SPEC, plan, SHAPES)
        d = random_delta(plan, rng)
        w = int(rng.integers(1, 5))
        fold(acc, d, idx, w)
        full = remap(d, idx, SHAPES)
        # brute force: walk every global element and ask whether the plan holds it
        for k, axes in SPEC.axes.items():
            for pos in np.ndindex(*SHAPES[k]):
                if all(g is None or pos[a] in set(plan.keep[g].tolist()) for a, g in enumerate(axes)):
                    num[k][pos] += w * float(full[k][pos])
                    den[k][pos] += w
    mean, held = mean_delta(acc)
    for k in SHAPES:
        assert np.array_equal(held[k].numpy(), den[k] > 0)
        expect = np.divide(num[k], den[k], out=np.zeros_like(num[k]), where=den[k] > 0)
        assert np.allclose(mean[k].numpy(), expect, atol=TOL)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_extract_after_remap_is_identity(seed):
    rng = np.random.default_rng(seed)
    plan = random_plan(rng)
    idx = plan_indices(SPEC, plan, SHAPES)
    d = random_delta(plan, rng)
    back = extract(remap(d, idx, SHAPES), idx)
    assert all(torch.equal(back[k], d[k]) for k in d)


def test_unheld_elements_do_not_move():
    spec = cnn_spec((1, 8, 8), 4, [4, 6], 8)
    shapes = spec.global_shapes()
    params = {k: torch.randn(s) for k, s in shapes.items()}
    before = {k: v.clone() for k, v in params.items()}
    plan = SubmodelPlan(0.5, {"conv0": np.array([0, 1]), "conv1": np.array([2, 3, 4]), "hidden": np.array([0, 7])})
    idx = plan_indices(spec, plan, shapes)
    acc = PartialSum.zeros(shapes)
    fold(acc, {k: torch.ones_like(v) for k, v in extract(params, idx).items()}, idx, 1)
    delta, held = mean_delta(acc)
    FedAvg().step(params, delta, held, ServerState())
    w = params["features.5.weight"]  # conv1: (out=conv1, in=conv0)
    assert torch.equal(w[5], before["features.5.weight"][5])          # out channel 5 not held
    assert torch.equal(w[2, 2], before["features.5.weight"][2, 2])    # in channel 2 not held
    assert torch.allclose(w[3, 1], before["features.5.weight"][3, 1] + 1)


def test_partial_sums_merge_in_any_order_bit_identically():
    rng = np.random.default_rng(0)
    parts = []
    for _ in range(5):
        acc = PartialSum.zeros(SHAPES)
        plan = random_plan(rng)
        fold(acc, random_delta(plan, rng), plan_indices(SPEC, plan, SHAPES), 3)
        parts.append(acc)
    a = PartialSum.zeros(SHAPES)
    for p in parts:
        a.merge(p)
    b = PartialSum.zeros(SHAPES)
    for p in reversed(parts):
        b.merge(p)
    ma, _ = mean_delta(a)
    mb, _ = mean_delta(b)
    assert all(torch.equal(ma[k], mb[k]) for k in SHAPES)


def test_server_optimizers_move_toward_delta():
    for kind in [FedAvg, FedAvgM, FedAdam, FedYogi]:
        p = {"w": torch.zeros(3)}
        opt = kind(lr=0.1)
        held = {"w": torch.tensor([True, True, False])}
        state = ServerState()
        opt.step(p, {"w": torch.tensor([1.0, -1.0, 5.0])}, held, state)
        assert p["w"][0] > 0 and p["w"][1] < 0 and p["w"][2] == 0, kind
        for slots in state.slots.values():  # unheld elements keep their state too
            fill = float(torch.tensor(opt.eps**2)) if hasattr(opt, "eps") else 0.0
            assert all(float(t[2]) in (0.0, fill) for t in slots.values())
