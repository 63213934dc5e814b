"""Compression strategies as a specification: every strategy's plan is a valid index set of the
right size, remapping is exact, coverage is counted right, and each strategy keeps the
channels it promises (prefix, rolling window, random subset, largest filters). The two
FedAvg baselines train only what the issue says they train."""

import numpy as np
import pytest
import torch
from helpers import local_sim, make_spec, make_strategy, tiny_overrides
from hypothesis import given, settings
from hypothesis import strategies as st

from raysim.models.cnn import cnn_spec
from raysim.models.mlp import mlp_spec
from raysim.models.preresnet import preresnet18_spec
from raysim.scenario.registry import BUILTINS
from raysim.scenario.schema import load_scenario
from raysim.server.aggregate import PartialSum, fold
from raysim.submodel import extract, plan_indices, remap, validate_plan
from raysim.submodel.plan import rate_sizes
from raysim.submodel.strategies import channel_l1

RATES = [1.0, 0.5, 0.25, 0.125, 0.0625]


NAMES = sorted(BUILTINS["compression.strategy"])
SPECS = {
    "mlp": mlp_spec((1, 4, 4), 3, [7, 5]),
    "cnn": cnn_spec((1, 8, 8), 4, [6, 9], 10, norm="group"),
    "preresnet": preresnet18_spec((1, 8, 8), 5, [4, 6, 8, 10], norm="group"),
}


def params_of(spec, seed=0):
    torch.manual_seed(seed)
    return {k: p.detach().clone() for k, p in spec.build().named_parameters()}


PARAMS = {k: params_of(s) for k, s in SPECS.items()}
SHAPES = {k: s.global_shapes() for k, s in SPECS.items()}

plan_args = st.tuples(st.sampled_from(NAMES), st.sampled_from(sorted(SPECS)), st.sampled_from(RATES),
                      st.integers(0, 500), st.integers(0, 10_000), st.integers(0, 2**31 - 1))


def make_plan(name, model, rate, rnd, device, seed):
    return make_strategy(name).plan(SPECS[model], rate, rnd, device, PARAMS[model], seed)


def held_mask(spec, plan, name, shape):
    """Brute force: which elements of a global tensor the plan holds."""
    mask = np.ones(shape, bool)
    for d, g in enumerate(spec.axes[name]):
        if g is None:
            continue
        keep = np.zeros(shape[d], bool)
        keep[plan.keep[g]] = True
        view = [1] * len(shape)
        view[d] = shape[d]
        mask &= keep.reshape(view)
    return mask


@settings(max_examples=120, deadline=None)
@given(plan_args)
def test_plans_are_valid_index_sets_of_the_right_size(args):
    name, model, rate, rnd, device, seed = args
    spec = SPECS[model]
    plan = make_plan(*args)
    validate_plan(spec, plan)
    for g, w in spec.groups.items():
        want = w if name == "full" else rate_sizes(w, rate)
        assert len(plan.keep[g]) == want, (name, g)
        assert plan.keep[g].dtype == np.int64


@settings(max_examples=80, deadline=None)
@given(plan_args)
def test_remap_then_extract_is_identity_on_kept_entries_and_zero_elsewhere(args):
    model = args[1]
    spec, shapes = SPECS[model], SHAPES[model]
    plan = make_plan(*args)
    idx = plan_indices(spec, plan, shapes)
    sub = extract(PARAMS[model], idx)
    gen = torch.Generator().manual_seed(args[-1])
    delta = {k: torch.randn(v.shape, generator=gen) for k, v in sub.items()}
    full = remap(delta, idx, shapes)
    back = extract(full, idx)
    for k in delta:
        assert torch.equal(back[k], delta[k]), k
        mask = torch.from_numpy(held_mask(spec, plan, k, shapes[k]))
        assert torch.count_nonzero(full[k][~mask]) == 0, k
        assert int(mask.sum()) == delta[k].numel(), k


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(NAMES), st.sampled_from(sorted(SPECS)), st.lists(st.sampled_from(RATES), min_size=1, max_size=6),
       st.integers(0, 100), st.integers(0, 2**31 - 1))
def test_coverage_counts_equal_the_number_of_plans_holding_each_element(name, model, rates, rnd, seed):
    spec, shapes = SPECS[model], SHAPES[model]
    acc = PartialSum.zeros(shapes)
    expect = {k: np.zeros(s, np.int64) for k, s in shapes.items()}
    for device, rate in enumerate(rates):
        plan = make_plan(name, model, rate, rnd, device, seed)
        idx = plan_indices(spec, plan, shapes)
        fold(acc, {k: torch.ones_like(v) for k, v in extract(PARAMS[model], idx).items()}, idx, 1)
        for k in shapes:
            expect[k] += held_mask(spec, plan, k, shapes[k])
    for k in shapes:
        assert np.array_equal(acc.weights[k], expect[k]), k
    assert acc.devices == len(rates)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(sorted(SPECS)), st.sampled_from(RATES[1:]), st.integers(0, 1000))
def test_rolling_window_covers_every_channel_exactly_k_times_over_width_rounds(model, rate, start):
    spec = SPECS[model]
    roll = make_strategy("rolling")
    counts = {g: np.zeros(w, np.int64) for g, w in spec.groups.items()}
    widest = max(spec.groups.values())
    for r in range(start, start + widest):
        plan = roll.plan(spec, rate, r, -1, PARAMS[model], 0)
        for g, w in spec.groups.items():
            if r < start + w:  # a group of width K needs exactly K consecutive rounds
                counts[g][plan.keep[g]] += 1
    for g, w in spec.groups.items():
        assert np.all(counts[g] == rate_sizes(w, rate)), g


def test_rolling_window_moves_by_one_and_wraps():
    spec = mlp_spec((1, 2, 2), 2, [8])
    roll = make_strategy("rolling")
    keep = [roll.plan(spec, 0.5, r, 0, {}, 0).keep["fc0"].tolist() for r in (0, 1, 6)]
    assert keep == [[0, 1, 2, 3], [1, 2, 3, 4], [0, 1, 6, 7]]


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(sorted(SPECS)), st.sampled_from(RATES), st.integers(0, 500), st.integers(0, 2**31 - 1))
def test_shared_plans_do_not_depend_on_the_device_and_smaller_rates_nest(model, rate, rnd, seed):
    spec = SPECS[model]
    for name in ("static", "rolling", "magnitude"):
        s = make_strategy(name)
        assert not s.per_device
        a = s.plan(spec, rate, rnd, 1, PARAMS[model], seed)
        b = s.plan(spec, rate, rnd, 99, PARAMS[model], seed)
        assert a.key() == b.key(), name
        half = s.plan(spec, rate / 2, rnd, 1, PARAMS[model], seed)
        for g in spec.groups:
            assert set(half.keep[g]) <= set(a.keep[g]), (name, g)


def test_static_keeps_the_first_channels():
    spec = SPECS["preresnet"]
    plan = make_strategy("static").plan(spec, 0.5, 7, 3, PARAMS["preresnet"], 0)
    assert all(plan.keep[g].tolist() == list(range(rate_sizes(w, 0.5))) for g, w in spec.groups.items())


def test_random_is_deterministic_per_seed_round_and_device_and_varies_between_them():
    spec, params = SPECS["preresnet"], PARAMS["preresnet"]
    s = make_strategy("random")
    assert s.per_device
    key = lambda rnd, device, seed: s.plan(spec, 0.5, rnd, device, params, seed).key()  # noqa: E731
    base = key(3, 4, 11)
    assert base == key(3, 4, 11)
    assert base != key(3, 5, 11)
    assert base != key(4, 4, 11)
    assert base != key(3, 4, 12)


def test_random_subsets_are_roughly_uniform_over_channels():
    spec = mlp_spec((1, 2, 2), 2, [16])
    s = make_strategy("random")
    counts = np.zeros(16)
    for d in range(800):
        counts[s.plan(spec, 0.25, 1, d, {}, 0).keep["fc0"]] += 1
    # Each channel is kept with probability 1/4: 200 of 800 on average.
    assert counts.sum() == 800 * 4
    assert counts.min() > 150 and counts.max() < 250


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(sorted(SPECS)), st.sampled_from(RATES), st.integers(0, 2**31 - 1))
def test_magnitude_keeps_the_channels_with_the_largest_filter_l1_norm(model, rate, seed):
    spec = SPECS[model]
    params = params_of(spec, seed % 1000)
    plan = make_strategy("magnitude").plan(spec, rate, 0, -1, params, 0)
    # Brute force over the weights whose first axis is a group (norm scales excluded).
    for g, w in spec.groups.items():
        score = np.zeros(w)
        for name, axes in spec.axes.items():
            if axes[0] == g and len(axes) > 1:
                t = params[name].abs().double()
                score += t.reshape(w, -1).sum(1).numpy()
        k = rate_sizes(w, rate)
        kept, dropped = score[plan.keep[g]], np.delete(score, plan.keep[g])
        assert len(plan.keep[g]) == k
        if len(dropped):
            assert kept.min() >= dropped.max(), g
    assert make_strategy("magnitude").eval_plan(spec, rate, params).key() == plan.key()


def test_magnitude_follows_the_global_model():
    spec = mlp_spec((1, 2, 2), 2, [6])
    params = {k: torch.zeros(s) for k, s in spec.global_shapes().items()}
    params["layers.0.weight"][[1, 4]] = 5.0
    assert make_strategy("magnitude").plan(spec, 0.33, 0, -1, params, 0).keep["fc0"].tolist() == [1, 4]
    scores = channel_l1(spec, params)
    assert scores["fc0"].tolist() == [0, 20, 0, 0, 20, 0]


def test_unknown_strategy_is_a_one_line_error():
    with pytest.raises(ValueError, match="compression.strategy"):
        make_strategy("bogus")


# ----------------------------------------------------------------- baselines on `full`

def make_sim(**over):
    base = {"fleet.mix": "{mcu: 0.5, mcu-psram: 0.3, rpi4: 0.2}", "selection.per_round": 20,
            "fleet.devices": 60, "deadline.seconds": "null",
            "selection.overcommit": 0}
    base.update(over)
    sc = load_scenario("scenarios/quickstart.yaml", tiny_overrides(**base))
    return local_sim(sc)


def test_fedavg_capable_trains_the_full_model_on_capable_devices_only():
    sim = make_sim(**{"compression.baseline": "fedavg-capable"})
    assert sim.setup.rates == [1.0]
    assert sim.spec.groups == {"conv0": 8, "conv1": 16, "hidden": 16}
    need = sim.setup.costs[1.0].memory_bytes
    out = sim.step()
    c = out.clients
    mem = dict(zip(sim.setup.fleet.device_id.tolist(), sim.setup.fleet.memory.tolist()))
    trained = [d for d, s in zip(c["device_id"], c["status"]) if s == "ok"]
    excluded = [d for d, s in zip(c["device_id"], c["status"]) if s == "excluded"]
    assert trained and excluded
    assert all(mem[d] >= need for d in trained)
    assert all(mem[d] < need for d in excluded)
    assert all(r == 1.0 for r, s in zip(c["rate"], c["status"]) if s == "ok")
    assert [e.model for e in out.evals] == ["global"]


def test_fedavg_smallest_makes_the_smallest_submodel_the_global_model():
    full = make_sim()
    sim = make_sim(**{"compression.baseline": "fedavg-smallest"})
    smallest = min(full.setup.rates)
    assert sim.setup.rates == [1.0]
    assert sim.spec.groups == {g: rate_sizes(w, smallest) for g, w in full.spec.groups.items()}
    assert sim.setup.costs[1.0].params == full.setup.costs[smallest].params
    out = sim.step()
    st_ = out.clients["status"]
    # Every device that can train the framework's smallest submodel takes part (in this fleet,
    # all of them, mcu included), at "rate 1" of the small global model.
    assert st_.count("ok") == full.step().clients["status"].count("ok") == len(st_)
    assert all(r == 1.0 for r, s in zip(out.clients["rate"], st_) if s == "ok")


# ----------------------------------------------------------------- the study's design

def test_study_scenario_fleet_mostly_cannot_hold_the_full_model():
    sc = load_scenario("scenarios/framework-vs-baselines.yaml")
    from raysim.engine.cost import profile_ladder  # noqa: PLC0415
    from raysim.fleet import make_fleet  # noqa: PLC0415

    spec = make_spec(sc.model, (1, 12, 12), 10)
    need = profile_ladder(spec, [1.0], sc.train.batch_size)[1.0].memory_bytes
    fleet = make_fleet(sc.fleet, sc.seed, reference_flops=1.0)
    assert np.mean(fleet.memory < need) > 0.7
    for over in (["compression.strategy=rolling"], ["compression.baseline=fedavg-smallest"]):
        assert load_scenario("scenarios/framework-vs-baselines.yaml", over).compression


def test_study_table_compares_arms_up_to_the_common_horizon():
    import importlib.util  # noqa: PLC0415
    import sys  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    import pandas as pd  # noqa: PLC0415

    from raysim.rundir.reader import Run  # noqa: PLC0415

    path = Path(__file__).resolve().parents[2] / "analysis" / "framework_vs_baselines.py"
    mod_spec = importlib.util.spec_from_file_location("framework_vs_baselines", path)
    fvb = importlib.util.module_from_spec(mod_spec)
    sys.modules[mod_spec.name] = fvb  # dataclasses look their module up while being defined
    mod_spec.loader.exec_module(fvb)

    def fake(times, accs, trained_ids):
        rounds = pd.DataFrame({"round": range(1, len(times) + 1), "sim_time": times,
                               "duration": pd.Series(times).diff().fillna(times[0])})
        evals = pd.DataFrame({"round": rounds["round"], "model": "global", "sim_time": times, "accuracy": accs})
        clients = pd.DataFrame([{"round": r, "device_id": d, "status": "ok", "rate": 1.0}
                                for r, ids in enumerate(trained_ids, 1) for d in ids]
                               + [{"round": 1, "device_id": 99, "status": "excluded", "rate": float("nan")}])
        return Run(Path("x"), {}, {}, rounds, clients, evals)

    arms = [fvb.Arm("a", (), "framework"), fvb.Arm("b", (), "baseline")]
    runs = {"a": fake([10.0, 20.0, 30.0], [0.5, 0.85, 0.9], [[1, 2], [2, 3], [4]]),
            "b": fake([5.0, 10.0, 15.0, 20.0], [0.2, 0.4, 0.6, 0.7], [[1], [1], [1], [5]])}
    df, horizon = fvb.summarise(runs, arms, target=0.8, last=2)
    assert horizon == 20.0
    a, b = df.set_index("arm").loc["a"], df.set_index("arm").loc["b"]
    assert a["rounds"] == 2 and a["time_to_target_s"] == 20.0 and a["rounds_to_target"] == 2
    assert a["devices_took_part"] == 3 and a["devices_selected"] == 4  # round 3 is past the horizon
    assert a["final_acc"] == pytest.approx(0.675) and a["best_acc"] == 0.85
    assert b["rounds"] == 4 and np.isnan(b["time_to_target_s"]) and b["devices_took_part"] == 2
    # Over seeds: one row per arm, mean (min-max).
    other = df.assign(final_acc=df["final_acc"] - 0.1)
    text = fvb.markdown(fvb.combine({0: df, 1: other}), 0.8, {0: horizon, 1: horizon}, last=2)
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert "62.5 (57.5-67.5)%" in rows["a"] and "not reached" in rows["b"]
