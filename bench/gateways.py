"""What rounds through gateways cost against flat rounds of the same devices.

Two coordinators on one local Ray instance (2 device hosts each; 4 logical CPUs so that both
sets of hosts exist at once, though only one set works at a time, on the 2 cores): a flat one (K
devices a round) and a hierarchical one (G gateways, K / G devices a gateway round, one gateway
round a cloud round: the same number of devices trained a round). Hosts pre-aggregate one
partial sum per gateway, so the extra cost is G partial sums a host instead of one, and the
coordinator's G small rounds instead of one. Rounds of the two alternate (flat, hierarchical,
flat, ...) so that each pair shares the machine's load; reported: the median ratio of wall
seconds per device trained, and the coordinator's own seconds a round.

    .venv/bin/python bench/gateways.py                     # K = 100, G = 10 and 50
    .venv/bin/python bench/gateways.py --per-round 200 --gateways 20 --rounds 8
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


def measure(per_round: int, gateways: int, devices: int, rounds: int) -> dict:
    import ray  # noqa: PLC0415

    flat_sc = C.load_bench_scenario(per_round, devices, rounds + 1, ["runtime.hosts=2", "runtime.num_cpus=4"])
    hier_sc = C.load_bench_scenario(per_round, devices, rounds + 1, [
        "runtime.hosts=2", "runtime.num_cpus=4", f"topology.gateways={gateways}", "topology.gateway_rounds=1",
        f"topology.per_gateway={per_round // gateways}"])
    flat, hier = coordinator(flat_sc), coordinator(hier_sc)
    try:
        ratios, f_coord, h_coord, trained = [], [], [], []
        for r in range(rounds):
            pair = {}
            for name, c in ((("flat", flat), ("hier", hier)) if r % 2 == 0 else (("hier", hier), ("flat", flat))):
                pair[name] = ray.get(c.step.remote()).record
            f, h = pair["flat"], pair["hier"]
            if r == 0:
                continue   # warm-up: modules built, first plans
            ratios.append((h.wall_s / max(h.trained, 1)) / (f.wall_s / max(f.trained, 1)))
            f_coord.append(f.coordinator_s)
            h_coord.append(h.coordinator_s)
            trained.append((f.trained, h.trained))
    finally:
        ray.kill(flat)
        ray.kill(hier)
    lo, hi = C.spread(ratios)
    return {"K": per_round, "G": gateways, "devices": devices, "pairs": len(ratios),
            "ratio_per_device": C.median(ratios), "ratio_lo": lo, "ratio_hi": hi,
            "flat_coordinator_s": C.median(f_coord), "hier_coordinator_s": C.median(h_coord),
            "trained_flat_hier": trained[len(trained) // 2]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-round", type=int, default=100)
    ap.add_argument("--gateways", type=str, default="10,50", help="comma-separated gateway counts")
    ap.add_argument("--devices", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=7, help="measured pairs + 1 warm-up")
    args = ap.parse_args()
    C.start_ray(4)
    try:
        rows = [measure(args.per_round, int(g), args.devices, args.rounds) for g in args.gateways.split(",")]
    finally:
        C.stop_ray()
    C.print_table(rows, title="hierarchical / flat wall seconds per device trained (median over pairs)")
    C.write_json("gateways", {"machine": C.machine_info(), "rows": rows})


if __name__ == "__main__":
    main()
