"""How raysim scales with the fleet: 10^3, 10^4 and 10^5 devices, 1,000 trained per round.

For every fleet size a fresh local Ray instance (2 CPUs) runs a few rounds of the benchmark
workload (bench/workload.yaml: the quickstart's CNN, rate ladder and device mix, one local
epoch) with `min(1000, fleet)` devices selected per round, no deadline and no over-commitment.
The dataset grows with the fleet (`--samples-per-device` training samples per device on
average), so every round trains about the same amount whatever the fleet size.

Reported per fleet: the per-round wall time split into coordinator time (selection, rate
assignment, plans, aggregation, records) and training time (the device hosts' round trip), both
medians over the rounds after the first (warm-up) and before the last (evaluation); devices
trained per second; the start-up (data, fleet, partition, actors); and the peak memory of the
whole process tree (driver, Ray's own processes and every worker), sampled every 0.25 s as
the sum of RSS and, since RSS counts shared pages once per process, the sum of PSS. As the
wall time moves with whatever else runs on the machine, the CPU seconds the whole tree spends
per round are reported too. Each fleet runs in a fresh process; with `--repeats` the order of
the fleets reverses every repeat.

    .venv/bin/python bench/scale.py
    .venv/bin/python bench/scale.py --fleets 1000,10000 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402
import overhead  # noqa: E402


def measure(fleet: int, args) -> dict[str, Any]:
    k = min(args.per_round, fleet)
    samples = int(round(args.samples_per_device * fleet / 0.9))  # 10% go to the test split
    extra = [f"data.synthetic.samples={samples}", f"eval.max_samples={args.eval_samples}"] + list(args.set)
    sc = C.load_bench_scenario(k, fleet, args.rounds + 2, extra)
    mem = C.TreeMemory(interval=0.25)
    startup: dict[str, float] = {}

    def after_round(r: int) -> None:
        # Start-up (data generation, partition, actors) and round 1 make one peak; the rounds
        # after it another: what a long run holds.
        if r == 1:
            mem.sample()
            startup.update(rss=mem.peak_rss, pss=mem.peak_pss)
            mem.reset()

    with mem:
        idle_rss, idle_pss, _ = mem.sample()
        ray_s = C.start_ray(args.cpus)
        try:
            got = overhead.run_raysim(sc, after_round)
        finally:
            C.stop_ray()
    rows = [r for r in got["rounds"] if 2 <= r["round"] < sc.rounds]
    wall = C.median(r["wall_s"] for r in rows)
    trained = C.median(r["trained"] for r in rows)
    return {
        "fleet": fleet, "per_round": k, "train_samples": int(samples * 0.9), "trained_per_round": trained,
        "wall_s": wall, "coordinator_s": C.median(r["coordinator_s"] for r in rows),
        "train_s": C.median(r["train_s"] for r in rows), "period_s": C.median(r["period_s"] for r in rows),
        "devices_per_s": trained / wall, "ray_start_s": ray_s, "setup_s": got["start_s"],
        "peak_rss_gib": max(mem.peak_rss, startup["rss"]) / 2**30,
        "peak_pss_gib": max(mem.peak_pss, startup["pss"]) / 2**30,
        "startup_pss_gib": startup["pss"] / 2**30, "rounds_pss_gib": mem.peak_pss / 2**30,
        "rounds_rss_gib": mem.peak_rss / 2**30, "peak_procs": mem.peak_procs,
        "baseline_rss_gib": idle_rss / 2**30, "baseline_pss_gib": idle_pss / 2**30,
        "cpu_s": C.median(r["cpu_s"] for r in rows),
        "devices_per_cpu_s": trained / C.median(r["cpu_s"] for r in rows),
        "samples_per_round": C.median(r["samples_trained"] for r in rows),
        "steps_per_round": C.median(r["steps"] for r in rows),
        "rounds": [{k2: r[k2] for k2 in ("round", "wall_s", "coordinator_s", "train_s", "trained", "samples_trained",
                                         "steps", "period_s", "cpu_s")}
                   for r in got["rounds"]],
    }


def _run_single(fleet: int, argv: list[str]) -> dict[str, Any]:
    """One fleet in a fresh process, so that no run's memory is left in the next one's tree."""
    fd, out = tempfile.mkstemp(suffix=".json", prefix="raysim-scale-")
    os.close(fd)
    try:
        subprocess.run([sys.executable, os.path.abspath(__file__), *argv, "--single", str(fleet), "--json", out],
                       check=True)
        with open(out) as f:
            return json.load(f)
    finally:
        os.unlink(out)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fleets", default="1000,10000,100000", help="comma-separated fleet sizes")
    ap.add_argument("--devices-per-round", dest="per_round", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=2, help="measured rounds per fleet (plus warm-up and last)")
    ap.add_argument("--repeats", type=int, default=1, help="runs per fleet (medians are over runs)")
    ap.add_argument("--samples-per-device", type=float, default=20.0)
    ap.add_argument("--eval-samples", type=int, default=2000, help="test samples of the last round's evaluation")
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], help="extra scenario override KEY=VALUE")
    ap.add_argument("--json", default=None)
    ap.add_argument("--single", type=int, default=None, help=argparse.SUPPRESS)  # one fleet, in this process
    args = ap.parse_args(argv)
    if args.single is not None:
        C.write_json("scale-single", measure(args.single, args), args.json)
        return 0
    info = C.machine_info()
    fleets = [int(f) for f in args.fleets.split(",")]
    runs_of: dict[int, list] = {f: [] for f in fleets}
    for rep in range(args.repeats):
        # The order reverses between repeats, so that a spell of load elsewhere on the machine
        # does not always fall on the same fleet size.
        for fleet in fleets if rep % 2 == 0 else fleets[::-1]:
            t = time.perf_counter()
            r = _run_single(fleet, argv if argv is not None else sys.argv[1:])
            runs_of[fleet].append(r)
            print(f"  fleet {fleet:,} run {rep + 1}/{args.repeats}: {r['wall_s']:.2f} s/round "
                  f"(coordinator {r['coordinator_s']:.2f} s, training {r['train_s']:.2f} s), "
                  f"{r['devices_per_s']:.0f} devices/s, {r['cpu_s']:.2f} CPU s/round, peak RSS {r['peak_rss_gib']:.2f} GiB / "
                  f"PSS {r['peak_pss_gib']:.2f} GiB (start-up {r['startup_pss_gib']:.2f}, rounds "
                  f"{r['rounds_pss_gib']:.2f}), {time.perf_counter() - t:.0f} s in all", flush=True)
    results = []
    for fleet in fleets:
        runs = runs_of[fleet]
        med = {key: C.median(r[key] for r in runs) for key in runs[0] if isinstance(runs[0][key], (int, float))}
        med["runs"] = runs
        results.append(med)
    C.print_table([{"fleet": int(r["fleet"]), "per round": int(r["per_round"]), "trained": r["trained_per_round"],
                    "samples": r["samples_per_round"], "steps": r["steps_per_round"],
                    "wall s/round": r["wall_s"], "coordinator s": r["coordinator_s"], "training s": r["train_s"],
                    "devices/s": r["devices_per_s"], "CPU s/round": r["cpu_s"],
                    "devices/CPU s": r["devices_per_cpu_s"], "setup s": r["setup_s"], "Ray start s": r["ray_start_s"],
                    "peak RSS GiB": r["peak_rss_gib"], "peak PSS GiB": r["peak_pss_gib"],
                    "start-up PSS GiB": r["startup_pss_gib"], "rounds PSS GiB": r["rounds_pss_gib"],
                    "procs": int(r["peak_procs"])} for r in results],
                  title="raysim at scale (2 CPUs; per-round medians; memory of the whole process tree)")
    path = C.write_json("scale", {"machine": info, "args": vars(args), "results": results}, args.json)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
