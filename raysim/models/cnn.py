"""A width-scalable CNN: conv stages, global average pooling, a hidden dense layer.

Global average pooling (rather than flattening) keeps the classifier's input a channel group,
so every layer's input is exactly the previous layer's kept outputs. The family is this
module sliced by `raysim.slicing.infer_spec` (see `raysim.models.family`).
"""

from __future__ import annotations

import torch
from torch import nn

from raysim.models.base import ModelSpec, Scaler, make_norm
from raysim.models.family import sliced_family


class CNN(nn.Module):
    """Stages of conv, scaler, norm, ReLU (2x2 max pooling between stages), then the hidden
    layer and its scaler, and the classifier. The scalers follow HeteroFL: after every conv,
    the first included."""

    def __init__(self, in_ch: int, widths: list[int], hidden: int, num_classes: int, norm: str = "group") -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_ch
        for i, w in enumerate(widths):
            layers += [nn.Conv2d(prev, w, 3, padding=1), Scaler(1.0), make_norm(norm, w), nn.ReLU()]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            prev = w
        self.features = nn.Sequential(*layers)
        self.hidden = nn.Linear(prev, hidden)
        self.hidden_scaler = Scaler(1.0)
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x).mean(dim=(2, 3))
        x = torch.relu(self.hidden_scaler(self.hidden(x)))
        return self.classifier(x)

    def group_names(self) -> dict[str, str]:
        """`conv{i}` for stage i's channels, `hidden` for the hidden layer's."""
        convs = [p for p, m in self.features.named_children() if isinstance(m, nn.Conv2d)]
        return {**{f"features.{p}": f"conv{i}" for i, p in enumerate(convs)}, "hidden": "hidden"}


def cnn_spec(input_shape: tuple[int, ...], num_classes: int, widths: list[int], hidden: int,
             norm: str = "group", scaler: bool = True) -> ModelSpec:
    """Spec of the CNN family for inputs of shape (C, H, W)."""
    return sliced_family("cnn", lambda: CNN(input_shape[0], list(widths), hidden, num_classes, norm),
                         input_shape, num_classes, scaler)
