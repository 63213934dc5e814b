"""A width-scalable pre-activation ResNet-18 (He et al., "Identity Mappings in Deep Residual
Networks", 2016), the network HeteroFL and FedRolex train on CIFAR-10.

Layout: a 3x3 stem conv, four stages of two pre-activation blocks ([2, 2, 2, 2]), a final
norm + ReLU, global average pooling and a linear classifier. A block computes

    h = relu(norm1(x));  y = conv2(relu(norm2(conv1(h)))) + shortcut

where the shortcut is `x` itself, or a 1x1 conv of `h` at the first block of stages 2-4.

Channel groups (derived by `raysim.slicing.infer_spec`, named by `PreResNet.group_names`):
the residual stream of stage s is ONE group `res{s}`, shared by the stem (for stage 0), every
block output conv, every shortcut conv and every norm that reads the stream, so a submodel
adds tensors whose channels are the same global channels. The inner conv of block b in stage
s is its own group `s{s}b{b}`, free to keep other indices.

Small inputs: a stage halves the feature map only while it is at least 4 pixels wide, so an
8x8 or 12x12 input keeps a 2x2 map to the end (a BatchNorm in training needs more than one
value per channel, even for a batch of one) and 32x32 follows the usual 32-16-8-4 schedule.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

from raysim.errors import ScenarioError
from raysim.models.base import ModelSpec, Scaler, make_norm
from raysim.models.family import sliced_family

BLOCKS_PER_STAGE = (2, 2, 2, 2)
DEFAULT_WIDTHS = (64, 128, 256, 512)


def stage_strides(image_size: int, stages: int = len(BLOCKS_PER_STAGE)) -> list[int]:
    """Stride of each stage's first block: 2 from stage 2 on while the map is >= 4 wide."""
    strides, size = [], image_size
    for s in range(stages):
        stride = 2 if s > 0 and size >= 4 else 1
        size = (size + stride - 1) // stride
        strides.append(stride)
    return strides


class PreActBlock(nn.Module):
    """One pre-activation basic block. `shortcut` is decided by the global architecture (never
    by the submodel's widths), so every submodel has the same parameter names. One scaler
    follows each conv."""

    def __init__(self, cin: int, inner: int, cout: int, stride: int, shortcut: bool, norm: str) -> None:
        super().__init__()
        self.n1 = make_norm(norm, cin)
        self.conv1 = nn.Conv2d(cin, inner, 3, stride, 1, bias=False)
        self.n2 = make_norm(norm, inner)
        self.conv2 = nn.Conv2d(inner, cout, 3, 1, 1, bias=False)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False) if shortcut else None
        self.scaler = Scaler(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.n1(x))
        skip = x if self.shortcut is None else self.scaler(self.shortcut(h))
        y = self.scaler(self.conv1(h))
        y = self.scaler(self.conv2(F.relu(self.n2(y))))
        return y + skip


class PreResNet(nn.Module):
    """The network at stage widths `widths` (a block's inner conv is as wide as its stage)."""

    def __init__(self, in_ch: int, widths: list[int], strides: list[int], num_classes: int, norm: str) -> None:
        super().__init__()
        # The stem reads the whole image (its input never shrinks), so it gets no scaler: the
        # scaler compensates for summing over fewer input channels, and this conv does not.
        self.stem = nn.Conv2d(in_ch, widths[0], 3, 1, 1, bias=False)
        blocks = []
        prev = widths[0]
        for s, n_blocks in enumerate(BLOCKS_PER_STAGE):
            for b in range(n_blocks):
                first = b == 0
                blocks.append(PreActBlock(prev, widths[s], widths[s], strides[s] if first else 1,
                                          shortcut=first and s > 0, norm=norm))
                prev = widths[s]
        self.blocks = nn.Sequential(*blocks)
        self.norm = make_norm(norm, prev)
        self.classifier = nn.Linear(prev, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        x = F.relu(self.norm(x)).mean(dim=(2, 3))
        return self.classifier(x)

    def group_names(self) -> dict[str, str]:
        """`res{s}` for stage s's residual stream (named by the stem, then by the first block's
        output conv), then `s{s}b{b}` for each block's inner conv."""
        first = [sum(BLOCKS_PER_STAGE[:s]) for s in range(len(BLOCKS_PER_STAGE))]
        names = {"stem": "res0", **{f"blocks.{first[s]}.conv2": f"res{s}" for s in range(1, len(first))}}
        for s, n_blocks in enumerate(BLOCKS_PER_STAGE):
            names.update({f"blocks.{first[s] + b}.conv1": f"s{s}b{b}" for b in range(n_blocks)})
        return names


def preresnet18_spec(input_shape: tuple[int, ...], num_classes: int,
                     widths: Optional[list[int]] = None, norm: str = "static-bn",
                     scaler: bool = True) -> ModelSpec:
    """Spec of the PreResNet-18 family for inputs (C, H, W); `widths` = the 4 stage widths.

    With widths [64, 128, 256, 512] and 10 classes the global model has 11,172,170 parameters
    (group norm or static BN); a block's inner conv is as wide as its stage.
    """
    widths = list(DEFAULT_WIDTHS if widths is None else widths)
    if len(widths) != len(BLOCKS_PER_STAGE):
        raise ScenarioError(f"model.widths: preresnet18 needs {len(BLOCKS_PER_STAGE)} stage widths "
                            f"(e.g. {list(DEFAULT_WIDTHS)}), got {len(widths)}")
    in_ch, image = int(input_shape[0]), int(min(input_shape[1:]))
    strides = stage_strides(image)
    return sliced_family("preresnet18", lambda: PreResNet(in_ch, widths, strides, num_classes, norm),
                         input_shape, num_classes, scaler)
