"""A width-scalable pre-activation ResNet-18 (He et al., "Identity Mappings in Deep Residual
Networks", 2016), the network HeteroFL and FedRolex train on CIFAR-10.

Layout: a 3x3 stem conv, four stages of two pre-activation blocks ([2, 2, 2, 2]), a final
norm + ReLU, global average pooling and a linear classifier. A block computes

    h = relu(norm1(x));  y = conv2(relu(norm2(conv1(h)))) + shortcut

where the shortcut is `x` itself, or a 1x1 conv of `h` at the first block of stages 2-4.

Channel groups: the residual stream of stage s is ONE group `res{s}`, shared by the stem (for
stage 0), every block output conv, every shortcut conv and every norm that reads the stream,
so a submodel adds tensors whose channels are the same global channels. The inner conv of
block b in stage s is its own group `s{s}b{b}`, free to keep other indices.

Small inputs: a stage halves the feature map only while it is at least 4 pixels wide, so an
8x8 or 12x12 input keeps a 2x2 map to the end (a BatchNorm in training needs more than one
value per channel, even for a batch of one) and 32x32 follows the usual 32-16-8-4 schedule.
"""

from __future__ import annotations

from typing import Mapping, Optional

import torch
from torch import nn
from torch.nn import functional as F

from raysim.config import ScenarioError
from raysim.models.base import Axes, ModelSpec, Scaler, make_norm, norm_axes

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
    by the submodel's widths), so every submodel has the same parameter names."""

    def __init__(self, cin: int, inner: int, cout: int, stride: int, shortcut: bool,
                 norm: str, rate: float, scaler: bool) -> None:
        super().__init__()
        self.n1 = make_norm(norm, cin)
        self.conv1 = nn.Conv2d(cin, inner, 3, stride, 1, bias=False)
        self.n2 = make_norm(norm, inner)
        self.conv2 = nn.Conv2d(inner, cout, 3, 1, 1, bias=False)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False) if shortcut else None
        self.scaler = Scaler(rate, scaler)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.n1(x))
        skip = x if self.shortcut is None else self.scaler(self.shortcut(h))
        y = self.scaler(self.conv1(h))
        y = self.scaler(self.conv2(F.relu(self.n2(y))))
        return y + skip


class PreResNet(nn.Module):
    def __init__(self, in_ch: int, res: list[int], inner: list[list[int]], strides: list[int],
                 num_classes: int, norm: str, rate: float, scaler: bool) -> None:
        super().__init__()
        # The stem reads the whole image (its input never shrinks), so it gets no scaler: the
        # scaler compensates for summing over fewer input channels, and this conv does not.
        self.stem = nn.Conv2d(in_ch, res[0], 3, 1, 1, bias=False)
        blocks = []
        prev = res[0]
        for s, n_blocks in enumerate(BLOCKS_PER_STAGE):
            for b in range(n_blocks):
                first = b == 0
                blocks.append(PreActBlock(prev, inner[s][b], res[s], strides[s] if first else 1,
                                          shortcut=first and s > 0, norm=norm, rate=rate, scaler=scaler))
                prev = res[s]
        self.blocks = nn.Sequential(*blocks)
        self.norm = make_norm(norm, prev)
        self.classifier = nn.Linear(prev, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        x = F.relu(self.norm(x)).mean(dim=(2, 3))
        return self.classifier(x)


def _group_names() -> tuple[list[str], list[list[str]]]:
    res = [f"res{s}" for s in range(len(BLOCKS_PER_STAGE))]
    inner = [[f"s{s}b{b}" for b in range(n)] for s, n in enumerate(BLOCKS_PER_STAGE)]
    return res, inner


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
    res_g, inner_g = _group_names()
    groups: dict[str, int] = {g: w for g, w in zip(res_g, widths)}
    for s, names in enumerate(inner_g):
        groups.update({g: widths[s] for g in names})

    axes: dict[str, Axes] = {"stem.weight": (res_g[0], None, None, None)}
    i, prev = 0, res_g[0]
    for s, names in enumerate(inner_g):
        for b, inner in enumerate(names):
            out = res_g[s]
            p = f"blocks.{i}"
            axes.update({f"{p}.n1.{k}": v for k, v in norm_axes(norm, prev).items()})
            axes[f"{p}.conv1.weight"] = (inner, prev, None, None)
            axes.update({f"{p}.n2.{k}": v for k, v in norm_axes(norm, inner).items()})
            axes[f"{p}.conv2.weight"] = (out, inner, None, None)
            if b == 0 and s > 0:
                axes[f"{p}.shortcut.weight"] = (out, prev, None, None)
            prev = out
            i += 1
    axes.update({f"norm.{k}": v for k, v in norm_axes(norm, prev).items()})
    axes["classifier.weight"] = (None, prev)
    axes["classifier.bias"] = (None,)

    def build(sizes: Mapping[str, int], rate: float) -> nn.Module:
        return PreResNet(in_ch, [sizes[g] for g in res_g], [[sizes[g] for g in names] for names in inner_g],
                         strides, num_classes, norm, rate, scaler)

    return ModelSpec("preresnet18", groups, axes, build, tuple(input_shape), num_classes)
