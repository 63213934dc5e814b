"""A width-scalable multilayer perceptron over flattened inputs."""

from __future__ import annotations

import math
from typing import Mapping

import torch
from torch import nn

from raysim.models.base import Axes, ModelSpec, Scaler


class MLP(nn.Module):
    def __init__(self, in_features: int, widths: list[int], num_classes: int, rate: float, scaler: bool) -> None:
        super().__init__()
        self.layers = nn.ModuleList()
        self.scalers = nn.ModuleList()
        prev = in_features
        for w in widths:
            self.layers.append(nn.Linear(prev, w))
            self.scalers.append(Scaler(rate, scaler))
            prev = w
        self.classifier = nn.Linear(prev, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for layer, s in zip(self.layers, self.scalers):
            x = torch.relu(s(layer(x)))
        return self.classifier(x)


def mlp_spec(input_shape: tuple[int, ...], num_classes: int, widths: list[int], scaler: bool = True) -> ModelSpec:
    """Spec of the MLP family."""
    in_features = math.prod(input_shape)
    groups = {f"fc{i}": w for i, w in enumerate(widths)}
    axes: dict[str, Axes] = {}
    prev = None
    for i in range(len(widths)):
        axes[f"layers.{i}.weight"] = (f"fc{i}", prev)
        axes[f"layers.{i}.bias"] = (f"fc{i}",)
        prev = f"fc{i}"
    axes["classifier.weight"] = (None, prev)
    axes["classifier.bias"] = (None,)
    n = len(widths)

    def build(sizes: Mapping[str, int], rate: float) -> nn.Module:
        return MLP(in_features, [sizes[f"fc{i}"] for i in range(n)], num_classes, rate, scaler)

    return ModelSpec("mlp", groups, axes, build, tuple(input_shape), num_classes)
