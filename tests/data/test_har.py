"""The embedded HAR set as a specification: deterministic from the seed, well-formed, physically
plausible (gravity, cadence, stillness), per-user style that a simple classifier can see (so a
natural partition is real feature skew), and learnable: the 1-D CNN, sliced automatically,
beats chance clearly after a short centralised training."""

import numpy as np
import pytest
import torch
from helpers import make_strategy
from pydantic import ValidationError
from sklearn.linear_model import LogisticRegression

from raysim.client.evaluate import load_params
from raysim.data.base import DataError, Dataset
from raysim.data.har import ACTIVITIES, HarConfig, generate, load_har
from raysim.models.calibrate import recompute_bn_stats
from raysim.models.har_cnn import har_cnn
from raysim.slicing import infer_spec
from raysim.submodel import extract, plan_indices

SMALL = HarConfig(users=12, samples=720, steps=64)


def test_the_same_seed_gives_the_same_set_and_another_seed_another():
    a, b, c = load_har(SMALL, 0.25, 3), load_har(SMALL, 0.25, 3), load_har(SMALL, 0.25, 4)
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_test, b.y_test)
    assert np.array_equal(a.writers, b.writers)
    assert not np.array_equal(a.x_train, c.x_train)


def test_shapes_dtypes_labels_users_and_normalisation():
    ds = load_har(SMALL, 0.25, 0)
    assert ds.input_shape == (6, 64) and ds.num_classes == 6
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert len(ds.y_train) + len(ds.y_test) == 720 and len(ds.y_test) == 180
    assert set(np.unique(ds.y_train)) == set(range(6)) and ds.y_test.max() < 6
    assert set(np.unique(ds.writers)) == set(range(12))
    # Per-channel statistics of the training split only: 0 and 1 there, near them on test.
    assert np.allclose(ds.x_train.mean(axis=(0, 2)), 0, atol=1e-4)
    assert np.allclose(ds.x_train.std(axis=(0, 2)), 1, atol=1e-3)
    assert np.all(np.abs(ds.x_test.mean(axis=(0, 2))) < 0.2)
    acc_only = load_har(HarConfig(users=4, samples=60, channels=3, steps=32, activities=3), 0.2, 0)
    assert acc_only.input_shape == (3, 32) and acc_only.num_classes == 3


def test_windows_are_physically_plausible():
    w = generate(HarConfig(users=10, samples=800, style=0.0, noise=0.0), 0)
    acc = w.x[:, :3]
    names = [a.name for a in ACTIVITIES]
    mean_g = np.linalg.norm(acc.mean(axis=2), axis=1)
    spread = acc.std(axis=2).sum(axis=1)

    def of(name):
        return w.labels == names.index(name)

    for still in ("sitting", "standing", "lying"):
        assert np.allclose(mean_g[of(still)], 1.0, atol=0.02), still  # gravity alone
        assert spread[of(still)].max() < 0.05, still                  # only tremor
    assert spread[of("running")].mean() > 2 * spread[of("walking")].mean() > 0.3
    # Lying turns gravity from the vertical axis onto the horizontal one.
    assert acc[of("standing"), 2].mean() < -0.9 and abs(acc[of("lying"), 2].mean()) < 0.2

    def cadence(x):  # dominant frequency of the vertical acceleration
        spec = np.abs(np.fft.rfft(x - x.mean(axis=-1, keepdims=True), axis=-1)).mean(axis=0)
        return np.fft.rfftfreq(x.shape[-1], 1 / 32.0)[int(np.argmax(spec))]

    assert 1.5 <= cadence(acc[of("walking"), 2]) <= 2.5
    assert 2.4 <= cadence(acc[of("running"), 2]) <= 3.3


def user_accuracy(style):
    """How well per-channel means and spreads tell the user (of 8) apart, on held-out windows."""
    w = generate(HarConfig(users=8, samples=1600, style=style), 1)
    feats = np.concatenate([w.x.mean(axis=2), w.x.std(axis=2), np.eye(6)[w.labels]], axis=1)
    clf = LogisticRegression(max_iter=2000).fit(feats[:1200], w.users[:1200])
    return clf.score(feats[1200:], w.users[1200:])


def test_users_have_a_style_of_their_own_that_style_zero_removes():
    styled, alike = user_accuracy(1.0), user_accuracy(0.0)
    assert styled > 0.6            # chance is 1/8
    assert alike < 0.25
    assert styled > 3 * alike


def test_dataset_accepts_any_sample_shape_but_still_checks_it():
    x = np.zeros((4, 3, 5), np.float32)
    y = np.zeros(4, np.int64)
    assert Dataset("seq", x, y, x, y, 2).input_shape == (3, 5)
    assert Dataset("vec", x[:, :, 0], y, x[:, :, 0], y, 2).input_shape == (3,)
    with pytest.raises(DataError, match="float32"):
        Dataset("flat", x[:, 0, 0], y, x[:, 0, 0], y, 2)
    with pytest.raises(DataError, match="differ"):
        Dataset("mixed", x, y, x[:, :, :4], y, 2)


def test_config_fields_are_validated_and_described():
    with pytest.raises(ValidationError):
        HarConfig(channels=4)
    with pytest.raises(ValidationError):
        HarConfig(activities=len(ACTIVITIES) + 1)
    with pytest.raises(ValidationError):
        HarConfig(userz=3)
    assert all(f.description for f in HarConfig.model_fields.values())


def test_the_1d_cnn_is_sliced_automatically_and_its_submodels_run():
    ds = load_har(SMALL, 0.25, 0)
    spec = infer_spec(har_cnn(ds.input_shape, ds.num_classes), ds.input_shape, ds.num_classes, "har-cnn")
    # The stem and the residual block's output conv share one stream.
    assert spec.axes["conv2.weight"][0] == spec.axes["stem.0.weight"][0]
    assert len(spec.groups) == 3
    params = {k: p.detach() for k, p in spec.build().named_parameters()}
    plan = make_strategy("rolling").plan(spec, 0.25, 5, 0, params, 0)
    sub = spec.build(plan.sizes(), plan.rate)
    load_params(sub, extract(params, plan_indices(spec, plan, spec.global_shapes())))
    out = sub(torch.from_numpy(ds.x_train[:8]))
    assert out.shape == (8, 6)
    out.sum().backward()


def test_short_centralised_training_of_the_1d_cnn_beats_chance_clearly():
    ds = load_har(HarConfig(users=10, samples=900, steps=64), 0.3, 0)
    spec = infer_spec(har_cnn(ds.input_shape, ds.num_classes, width=16), ds.input_shape, ds.num_classes)
    torch.manual_seed(0)
    model = spec.build()
    x, y = torch.from_numpy(ds.x_train), torch.from_numpy(ds.y_train)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 32):
            ix = order[i:i + 32]
            loss = torch.nn.functional.cross_entropy(model(x[ix]), y[ix])
            opt.zero_grad()
            loss.backward()
            opt.step()
    recompute_bn_stats(model, x[:512])  # static BN: statistics from training data
    with torch.no_grad():
        acc = (model(torch.from_numpy(ds.x_test)).argmax(1).numpy() == ds.y_test).mean()
    assert acc > 0.6  # chance is 1/6
