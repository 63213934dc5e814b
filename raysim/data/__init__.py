"""Datasets and their partitions over devices.

    >>> from raysim.scenario.schema import DataConfig
    >>> from raysim.scenario.resolve import load_dataset
    >>> from raysim.data import partition, label_histograms
    >>> cfg = DataConfig()                       # synthetic, Dirichlet(0.5) label skew
    >>> ds = load_dataset(cfg, seed=0)
    >>> parts = partition(ds, 1000, cfg.partition, seed=0)
    >>> int(label_histograms(ds.y_train, parts, ds.num_classes).sum()) == len(ds.y_train)
    True
"""

from raysim.data.base import DataError, Dataset
from raysim.data.partition import label_histograms, partition
from raysim.data.shards import Shards

__all__ = ["DataError", "Dataset", "Shards", "label_histograms", "partition"]
