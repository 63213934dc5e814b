"""What rounds through gateways cost against flat rounds of the same devices.

Two coordinators on one local Ray instance (2 device hosts each; 4 logical CPUs so that both
sets of hosts exist at once, though only one set works at a time, on the 2 cores): a flat one (K
devices a round) and a hierarchical one (G gateways, K / G devices a gateway round, one gateway
round a cloud round: the same number of devices trained a round). Hosts pre-aggregate one
partial sum per gateway, so the extra cost is G partial sums a host instead of one, and the
coordinator's G small rounds instead of one. Rounds of the two alternate (flat, hierarchical,
flat, ...) so that each pair shares the machine's load; reported: the median ratio of wall
seconds per device trained, and the coordinator's own seconds a round.

With `--cloud fedasync` the hierarchical coordinator's cloud is asynchronous: each of its steps
takes one gateway's model (K / G devices), so G of its steps are paired with one flat round.

    .venv/bin/python bench/gateways.py                     # K = 100, G = 10 and 50
    .venv/bin/python bench/gateways.py --per-round 200 --gateways 20 --rounds 8
    .venv/bin/python bench/gateways.py --cloud fedasync --gateways 10
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402


def coordinator(sc):
    from raysim.runtime.coordinator import start_coordinator  # noqa: PLC0415
    from raysim.runtime.runner import engine  # noqa: PLC0415
    from raysim.scenario.build import prepare  # noqa: PLC0415
    from raysim.scenario.resolve import components  # noqa: PLC0415

    comps = components(sc)
    return start_coordinator(engine(sc, comps), prepare(sc, comps))


def measure(per_round: int, gateways: int, devices: int, rounds: int, cloud: str = "sync") -> dict:
    import ray  # noqa: PLC0415

    steps = gateways if cloud != "sync" else 1   # hierarchical steps a pair: one flat round's devices
    flat_sc = C.load_bench_scenario(per_round, devices, rounds + 1, ["runtime.hosts=2", "runtime.num_cpus=4"])
    hier_sc = C.load_bench_scenario(per_round, devices, (rounds + 1) * steps, [
        "runtime.hosts=2", "runtime.num_cpus=4", f"topology.gateways={gateways}", "topology.gateway_rounds=1",
        f"topology.per_gateway={per_round // gateways}", f"server.mode={cloud}"])
    flat, hier = coordinator(flat_sc), coordinator(hier_sc)
    try:
        ratios, f_coord, h_coord, trained = [], [], [], []
        for r in range(rounds):
            pair = {}
            for name, c in ((("flat", flat), ("hier", hier)) if r % 2 == 0 else (("hier", hier), ("flat", flat))):
                recs = [ray.get(c.step.remote()).record for _ in range(steps if name == "hier" else 1)]
                pair[name] = (sum(x.wall_s for x in recs), sum(x.trained for x in recs),
                              sum(x.coordinator_s for x in recs))
            (fw, ft, fc), (hw, ht, hc) = pair["flat"], pair["hier"]
            if r == 0:
                continue   # warm-up: modules built, first plans
            ratios.append((hw / max(ht, 1)) / (fw / max(ft, 1)))
            f_coord.append(fc)
            h_coord.append(hc)
            trained.append((ft, ht))
    finally:
        ray.kill(flat)
        ray.kill(hier)
    lo, hi = C.spread(ratios)
    return {"K": per_round, "G": gateways, "cloud": cloud, "devices": devices, "pairs": len(ratios),
            "ratio_per_device": C.median(ratios), "ratio_lo": lo, "ratio_hi": hi,
            "flat_coordinator_s": C.median(f_coord), "hier_coordinator_s": C.median(h_coord),
            "trained_flat_hier": trained[len(trained) // 2]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-round", type=int, default=100)
    ap.add_argument("--gateways", type=str, default="10,50", help="comma-separated gateway counts")
    ap.add_argument("--devices", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=7, help="measured pairs + 1 warm-up")
    ap.add_argument("--cloud", choices=("sync", "fedasync"), default="sync",
                    help="the hierarchical run's cloud: synchronous rounds, or asynchronous")
    args = ap.parse_args()
    C.start_ray(4)
    try:
        rows = [measure(args.per_round, int(g), args.devices, args.rounds, args.cloud)
                for g in args.gateways.split(",")]
    finally:
        C.stop_ray()
    C.print_table(rows, title="hierarchical / flat wall seconds per device trained (median over pairs)")
    C.write_json("gateways", {"machine": C.machine_info(), "rows": rows})


if __name__ == "__main__":
    main()
