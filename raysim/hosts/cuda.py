"""CUDA process set-up shared by device hosts and the evaluating coordinator (pure torch, no Ray).

A process's GPU memory cap is the sum of the shares its owners claim: one device host per
process on a Ray cluster, but the in-process engine holds every host and the evaluator in
one process, and each must keep its own share. A claim ends with its owner.

    cuda_host(0.2, owner=host)   # this process may use a fifth more of GPU 0's memory
"""

from __future__ import annotations

import threading
import weakref

import torch

# What the coordinator reserves for evaluation on a GPU node: small, so that hosts at the
# default share (0.2) still fit four to a GPU beside it.
EVAL_GPU_SHARE = 0.05

_lock = threading.Lock()
_claimed: list[float] = [0.0]   # the shares of this process's live owners, summed


def cuda_host(share: float, owner: object) -> float:
    """Claim `share` of GPU 0's memory for `owner`, for as long as it lives, and set up
    deterministic fp32 numerics. Returns the process's cap (a fraction of the GPU).

    An allocation past the cap raises torch's out-of-memory error, which a host records as
    `oom` for the device it was training. Convolutions use deterministic algorithms and no
    TF32 (its 10-bit mantissa would make GPU results drift from the CPU's by about 1e-3):
    runs stay bit-identical and comparable across machines.
    """
    with _lock:
        _claimed[0] += float(share)
        cap = _apply()
    weakref.finalize(owner, _unclaim, float(share))
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    return cap


def claimed() -> float:
    """The share of GPU 0 this process's live owners hold together."""
    return _claimed[0]


def _unclaim(share: float) -> None:
    with _lock:
        _claimed[0] = max(0.0, _claimed[0] - share)
        if _claimed[0] > 0:
            _apply()


def _apply() -> float:
    cap = min(1.0, _claimed[0])
    torch.cuda.set_per_process_memory_fraction(cap, 0)
    return cap


def release(*modules: torch.nn.Module) -> None:
    """After an out-of-memory error: drop gradients and cached blocks, so the next device starts clean."""
    for m in modules:
        for p in m.parameters():
            p.grad = None
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
