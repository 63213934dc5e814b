"""A small MobileNetV3 (Howard et al., "Searching for MobileNetV3", 2019) for 12x12 to 32x32
images, written the way public zoos write MobileNetV3-small (torchvision, timm) and sliced by
`raysim.slicing.infer_spec` like every built-in (no hand-written channel groups).

Layout: a 3x3 stem conv + norm + hard-swish, six inverted residual blocks, a 1x1 head conv +
norm + hard-swish, global average pooling and a linear classifier. A block is

    1x1 expand conv + norm + act     (left out when the expansion equals the input width)
    kxk depthwise conv + norm + act  (k = 3 or 5, stride 1 or 2)
    squeeze-excite                   x * hardsigmoid(conv_expand(relu(conv_reduce(mean(x)))))
    1x1 project conv + norm          (no activation)
    + x                              when the stride is 1 and the widths match

with ReLU in the first three blocks and hard-swish after, as in MobileNetV3-small. The block
table is MobileNetV3-small's first six blocks (expansions trimmed) with its strides: the stem
and blocks 0 and 3 halve the map, so a 12x12 input goes 6, 3, 2 (32x32: 16, 8, 4). Halving
early is also what keeps the activations autograd saves small: with the stem and block 0 at
stride 1, training the 1/8 submodel on a batch of 20 needs 0.71 MiB instead of 0.28 MiB, more
than a 320 KiB microcontroller has.

Channel groups (derived by tracing, named by `MobileNetV3.group_names`): `stem`, then per block
`b{i}.exp` (expansion = depthwise = SE-gated channels: a depthwise conv and the SE gate's
product follow the channels they read, so they have no group of their own), `b{i}.se` (the SE
bottleneck) and `b{i}.out` (project), except that a residual block's output is its input's
group (one residual stream); then `head`.

Scalers (HeteroFL's, identity at full width) follow every conv that sums over channels a
submodel drops: the expand, SE-reduce and project 1x1 convs and the head conv. The stem reads
the whole image and a depthwise conv sums over one channel only, so neither gets one; the SE
gate's logits get none either (see `SqueezeExcitation`).

`norm` is `model.norm`: `group` (GroupNorm with one group), `static-bn` (BatchNorm; statistics
recomputed before evaluation) or `none`.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import nn

from raysim.models.base import ModelSpec, Scaler, make_norm
from raysim.models.family import sliced_family


class Block(NamedTuple):
    """One inverted residual block of the table."""

    kernel: int
    expanded: int
    out: int
    se: bool
    act: str  # "relu" | "hswish"
    stride: int


STEM = 16
HEAD = 256
# MobileNetV3-small's first six blocks (kernel, SE, activation, stride), expansions trimmed.
BLOCKS = (
    Block(3, 16, 16, True, "relu", 2),
    Block(3, 64, 24, False, "relu", 1),
    Block(3, 88, 24, False, "relu", 1),
    Block(5, 96, 40, True, "hswish", 2),
    Block(5, 160, 40, True, "hswish", 1),
    Block(5, 120, 48, True, "hswish", 1),
)


def make_divisible(v: float, divisor: int = 8) -> int:
    """torchvision's `_make_divisible`: round to a multiple of `divisor`, never below 90%."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def activation(kind: str) -> nn.Module:
    return nn.Hardswish() if kind == "hswish" else nn.ReLU()


class SqueezeExcitation(nn.Module):
    """torchvision's SE: a pooled 1x1 bottleneck gating the channels with a hard-sigmoid.

    The reduce conv gets a scaler, the expand conv (the gate's logits) does not: hard-sigmoid
    has fixed thresholds (0 below -3), and at rate 1/8 a squeeze of one channel times 1/rate
    pushed a sample's every gate of block 0 to exactly 0. With no residual there, the sample's
    features are then 0 from block 0 on, every GroupNorm after it normalises a constant, and
    the backward pass grows by 1/sqrt(eps) per norm (gradients ~1e19): one such device
    stalled the global model at chance (in the first version of this study, `random` in 1 of
    3 seeds and `magnitude` in 2 of 3)."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.s1 = Scaler(1.0)
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3), keepdim=True)
        s = self.fc2(self.relu(self.s1(self.fc1(s))))
        return x * self.gate(s)


class InvertedResidual(nn.Module):
    """Expand (1x1), depthwise (kxk), squeeze-excite, project (1x1); residual when shapes match."""

    def __init__(self, cin: int, cfg: Block, norm: str) -> None:
        super().__init__()
        mid = cfg.expanded
        self.use_res = cfg.stride == 1 and cin == cfg.out
        self.expand: Optional[nn.Conv2d]
        if mid != cin:
            self.expand = nn.Conv2d(cin, mid, 1, bias=False)
            self.expand_scaler = Scaler(1.0)
            self.expand_norm = make_norm(norm, mid)
            self.expand_act = activation(cfg.act)
        else:
            self.expand = None
        self.dw = nn.Conv2d(mid, mid, cfg.kernel, cfg.stride, cfg.kernel // 2, groups=mid, bias=False)
        self.dw_norm = make_norm(norm, mid)
        self.dw_act = activation(cfg.act)
        self.se = SqueezeExcitation(mid, make_divisible(mid // 4)) if cfg.se else None
        self.project = nn.Conv2d(mid, cfg.out, 1, bias=False)
        self.project_scaler = Scaler(1.0)
        self.project_norm = make_norm(norm, cfg.out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if self.expand is not None:
            h = self.expand_act(self.expand_norm(self.expand_scaler(self.expand(h))))
        h = self.dw_act(self.dw_norm(self.dw(h)))
        if self.se is not None:
            h = self.se(h)
        h = self.project_norm(self.project_scaler(self.project(h)))
        return h + x if self.use_res else h


class MobileNetV3(nn.Module):
    """Stem, the inverted residual blocks of `blocks`, a 1x1 head conv, pooling, classifier."""

    def __init__(self, in_ch: int, num_classes: int, norm: str = "group", blocks: tuple[Block, ...] = BLOCKS,
                 stem: int = STEM, head: int = HEAD) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_ch, stem, 3, 2, 1, bias=False)
        self.stem_norm = make_norm(norm, stem)
        self.stem_act = nn.Hardswish()
        layers, prev = [], stem
        for cfg in blocks:
            layers.append(InvertedResidual(prev, cfg, norm))
            prev = cfg.out
        self.blocks = nn.Sequential(*layers)
        self.head = nn.Conv2d(prev, head, 1, bias=False)
        self.head_scaler = Scaler(1.0)
        self.head_norm = make_norm(norm, head)
        self.head_act = nn.Hardswish()
        self.classifier = nn.Linear(head, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem_act(self.stem_norm(self.stem(x))))
        x = self.head_act(self.head_norm(self.head_scaler(self.head(x))))
        return self.classifier(x.mean(dim=(2, 3)))

    def group_names(self) -> dict[str, str]:
        """`stem`; per block `b{i}.exp`, `b{i}.se`, `b{i}.out` (a block without an expand conv
        and a residual block's output are their input's group, so they name none); `head`."""
        names = {"stem": "stem"}
        for i, blk in enumerate(self.blocks):
            if blk.expand is not None:  # without one, the depthwise conv reads the input's group
                names[f"blocks.{i}.expand"] = f"b{i}.exp"
            if blk.se is not None:
                names[f"blocks.{i}.se.fc1"] = f"b{i}.se"
            if not blk.use_res:
                names[f"blocks.{i}.project"] = f"b{i}.out"
        names["head"] = "head"
        return names


def mobilenetv3_spec(input_shape: tuple[int, ...], num_classes: int, norm: str = "group",
                     scaler: bool = True) -> ModelSpec:
    """Spec of the MobileNetV3 family for images (C, H, W); `model.norm` and `model.scaler`
    apply, `model.widths` and `model.hidden` do not (the block table is fixed).

    With one input channel and 10 classes the global model has 91,370 parameters (group norm
    or static BN; 88,298 without norms), 27,146 at rate 1/2, 8,942 at 1/4 and 3,317 at 1/8.
    """
    if len(input_shape) != 3:
        raise ValueError(f"mobilenetv3: input_shape must be (channels, height, width), got {tuple(input_shape)}")
    in_ch = int(input_shape[0])
    return sliced_family("mobilenetv3", lambda: MobileNetV3(in_ch, int(num_classes), norm),
                         input_shape, num_classes, scaler)
