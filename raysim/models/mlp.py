"""A width-scalable multilayer perceptron over flattened inputs, sliced by
`raysim.slicing.infer_spec` (see `raysim.models.family`)."""

from __future__ import annotations

import math

import torch
from torch import nn

from raysim.models.base import ModelSpec, Scaler
from raysim.models.family import sliced_family


class MLP(nn.Module):
    """Hidden linear layers, each followed by a scaler and ReLU, then the classifier."""

    def __init__(self, in_features: int, widths: list[int], num_classes: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList()
        self.scalers = nn.ModuleList()
        prev = in_features
        for w in widths:
            self.layers.append(nn.Linear(prev, w))
            self.scalers.append(Scaler(1.0))
            prev = w
        self.classifier = nn.Linear(prev, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for layer, s in zip(self.layers, self.scalers):
            x = torch.relu(s(layer(x)))
        return self.classifier(x)

    def group_names(self) -> dict[str, str]:
        """`fc{i}` for hidden layer i's units."""
        return {f"layers.{i}": f"fc{i}" for i in range(len(self.layers))}


def mlp_spec(input_shape: tuple[int, ...], num_classes: int, widths: list[int], scaler: bool = True) -> ModelSpec:
    """Spec of the MLP family."""
    return sliced_family("mlp", lambda: MLP(math.prod(input_shape), list(widths), num_classes),
                         input_shape, num_classes, scaler)
