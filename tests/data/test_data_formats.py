"""raysim.data: the real dataset formats, read from tiny files written here in that format."""

from __future__ import annotations

import gzip
import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from raysim.data import DataError, partition
from raysim.scenario.resolve import load_dataset
from raysim.scenario.schema import DataConfig, PartitionConfig


def denormalised(x_norm: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """Undo per-channel normalisation, given the raw training pixels it was fitted on."""
    mean = raw.mean(axis=(0, 2, 3), keepdims=True)
    std = raw.std(axis=(0, 2, 3), keepdims=True)
    return x_norm * std + mean


# ---------------------------------------------------------------- IDX (mnist, fashion-mnist)


def idx_bytes(arr: np.ndarray) -> bytes:
    magic = 0x0800 | arr.ndim  # two zero bytes, type 0x08 (ubyte), number of dimensions
    return struct.pack(">I", magic) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(np.uint8).tobytes()


def write_idx(root: Path, gz: bool, n_train: int = 6, n_test: int = 4, side: int = 5, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, side, side), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, side, side), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    root.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        data = idx_bytes(arr)
        if gz:
            (root / (name + ".gz")).write_bytes(gzip.compress(data))
        else:
            (root / name).write_bytes(data)
    return arrays


@pytest.mark.parametrize("dataset", ["mnist", "fashion-mnist"])
@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path, dataset, gz):
    arrays = write_idx(tmp_path, gz)
    ds = load_dataset(DataConfig(dataset=dataset, root=str(tmp_path)), seed=0)
    assert ds.name == dataset and ds.num_classes == 10 and ds.input_shape == (1, 5, 5)
    assert ds.y_train.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert ds.y_test.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    raw_train = arrays["train-images-idx3-ubyte"][:, None].astype(np.float64) / 255
    raw_test = arrays["t10k-images-idx3-ubyte"][:, None].astype(np.float64) / 255
    assert np.allclose(denormalised(ds.x_train, raw_train), raw_train, atol=1e-5)
    assert np.allclose(denormalised(ds.x_test, raw_train), raw_test, atol=1e-5)


def test_idx_bad_magic_names_the_file(tmp_path):
    write_idx(tmp_path, gz=False)
    path = tmp_path / "train-labels-idx1-ubyte"
    data = bytearray(path.read_bytes())
    data[3] = 3  # a labels file that claims three dimensions: magic 2051, not 2049
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte: bad magic number 2051 \(expected 2049"):
        load_dataset(DataConfig(dataset="mnist", root=str(tmp_path)), 0)


def test_idx_truncated_file_names_the_file(tmp_path):
    write_idx(tmp_path, gz=True)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    data = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(data[:-7]))
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.gz: truncated IDX file.*needs 100 bytes, found 93"):
        load_dataset(DataConfig(dataset="mnist", root=str(tmp_path)), 0)


def test_idx_truncated_gzip_stream_names_the_file(tmp_path):
    write_idx(tmp_path, gz=True)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz: cannot read"):
        load_dataset(DataConfig(dataset="mnist", root=str(tmp_path)), 0)


def test_idx_count_mismatch_names_the_file(tmp_path):
    write_idx(tmp_path, gz=False)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(5, np.uint8)))
    with pytest.raises(DataError, match="train-labels-idx1-ubyte: 5 labels but train-images-idx3-ubyte has 6 images"):
        load_dataset(DataConfig(dataset="mnist", root=str(tmp_path)), 0)


def test_idx_missing_file_and_root(tmp_path):
    write_idx(tmp_path, gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match=r"file t10k-labels-idx1-ubyte\(\.gz\) not found \(see docs/datasets.md\)"):
        load_dataset(DataConfig(dataset="mnist", root=str(tmp_path)), 0)
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=f"data.root {missing}: directory not found"):
        load_dataset(DataConfig(dataset="fashion-mnist", root=str(missing)), 0)
    with pytest.raises(DataError, match="data.root: required for dataset mnist"):
        load_dataset(DataConfig(dataset="mnist"), 0)


def test_data_errors_are_one_line(tmp_path):
    for cfg in (DataConfig(dataset="cifar10"), DataConfig(dataset="femnist", root=str(tmp_path)),
                DataConfig(dataset="mnist", root=str(tmp_path))):
        with pytest.raises(DataError) as err:
            load_dataset(cfg, 0)
        assert "\n" not in str(err.value)


# ---------------------------------------------------------------- CIFAR-10


def write_cifar(base: Path, n: int = 3, seed: int = 0, protocol: int = pickle.DEFAULT_PROTOCOL) -> dict:
    rng = np.random.default_rng(seed)
    base.mkdir(parents=True, exist_ok=True)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"batch_label": name.encode(),
            b"labels": rng.integers(0, 10, n).tolist(),
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [f"img{i}.png".encode() for i in range(n)],
        }
        with open(base / name, "wb") as f:
            pickle.dump(batch, f, protocol=protocol)
        batches[name] = batch
    return batches


@pytest.mark.parametrize("subdir", ["", "cifar-10-batches-py"])
@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar_round_trip(tmp_path, subdir, protocol):
    batches = write_cifar(tmp_path / subdir if subdir else tmp_path, protocol=protocol)
    ds = load_dataset(DataConfig(dataset="cifar10", root=str(tmp_path)), 0)
    assert ds.input_shape == (3, 32, 32) and ds.num_classes == 10
    assert len(ds.y_train) == 15 and len(ds.y_test) == 3
    train_rows = np.concatenate([batches[f"data_batch_{i}"][b"data"] for i in range(1, 6)])
    assert ds.y_train.tolist() == sum((batches[f"data_batch_{i}"][b"labels"] for i in range(1, 6)), [])
    raw = train_rows.reshape(-1, 3, 32, 32).astype(np.float64) / 255
    back = denormalised(ds.x_train, raw)
    assert np.allclose(back, raw, atol=1e-5)
    # Row layout: 1024 red values, then green, then blue, each plane row-major.
    assert np.isclose(back[0, 1, 0, 1], train_rows[0, 1024 + 1] / 255, atol=1e-5)
    assert np.isclose(back[0, 2, 31, 31], train_rows[0, 3071] / 255, atol=1e-5)


class _Exploit:
    def __reduce__(self):
        import os

        return (os.system, ("touch pwned",))


def test_cifar_refuses_pickles_that_would_run_code(tmp_path, monkeypatch):
    write_cifar(tmp_path)
    monkeypatch.chdir(tmp_path)
    with open(tmp_path / "data_batch_3", "wb") as f:
        pickle.dump({b"data": _Exploit(), b"labels": []}, f)
    with pytest.raises(DataError, match="data_batch_3: not a CIFAR-10 python batch.*not allowed"):
        load_dataset(DataConfig(dataset="cifar10", root=str(tmp_path)), 0)
    assert not (tmp_path / "pwned").exists()


def test_cifar_malformed_batches_name_the_file(tmp_path):
    write_cifar(tmp_path)
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(DataError, match=r"test_batch: 'data' must be uint8 \(n, 3072\)"):
        load_dataset(DataConfig(dataset="cifar10", root=str(tmp_path)), 0)
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, f)
    with pytest.raises(DataError, match="test_batch: 1 labels for 2 images"):
        load_dataset(DataConfig(dataset="cifar10", root=str(tmp_path)), 0)
    (tmp_path / "test_batch").write_bytes(b"\x80\x04garbage")
    with pytest.raises(DataError, match="test_batch: not a CIFAR-10 python batch"):
        load_dataset(DataConfig(dataset="cifar10", root=str(tmp_path)), 0)


def test_cifar_missing_batch(tmp_path):
    write_cifar(tmp_path)
    (tmp_path / "data_batch_4").unlink()
    with pytest.raises(DataError, match="file data_batch_4 not found .*cifar-10-batches-py/"):
        load_dataset(DataConfig(dataset="cifar10", root=str(tmp_path)), 0)


# ---------------------------------------------------------------- LEAF FEMNIST


def leaf_file(users: dict[str, tuple[np.ndarray, list[int]]]) -> dict:
    return {
        "users": list(users),
        "num_samples": [len(y) for _, y in users.values()],
        "user_data": {u: {"x": x.tolist(), "y": y} for u, (x, y) in users.items()},
    }


def write_leaf(root: Path, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    def user(n):
        return rng.random((n, 784)).round(3), rng.integers(0, 62, n).tolist()
    files = {
        "train/all_data_0_train.json": {"f0_a": user(3), "f0_b": user(2)},
        "train/all_data_1_train.json": {"f1_c": user(4)},
        "test/all_data_0_test.json": {"f0_a": user(1), "f0_b": user(2)},
    }
    for rel, users in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(json.dumps(leaf_file(users)))
    return files


def test_femnist_round_trip_with_writers(tmp_path):
    files = write_leaf(tmp_path)
    ds = load_dataset(DataConfig(dataset="femnist", root=str(tmp_path)), 0)
    assert ds.num_classes == 62 and ds.input_shape == (1, 28, 28)
    train_users = list(files["train/all_data_0_train.json"].values()) + list(files["train/all_data_1_train.json"].values())
    assert ds.writers.tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 2]
    assert ds.y_train.tolist() == sum((y for _, y in train_users), [])
    raw = np.concatenate([x for x, _ in train_users]).reshape(-1, 1, 28, 28)
    assert np.allclose(denormalised(ds.x_train, raw), raw, atol=1e-5)
    assert len(ds.y_test) == 3
    parts = partition(ds, 2, PartitionConfig(kind="natural"), 0)
    assert sorted(len(p) for p in parts) in ([2, 7], [3, 6], [4, 5])  # whole writers per device


@pytest.mark.parametrize("breakage, message", [
    (lambda b: b["user_data"]["f0_a"]["x"][0].pop(), r"user 'f0_a': each 'x' row must have 784 values"),
    (lambda b: b["user_data"]["f0_a"]["y"].__setitem__(0, 62), r"user 'f0_a': labels outside 0..61"),
    (lambda b: b["num_samples"].__setitem__(1, 9), r"user 'f0_b': num_samples says 9 but has 2"),
    (lambda b: b.pop("user_data"), r"not a LEAF file"),
])
def test_femnist_malformed_files_name_the_file(tmp_path, breakage, message):
    write_leaf(tmp_path)
    path = tmp_path / "train/all_data_0_train.json"
    blob = json.loads(path.read_text())
    breakage(blob)
    path.write_text(json.dumps(blob))
    with pytest.raises(DataError, match="all_data_0_train.json: .*" + message):
        load_dataset(DataConfig(dataset="femnist", root=str(tmp_path)), 0)


def test_femnist_bad_json_and_missing_split(tmp_path):
    write_leaf(tmp_path)
    (tmp_path / "test/all_data_0_test.json").write_text("{not json")
    with pytest.raises(DataError, match="all_data_0_test.json: not valid JSON"):
        load_dataset(DataConfig(dataset="femnist", root=str(tmp_path)), 0)
    (tmp_path / "test/all_data_0_test.json").unlink()
    with pytest.raises(DataError, match=r"no \*.json files in test/"):
        load_dataset(DataConfig(dataset="femnist", root=str(tmp_path)), 0)
    (tmp_path / "test").rmdir()
    with pytest.raises(DataError, match="directory test/ not found"):
        load_dataset(DataConfig(dataset="femnist", root=str(tmp_path)), 0)
