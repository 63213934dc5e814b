"""CUDA process set-up shared by device hosts and the evaluating coordinator (pure torch, no Ray).

    >>> cuda_host(0.2)      # this process may use a fifth of GPU 0's memory, deterministically
"""

from __future__ import annotations

import torch

# What the coordinator reserves for evaluation on a GPU node: small, so that hosts at the
# default share (0.2) still fit four to a GPU beside it.
EVAL_GPU_SHARE = 0.05


def cuda_host(share: float) -> None:
    """Set up this process as a GPU host: at most `share` of the GPU's memory (an allocation
    past it raises torch's out-of-memory error, which is recorded as `oom`), and deterministic
    convolution algorithms (runs stay bit-identical)."""
    torch.cuda.set_per_process_memory_fraction(min(1.0, float(share)), 0)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def release(*modules: torch.nn.Module) -> None:
    """After an out-of-memory error: drop gradients and cached blocks, so the next device starts clean."""
    for m in modules:
        for p in m.parameters():
            p.grad = None
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
