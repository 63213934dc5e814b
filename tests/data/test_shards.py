"""Shards: every device's sample indices as one flat array plus offsets, read like a list."""

import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raysim.data import Shards, partition
from raysim.scenario.resolve import load_dataset
from raysim.scenario.schema import DataConfig, PartitionConfig


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(st.integers(0, 10**6), max_size=6), max_size=12))
def test_packing_keeps_every_device_s_indices(parts):
    arrays = [np.array(p, dtype=np.int64) for p in parts]
    s = Shards.from_list(arrays)
    assert len(s) == len(arrays)
    assert s.sizes().tolist() == [len(p) for p in parts]
    assert all(np.array_equal(a, b) for a, b in zip(s, arrays))
    assert all(np.array_equal(s[i - len(s)], arrays[i]) for i in range(len(arrays)))  # negative indices
    assert s.owners().tolist() == [i for i, p in enumerate(parts) for _ in p]


def test_out_of_range_and_bad_offsets_are_refused():
    s = Shards.from_list([np.array([0, 1]), np.array([2])])
    with pytest.raises(IndexError):
        s[2]
    with pytest.raises(ValueError, match="offsets"):
        Shards(np.arange(3), np.array([0, 2, 1, 3]))
    with pytest.raises(ValueError, match="offsets"):
        Shards(np.arange(3), np.array([0, 2]))


def test_a_large_partition_pickles_as_two_buffers():
    ds = load_dataset(DataConfig(dataset="synthetic", synthetic={"samples": 20000}), 0)
    parts = partition(ds, 5000, PartitionConfig(kind="dirichlet"), 0)
    assert isinstance(parts, Shards) and len(parts) == 5000
    as_list = pickle.dumps([np.array(p) for p in parts])
    packed = pickle.dumps(parts)
    # 5,000 small arrays cost ~130 bytes of framing each; two buffers cost only their data.
    assert len(packed) < 8 * len(parts.flat) + 8 * len(parts.offsets) + 1000 < len(as_list)
