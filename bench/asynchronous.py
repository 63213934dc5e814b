"""Is an asynchronous run bound by its coordinator? FedBuff, 1,000 server steps, C = 100.

The quickstart's fleet, model and data with `server.mode: fedbuff` run through the Ray runtime
as `raysim run` runs them (coordinator actor, one device host per CPU). Every server step
records its wall time, split into the time spent waiting on the device hosts' training
(`train_s`, one call per batch of steps trained together) and the coordinator's own work
(`coordinator_s`: the event queue, dispatch and rate assignment, plans, merging the hosts'
sums, the staleness-weighted server step, records). The figure of merit is the
coordinator's share of the run's wall time; the last step (the only evaluation) is left out.

    .venv/bin/python bench/asynchronous.py                      # FedBuff, C=100, K=10, 1,000 steps
    .venv/bin/python bench/asynchronous.py --steps 200 --repeats 3 --mode fedasync
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402


def one_run(mode: str, steps: int, concurrency: int, buffer: int, hosts: int) -> dict:
    from raysim.rundir.reader import load_run  # noqa: PLC0415
    from raysim.runtime.runner import run  # noqa: PLC0415
    from raysim.scenario.schema import load_scenario  # noqa: PLC0415

    sc = load_scenario(C.ROOT / "scenarios" / "quickstart.yaml", [
        f"server.mode={mode}", f"server.concurrency={concurrency}", f"server.buffer={buffer}", f"rounds={steps}",
        f"eval.every={steps}", "eval.per_rate=false", "output.plots=false", f"output.checkpoint_every={steps}",
        f"runtime.hosts={hosts}", "runtime.num_cpus=2"])
    with tempfile.TemporaryDirectory() as out:
        res = run(sc, out_root=out, progress=False)
        r = load_run(res.path).rounds.iloc[:-1]  # the last step evaluates: left out
    wall, coord, train = (float(r[c].sum()) for c in ("wall_s", "coordinator_s", "train_s"))
    return {"steps": len(r), "wall_s": wall, "coordinator_s": coord, "train_s": train,
            "coordinator_share": coord / wall, "coordinator_ms_per_step": 1e3 * float(r["coordinator_s"].median()),
            "train_ms_per_step": 1e3 * train / len(r), "steps_per_s": len(r) / wall,
            "sim_time_s": float(r["sim_time"].iloc[-1])}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", default="fedbuff", choices=["fedbuff", "fedasync"])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=100)
    ap.add_argument("--buffer", type=int, default=10)
    ap.add_argument("--hosts", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    a = ap.parse_args(argv)
    C.start_ray(2)
    try:
        runs = [one_run(a.mode, a.steps, a.concurrency, a.buffer, a.hosts) for _ in range(a.repeats)]
    finally:
        C.stop_ray()
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print(f"{a.mode}: C={a.concurrency} K={a.buffer if a.mode == 'fedbuff' else 1}, {med['steps']:.0f} server steps, "
          f"{a.hosts} hosts on 2 CPUs, median of {a.repeats} run(s)")
    print(f"  wall per step          {1e3 * med['wall_s'] / med['steps']:8.1f} ms   ({med['steps_per_s']:.1f} steps/s)")
    print(f"  training (hosts) / step {med['train_ms_per_step']:8.1f} ms")
    print(f"  coordinator / step     {med['coordinator_ms_per_step']:8.1f} ms   (median step)")
    print(f"  coordinator share      {100 * med['coordinator_share']:8.1f} % of wall time")
    print(f"  simulated time         {med['sim_time_s']:8.1f} s")
    C.write_json(f"asynchronous-{a.mode}", {"args": vars(a), "runs": runs, "median": med})


if __name__ == "__main__":
    main()
