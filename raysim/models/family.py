"""The built-in families are plain torch modules, sliced like any other (`raysim.slicing`).

A built-in module places raysim's `Scaler` where HeteroFL puts it (identity at full width;
the slicer rebuilds it at a submodel's rate) and names its groups (`group_names()`): the
random strategy draws groups in name order, so the names are part of what a seed reproduces.
Nothing else about its groups is written by hand: `infer_spec` derives them by tracing.
"""

from __future__ import annotations

from typing import Callable, Mapping, Protocol, cast

import torch
from torch import nn

from raysim.models.base import ModelSpec


class NamedGroups(Protocol):
    """A module that names its channel groups by the layer that creates each."""

    def group_names(self) -> Mapping[str, str]: ...


def sliced_family(name: str, make: Callable[[], nn.Module], input_shape: tuple[int, ...], num_classes: int,
                  scaler: bool) -> ModelSpec:
    """The family of the full-width module `make()`, its groups derived by tracing. Making
    the module leaves torch's generator as it was: the run's seed decides the global model."""
    from raysim.slicing import infer_spec  # noqa: PLC0415 (raysim.slicing imports raysim.models)

    with torch.random.fork_rng(devices=[]):
        module = make()
    names = cast(NamedGroups, module).group_names() if hasattr(module, "group_names") else None
    return infer_spec(module, tuple(input_shape), int(num_classes), name, scaler=scaler, group_names=names)
