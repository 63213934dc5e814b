"""The model zoo as a specification: every parameter has axes that match its shape, every
submodel loads its extracted weights and runs, a submodel computes exactly the global model
with the dropped channels removed (residual shortcuts included), parameters scale with the
rate squared, the scaler acts in training only, and static batch norm is evaluated with
statistics recomputed on training data rather than those of the test batch."""

import functools

import numpy as np
import pytest
import torch
from helpers import local_sim, make_spec, make_strategy, tiny_overrides
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from raysim.client.evaluate import load_params
from raysim.models.base import Scaler
from raysim.models.calibrate import calibration_sample, recompute_bn_stats, static_norms
from raysim.models.cnn import cnn_spec
from raysim.models.mlp import mlp_spec
from raysim.models.preresnet import preresnet18_spec, stage_strides
from raysim.scenario.schema import ModelConfig, ScenarioError, load_scenario
from raysim.submodel import SubmodelPlan, extract, plan_indices
from raysim.submodel.plan import rate_sizes

RATES = [1.0, 0.5, 0.25, 0.125, 0.0625]




@functools.cache
def zoo(norm):
    """The specs, built once per norm (about a second each time) and shared: the tests only
    read them and build models from them; the property test below asks for them 25 times."""
    return {
        "mlp": mlp_spec((1, 8, 8), 10, [32, 16]),
        "cnn": cnn_spec((1, 12, 12), 10, [16, 32], 32, norm=norm),
        "preresnet-32": preresnet18_spec((3, 32, 32), 10, [16, 16, 32, 32], norm=norm),
        "preresnet-12": preresnet18_spec((1, 12, 12), 10, [16, 16, 32, 32], norm=norm),
        "preresnet-8": preresnet18_spec((1, 8, 8), 10, [16, 16, 32, 32], norm=norm),
    }


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("norm", ["none", "group", "static-bn"])
def test_every_parameter_has_axes_matching_its_shape(norm):
    for name, spec in zoo(norm).items():
        shapes = spec.global_shapes()
        assert set(shapes) == set(spec.axes), name
        for k, shape in shapes.items():
            axes = spec.axes[k]
            assert len(axes) == len(shape), (name, k)
            for d, g in enumerate(axes):
                if g is not None:
                    assert shape[d] == spec.groups[g], (name, k, d)


@pytest.mark.parametrize("norm", ["group", "static-bn"])
@pytest.mark.parametrize("strategy", ["static", "random"])
def test_submodels_at_every_rate_load_extracted_weights_train_and_evaluate(norm, strategy):
    for name, spec in zoo(norm).items():
        torch.manual_seed(0)
        params = {k: p.detach() for k, p in spec.build().named_parameters()}
        shapes = spec.global_shapes()
        x = torch.randn(3, *spec.input_shape)
        for rate in RATES:
            plan = make_strategy(strategy).plan(spec, rate, 1, 2, params, 0)
            sub = spec.build(plan.sizes(), rate)
            load_params(sub, extract(params, plan_indices(spec, plan, shapes)))
            sub.train()
            sub(x).sum().backward()  # one training step's forward/backward works
            sub(x[:1])               # a batch of one trains too (BatchNorm keeps a 2x2 map)
            sub.eval()
            assert sub(x).shape == (3, 10), (name, rate)


def test_preresnet18_has_about_11m_parameters_at_rate_1():
    spec = preresnet18_spec((3, 32, 32), 10, [64, 128, 256, 512], norm="static-bn")
    # The standard pre-activation ResNet-18 for CIFAR-10 (HeteroFL reports 9.6M for its variant).
    assert n_params(spec.build()) == 11_172_170


def test_preresnet18_parameters_scale_with_rate_squared():
    spec = preresnet18_spec((3, 32, 32), 10, [64, 128, 256, 512])
    full = n_params(spec.build())
    for rate in [0.5, 0.25, 0.125, 0.0625]:
        sub = n_params(spec.build({g: rate_sizes(w, rate) for g, w in spec.groups.items()}, rate))
        ratio = sub / full / rate**2
        # Only the classifier's outputs do not shrink: 10 * (512 * rate) weights + 10 biases.
        assert 0.99 < ratio < 1.1, (rate, ratio)


def test_preresnet_downsamples_32x32_as_usual_and_keeps_small_inputs_at_2x2():
    assert stage_strides(32) == [1, 2, 2, 2]  # 32-16-8-4
    assert stage_strides(12) == [1, 2, 2, 1]  # 12-6-3-2
    assert stage_strides(8) == [1, 2, 2, 1]   # 8-4-2-2
    assert stage_strides(4) == [1, 2, 1, 1]   # 4-2-2-2


def test_preresnet_residual_streams_are_one_group_per_stage():
    spec = preresnet18_spec((3, 32, 32), 10, [8, 8, 16, 16])
    out_groups = {k: a[0] for k, a in spec.axes.items() if k.endswith(("conv2.weight", "shortcut.weight"))}
    stage_of = {f"blocks.{i}": i // 2 for i in range(8)}
    for k, g in out_groups.items():
        assert g == f"res{stage_of[k.rsplit('.', 2)[0]]}", k
    assert spec.axes["stem.weight"][0] == "res0"
    assert spec.axes["classifier.weight"] == (None, "res3")


def masked_global(spec, params, plan):
    """The global weights with every element the plan drops set to zero."""
    shapes = spec.global_shapes()
    idx = plan_indices(spec, plan, shapes)
    out = {}
    for k, v in params.items():
        z = torch.zeros_like(v)
        z[idx[k]] = v[idx[k]]
        out[k] = z
    return out


@settings(max_examples=25, deadline=None)
@given(st.sampled_from(["mlp", "cnn", "preresnet-8", "preresnet-12"]), st.integers(0, 2**31 - 1))
def test_a_submodel_computes_the_global_model_with_dropped_channels_removed(name, seed):
    """Index consistency: with the dropped channels' weights zeroed, the global model's output
    equals the submodel's. If a residual add or shortcut mixed different global channels, the
    two would differ."""
    spec = zoo("none")[name]
    gen = np.random.default_rng(seed)
    keep = {g: np.sort(gen.choice(w, size=int(gen.integers(1, w + 1)), replace=False)).astype(np.int64)
            for g, w in spec.groups.items()}
    plan = SubmodelPlan(0.5, keep)
    torch.manual_seed(seed % 1000)
    glob = spec.build()
    params = {k: p.detach().clone() for k, p in glob.named_parameters()}
    load_params(glob, masked_global(spec, params, plan))
    sub = spec.build(plan.sizes(), 0.5)
    load_params(sub, extract(params, plan_indices(spec, plan, spec.global_shapes())))
    glob.eval()
    sub.eval()  # the scaler is the identity at evaluation
    x = torch.randn(4, *spec.input_shape)
    with torch.no_grad():
        assert torch.allclose(glob(x), sub(x), atol=1e-5, rtol=1e-4)


def test_scaler_divides_by_the_rate_in_training_only():
    x = torch.ones(2, 3)
    s = Scaler(0.25)
    assert torch.equal(s.train()(x), x * 4)
    assert torch.equal(s.eval()(x), x)
    assert torch.equal(Scaler(1.0).train()(x), x)
    assert torch.equal(Scaler(0.25, enabled=False).train()(x), x)


def test_recomputed_bn_statistics_are_those_of_the_calibration_data_with_scalers_off():
    spec = cnn_spec((1, 8, 8), 4, [6, 8], 8, norm="static-bn")
    torch.manual_seed(0)
    model = spec.build({"conv0": 3, "conv1": 4, "hidden": 8}, 0.5)
    x = torch.randn(300, 1, 8, 8)
    with torch.no_grad():
        first_conv = model.get_submodule("features.0")(x)  # what the first norm sees at evaluation (no scaler)
    assert recompute_bn_stats(model, x, batch_size=300) == 2
    bn = model.get_submodule("features.2")
    assert torch.allclose(bn.running_mean, first_conv.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.allclose(bn.running_var, first_conv.var(dim=(0, 2, 3)), rtol=1e-3)
    assert not model.training


def test_after_recomputation_a_sample_is_classified_the_same_alone_or_in_a_batch():
    spec = preresnet18_spec((1, 8, 8), 10, [8, 8, 16, 16], norm="static-bn")
    torch.manual_seed(0)
    model = spec.build()
    x = torch.randn(64, 1, 8, 8)
    model.eval()
    with torch.no_grad():
        assert not torch.allclose(model(x)[:1], model(x[:1]), atol=1e-4)  # batch statistics leak
    recompute_bn_stats(model, torch.randn(256, 1, 8, 8))
    with torch.no_grad():
        assert torch.allclose(model(x)[:1], model(x[:1]), atol=1e-5)
    assert not static_norms(model)


def test_models_without_static_bn_are_left_alone():
    spec = cnn_spec((1, 8, 8), 4, [6, 8], 8, norm="group")
    model = spec.build()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert recompute_bn_stats(model, torch.randn(10, 1, 8, 8)) == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_calibration_sample_is_fixed_by_the_seed():
    x = np.arange(5000, dtype=np.float32).reshape(-1, 1, 1, 1)
    a, b, c = calibration_sample(x, 0), calibration_sample(x, 0), calibration_sample(x, 1)
    assert torch.equal(a, b) and not torch.equal(a, c) and len(a) == 1024
    assert len(calibration_sample(x[:10], 0)) == 10


def make_sim(**over):
    sc = load_scenario("scenarios/quickstart.yaml", tiny_overrides(**over))
    return local_sim(sc)


def test_static_bn_evaluation_does_not_depend_on_the_eval_batch_size():
    """Evaluation of the global model and of each rate's submodel (evals rows)."""
    evals = []
    for bs in (7, 512):
        sim = make_sim(**{"model.norm": "static-bn", "eval.batch_size": bs})
        sim.step()
        evals.append(sim.evaluator(1, sim.params, sim.clock))
    a, b = evals
    assert [e.model for e in a] == ["global", "rate-0.5", "rate-0.25", "rate-0.125"]
    for ea, eb in zip(a, b):
        assert ea.accuracy == eb.accuracy and ea.loss == pytest.approx(eb.loss, rel=1e-4)


def test_preresnet18_is_available_from_the_scenario():
    cfg = ModelConfig(arch="preresnet18")
    assert cfg.widths == [64, 128, 256, 512]
    spec = make_spec(ModelConfig(arch="preresnet18", widths=[8, 8, 16, 16], norm="group"), (1, 8, 8), 10)
    assert spec.name == "preresnet18" and spec.groups["res3"] == 16
    with pytest.raises(ScenarioError, match="model.widths: preresnet18 needs 4 stage widths"):
        make_spec(ModelConfig(arch="preresnet18", widths=[8, 16]), (1, 8, 8), 10)


def test_a_preresnet18_round_runs_end_to_end_on_8x8_digits():
    sim = make_sim(**{"model.arch": "preresnet18", "model.widths": "[8,8,16,16]",
                      "model.norm": "static-bn", "data.dataset": "digits"})
    out = sim.step()
    assert out.round_row["trained"] > 0
    assert [e.model for e in out.evals] == ["global", "rate-0.5", "rate-0.25", "rate-0.125"]
    assert all(0.0 <= e.accuracy <= 1.0 and np.isfinite(e.loss) for e in out.evals)


def test_plain_batch_norm_gets_the_global_models_statistics_before_evaluation():
    # A user's BatchNorm (running statistics on) trained whole: its buffers are never aggregated,
    # so the evaluated global model must not keep the initial mean 0 / variance 1.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    x = torch.randn(512, 4) * 3 + 5
    assert recompute_bn_stats(model, x, batch_size=128) == 1
    bn = model[1]
    with torch.no_grad():
        h = model[0](x)
    assert torch.allclose(bn.running_mean, h.mean(0), atol=1e-4)
    assert bn.momentum == 0.1 and not bn.training, "the layer's own settings come back"


@pytest.fixture(scope="module")
def mobilenets():
    from raysim.models.mobilenet import mobilenetv3_spec

    return {norm: mobilenetv3_spec((1, 12, 12), 10, norm=norm) for norm in ("group", "static-bn", "none")}


def test_mobilenetv3_builds_and_runs_at_every_rate(mobilenets):
    for norm, spec in mobilenets.items():
        sizes = [n_params(spec.build({g: rate_sizes(w, r) for g, w in spec.groups.items()}, r))
                 for r in (1.0, 0.5, 0.25, 0.125)]
        assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == 4, norm
        if norm != "none":
            assert sizes == [91_370, 27_146, 8_942, 3_317]
        for r in (1.0, 0.125):
            m = spec.build({g: rate_sizes(w, r) for g, w in spec.groups.items()}, r)
            out = m.train()(torch.randn(4, 1, 12, 12))
            assert out.shape == (4, 10) and torch.isfinite(out).all()
            scalers = [s for s in m.modules() if isinstance(s, Scaler)]
            assert len(scalers) == 16 and all(s.rate == r for s in scalers)


def test_mobilenetv3_groups_are_derived_depthwise_and_gates_follow_their_channels(mobilenets):
    spec = mobilenets["group"]
    ax = spec.axes
    assert spec.name == "mobilenetv3"
    assert list(spec.groups)[:4] == ["stem", "b0.se", "b0.out", "b1.exp"]
    for i in range(6):
        dw = ax[f"blocks.{i}.dw.weight"]
        # a depthwise conv has no group of its own: it carries the channels it reads
        reads = ax[f"blocks.{i}.expand.weight"][0] if f"blocks.{i}.expand.weight" in ax else "stem"
        assert dw == (reads, None, None, None), i
        assert ax[f"blocks.{i}.project.weight"][1] == reads
        if f"blocks.{i}.se.fc1.weight" in ax:  # the SE reduce conv is its own group; the gate
            assert ax[f"blocks.{i}.se.fc1.weight"] == (f"b{i}.se", reads, None, None)  # (fc2) gates
            assert ax[f"blocks.{i}.se.fc2.weight"] == (reads, f"b{i}.se", None, None)  # `reads`
    assert "blocks.1.se.fc1.weight" not in ax  # blocks 1 and 2 have no SE, as in MobileNetV3-small
    # residual blocks add into their input's stream: one group
    assert ax["blocks.2.project.weight"][0] == ax["blocks.1.project.weight"][0] == "b1.out"
    assert ax["blocks.4.project.weight"][0] == ax["blocks.3.project.weight"][0] == "b3.out"
    assert ax["classifier.weight"] == (None, "head")
    assert not any(g.startswith("blocks") for g in spec.groups), "every group is named"


def test_a_mobilenetv3_round_trains_submodels_from_the_scenario():
    assert ModelConfig(arch="mobilenetv3").arch == "mobilenetv3"
    sim = make_sim(**{"model.arch": "mobilenetv3", "model.norm": "static-bn", "rounds": 1,
                      "assignment.policy": "fixed", "assignment.fixed_rate": 0.25})
    out = sim.step()
    assert sim.spec.name == "mobilenetv3" and out.round_row["trained"] > 0
    assert {r for r, s in zip(out.clients.rate, out.clients.status) if s == "ok"} == {0.25}
    assert [e.model for e in out.evals] == ["global", "rate-0.5", "rate-0.25", "rate-0.125"]
    assert all(0.0 <= e.accuracy <= 1.0 and np.isfinite(e.loss) for e in out.evals)


def test_mobilenetv3_study_scenario_loads_and_most_of_its_fleet_cannot_hold_the_full_model():
    from raysim.engine.cost import profile_ladder
    from raysim.fleet import make_fleet

    sc = load_scenario("scenarios/framework-vs-baselines-mobilenet.yaml")
    assert sc.model.arch == "mobilenetv3"
    ladder = profile_ladder(make_spec(sc.model, (1, 12, 12), 10), [1.0, 0.125], sc.train.batch_size)
    fleet = make_fleet(sc.fleet, sc.seed, reference_flops=1.0)
    assert np.mean(fleet.memory < ladder[1.0].memory_bytes) > 0.7
    assert np.mean(fleet.memory >= ladder[0.125].memory_bytes) > 0.7
