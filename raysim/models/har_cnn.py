"""A 1-D CNN for sensor windows `(C, T)`, written as a plain torch module and sliced by
`raysim.slicing.infer_spec` (it has no hand-written channel groups).

Layout: a stem conv, one residual block (two convs whose sum with the stem's output is one
residual stream), a downsampling conv stage, global average pooling over time and a linear
classifier. Pooling halves the time axis twice, so a 64-step window (2 s at 32 Hz) ends at
16 steps, about one stride of walking.

    >>> from raysim.slicing import infer_spec
    >>> model = har_cnn((6, 64), 6)
    >>> spec = infer_spec(model, (6, 64), 6, name="har-cnn")
    >>> spec.groups
    {'stem.0': 32, 'conv1': 32, 'stage2.0': 64}
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class HarCNN(nn.Module):
    """Conv1d + BatchNorm1d + ReLU stages with a residual block and a linear head."""

    def __init__(self, channels: int, num_classes: int, width: int = 32) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv1d(channels, width, 5, padding=2, bias=False),
                                  nn.BatchNorm1d(width), nn.ReLU())
        self.conv1 = nn.Conv1d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm1d(width)
        self.conv2 = nn.Conv1d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm1d(width)
        self.pool = nn.MaxPool1d(2)
        self.stage2 = nn.Sequential(nn.Conv1d(width, 2 * width, 3, padding=1, bias=False),
                                    nn.BatchNorm1d(2 * width), nn.ReLU(), nn.MaxPool1d(2))
        self.classifier = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(h)))))
        h = self.pool(F.relu(h + y))
        h = self.stage2(h)
        return self.classifier(h.mean(dim=-1))


def har_cnn(input_shape: tuple[int, ...], num_classes: int, width: int = 32) -> nn.Module:
    """The 1-D CNN for windows of shape `(channels, steps)`; `width` is the stem's channels."""
    if len(input_shape) != 2:
        raise ValueError(f"har_cnn: input_shape must be (channels, steps), got {tuple(input_shape)}")
    return HarCNN(int(input_shape[0]), int(num_classes), width)
