"""Automatic slicing as a specification: any plain torch model written in the tests gets
groups whose axes match its shapes; every strategy's submodel builds, trains a step and maps
back exactly; a submodel computes the global model with its dropped channels removed (so
residual adds, concatenations and flatten blocks index the same global channels); the
built-in families are sliced into exactly their hand-written groups; split/chunk and
embeddings slice like any layer; a model that cannot be sliced (attention, recurrence) gets one
line naming the module and the op."""

import numpy as np
import pytest
import torch
from declared_groups import cnn_groups, mlp_groups, preresnet_groups
from helpers import make_strategy
from hypothesis import given, settings
from hypothesis import strategies as st
from slicing_models import MODELS
from torch import nn
from torch.nn import functional as F

from raysim.client.evaluate import load_params
from raysim.engine.cost import profile_rate
from raysim.models.base import Scaler
from raysim.models.calibrate import calibration_sample, recompute_bn_stats, static_norms
from raysim.models.cnn import cnn_spec
from raysim.models.mlp import mlp_spec
from raysim.models.preresnet import preresnet18_spec
from raysim.models.span import Block, Fixed, Span
from raysim.scenario.registry import BUILTINS
from raysim.slicing import SlicingError, infer_spec
from raysim.slicing.infer import SCALER_NAME
from raysim.slicing.layers import narrowed_num_groups
from raysim.submodel import SubmodelPlan, extract, plan_indices, remap
from raysim.submodel.plan import rate_sizes

RATES = [1.0, 0.5, 0.25, 0.125, 0.0625]


def spec_of(name, norm=True):
    cls = MODELS[name]
    torch.manual_seed(0)
    return infer_spec(cls(norm=norm), cls.input_shape, cls.num_classes, name)


SPECS = {name: spec_of(name) for name in MODELS}
PLAIN = {name: spec_of(name, norm=False) for name in MODELS}


def params_of(spec, seed=0):
    torch.manual_seed(seed)
    return {k: p.detach().clone() for k, p in spec.build().named_parameters()}


def entry_labels(axis, size, groups):
    """Brute force, independent of `span_indices`: the (group, channel) owning each entry of
    a dimension (None for an entry every submodel keeps)."""
    if axis is None:
        return [None] * size
    if isinstance(axis, str):
        return [(axis, c) for c in range(size)]
    labels = []
    for part in axis.parts:
        if isinstance(part, Fixed):
            labels += [None] * part.size
        else:
            labels += [(part.group, c) for c in range(groups[part.group]) for _ in range(part.block)]
    return labels


def held_mask(spec, plan, name, shape):
    mask = np.ones(shape, bool)
    for d, axis in enumerate(spec.axes[name]):
        keep = np.array([lab is None or lab[1] in set(plan.keep[lab[0]].tolist())
                         for lab in entry_labels(axis, shape[d], spec.groups)])
        view = [1] * len(shape)
        view[d] = shape[d]
        mask &= keep.reshape(view)
    return mask


@pytest.mark.parametrize("name", sorted(MODELS))
def test_parameters_keep_their_names_and_axes_match_their_shapes(name):
    spec = SPECS[name]
    cls = MODELS[name]
    original = {k for k, _ in cls().named_parameters()}
    shapes = spec.global_shapes()
    assert set(shapes) == original == set(spec.axes)
    for k, shape in shapes.items():
        labels_ok = [len(entry_labels(a, n, spec.groups)) == n for a, n in zip(spec.axes[k], shape)]
        assert len(spec.axes[k]) == len(shape) and all(labels_ok), k


plan_args = st.tuples(st.sampled_from(sorted(BUILTINS["compression.strategy"])), st.sampled_from(sorted(MODELS)),
                      st.sampled_from(RATES), st.integers(0, 50), st.integers(0, 1000), st.integers(0, 2**31 - 1))


@settings(max_examples=60, deadline=None)
@given(plan_args)
def test_every_strategy_s_submodel_builds_trains_and_maps_back_exactly(args):
    strategy, name, rate, rnd, device, seed = args
    spec = SPECS[name]
    params = params_of(spec)
    shapes = spec.global_shapes()
    plan = make_strategy(strategy).plan(spec, rate, rnd, device, params, seed)
    idx = plan_indices(spec, plan, shapes)
    sub = spec.build(plan.sizes(), plan.rate)
    load_params(sub, extract(params, idx))
    sub.train()
    x = torch.randn(3, *spec.input_shape)
    out = sub(x)
    assert out.shape == (3, spec.num_classes)
    out.square().sum().backward()
    assert all(p.grad is not None for p in sub.parameters())
    delta = {k: p.grad.detach() for k, p in sub.named_parameters()}
    full = remap(delta, idx, shapes)
    back = extract(full, idx)
    for k in delta:
        assert torch.equal(back[k], delta[k]), k
        mask = torch.from_numpy(held_mask(spec, plan, k, shapes[k]))
        assert int(mask.sum()) == delta[k].numel(), k
        assert torch.count_nonzero(full[k][~mask]) == 0, k


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(sorted(MODELS)), st.integers(0, 2**31 - 1))
def test_a_submodel_computes_the_global_model_with_dropped_channels_removed(name, seed):
    """With the dropped channels' weights zeroed, the global model's output equals the
    submodel's: a residual add, concatenation or flatten that mixed up global channels would
    make them differ."""
    spec = PLAIN[name]
    gen = np.random.default_rng(seed)
    keep = {g: np.sort(gen.choice(w, size=int(gen.integers(1, w + 1)), replace=False)).astype(np.int64)
            for g, w in spec.groups.items()}
    plan = SubmodelPlan(0.5, keep)
    shapes = spec.global_shapes()
    idx = plan_indices(spec, plan, shapes)
    params = params_of(spec, seed % 1000)
    masked = {}
    for k, v in params.items():
        z = torch.zeros_like(v)
        z[idx[k]] = v[idx[k]]
        masked[k] = z
    glob = spec.build()
    load_params(glob, masked)
    sub = spec.build(plan.sizes(), 0.5)
    load_params(sub, extract(params, idx))
    glob.eval()
    sub.eval()
    x = torch.randn(4, *spec.input_shape)
    with torch.no_grad():
        assert torch.allclose(glob(x), sub(x), atol=1e-5, rtol=1e-4)


def partition(spec):
    """Groups as sets of (parameter, dimension), with their widths: equal up to naming."""
    members = {}
    for k, axes in spec.axes.items():
        for d, g in enumerate(axes):
            if g is not None:
                members.setdefault(g, set()).add((k, d))
    return {frozenset(v): spec.groups[g] for g, v in members.items()}


BUILT_INS = [
    (lambda norm: cnn_spec((1, 12, 12), 10, [16, 32], 24, norm=norm), lambda norm: cnn_groups([16, 32], 24, norm)),
    (lambda norm: cnn_spec((3, 8, 8), 4, [4, 6, 8], 5, norm=norm), lambda norm: cnn_groups([4, 6, 8], 5, norm)),
    (lambda norm: mlp_spec((1, 8, 8), 10, [32, 16]), lambda norm: mlp_groups([32, 16])),
    (lambda norm: mlp_spec((2, 3), 4, [5]), lambda norm: mlp_groups([5])),
    (lambda norm: preresnet18_spec((3, 32, 32), 10, [16, 16, 32, 32], norm=norm),
     lambda norm: preresnet_groups([16, 16, 32, 32], norm)),
    (lambda norm: preresnet18_spec((1, 8, 8), 10, [8, 8, 16, 16], norm=norm),
     lambda norm: preresnet_groups([8, 8, 16, 16], norm)),
]


@pytest.mark.parametrize("norm", ["none", "group", "static-bn"])
@pytest.mark.parametrize("case", range(len(BUILT_INS)))
def test_built_in_families_are_sliced_into_exactly_their_hand_written_groups(norm, case):
    """The built-ins go through `infer_spec`; the groups written by hand are the oracle:
    the same names, widths and order, the same axes for every parameter in the same order."""
    make, oracle = BUILT_INS[case]
    spec = make(norm)
    groups, axes = oracle(norm)
    assert list(spec.groups.items()) == list(groups.items())
    assert list(spec.axes.items()) == list(axes.items())
    assert list(spec.global_shapes()) == list(axes)


def test_built_in_scalers_stay_where_the_modules_put_them():
    """The CNN scales after every conv and its hidden layer, the first conv included; the
    PreResNet after every block conv but not after its stem; at rate 1 they are identities."""
    cnn = cnn_spec((1, 8, 8), 4, [4, 6], 5)
    sub = cnn.build({g: rate_sizes(w, 0.5) for g, w in cnn.groups.items()}, 0.5)
    scalers = {p: m.rate for p, m in sub.named_modules() if isinstance(m, Scaler)}
    assert scalers == {"features.1": 0.5, "features.6": 0.5, "hidden_scaler": 0.5}
    assert not hasattr(sub, SCALER_NAME)
    assert all(not m.enabled for m in cnn.build().modules() if isinstance(m, Scaler))
    res = preresnet18_spec((1, 8, 8), 4, [4, 4, 6, 6], norm="group")
    scaled = [n.args[0].target for n in res.build(dict(res.groups), 0.5).graph.nodes
              if n.op == "call_module" and n.target.endswith("scaler")]
    assert "stem" not in scaled and scaled[:2] == ["blocks.0.conv1", "blocks.0.conv2"]
    assert "blocks.2.shortcut" in scaled
    off = cnn_spec((1, 8, 8), 4, [4, 6], 5, scaler=False).build({"conv0": 2, "conv1": 3, "hidden": 3}, 0.5)
    assert all(not m.enabled for m in off.modules() if isinstance(m, Scaler))


@pytest.mark.parametrize("make", [lambda: cnn_spec((1, 8, 8), 4, [4, 6], 5),
                                  lambda: preresnet18_spec((1, 8, 8), 4, [4, 4, 6, 6])])
def test_a_built_in_family_initialises_as_its_module_and_leaves_the_generator_alone(make):
    """The global model under a seed is the module's own initialisation (layers rebuilt in
    the order the module registered them, though PreResNet calls its shortcut first), and
    making the spec draws nothing from torch's generator."""
    from raysim.models.cnn import CNN
    from raysim.models.preresnet import PreResNet, stage_strides

    torch.manual_seed(5)
    spec = make()
    after = torch.rand(1)
    torch.manual_seed(5)
    assert torch.equal(torch.rand(1), after)
    torch.manual_seed(3)
    built = dict(spec.build().named_parameters())
    torch.manual_seed(3)
    if spec.name == "cnn":
        own = CNN(1, [4, 6], 5, 4)
    else:
        own = PreResNet(1, [4, 4, 6, 6], stage_strides(8), 4, "static-bn")
    own_params = dict(own.named_parameters())
    assert list(built) == list(own_params)
    assert all(torch.equal(built[k], own_params[k]) for k in built)


def test_group_names_must_name_a_layer_that_creates_one_group():
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    assert list(infer_spec(model, (4,), 3, group_names={"0": "hidden"}).groups) == ["hidden"]
    for names in ({"2": "out"}, {"1": "act"}, {"nope": "x"}):
        with pytest.raises(ValueError, match="group_names"):
            infer_spec(model, (4,), 3, group_names=names)


def test_flatten_gives_each_kept_channel_its_whole_block_of_columns():
    spec = SPECS["FlattenCNN"]
    assert spec.axes["fc1.weight"] == ("fc1", Span((Block("conv2", 4),)))
    plan = SubmodelPlan(0.5, {**{g: np.arange(w) for g, w in spec.groups.items()}, "conv2": np.array([1, 6])})
    idx = plan_indices(spec, plan, spec.global_shapes())["fc1.weight"]
    cols = idx[1].reshape(-1).tolist()
    assert cols == [4, 5, 6, 7, 24, 25, 26, 27]


def test_concatenation_lays_groups_side_by_side_after_the_fixed_input():
    spec = SPECS["ConcatMLP"]
    side_by_side = Span((Fixed(9), Block("left"), Block("right.2")))
    assert spec.axes["hidden.weight"] == ("hidden", side_by_side)
    assert spec.axes["norm.weight"] == (side_by_side,)
    sub = spec.build({"left": 2, "right.0": 5, "right.2": 3, "hidden": 8}, 0.5)
    assert sub.hidden.in_features == 9 + 2 + 3 and sub.norm.normalized_shape == (14,)


def test_residual_streams_are_one_group_and_depthwise_convs_follow_their_inputs():
    res = SPECS["SmallResNet"]
    assert res.axes["layer1.conv2.weight"][0] == res.axes["stem.0.weight"][0]
    assert res.axes["layer2.shortcut.0.weight"][0] == res.axes["layer2.conv2.weight"][0]
    mob = SPECS["MobileNetish"]
    for b in (0, 1):
        inner = mob.axes[f"blocks.{b}.expand.weight"][0]
        assert mob.axes[f"blocks.{b}.depthwise.weight"] == (inner, None, None, None)
        assert mob.axes[f"blocks.{b}.project.weight"] == ("stem", inner, None, None)
    sub = mob.build({g: rate_sizes(w, 0.25) for g, w in mob.groups.items()}, 0.25)
    dw = sub.get_submodule("blocks.1.depthwise")  # containers of a built model are plain modules
    assert dw.groups == dw.in_channels == dw.out_channels == rate_sizes(18, 0.25)


def test_a_chunk_keeps_its_pieces_on_the_same_channels_and_a_split_lays_them_side_by_side():
    spec = SPECS["GatedSplit"]
    gate = spec.axes["bn.weight"][0]
    assert spec.axes["conv.weight"][0] == Span((Block(gate), Block(gate)))  # value and gate keep one index set
    assert spec.axes["skip.weight"][0] == spec.axes["conv.weight"][0]  # added whole: cut the same way
    assert spec.axes["fc.weight"][0] == Span((Block("fc:0"), Block("fc:1")))
    assert spec.axes["left.weight"][1] == "fc:0" and spec.axes["right.weight"][1] == "fc:1"
    sub = spec.build({gate: 2, "fc:0": 1, "fc:1": 4, "left": 5}, 0.5)
    assert sub.conv.out_channels == sub.skip.out_channels == 4 and sub.fc.in_features == 2 + 4
    assert sub.fc.out_features == 5
    assert sub.left.in_features == 1 and sub.right.in_features == 4  # the literal [4, 6] became [1, 4]
    assert sub(torch.zeros(2, *spec.input_shape)).shape == (2, 3)


def test_the_magnitude_strategy_scores_each_piece_of_a_split_layer():
    spec = SPECS["GatedSplit"]
    params = params_of(spec)
    params["fc.weight"] = torch.zeros_like(params["fc.weight"])
    params["fc.weight"][[1, 4 + 5]] = 1.0  # row 1 is fc:0's channel 1, row 9 is fc:1's channel 5
    plan = make_strategy("magnitude").plan(spec, 0.25, 0, 0, params, 0)
    assert plan.keep["fc:0"].tolist() == [1] and plan.keep["fc:1"].tolist() == [0, 5]  # ties: lower index


def test_an_embedding_s_dimension_is_a_group_and_its_vocabulary_never_shrinks():
    spec = SPECS["TokenMLP"]
    assert spec.axes["emb.weight"] == (None, "emb") and spec.axes["norm.weight"] == ("emb",)
    sub = spec.build({"emb": 3, "fc": 2}, 0.5)
    assert (sub.emb.num_embeddings, sub.emb.embedding_dim) == (11, 3)
    assert not any(n.target == "emb" for n in sub.graph.nodes if n.op == "call_module" and
                   n.next.op == "call_module" and n.next.target == SCALER_NAME)  # a lookup sums nothing


def test_a_grouped_convolution_is_sliced_by_whole_groups():
    spec = SPECS["DenseConcat"]
    units = Span((Block("mix", 4),))  # 2 groups of 4 channels: a unit keeps its 4 channels
    assert spec.groups["mix"] == 2
    assert spec.axes["grouped.weight"] == (units, None, None, None)
    assert spec.axes["mix.weight"][0] == units and spec.axes["fc.weight"] == (None, units)
    assert spec.axes["bn.weight"] == (Span((Block("a"), Block("b"))),)
    sub = spec.build({**spec.groups, "mix": 1}, 0.5)
    assert (sub.grouped.in_channels, sub.grouped.out_channels, sub.grouped.groups) == (4, 4, 1)
    assert (SPECS["GroupedNorms"].groups, SPECS["GroupedNorms"].axes["gn_weight"]) == \
        ({"conv1": 2, "conv2": 10}, (Span((Block("conv1", 4),)),))


def test_a_grouped_convolution_over_a_concatenation_is_kept_whole():
    class CatGrouped(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(2, 4, 1), nn.Conv2d(2, 4, 1)
            self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=4)
            self.fc = nn.Linear(8, 3)

        def forward(self, x):
            h = self.grouped(torch.cat([self.a(x), self.b(x)], 1))
            return self.fc(h.mean((2, 3)))

    spec = infer_spec(CatGrouped(), (2, 4, 4), 3)
    assert spec.groups == {} and spec.axes["grouped.weight"] == (None, None, None, None)


def test_repeat_passes_dimensions_repeated_once_and_keeps_a_tiled_one_whole():
    class Tiled(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(2, 4, 1), nn.Conv2d(2, 6, 1)
            self.fc = nn.Linear(14, 3)

        def forward(self, x):
            pos = self.b(x[:1]).repeat(x.shape[0], 1, 1, 1)  # over the batch: channels pass
            tiled = self.a(x).repeat(1, 2, 1, 1)  # channels tiled: kept whole
            return self.fc(torch.cat([tiled, pos], 1).mean((2, 3)))

    spec = infer_spec(Tiled(), (2, 4, 4), 3)
    assert spec.groups == {"b": 6} and spec.axes["a.weight"] == (None, None, None, None)
    sub = spec.build({"b": 3}, 0.5)
    assert sub(torch.randn(5, 2, 4, 4)).shape == (5, 3)


def test_the_first_layer_s_inputs_and_the_classifier_s_outputs_never_shrink():
    for name, spec in SPECS.items():
        small = spec.build({g: 1 for g in spec.groups}, 0.0625)
        assert small(torch.zeros(2, *spec.input_shape)).shape == (2, spec.num_classes), name


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 16), st.integers(1, 64), st.data())
def test_narrowed_group_norm_divides_the_kept_channels(groups_per, per_group, data):
    channels = groups_per * per_group
    kept = data.draw(st.integers(1, channels))
    g = narrowed_num_groups(groups_per, channels, kept)
    assert 1 <= g <= groups_per and kept % g == 0
    assert narrowed_num_groups(groups_per, channels, channels) == groups_per
    nn.GroupNorm(g, kept)(torch.randn(2, kept, 3))  # a valid layer


def test_build_is_deterministic_under_the_seed_and_rate_one_has_no_scaler():
    spec = SPECS["SmallResNet"]
    assert all(torch.equal(a, b) for a, b in zip(params_of(spec, 3).values(), params_of(spec, 3).values()))
    assert any(not torch.equal(a, b) for a, b in zip(params_of(spec, 3).values(), params_of(spec, 4).values()))
    assert not hasattr(spec.build(), SCALER_NAME)


def test_the_scaler_follows_layers_whose_inputs_and_outputs_shrink_in_training_only():
    spec = PLAIN["CNN1d"]
    sub = spec.build({g: rate_sizes(w, 0.5) for g, w in spec.groups.items()}, 0.5)
    scaled = [n.args[0].target for n in sub.graph.nodes if n.op == "call_module" and n.target == SCALER_NAME]
    # conv1 reads the raw input and fc writes the logits: neither sums over fewer inputs.
    assert scaled == ["conv2", "conv3"]
    plain = infer_spec(MODELS["CNN1d"](norm=False), (4, 16), 3, scaler=False)
    unscaled = plain.build({g: rate_sizes(w, 0.5) for g, w in spec.groups.items()}, 0.5)
    load_params(unscaled, dict(sub.named_parameters()))
    x = torch.randn(2, 4, 16)
    sub.eval(), unscaled.eval()
    assert torch.allclose(sub(x), unscaled(x))
    sub.train(), unscaled.train()
    assert not torch.allclose(sub(x), unscaled(x))


def test_batch_norm_becomes_static_and_is_recomputed_for_evaluation():
    spec = SPECS["SmallResNet"]
    model = spec.build()
    norms = static_norms(model)
    assert len(norms) == 6
    x = calibration_sample(np.random.default_rng(0).normal(size=(64, 3, 8, 8)).astype(np.float32), 0)
    assert recompute_bn_stats(model, x) == 6
    assert all(m.running_mean.abs().sum() > 0 for m in norms)
    kept = infer_spec(MODELS["SmallResNet"](), (3, 8, 8), 5, static_bn=False).build()
    assert not static_norms(kept)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_the_cost_model_profiles_any_sliced_model(name):
    spec = SPECS[name]
    costs = [profile_rate(spec, r, batch_size=4) for r in (1.0, 0.5, 0.25)]
    assert costs[0].params == sum(t.numel() for t in params_of(spec).values())
    assert costs[0].params > costs[1].params > costs[2].params
    assert costs[0].flops_per_sample > costs[1].flops_per_sample > costs[2].flops_per_sample > 0


class TopKInside(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), _TopK(), nn.Linear(4, 3))

    def forward(self, x):
        return self.blocks(x)


class _TopK(nn.Module):
    def forward(self, x):
        return torch.topk(x, 4).values


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = _Branch()
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.body(x))


class _Branch(nn.Module):
    def forward(self, x):
        return x if x.sum() > 0 else -x


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        h = self.proj(x)
        return self.head(self.attn(h, h, h)[0].mean(1))


class FunctionalAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(4, 24)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return self.head(F.scaled_dot_product_attention(q, k, v).mean(1))


class Recurrent(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.GRU(4, 6, batch_first=True)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        return self.head(self.rnn(x)[0][:, -1])


@pytest.mark.parametrize("model, shape, message", [
    (TopKInside(), (8,), "model: cannot slice: module 'blocks.3' calls torch.topk (data-dependent); "
                         "use compression.strategy: full"),
    (Branchy(), (4,), "model: cannot slice: module 'body' calls Python control flow on a tensor "
                      "(data-dependent); use compression.strategy: full"),
    (Recurrent(), (5, 4), "model: cannot slice: module 'rnn' calls nn.GRU (unknown layer); "
                          "use compression.strategy: full"),
    (Attention(), (5, 4), "model: cannot slice: module 'attn' calls nn.MultiheadAttention (unknown layer); "
                          "use compression.strategy: full"),
])
def test_a_model_that_cannot_be_sliced_gets_one_line_naming_module_and_op(model, shape, message):
    with pytest.raises(SlicingError) as err:
        infer_spec(model, shape, 2 if not isinstance(model, TopKInside) else 3)
    assert str(err.value) == message
    assert "\n" not in str(err.value)


def test_a_wrong_class_count_is_reported():
    with pytest.raises(ValueError, match="expected \\(2, 7\\)"):
        infer_spec(MODELS["ConcatMLP"](), (1, 3, 3), 7)


def test_a_layer_scale_parameter_takes_its_group_from_the_channels_it_scales():
    class LayerScale(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 6, 3, padding=1)
            self.gamma = nn.Parameter(torch.full((6, 1, 1), 0.1))
            self.fc = nn.Linear(6, 2)

        def forward(self, x):
            return self.fc((F.relu(self.conv(x)) * self.gamma).mean((2, 3)))

    spec = infer_spec(LayerScale(), (2, 4, 4), 2)
    assert spec.axes["gamma"] == ("conv", None, None)
    sub = spec.build({"conv": 3}, 0.5)
    assert sub.gamma.shape == (3, 1, 1) and torch.allclose(sub.gamma, torch.tensor(0.1))


def test_a_spec_travels_to_workers_without_the_global_weights_and_leaves_the_module_alone():
    import ray.cloudpickle as cloudpickle

    module = preresnet18_spec((3, 32, 32), 10, [64, 128, 256, 512]).build()  # 11M parameters
    before = {k: v.clone() for k, v in module.state_dict().items()}
    spec = infer_spec(module, (3, 32, 32), 10)
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
    blob = cloudpickle.dumps(spec)
    assert len(blob) < 200_000  # the weights alone would be 45 MB
    again = cloudpickle.loads(blob)
    sizes = {g: rate_sizes(w, 0.25) for g, w in spec.groups.items()}
    torch.manual_seed(1)
    a = spec.build(sizes, 0.25)
    torch.manual_seed(1)
    b = again.build(sizes, 0.25)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_a_span_index_needs_the_global_widths():
    from raysim.submodel import param_index

    plan = SubmodelPlan(0.5, {"g": np.array([0, 2])})
    axes = (None, Span((Fixed(1), Block("g", 2))))
    with pytest.raises(ValueError, match="widths"):
        param_index(axes, plan, (3, 7))
    idx = param_index(axes, plan, (3, 7), {"g": 3})
    assert torch.arange(21).reshape(3, 7)[idx][0].tolist() == [0, 1, 2, 5, 6]


@pytest.mark.parametrize("name", ["FlattenCNN", "ConcatMLP", "DenseConcat"])
def test_a_narrowed_family_indexes_its_spans_by_its_own_widths(name):
    """fedavg-smallest trains a family whose groups are all narrowed, with the same axes."""
    from dataclasses import replace

    spec = SPECS[name]
    small = replace(spec, groups={g: rate_sizes(w, 0.5) for g, w in spec.groups.items()})
    shapes = small.global_shapes()
    params = params_of(small)
    plan = make_strategy("random").plan(small, 0.5, 1, 2, params, 0)
    idx = plan_indices(small, plan, shapes)
    sub = small.build(plan.sizes(), 0.5)
    load_params(sub, extract(params, idx))
    assert sub(torch.zeros(2, *small.input_shape)).shape == (2, small.num_classes)
    for k, v in extract(params, idx).items():
        assert torch.equal(extract(remap({k: v}, {k: idx[k]}, {k: shapes[k]}), {k: idx[k]})[k], v)


def test_a_fused_norm_subclass_is_rebuilt_from_itself_keeping_its_activation():
    from zoo_replicas import BatchNormAct2d

    spec = SPECS["MobileNetV3ish"]
    sub = spec.build({g: rate_sizes(w, 0.5) for g, w in spec.groups.items()}, 0.5)
    bn = sub.get_submodule("blocks.0.bn1")
    assert type(bn) is BatchNormAct2d and isinstance(bn.act, nn.Hardswish)
    assert bn.num_features == bn.weight.numel() == 8 and not bn.track_running_stats  # static BN
    assert isinstance(sub.get_submodule("bn1").act, nn.Hardswish)
    assert isinstance(sub.get_submodule("blocks.0.bn3").act, nn.Identity)


def test_tracing_leaves_the_module_and_torch_s_generator_alone():
    model = MODELS["MobileNetV3ish"]()
    stats = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(3)
    before = torch.rand(1)
    torch.manual_seed(3)
    infer_spec(model, (3, 9, 9), 5)
    assert torch.equal(torch.rand(1), before)
    assert all(torch.equal(stats[k], v) for k, v in model.state_dict().items())
    assert model.training


def test_dropout_on_self_training_follows_the_submodel_s_mode():
    """`F.dropout(x, training=self.training)` and drop-path modules drop in training only: the
    flag is read when the graph runs, not frozen when it was traced."""
    spec = SPECS["MobileNetV3ish"]
    model = spec.build()
    x = torch.randn(4, *spec.input_shape)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    model.train()
    torch.manual_seed(0)
    a = model(x)
    torch.manual_seed(1)
    assert not torch.equal(a, model(x))


def test_shape_asserts_and_same_padding_are_followed_on_the_example_shape():
    spec = SPECS["ConvNeXtish"]
    assert spec.groups == {"stem.0": 8, "stage1.fc1": 32, "down.1": 12}
    with pytest.raises(SlicingError, match="code torch.fx cannot trace .*multiple of 4"):
        infer_spec(MODELS["ConvNeXtish"](), (3, 6, 6), 3)
    sub = SPECS["MobileNetV3ish"].build({g: 2 for g in SPECS["MobileNetV3ish"].groups}, 0.25)
    assert sub(torch.zeros(2, 3, 9, 9)).shape == (2, 5)


def test_a_concatenation_cut_to_fewer_channels_keeps_the_cut_in_every_submodel():
    spec = SPECS["GhostNetish"]
    assert spec.groups == {"stem": 6, "ghost1.primary.0:0": 5, "ghost1.primary.0:1": 1,
                           "ghost2.primary.0:0": 3, "ghost2.primary.0:1": 1}
    sub = spec.build({"stem": 3, "ghost1.primary.0:0": 2, "ghost1.primary.0:1": 1,
                      "ghost2.primary.0:0": 2, "ghost2.primary.0:1": 1}, 0.5)
    assert sub.fc.in_features == 2 + 1 + 2
    assert sub(torch.zeros(2, 3, 6, 6)).shape == (2, 4)


def test_attention_slices_its_heads_embedding_and_mlp_and_leaves_an_optional_mask_out():
    spec = SPECS["ViTish"]
    assert spec.groups == {"patch": 8, "attn.qkv.heads": 2, "fc1": 16}
    assert spec.axes["cls_token"] == (None, None, "patch") and spec.axes["ls1"] == ("patch",)
    head = Block("attn.qkv.heads", 4)  # a kept head keeps its 4 dimensions in q, k and v alike
    assert spec.axes["attn.qkv.weight"] == (Span((head, head, head)), "patch")
    assert spec.axes["attn.proj.weight"] == ("patch", Span((head,)))
    sub = spec.build({"patch": 5, "attn.qkv.heads": 1, "fc1": 7}, 0.5)
    assert (sub.attn.qkv.in_features, sub.attn.qkv.out_features, sub.attn.proj.in_features) == (5, 12, 4)
    assert sub(torch.zeros(2, 3, 8, 8)).shape == (2, 4)
    with pytest.raises(AssertionError, match="attn_mask has been specialized to have value None"):
        sub(torch.zeros(2, 3, 8, 8), torch.zeros(5, 5))  # sliced for one input: the mask left out


def test_a_norm_subclass_that_mixes_channels_is_traced_through_not_taken_for_its_base():
    spec = SPECS["ConvNeXtish"]
    assert spec.axes["stem.1.weight"] == ("stem.0",)  # LayerNorm2d over the channels
    sub = spec.build({"stem.0": 4, "stage1.fc1": 16, "down.1": 6}, 0.5)
    assert sub.get_submodule("stem.1").weight.shape == (4,)
    assert sub(torch.zeros(2, 3, 8, 8)).shape == (2, 3)
