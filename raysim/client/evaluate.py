"""Evaluation of a model, and loading weights into one (pure torch; knows nothing of Ray).

Local training is `raysim.client.algorithms` (client algorithms) and `raysim.client.trainer`.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn
from torch.nn import functional as F


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of `model` on (x, y)."""
    model.eval()
    correct = 0
    loss = 0.0
    for i in range(0, int(x.shape[0]), batch_size):
        out = model(x[i:i + batch_size])
        yy = y[i:i + batch_size]
        loss += float(F.cross_entropy(out, yy, reduction="sum"))
        correct += int((out.argmax(1) == yy).sum())
    n = max(int(x.shape[0]), 1)
    return correct / n, loss / n


def load_params(model: nn.Module, params: Mapping[str, torch.Tensor]) -> None:
    """Copy `params` into the module's parameters (shapes must match)."""
    with torch.no_grad():
        named = list(model.named_parameters())
        torch._foreach_copy_([p for _, p in named], [params[k] for k, _ in named])
