"""A width-scalable CNN: conv stages, global average pooling, a hidden dense layer.

Global average pooling (rather than flattening) keeps the classifier's input a channel group,
so every layer's input is exactly the previous layer's kept outputs.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from raysim.models.base import Axes, ModelSpec, Scaler, make_norm, norm_axes


class CNN(nn.Module):
    def __init__(self, in_ch: int, widths: list[int], hidden: int, num_classes: int,
                 norm: str, rate: float, scaler: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_ch
        for i, w in enumerate(widths):
            layers += [nn.Conv2d(prev, w, 3, padding=1), Scaler(rate, scaler), make_norm(norm, w), nn.ReLU()]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            prev = w
        self.features = nn.Sequential(*layers)
        self.hidden = nn.Linear(prev, hidden)
        self.hidden_scaler = Scaler(rate, scaler)
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x).mean(dim=(2, 3))
        x = torch.relu(self.hidden_scaler(self.hidden(x)))
        return self.classifier(x)


def cnn_spec(input_shape: tuple[int, ...], num_classes: int, widths: list[int], hidden: int,
             norm: str = "group", scaler: bool = True) -> ModelSpec:
    """Spec of the CNN family for inputs of shape (C, H, W)."""
    in_ch = input_shape[0]
    groups = {f"conv{i}": w for i, w in enumerate(widths)}
    groups["hidden"] = hidden
    axes: dict[str, Axes] = {}
    idx = 0
    prev = None
    for i in range(len(widths)):
        g = f"conv{i}"
        axes[f"features.{idx}.weight"] = (g, prev, None, None)
        axes[f"features.{idx}.bias"] = (g,)
        for k, v in norm_axes(norm, g).items():
            axes[f"features.{idx + 2}.{k}"] = v
        idx += 4 + (1 if i < len(widths) - 1 else 0)
        prev = g
    axes["hidden.weight"] = ("hidden", prev)
    axes["hidden.bias"] = ("hidden",)
    axes["classifier.weight"] = (None, "hidden")
    axes["classifier.bias"] = (None,)
    n = len(widths)

    def build(sizes: Mapping[str, int], rate: float) -> nn.Module:
        return CNN(in_ch, [sizes[f"conv{i}"] for i in range(n)], sizes["hidden"], num_classes,
                   norm, rate, scaler)

    return ModelSpec("cnn", groups, axes, build, tuple(input_shape), num_classes)
