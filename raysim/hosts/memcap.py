"""A real memory cap for one simulated device: an address-space limit around its training.

Training runs under an address-space limit (`RLIMIT_AS`) of
`current address space + AS_SCALE * device memory + AS_SLACK`. An allocation past it fails
inside torch (`RuntimeError: ... can't allocate memory`) or Python (`MemoryError`); `is_oom`
tells such a failure from a bug.

How the memory cap maps to the simulated cap. RLIMIT_AS counts virtual address space, which
for a Ray worker holding torch is ~9 GB, so the limit is set relative to the address space in
use when training starts, after three steps that make that figure track live memory:
(1) a warm-up forward/backward at the task's shapes before the limit, so one-off costs
(oneDNN's JIT-compiled kernels, ~1 MiB per new convolution shape, and torch's lazy
initialisation) are paid unlimited, like loading the program; (2) glibc set, from the actor's
start (`MALLOC_ENV`), to serve every block of 64 KiB or more with its own mmap, returned to the
system when freed, and to keep one malloc arena (otherwise freed memory, and a thread's 64 MiB
arena reservation, would be reused without the address space growing); (3) `malloc_trim`
before the limit is measured. Measured on the default CNN with one torch thread, the extra
address space one local training then needs is raysim's predicted training memory plus at
most ~0.6 MiB (batch 20: 2.95 MiB at rate 1 for a predicted 2.50 MiB, <= 1.1 MiB at rates
1/4 and 1/8; batch 50: 4.98 MiB at rate 1 for 4.99 MiB). Hence AS_SCALE = 1.25 (the cost
model is a lower bound: transient buffers are not counted) and AS_SLACK = 1 MiB: a device
trains what the cost model says fits it, and an allocation larger than 1.25x its cap + 1 MiB
fails. Below about 1 MiB the cap is only as sharp as AS_SLACK. Linux (glibc) only; elsewhere
no cap is set.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import resource
import threading
from contextlib import contextmanager
from typing import Iterator, Optional

AS_SCALE = 1.25          # real bytes of address space per simulated byte of device memory
AS_SLACK = 1 << 20       # plus this much: allocator rounding and the training loop's own objects
MMAP_THRESHOLD = 64 << 10

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
# The same settings from the process's start (glibc reads them at its first malloc): a thread
# that got its own arena before `tame_allocator` ran would serve allocations from that arena's
# 64 MiB reservation, which the address space does not see grow.
MALLOC_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD),
              "MALLOC_TRIM_THRESHOLD_": str(MMAP_THRESHOLD)}


def _libc() -> Optional[ctypes.CDLL]:
    name = ctypes.util.find_library("c")
    try:
        lib = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return lib if lib is not None and hasattr(lib, "mallopt") else None


_LIBC = _libc()
_CAP_LOCK = threading.Lock()


def address_space_bytes() -> Optional[int]:
    """This process's virtual address space (VmSize), or None where /proc is not available."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def tame_allocator() -> bool:
    """Make the address space track live memory (see the module docstring); True if it could."""
    if _LIBC is None:
        return False
    ok = _LIBC.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    ok &= _LIBC.mallopt(_M_TRIM_THRESHOLD, MMAP_THRESHOLD) == 1
    # No new malloc arenas: a fresh arena reserves 64 MiB of address space at once.
    ok &= _LIBC.mallopt(_M_ARENA_MAX, 1) == 1
    return bool(ok)


def trim(collect: bool = False) -> None:
    """Return freed heap memory to the system (after a garbage collection when `collect`)."""
    if collect:
        gc.collect()
    if _LIBC is not None and hasattr(_LIBC, "malloc_trim"):
        _LIBC.malloc_trim(0)


def cap_bytes(memory: float) -> int:
    """Address space a device with `memory` simulated bytes may add while it trains."""
    return int(AS_SCALE * float(memory)) + AS_SLACK


@contextmanager
def memory_cap(extra: int) -> Iterator[Optional[int]]:
    """Within the block, the process may grow its address space by at most `extra` bytes.

    Yields the limit set (None where no cap can be set). The soft limit alone is lowered and
    restored after, so the process keeps the right to lift it.
    """
    base = address_space_bytes()
    if base is None:
        yield None
        return
    with _CAP_LOCK:  # one cap at a time: nested caps would restore each other's limits
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = base + int(extra)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
        try:
            yield limit
        finally:
            resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def is_oom(err: BaseException) -> bool:
    """Is this exception an allocation that failed (as opposed to a bug)?"""
    if isinstance(err, MemoryError):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and any(s in text for s in ("allocate", "bad_alloc", "out of memory"))


@contextmanager
def no_cap() -> Iterator[None]:
    """The same shape as `memory_cap`, capping nothing (where no cap can be set)."""
    yield None
