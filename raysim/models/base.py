"""The width-scalable model interface.

A model family is described by *channel groups*: named hidden dimensions whose width scales
with the rate (a conv stage's channels, an MLP's hidden units). Every parameter names, per
dimension, the group that indexes it, or None for a dimension that never shrinks (input
channels of the first layer, classifier outputs, kernel taps). A submodel is then fully
described by which indices of each group it keeps (see `raysim.submodel.plan`), and the same
group description drives extraction, remapping and residual consistency: two layers that share
a group (a residual stream) always keep the same channels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional

import torch
from torch import nn

from raysim.models.span import Axis

# Per dimension of a parameter: its group, None (never shrinks) or a Span (see raysim.models.span).
Axes = tuple[Axis, ...]


@dataclass(frozen=True)
class ModelSpec:
    """A width-scalable model family.

    `build(sizes, rate)` returns a torch module whose group widths are `sizes` (group -> width);
    `rate` only drives the training-time output scaler. `axes` maps every parameter name of the
    built module to its per-dimension groups.
    """

    name: str
    groups: Mapping[str, int]
    axes: Mapping[str, Axes]
    builder: Callable[[Mapping[str, int], float], nn.Module] = field(repr=False)
    input_shape: tuple[int, ...] = ()
    num_classes: int = 0

    def build(self, sizes: Optional[Mapping[str, int]] = None, rate: float = 1.0) -> nn.Module:
        """The module at the given group widths (the global model when `sizes` is None)."""
        return self.builder(dict(self.groups) if sizes is None else dict(sizes), rate)

    def global_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shape of every parameter of the global model."""
        m = self.build()
        return {k: tuple(p.shape) for k, p in m.named_parameters()}

    @classmethod
    def whole(cls, name: str, factory: Callable[[tuple[int, ...], int], nn.Module], input_shape: tuple[int, ...],
              num_classes: int) -> "ModelSpec":
        """A model without channel groups: a family of one width, trained whole by every device.

            >>> spec = ModelSpec.whole("tiny", lambda shape, n: nn.Linear(shape[0], n), (8,), 3)
        """
        module = factory(tuple(input_shape), int(num_classes))
        axes: dict[str, Axes] = {k: (None,) * p.dim() for k, p in module.named_parameters()}
        return cls(name, {}, axes, _WholeBuilder(factory, tuple(input_shape), int(num_classes)),
                   tuple(input_shape), int(num_classes))


@dataclass(frozen=True)
class _WholeBuilder:
    """`builder` of a model without groups: the factory's module, whatever the sizes."""

    factory: Callable[[tuple[int, ...], int], nn.Module]
    input_shape: tuple[int, ...]
    num_classes: int

    def __call__(self, sizes: Mapping[str, int], rate: float) -> nn.Module:
        return self.factory(self.input_shape, self.num_classes)


class Scaler(nn.Module):
    """Divides activations by the rate during training only (HeteroFL's scaler).

    A submodel at rate r sums over ~r of the inputs the global model sums over; scaling by 1/r
    in training keeps activation magnitudes comparable across widths. At evaluation the
    module is the identity, because the evaluated model is whole at its own width.
    """

    def __init__(self, rate: float, enabled: bool = True) -> None:
        super().__init__()
        self.rate = float(rate)
        self.enabled = enabled and rate < 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.enabled:
            return x / self.rate
        return x


def make_norm(kind: str, channels: int) -> nn.Module:
    """Normalisation that survives width changes.

    `group`: GroupNorm with one group (per-sample statistics; nothing to carry across widths).
    `static-bn`: BatchNorm without running statistics (HeteroFL's static BN): batch statistics
    in training; before evaluation, statistics recomputed on a fixed sample of training data
    (`raysim.models.calibrate.recompute_bn_stats`). Without that step the module would use
    the statistics of the evaluated batch.
    """
    if kind == "none":
        return nn.Identity()
    if kind == "group":
        return nn.GroupNorm(1, channels)
    if kind == "static-bn":
        return nn.BatchNorm2d(channels, track_running_stats=False)
    raise ValueError(f"unknown norm {kind!r}")

