"""The built-in datasets, on the same contract as a plug-in's: `(seed, **params) -> Dataset`.

`synthetic` and `digits` need no files; `mnist`, `fashion_mnist`, `cifar10` and `femnist` read
the files under `root` (docs/datasets.md lists them) and never download anything. Every
failure is a DataError whose one-line message names the file or setting at fault. The
scenario's `data` section gives each the settings it declares (`root`, `synthetic`, `har`,
`test_fraction`).

    >>> ds = synthetic(0)              # the synthetic default
    >>> ds.x_train.shape
    (16000, 1, 12, 12)
"""

from __future__ import annotations

from typing import Optional

from raysim.data.base import Dataset
from raysim.data.har import HarConfig
from raysim.data.synthetic import SyntheticConfig

# Loaders are imported lazily: the file formats are irrelevant to most runs.


def synthetic(seed: int, synthetic: SyntheticConfig = SyntheticConfig(), test_fraction: float = 0.2) -> Dataset:  # noqa: B008
    """The embedded synthetic image set (`data.synthetic` sets its size and difficulty)."""
    from raysim.data.synthetic import load_synthetic  # noqa: PLC0415

    return load_synthetic(synthetic, test_fraction, seed)


def har(seed: int, har: HarConfig = HarConfig(), test_fraction: float = 0.2) -> Dataset:  # noqa: B008
    """The embedded human-activity-recognition set: accelerometer/gyroscope windows (N, C, T)
    with a per-user style; its users are the writers (`partition.kind: natural`)."""
    from raysim.data.har import load_har  # noqa: PLC0415

    return load_har(har, test_fraction, seed)


def digits(seed: int, test_fraction: float = 0.2) -> Dataset:
    """scikit-learn's 8x8 handwritten digits (embedded in the package)."""
    from raysim.data.digits import load_digits_dataset  # noqa: PLC0415

    return load_digits_dataset(test_fraction, seed)


def mnist(seed: int, root: Optional[str] = None) -> Dataset:
    """MNIST from its IDX files under `root`."""
    from raysim.data.idx import load_idx  # noqa: PLC0415

    return load_idx("mnist", root)


def fashion_mnist(seed: int, root: Optional[str] = None) -> Dataset:
    """Fashion-MNIST from its IDX files under `root`."""
    from raysim.data.idx import load_idx  # noqa: PLC0415

    return load_idx("fashion-mnist", root)


def cifar10(seed: int, root: Optional[str] = None) -> Dataset:
    """CIFAR-10 from its python pickles under `root`."""
    from raysim.data.cifar import load_cifar10  # noqa: PLC0415

    return load_cifar10(root)


def femnist(seed: int, root: Optional[str] = None) -> Dataset:
    """FEMNIST from LEAF's JSON files under `root` (writers kept: `partition.kind: natural`)."""
    from raysim.data.leaf import load_femnist  # noqa: PLC0415

    return load_femnist(root)

