"""Plain torch models written the way a user would, for the slicing tests. Each takes `norm`:
False gives the same architecture without normalisation (whose statistics depend on the
width), so a submodel can be compared exactly with the masked global model."""

import torch
from torch import nn
from torch.nn import functional as F
from zoo_replicas import REPLICAS


def _bn2(c, norm):
    return nn.BatchNorm2d(c) if norm else nn.Identity()


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride, norm):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = _bn2(cout, norm)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = _bn2(cout, norm)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _bn2(cout, norm))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


class SmallResNet(nn.Module):
    """Stem, two residual stages (the second with a 1x1 projection), adaptive pooling."""

    input_shape, num_classes = (3, 8, 8), 5

    def __init__(self, norm=True):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), _bn2(8, norm), nn.ReLU())
        self.layer1 = BasicBlock(8, 8, 1, norm)
        self.layer2 = BasicBlock(8, 12, 2, norm)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class InvertedResidual(nn.Module):
    def __init__(self, c, expand, norm):
        super().__init__()
        self.expand = nn.Conv2d(c, expand, 1, bias=False)
        self.bn1 = _bn2(expand, norm)
        self.depthwise = nn.Conv2d(expand, expand, 3, padding=1, groups=expand, bias=False)
        self.bn2 = _bn2(expand, norm)
        self.project = nn.Conv2d(expand, c, 1, bias=False)
        self.bn3 = _bn2(c, norm)

    def forward(self, x):
        y = F.relu6(self.bn1(self.expand(x)))
        y = F.relu6(self.bn2(self.depthwise(y)))
        return x + self.bn3(self.project(y))


class MobileNetish(nn.Module):
    """MobileNetV2-style: inverted residual blocks with depthwise convolutions."""

    input_shape, num_classes = (3, 8, 8), 4

    def __init__(self, norm=True):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.blocks = nn.Sequential(InvertedResidual(6, 12, norm), InvertedResidual(6, 18, norm))
        self.head = nn.Linear(6, 4)

    def forward(self, x):
        x = self.blocks(F.relu6(self.stem(x)))
        return self.head(x.mean(dim=(2, 3)))


class CNN1d(nn.Module):
    """A 1-D CNN over sensor windows: Conv1d + BatchNorm1d, a residual, max pooling."""

    input_shape, num_classes = (4, 16), 3

    def __init__(self, norm=True):
        super().__init__()
        bn = (lambda c: nn.BatchNorm1d(c)) if norm else (lambda c: nn.Identity())
        self.conv1 = nn.Conv1d(4, 10, 5, padding=2)
        self.bn1 = bn(10)
        self.conv2 = nn.Conv1d(10, 10, 3, padding=1)
        self.bn2 = bn(10)
        self.pool = nn.MaxPool1d(2)
        self.conv3 = nn.Conv1d(10, 14, 3, padding=1)
        self.fc = nn.Linear(14, 3)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.pool(F.relu(h + self.bn2(self.conv2(h))))
        h = F.relu(self.conv3(h))
        return self.fc(h.mean(-1))


class ConcatMLP(nn.Module):
    """Two branches side by side, concatenated with the raw input, a LayerNorm, a head."""

    input_shape, num_classes = (1, 3, 3), 3

    def __init__(self, norm=True):
        super().__init__()
        self.left = nn.Linear(9, 7)
        self.right = nn.Sequential(nn.Linear(9, 5), nn.Tanh(), nn.Linear(5, 6))
        self.norm = nn.LayerNorm(9 + 7 + 6) if norm else nn.Identity()
        self.hidden = nn.Linear(22, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        x = x.flatten(1)
        h = torch.cat([x, F.relu(self.left(x)), self.right(x)], dim=1)
        return self.out(F.relu(self.hidden(self.norm(h))))


class FlattenCNN(nn.Module):
    """LeNet-style: conv stages, then a flatten with a literal width into a dense head."""

    input_shape, num_classes = (1, 8, 8), 6

    def __init__(self, norm=True):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.norm1 = nn.GroupNorm(3, 6) if norm else nn.Identity()
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(8 * 2 * 2, 10)
        self.drop = nn.Dropout(0.2)
        self.fc2 = nn.Linear(10, 6)

    def forward(self, x):
        x = self.pool(F.relu(self.norm1(self.conv1(x))))
        x = self.pool(F.relu(self.conv2(x)))
        x = x.view(-1, 8 * 2 * 2)
        return self.fc2(self.drop(F.relu(self.fc1(x))))


class DenseConcat(nn.Module):
    """DenseNet-style: convolution features concatenated on channels, a BatchNorm and a grouped
    conv over the concatenation, global pooling."""

    input_shape, num_classes = (2, 6, 6), 3

    def __init__(self, norm=True):
        super().__init__()
        self.a = nn.Conv2d(2, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(10) if norm else nn.Identity()
        self.mix = nn.Conv2d(10, 8, 1)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        a = F.relu(self.a(x))
        h = torch.cat([a, F.relu(self.b(a))], 1)
        h = F.relu(self.grouped(F.relu(self.mix(self.bn(h)))))
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))


class GatedSplit(nn.Module):
    """A conv whose outputs are chunked into a value and its gate (GLU) and also added whole to
    a skip conv's (cut the same way), then a linear whose outputs are split with literal sizes
    into two branches that meet again."""

    input_shape, num_classes = (2, 6, 6), 3

    def __init__(self, norm=True):
        super().__init__()
        self.conv = nn.Conv2d(2, 12, 3, padding=1)
        self.skip = nn.Conv2d(2, 12, 1)
        self.bn = _bn2(6, norm)
        self.fc = nn.Linear(18, 10)
        self.left = nn.Linear(4, 5)
        self.right = nn.Linear(6, 5)
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        h = self.conv(x)
        v, g = h.chunk(2, dim=1)
        gated = self.bn(v * torch.sigmoid(g)).mean((2, 3))
        r = F.relu(h + self.skip(x)).mean((2, 3))
        a, b = torch.split(F.relu(self.fc(torch.cat([gated, r], 1))), [4, 6], dim=1)
        return self.head(F.relu(self.left(a) + self.right(b)))


class TokenMLP(nn.Module):
    """Token ids (features are floats: cast and clamped in forward) embedded, a LayerNorm,
    averaged over the sequence, a hidden linear."""

    input_shape, num_classes = (7,), 4

    def __init__(self, norm=True):
        super().__init__()
        self.emb = nn.Embedding(11, 8)
        self.norm = nn.LayerNorm(8) if norm else nn.Identity()
        self.fc = nn.Linear(8, 6)
        self.out = nn.Linear(6, 4)

    def forward(self, x):
        h = self.norm(self.emb(x.abs().long().clamp(max=10))).mean(1)
        return self.out(F.relu(self.fc(h)))


MODELS = {m.__name__: m for m in (SmallResNet, MobileNetish, CNN1d, ConcatMLP, FlattenCNN, DenseConcat,
                                  GatedSplit, TokenMLP)}
MODELS.update(REPLICAS)  # the constructs of public zoos' edge models (tests/zoo_replicas.py)
