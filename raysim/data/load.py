"""`load_dataset`: the scenario's `data` section -> an in-memory Dataset."""

from __future__ import annotations

from raysim.config import DataConfig
from raysim.data.base import DataError, Dataset


def load_dataset(cfg: DataConfig, seed: int) -> Dataset:
    """`_load` with the checks every dataset must pass, whatever its loader: samples to train
    on and to test with."""
    ds = _load(cfg, seed)
    where = f"data.root {cfg.root}" if cfg.root else f"data.dataset {cfg.dataset}"
    for split, y in (("training", ds.y_train), ("test", ds.y_test)):
        if len(y) == 0:
            raise DataError(f"{where}: the {cfg.dataset} files hold no {split} samples")
    return ds


def _load(cfg: DataConfig, seed: int) -> Dataset:
    """Load (or generate) the dataset named by `cfg.dataset`.

    `synthetic` and `digits` need no files; `mnist`, `fashion-mnist`, `cifar10` and `femnist`
    read the files under `cfg.root` (docs/datasets.md lists them) and never download anything.
    Every failure is a DataError whose one-line message names the file or setting at fault.

        >>> ds = load_dataset(DataConfig(), seed=0)   # the synthetic default
        >>> ds.x_train.shape
        (16000, 1, 12, 12)
    """
    # Loaders are imported lazily: the file formats are irrelevant to most runs.
    if cfg.dataset == "synthetic":
        from raysim.data.synthetic import load_synthetic  # noqa: PLC0415

        return load_synthetic(cfg.synthetic, cfg.test_fraction, seed)
    if cfg.dataset == "digits":
        from raysim.data.digits import load_digits_dataset  # noqa: PLC0415

        return load_digits_dataset(cfg.test_fraction, seed)
    if cfg.dataset in ("mnist", "fashion-mnist"):
        from raysim.data.idx import load_idx  # noqa: PLC0415

        return load_idx(cfg.dataset, cfg.root)
    if cfg.dataset == "cifar10":
        from raysim.data.cifar import load_cifar10  # noqa: PLC0415

        return load_cifar10(cfg.root)
    if cfg.dataset == "femnist":
        from raysim.data.leaf import load_femnist  # noqa: PLC0415

        return load_femnist(cfg.root)
    raise DataError(f"data.dataset: unknown dataset {cfg.dataset!r}")
