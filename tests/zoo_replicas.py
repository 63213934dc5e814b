"""Small replicas of the constructs public model zoos build their edge models from, written the
way those zoos write them (no zoo is imported): a BatchNorm subclass fused with its
activation and drop, a channels-last LayerNorm2d, a conv with "same" padding computed from
the input size, squeeze-excite gates with hard-sigmoid, hard-swish, layer scale, drop-path
modules and functional dropout on `self.training`, GhostNet's `cat(...)[:, :n]`, shape
asserts, a linear subclass whose forward calls `F.linear`, functional group/batch norm, grouped
convolutions, and a ViT with an optional attention mask and `scaled_dot_product_attention`.

Each takes `norm` like the models of `slicing_models`: False replaces every norm by an
identity, so a submodel can be compared exactly with the masked global model.
"""

import math

import torch
from torch import nn
from torch.nn import functional as F


class BatchNormAct2d(nn.BatchNorm2d):
    """BatchNorm fused with an activation and a drop layer; forward re-implemented."""

    def __init__(self, num_features, act_layer=nn.ReLU, drop_layer=None, apply_act=True):
        super().__init__(num_features)
        self.drop = drop_layer() if drop_layer is not None else nn.Identity()
        self.act = act_layer() if apply_act else nn.Identity()

    def forward(self, x):
        torch._assert(x.ndim == 4, f"expected 4D input (got {x.ndim}D input)")
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
        bn_training = self.training or (self.running_mean is None and self.running_var is None)
        x = F.batch_norm(x, self.running_mean if not self.training or self.track_running_stats else None,
                         self.running_var if not self.training or self.track_running_stats else None,
                         self.weight, self.bias, bn_training, self.momentum or 0.0, self.eps)
        return self.act(self.drop(x))


class NoNormAct(nn.Module):
    """What `norm=False` puts in place of a fused norm: the activation alone."""

    def __init__(self, num_features, act_layer=nn.ReLU, apply_act=True, **_):
        super().__init__()
        self.act = act_layer() if apply_act else nn.Identity()

    def forward(self, x):
        return self.act(x)


def _bn_act(c, norm, **kw):
    return BatchNormAct2d(c, **kw) if norm else NoNormAct(c, **kw)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor: permute, normalise, permute back."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Linear(nn.Linear):
    """A linear whose forward is re-written for scripting (computes exactly nn.Linear's)."""

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class Conv2dSame(nn.Conv2d):
    """A conv padded like TensorFlow's "same", from the input size at run time."""

    def forward(self, x):
        ih, iw = x.size()[-2:]
        pad_h = max((math.ceil(ih / self.stride[0]) - 1) * self.stride[0] + self.kernel_size[0] - ih, 0)
        pad_w = max((math.ceil(iw / self.stride[1]) - 1) * self.stride[1] + self.kernel_size[1] - iw, 0)
        if pad_h > 0 or pad_w > 0:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, (0, 0), self.dilation, self.groups)


def drop_path(x, drop_prob=0.0, training=False):
    if drop_prob == 0.0 or not training:
        return x
    keep = 1 - drop_prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask.div_(keep)


class DropPath(nn.Module):
    def __init__(self, drop_prob=0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        return drop_path(x, self.drop_prob, self.training)


def hard_sigmoid(x):
    return F.relu6(x + 3.0) / 6.0


class SqueezeExcite(nn.Module):
    def __init__(self, c, rd):
        super().__init__()
        self.conv_reduce = nn.Conv2d(c, rd, 1)
        self.act = nn.ReLU(inplace=True)
        self.conv_expand = nn.Conv2d(rd, c, 1)

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        return x * hard_sigmoid(self.conv_expand(self.act(self.conv_reduce(s))))


class InvertedResidualSE(nn.Module):
    """MobileNetV3's block: expand, depthwise, squeeze-excite, project; hard-swish; drop-path."""

    def __init__(self, c, mid, norm, drop=0.1):
        super().__init__()
        self.conv_pw = nn.Conv2d(c, mid, 1, bias=False)
        self.bn1 = _bn_act(mid, norm, act_layer=nn.Hardswish)
        self.conv_dw = nn.Conv2d(mid, mid, 3, padding=1, groups=mid, bias=False)
        self.bn2 = _bn_act(mid, norm, act_layer=nn.Hardswish)
        self.se = SqueezeExcite(mid, max(2, mid // 4))
        self.conv_pwl = nn.Conv2d(mid, c, 1, bias=False)
        self.bn3 = _bn_act(c, norm, apply_act=False)
        self.drop_path = DropPath(drop)

    def forward(self, x):
        shortcut = x
        x = self.bn2(self.conv_dw(self.bn1(self.conv_pw(x))))
        x = self.bn3(self.conv_pwl(self.se(x)))
        return self.drop_path(x) + shortcut


class MobileNetV3ish(nn.Module):
    """Stem with "same" padding, two SE inverted residuals, a 1x1 head, functional dropout on
    `self.training`, and a `Linear` subclass as classifier."""

    input_shape, num_classes = (3, 9, 9), 5

    def __init__(self, norm=True):
        super().__init__()
        self.conv_stem = Conv2dSame(3, 8, 3, stride=2, bias=False)
        self.bn1 = _bn_act(8, norm, act_layer=nn.Hardswish)
        self.blocks = nn.Sequential(InvertedResidualSE(8, 16, norm), InvertedResidualSE(8, 24, norm))
        self.conv_head = nn.Conv2d(8, 12, 1)
        self.act2 = nn.Hardswish()
        self.drop_rate = 0.2
        self.classifier = Linear(12, 5)

    def forward(self, x):
        x = self.blocks(self.bn1(self.conv_stem(x)))
        x = self.act2(self.conv_head(x.mean((2, 3), keepdim=True))).flatten(1)
        if self.drop_rate > 0.0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return self.classifier(x)


class GhostModule(nn.Module):
    """A primary conv and a cheap depthwise one, concatenated and cut to `out` channels."""

    def __init__(self, cin, out, norm, relu=True):
        super().__init__()
        self.out = out
        init = math.ceil(out / 2)
        self.primary = nn.Sequential(nn.Conv2d(cin, init, 1, bias=False),
                                     _bn_act(init, norm, apply_act=relu))
        self.cheap = nn.Sequential(nn.Conv2d(init, init, 3, padding=1, groups=init, bias=False),
                                   _bn_act(init, norm, apply_act=relu))

    def forward(self, x):
        x1 = self.primary(x)
        x2 = self.cheap(x1)
        return torch.cat([x1, x2], dim=1)[:, :self.out, :, :]


class GhostNetish(nn.Module):
    """Two ghost modules whose widths are odd, so the cut drops a channel of the cheap half."""

    input_shape, num_classes = (3, 6, 6), 4

    def __init__(self, norm=True):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.ghost1 = GhostModule(6, 11, norm)
        self.ghost2 = GhostModule(11, 7, norm, relu=False)
        self.fc = nn.Linear(7, 4)

    def forward(self, x):
        return self.fc(self.ghost2(self.ghost1(F.relu(self.stem(x)))).mean((2, 3)))


class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7 conv, channels-last LayerNorm and MLP, layer scale, drop-path."""

    def __init__(self, c, norm):
        super().__init__()
        self.conv_dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c) if norm else nn.Identity()
        self.fc1 = nn.Linear(c, 4 * c)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.full((c,), 0.5))
        self.drop_path = DropPath(0.1)

    def forward(self, x):
        shortcut = x
        x = self.conv_dw(x).permute(0, 2, 3, 1)
        x = self.fc2(self.act(self.fc1(self.norm(x))))
        x = x.mul(self.gamma).permute(0, 3, 1, 2)
        return self.drop_path(x) + shortcut


class ConvNeXtish(nn.Module):
    """Patchify stem with LayerNorm2d, a ConvNeXt block, a downsample with LayerNorm2d, and a
    head that asserts the input size."""

    input_shape, num_classes = (3, 8, 8), 3

    def __init__(self, norm=True):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 2, stride=2), LayerNorm2d(8) if norm else nn.Identity())
        self.stage1 = ConvNeXtBlock(8, norm)
        self.down = nn.Sequential(LayerNorm2d(8) if norm else nn.Identity(), nn.Conv2d(8, 12, 2, stride=2))
        self.head = nn.Linear(12, 3)

    def forward(self, x):
        assert x.shape[-1] % 4 == 0, "the input size must be a multiple of 4"
        b, _, h, w = x.shape
        x = self.down(self.stage1(self.stem(x)))
        return self.head(x.mean((2, 3)))


class GroupedNorms(nn.Module):
    """A grouped conv (RegNet/ResNeXt), and functional group and batch norms reading their
    weights by name."""

    input_shape, num_classes = (4, 6, 6), 3

    def __init__(self, norm=True):
        super().__init__()
        self.norm = norm
        self.conv1 = nn.Conv2d(4, 8, 1)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.gn_weight = nn.Parameter(torch.ones(8))
        self.gn_bias = nn.Parameter(torch.zeros(8))
        self.conv2 = nn.Conv2d(8, 10, 1)
        self.bn_weight = nn.Parameter(torch.ones(10))
        self.bn_bias = nn.Parameter(torch.zeros(10))
        self.fc = nn.Linear(10, 3)

    def forward(self, x):
        x = F.relu(self.grouped(self.conv1(x)))
        if self.norm:
            x = F.group_norm(x, 4, self.gn_weight, self.gn_bias)
        else:
            x = x * self.gn_weight.view(1, -1, 1, 1) + self.gn_bias.view(1, -1, 1, 1)
        x = self.conv2(x)
        if self.norm:
            x = F.batch_norm(x, None, None, self.bn_weight, self.bn_bias, True)
        else:
            x = x * self.bn_weight[None, :, None, None] + self.bn_bias[None, :, None, None]
        return self.fc(F.relu(x).mean((2, 3)))


class Attention(nn.Module):
    """Multi-head self-attention as the zoos write it: one qkv projection reshaped into
    heads, `scaled_dot_product_attention` with an optional mask, an output projection."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, attn_mask=None):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class ViTish(nn.Module):
    """Patch embedding, a class token and positional embedding, a pre-norm transformer block
    with layer scale, the class token's features to the head."""

    input_shape, num_classes = (3, 8, 8), 4

    def __init__(self, norm=True):
        super().__init__()
        dim = 8
        self.patch = nn.Conv2d(3, dim, 4, stride=4)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 5, dim) * 0.02)
        self.norm1 = nn.LayerNorm(dim) if norm else nn.Identity()
        self.attn = Attention(dim, 2)
        self.ls1 = nn.Parameter(torch.full((dim,), 0.1))
        self.norm2 = nn.LayerNorm(dim) if norm else nn.Identity()
        self.fc1 = nn.Linear(dim, 16)
        self.fc2 = nn.Linear(16, dim)
        self.head = nn.Linear(dim, 4)

    def forward(self, x, attn_mask=None):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = x + self.ls1 * self.attn(self.norm1(x), attn_mask)
        x = x + self.fc2(F.gelu(self.fc1(self.norm2(x))))
        return self.head(x[:, 0])


class RmsNorm(nn.Module):
    """RMS norm over the last dimension, as zoos write it: `F.rms_norm` with a weight."""

    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.normalized_shape = (dim,)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return F.rms_norm(x, self.normalized_shape, self.weight, self.eps)


class FourierPositions(nn.Module):
    """XCiT's positional encoding: Fourier features of the grid, projected to the embedding
    width by a 1x1 conv, then `repeat`ed over the batch."""

    def __init__(self, dim, hidden=4):
        super().__init__()
        self.hidden = hidden
        self.proj = nn.Conv2d(2 * hidden, dim, 1)

    def forward(self, batch: int, h: int, w: int):
        ys = torch.arange(1, h + 1, dtype=torch.float32).unsqueeze(1).expand(1, h, w) / h
        xs = torch.arange(1, w + 1, dtype=torch.float32).expand(1, h, w) / w
        feats = torch.cat([torch.sin(g * (k + 1)) for k in range(self.hidden) for g in (ys, xs)], dim=0)
        return self.proj(feats[None]).repeat(batch, 1, 1, 1)


class XCiTish(nn.Module):
    """Patch embedding plus a repeated positional encoding, RMS-normed tokens, an MLP, mean
    pooling to the head."""

    input_shape, num_classes = (3, 8, 8), 4

    def __init__(self, norm=True):
        super().__init__()
        dim = 8
        self.patch = nn.Conv2d(3, dim, 2, stride=2)
        self.pos = FourierPositions(dim)
        self.norm = RmsNorm(dim) if norm else nn.Identity()
        self.fc1 = nn.Linear(dim, 16)
        self.fc2 = nn.Linear(16, dim)
        self.head = nn.Linear(dim, 4)

    def forward(self, x):
        x = self.patch(x)
        b, _, h, w = x.shape
        x = (x + self.pos(b, h, w)).flatten(2).transpose(1, 2)
        x = x + self.fc2(F.gelu(self.fc1(self.norm(x))))
        return self.head(x.mean(1))


REPLICAS = {m.__name__: m for m in (MobileNetV3ish, GhostNetish, ConvNeXtish, GroupedNorms, ViTish, XCiTish)}


def replica(input_shape, num_classes, name: str = "MobileNetV3ish", plain: bool = False):
    """A replica by name, as a scenario names a model factory (`model.arch:
    zoo_replicas:replica`, `model.params: {name: GhostNetish}`)."""
    cls = REPLICAS[name]
    if tuple(input_shape) != cls.input_shape or num_classes != cls.num_classes:
        raise ValueError(f"{name} takes inputs {cls.input_shape} and {cls.num_classes} classes")
    return cls(norm=not plain)


def images(seed: int, name: str = "MobileNetV3ish", n: int = 480, users: int = 24):
    """Random images shaped for a replica, labelled by the quantile of their first channel's
    mean (a task a few steps can start to learn); groups = users."""
    import numpy as np

    cls = REPLICAS[name]
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (n, *cls.input_shape)).astype(np.float32)
    m = x.mean(axis=tuple(range(2, x.ndim)))[:, 0]
    y = np.digitize(m, np.quantile(m, np.linspace(0, 1, cls.num_classes + 1)[1:-1])).astype(np.int64)
    g = rng.integers(0, users, n)
    cut = int(0.8 * n)
    return x[:cut], y[:cut], x[cut:], y[cut:], g[:cut]
