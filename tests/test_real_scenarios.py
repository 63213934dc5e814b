"""The shipped real-dataset scenarios run end to end on tiny files in the real formats."""

import numpy as np
import pytest
from test_data_formats import idx_bytes, write_cifar, write_leaf

from raysim.cli import main
from raysim.rundir.reader import load_run

# One device host: these runs are about the file formats (host counts are tests/runtime's), and a
# host fewer is a worker process (torch and all) fewer to start per run.
SMALL = ["--set", "rounds=2", "--set", "fleet.devices=40", "--set", "selection.per_round=4",
         "--set", "runtime.num_cpus=2", "--set", "data.partition.min_samples=1", "--set", "eval.per_rate=false",
         "--set", "runtime.hosts=1"]


def write_mnist(root, n_train=200, n_test=40):
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        (root / f"{prefix}-images-idx3-ubyte").write_bytes(
            idx_bytes(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)))
        (root / f"{prefix}-labels-idx1-ubyte").write_bytes(idx_bytes(rng.integers(0, 10, n, dtype=np.uint8)))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mnist", "cifar10", "femnist"])
def test_real_dataset_scenario_runs_on_tiny_files(name, tmp_path, ray_local, capsys):
    root = tmp_path / "data"
    extra = []
    if name == "mnist":
        write_mnist(root)
    elif name == "cifar10":
        root.mkdir()
        write_cifar(root, n=20)
        extra = ["--set", "model.widths=[8,16]"]
    else:
        root.mkdir()
        write_leaf(root)
        extra = ["--set", "fleet.devices=3", "--set", "selection.per_round=2", "--set", "model.widths=[8,16]"]
    # In-process on the session's Ray instance: the same CLI path, without a Ray start per case.
    code = main(["run", f"scenarios/{name}.yaml", "--set", f"data.root={root}", *SMALL, *extra,
                 "--out", str(tmp_path / "runs"), "--quiet", "--no-report"])
    assert code == 0, capsys.readouterr().err[-2000:]
    run = load_run(next((tmp_path / "runs").iterdir()))
    assert list(run.rounds["round"]) == [1, 2]
    assert run.rounds["trained"].sum() > 0
