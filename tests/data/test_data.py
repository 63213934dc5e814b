"""raysim.data: the embedded datasets and the partitions, as specifications."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raysim.data import DataError, Dataset, label_histograms, partition
from raysim.scenario.resolve import load_dataset
from raysim.scenario.schema import DataConfig, PartitionConfig, SyntheticConfig

SMALL = SyntheticConfig(samples=600, classes=10, image_size=12, channels=1, noise=0.6)


def synthetic(seed: int = 0, **kw) -> Dataset:
    return load_dataset(DataConfig(synthetic=SMALL.model_copy(update=kw)), seed)


def labels_only(y: np.ndarray, num_classes: int, writers: np.ndarray | None = None) -> Dataset:
    """A dataset whose images are irrelevant (1x1 pixels): partitions only look at labels."""
    n = len(y)
    x = np.zeros((n, 1, 1, 1), np.float32)
    return Dataset("labels", x, y.astype(np.int64), x[:1], y[:1].astype(np.int64), num_classes,
                   None if writers is None else writers.astype(np.int64))


def nearest_centroid_accuracy(ds: Dataset) -> float:
    xtr = ds.x_train.reshape(len(ds.x_train), -1)
    cents = np.stack([xtr[ds.y_train == k].mean(0) for k in range(ds.num_classes)])
    xte = ds.x_test.reshape(len(ds.x_test), -1)
    pred = np.argmin(((xte[:, None, :] - cents[None]) ** 2).sum(-1), axis=1)
    return float((pred == ds.y_test).mean())


def mean_label_entropy(hist: np.ndarray) -> float:
    p = hist / np.maximum(hist.sum(1, keepdims=True), 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(p > 0, p * np.log(p), 0.0).sum(1)
    return float(h[hist.sum(1) > 0].mean())


def is_partition(parts: list[np.ndarray], n: int) -> bool:
    allidx = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    return all(p.dtype == np.int64 for p in parts) and np.array_equal(np.sort(allidx), np.arange(n))


# ---------------------------------------------------------------- synthetic


def test_synthetic_shapes_dtypes_and_split():
    ds = synthetic(channels=3, image_size=10)
    assert ds.name == "synthetic" and ds.num_classes == 10
    assert ds.x_train.shape == (480, 3, 10, 10) and ds.x_test.shape == (120, 3, 10, 10)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert ds.input_shape == (3, 10, 10)
    assert ds.writers is None
    assert set(np.unique(ds.y_train)) == set(range(10))


def test_synthetic_is_normalised_by_training_statistics():
    ds = synthetic(channels=2)
    assert np.allclose(ds.x_train.mean(axis=(0, 2, 3)), 0.0, atol=1e-4)
    assert np.allclose(ds.x_train.std(axis=(0, 2, 3)), 1.0, atol=1e-3)


def test_synthetic_is_deterministic_from_seed():
    a, b, c = synthetic(seed=3), synthetic(seed=3), synthetic(seed=4)
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.x_train, c.x_train)


def test_synthetic_classes_carry_signal_and_noise_sets_difficulty():
    easy = nearest_centroid_accuracy(synthetic(noise=0.6))
    hard = nearest_centroid_accuracy(synthetic(noise=4.0))
    assert easy > 0.9  # the class shape is there to be learnt
    assert 0.1 < hard < easy  # more noise, harder, yet still above chance (10 classes)


def test_synthetic_feature_skew_gives_writers_with_distinct_styles():
    ds = synthetic(feature_skew=2.0)
    assert ds.writers is not None and ds.writers.shape == ds.y_train.shape
    assert len(np.unique(ds.writers)) == 480 // 16
    # A writer's style is shared by its samples: per-writer mean images differ across writers
    # far more than they would without the skew.
    def spread(d: Dataset) -> float:
        w = d.writers if d.writers is not None else np.arange(len(d.y_train)) % 30
        means = np.stack([d.x_train[w == k].mean(0) for k in np.unique(w)])
        return float(means.std(0).mean())
    assert spread(ds) > 2 * spread(synthetic())


# ---------------------------------------------------------------- digits


def test_digits_shapes_split_and_determinism():
    cfg = DataConfig(dataset="digits", test_fraction=0.25)
    a, b, c = load_dataset(cfg, 0), load_dataset(cfg, 0), load_dataset(cfg, 1)
    assert a.input_shape == (1, 8, 8) and a.num_classes == 10
    assert len(a.y_train) + len(a.y_test) == 1797 and len(a.y_test) == round(0.25 * 1797)
    assert a.x_train.dtype == np.float32 and a.y_train.dtype == np.int64
    assert abs(float(a.x_train.mean())) < 1e-4
    assert np.array_equal(a.x_test, b.x_test) and not np.array_equal(a.y_test, c.y_test)


def test_dataset_rejects_wrong_dtypes():
    x = np.zeros((4, 1, 2, 2), np.float64)
    y = np.zeros(4, np.int64)
    with pytest.raises(DataError, match="float32"):
        Dataset("bad", x, y, x, y, 2)
    with pytest.raises(DataError, match="labels outside"):
        Dataset("bad", x.astype(np.float32), y + 5, x.astype(np.float32), y, 2)


# ---------------------------------------------------------------- partitions

KINDS = ["iid", "dirichlet", "shards", "quantity", "natural"]


@settings(max_examples=60, deadline=None)
@given(
    kind=st.sampled_from(KINDS),
    n=st.integers(20, 400),
    n_devices=st.integers(1, 20),
    classes=st.integers(2, 10),
    alpha=st.floats(0.01, 100.0),
    min_samples=st.integers(0, 5),
    seed=st.integers(0, 2**31),
)
def test_every_kind_is_a_true_partition(kind, n, n_devices, classes, alpha, min_samples, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    writers = rng.integers(0, 25, n)
    ds = labels_only(y, classes, writers)
    cfg = PartitionConfig(kind=kind, alpha=alpha, classes_per_device=2, min_samples=min_samples)
    n_classes_present = len(np.unique(y))
    if kind == "natural" and n_devices > len(np.unique(writers)):
        with pytest.raises(DataError, match="writers"):
            partition(ds, n_devices, cfg, seed)
        return
    if kind == "shards" and n_devices * 2 < n_classes_present:
        with pytest.raises(DataError, match="classes_per_device"):
            partition(ds, n_devices, cfg, seed)
        return
    parts = partition(ds, n_devices, cfg, seed)
    assert len(parts) == n_devices
    assert is_partition(parts, n)
    assert all(np.all(np.diff(p) > 0) for p in parts)  # ascending, no repeats
    if kind in ("iid", "dirichlet", "quantity"):
        floor = min(min_samples, n // n_devices)
        assert min(len(p) for p in parts) >= floor
    if kind == "shards":
        assert max(len(np.unique(y[p])) for p in parts) <= 2


@pytest.mark.parametrize("kind", KINDS)
def test_partition_is_deterministic_from_seed(kind):
    ds = synthetic(feature_skew=1.0)
    cfg = PartitionConfig(kind=kind)
    a, b, c = (partition(ds, 20, cfg, s) for s in (7, 7, 8))
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    assert any(not np.array_equal(p, q) for p, q in zip(a, c))


def test_iid_sizes_differ_by_at_most_one():
    parts = partition(synthetic(), 7, PartitionConfig(kind="iid"), 0)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_small_alpha_dirichlet_is_more_skewed_than_iid():
    ds = synthetic()
    iid = label_histograms(ds.y_train, partition(ds, 20, PartitionConfig(kind="iid"), 0), 10)
    skew = label_histograms(ds.y_train, partition(ds, 20, PartitionConfig(kind="dirichlet", alpha=0.1), 0), 10)
    mild = label_histograms(ds.y_train, partition(ds, 20, PartitionConfig(kind="dirichlet", alpha=100.0), 0), 10)
    assert mean_label_entropy(skew) < mean_label_entropy(mild) - 0.5
    assert mean_label_entropy(skew) < mean_label_entropy(iid) - 0.5


def test_dirichlet_tops_up_devices_to_min_samples():
    ds = synthetic()
    parts = partition(ds, 100, PartitionConfig(kind="dirichlet", alpha=0.05, min_samples=4), 0)
    assert min(len(p) for p in parts) >= 4 and is_partition(parts, len(ds.y_train))


def test_min_samples_is_capped_by_what_is_feasible():
    ds = labels_only(np.arange(30) % 3, 3)
    parts = partition(ds, 10, PartitionConfig(kind="dirichlet", alpha=0.1, min_samples=50), 0)
    assert min(len(p) for p in parts) == 3 and is_partition(parts, 30)


def test_shards_bounds_labels_per_device():
    ds = synthetic()
    for k in (1, 2, 3):
        parts = partition(ds, 30, PartitionConfig(kind="shards", classes_per_device=k), 0)
        hist = label_histograms(ds.y_train, parts, 10)
        assert (hist > 0).sum(1).max() <= k
        sizes = [len(p) for p in parts]
        assert max(sizes) <= 1.5 * min(sizes)  # class-pure shards, yet near-equal in size


def test_shards_refuses_too_few_shards_for_the_classes():
    with pytest.raises(DataError, match="classes_per_device"):
        partition(synthetic(), 2, PartitionConfig(kind="shards", classes_per_device=2), 0)


def test_quantity_sizes_are_unequal_with_iid_labels():
    ds = synthetic()
    parts = partition(ds, 30, PartitionConfig(kind="quantity", power=1.0, min_samples=2), 0)
    sizes = np.array([len(p) for p in parts])
    assert sizes.min() >= 2
    assert sizes.max() > 4 * np.median(sizes)
    heavier = np.array([len(p) for p in partition(ds, 30, PartitionConfig(kind="quantity", power=5.0), 0)])
    assert sizes.std() > heavier.std()  # smaller exponent, heavier tail


def test_natural_keeps_writers_whole():
    rng = np.random.default_rng(0)
    writers = rng.integers(0, 40, 500)
    ds = labels_only(rng.integers(0, 5, 500), 5, writers)
    parts = partition(ds, 12, PartitionConfig(kind="natural"), 0)
    owner = np.empty(500, np.int64)
    for d, p in enumerate(parts):
        owner[p] = d
    for w in np.unique(writers):
        assert len(np.unique(owner[writers == w])) == 1
    assert all(len(p) > 0 for p in parts)


def test_natural_errors():
    with pytest.raises(DataError, match="natural needs a dataset with writers"):
        partition(synthetic(), 5, PartitionConfig(kind="natural"), 0)
    ds = labels_only(np.zeros(10, np.int64), 1, np.arange(10) % 3)
    with pytest.raises(DataError, match="4 devices .* only 3 writers"):
        partition(ds, 4, PartitionConfig(kind="natural"), 0)


def test_label_histograms_counts_each_device_labels():
    y = np.array([0, 1, 1, 2, 2, 2])
    parts = [np.array([0, 3]), np.array([1, 2, 4, 5]), np.array([], np.int64)]
    hist = label_histograms(y, parts, 4)
    assert hist.dtype == np.int64
    assert hist.tolist() == [[1, 0, 1, 0], [0, 2, 2, 0], [0, 0, 0, 0]]


def test_default_scenario_data_partitions_1000_devices():
    cfg = DataConfig()
    ds = load_dataset(cfg, 0)
    parts = partition(ds, 1000, cfg.partition, 0)
    hist = label_histograms(ds.y_train, parts, ds.num_classes)
    assert hist.sum() == len(ds.y_train) == 16000
    assert (hist.sum(1) >= 1).all()
