"""What per-device state (error-feedback residuals) costs for a large fleet, and its bound.

Every device of a fleet of `--devices` trains once and leaves a residual of its submodel's
size (`--params` float32 values plus its plan's channel indices, as `raysim.hosts.state.pack`
makes them); the store (`raysim.engine.device_state.DeviceStates`) keeps at most `--budget-mb`
in RAM and spills the rest to disk. Then every device trains again (each state is read back)
in a shuffled order. Reported: bytes per state, RAM held against the budget, bytes on disk,
spills, the process's peak RSS growth, and the put/get time per state.

    .venv/bin/python bench/device_state.py                                   # 10^5 devices, HAR 1/8 (406 params)
    .venv/bin/python bench/device_state.py --params 2002 --budget-mb 256     # the quickstart CNN at 1/8
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import print_table, write_json  # noqa: E402

from raysim.engine.device_state import DeviceStates, state_nbytes  # noqa: E402


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=100_000)
    ap.add_argument("--params", type=int, default=406, help="parameters of a device's submodel")
    ap.add_argument("--budget-mb", type=float, default=64.0)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    spill = Path(tempfile.mkdtemp(prefix="raysim-bench-state-"))
    rss0 = peak_rss_mb()
    store = DeviceStates(budget_bytes=int(a.budget_mb * 2**20), spill_dir=spill)
    rng = np.random.default_rng(0)
    proto = {"rate": 0.125, "keep": {"c1": np.arange(4), "c2": np.arange(8)},
             "residual": {"w": np.zeros(a.params, np.float32)}}
    per_state = state_nbytes(proto)
    t0 = time.perf_counter()
    for d in range(a.devices):
        store.put(d, {"rate": 0.125, "keep": proto["keep"], "residual": {"w": rng.standard_normal(a.params,
                                                                                             dtype=np.float32)}})
    put_s = time.perf_counter() - t0
    disk = sum(f.stat().st_size for f in spill.glob("*.npz"))
    ram_after_put, spills_put = store.ram_bytes, store.spills
    order = rng.permutation(a.devices)
    t1 = time.perf_counter()
    for d in order:
        assert store.get(int(d)) is not None
    get_s = time.perf_counter() - t1
    row = {"devices": a.devices, "params": a.params, "bytes/state": per_state,
           "all states MB": round(per_state * a.devices / 2**20, 1), "budget MB": a.budget_mb,
           "RAM MB": round(ram_after_put / 2**20, 1), "disk MB": round(disk / 2**20, 1), "spills": spills_put,
           "peak RSS growth MB": round(peak_rss_mb() - rss0, 1),
           "put us/state": round(1e6 * put_s / a.devices, 1), "get us/state": round(1e6 * get_s / a.devices, 1)}
    print_table([row], title="per-device state: memory bound and cost")
    write_json("device-state", {"result": row}, a.json)
    shutil.rmtree(spill, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
