"""Static batch norm: recompute normalisation statistics before evaluating (HeteroFL).

`static-bn` trains BatchNorm without running statistics: running means would mix the
statistics of many widths and channel subsets, and no device's statistics describe the
global model. Evaluating with *the test batch's* own statistics, the module's default, lets
the test set leak into the model and makes accuracy depend on the batch size. So before an
evaluation the statistics are recomputed: a fixed, seeded sample of training data goes
through the model with only the norm layers in training mode (scalers off, exactly as at
evaluation), each norm layer accumulating a cumulative average of the batch means and
variances, which it then uses in evaluation mode.

A plain BatchNorm layer (with running statistics, as in a user's model trained whole) gets
the same treatment: its running statistics are device-local buffers that the server never
aggregates, so the global model's own are recomputed the same way before it is evaluated.

    x = calibration_sample(dataset.x_train, seed)
    recompute_bn_stats(model, x)
    accuracy, loss = evaluate(model, x_test, y_test)
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from raysim.seeding import rng

CALIBRATION_SAMPLES = 1024
CALIBRATION_BATCH = 256


def static_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The model's batch-norm layers that keep no running statistics."""
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and not m.track_running_stats]


def calibration_sample(x_train: np.ndarray, seed: int, n: int = CALIBRATION_SAMPLES) -> torch.Tensor:
    """A fixed, seeded sample of `n` training inputs (all of them when there are fewer)."""
    total = len(x_train)
    pick = np.sort(rng(seed, "bn-calibration").choice(total, size=min(n, total), replace=False))
    return torch.from_numpy(np.array(x_train[pick], copy=True))


def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every batch-norm layer of the model, static or with running statistics."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recompute_bn_stats(model: nn.Module, x: torch.Tensor, batch_size: int = CALIBRATION_BATCH) -> int:
    """Give every batch-norm layer statistics computed on `x`; returns how many layers.

    The model is left in evaluation mode; a model without batch norm is untouched.
    """
    norms = batch_norms(model)
    if not norms:
        return 0
    momentum = {}
    for m in norms:
        # Tracking on with a cumulative average (momentum None): after the pass each layer
        # holds the mean over batches of the batch statistics.
        if m.track_running_stats:
            momentum[m] = m.momentum
            m.reset_running_stats()
        else:
            m.track_running_stats = True
            m.register_buffer("running_mean", torch.zeros(m.num_features, device=x.device))
            m.register_buffer("running_var", torch.ones(m.num_features, device=x.device))
            m.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long, device=x.device))
        m.momentum = None
    model.eval()
    for m in norms:
        m.train()
    for i in range(0, int(x.shape[0]), batch_size):
        model(x[i:i + batch_size])
    model.eval()
    for m, mom in momentum.items():
        m.momentum = mom
    return len(norms)
