"""Batched against per-device training on one device host: per rate and per whole round.

For a fleet, the rounds' real training work (the devices a round selects, their rates,
submodel plans, shards, shuffles and budgets, as the coordinator hands them out) is trained
by one `HostCore` (one torch thread, no Ray: what batching changes is the host's own time)
three ways, back to back on the same tasks, the order rotating from round to round:

- `loop`: `train.batched: off`, one device after another (the baseline);
- `batched`: `on`, the devices of a plan together (`raysim.client.batched`);
- `auto`: per rate whichever the host's start-up measurement chose.

Per rate, the tasks of that rate alone are timed the same way. Reported: medians over the
rounds of the ratio to the loop measured in the same round (below 1 is faster), and that the
batched global update matches the loop's. Fleets: the quickstart's, and one of mostly
microcontrollers. With a CUDA GPU (or `--device cuda`) the same runs on the GPU, plus one
PreResNet-18 round on CIFAR-10-shaped synthetic data (32x32x3).

    .venv/bin/python bench/batched.py                  # both fleets, 6 rounds each
    .venv/bin/python bench/batched.py --rounds 10 --fleets mcu
    .venv/bin/python bench/batched.py --fleets mcu --rounds 2 --preresnet --per-round 20   # its CPU time
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

QUICKSTART = C.ROOT / "scenarios" / "quickstart.yaml"
FLEETS = {
    "quickstart": [],
    # mostly microcontrollers: the fleets where per-step overhead dominates most
    "mcu": ["fleet.mix={mcu: 0.6, mcu-psram: 0.25, rpi-zero: 0.1, rpi4: 0.05}"],
}
PRERESNET = ["model.arch=preresnet18", "model.widths=[64,128,256,512]", "data.synthetic.image_size=32",
             "data.synthetic.channels=3",
             "data.synthetic.samples=6000", "model.rates=[1.0,0.5,0.25,0.125,0.0625]",
             # microcontrollers cannot hold even 1/16 of it: the classes that can
             "fleet.mix={rpi4: 0.4, rpi-zero: 0.4, phone-low: 0.2}"]
MODES = ("loop", "batched", "auto")


def _work(sim, r):
    """Round r's plans and tasks as the coordinator hands them out."""
    from raysim.engine.device_round import Slot, TaskGroup  # noqa: PLC0415

    rounds = sim.mode.rounds
    return rounds.plan_tasks(rounds.draft(r, Slot(sim.clock, sim.cfg.per_round)), TaskGroup(sim.params))


def _hosts(sim, device: str) -> dict[str, Any]:
    """One host per mode over the same data (auto measures its rates at start, as a pool does)."""
    from dataclasses import replace  # noqa: PLC0415

    from raysim.hosts.host import HostCore  # noqa: PLC0415

    core = sim.backend.cores[0]
    base = replace(core.trainer, device=device)
    out = {}
    for mode, flag in zip(MODES, ("off", "on", "auto")):
        out[mode] = HostCore(core.spec, replace(base, batched=flag), sim.setup.dataset.x_train,
                             sim.setup.dataset.y_train, core.flat, core.offsets, 0, core.ids)
    out["auto"].choose_batching(sim.setup.rates)
    return out


def _timed(host, r: int, params, plans, tasks) -> tuple[float, Any]:
    if host.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    res = host.train(r, params, plans, tasks)
    if host.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, res


def bench_fleet(name: str, extra: list[str], rounds: int, device: str, per_round: int) -> dict[str, Any]:
    from raysim.inprocess import local_simulation  # noqa: PLC0415
    from raysim.records import OK  # noqa: PLC0415
    from raysim.scenario.schema import load_scenario  # noqa: PLC0415

    sc = load_scenario(QUICKSTART, [f"selection.per_round={per_round}", "selection.overcommit=0",
                                    "deadline.seconds=null", "train.batched=off", "runtime.device=cpu", *extra])
    sim = local_simulation(sc)
    hosts = _hosts(sim, device)
    params = {k: v.clone() for k, v in sim.params.items()}
    whole = {m: [] for m in MODES}
    per_rate: dict[float, dict[str, list[float]]] = {}
    counts: dict[float, int] = {}
    exact = []
    for r in range(1, rounds + 2):   # round 1 warms every shape up and is left out
        plans, tasks = _work(sim, r)
        order = MODES[r % 3:] + MODES[:r % 3]
        got = {m: _timed(hosts[m], r, params, plans, tasks) for m in order}
        if r == 1:
            continue
        for m in MODES:
            whole[m].append(got[m][0] / got["loop"][0])
        ok = [sum(rep.status == OK for rep in got[m][1].reports) for m in ("loop", "batched")]
        la, ba = (sum(int(np.abs(h.partial.sums[k]).sum()) for k in h.partial.sums) for h in
                  (got["loop"][1], got["batched"][1]))
        exact.append(ok[0] == ok[1] and abs(la - ba) <= 1e-3 * max(la, 1))
        for rate in sorted({t.rate for t in tasks}):
            sub = [t for t in tasks if t.rate == rate]
            counts[rate] = counts.get(rate, 0) + len(sub)
            t = {m: _timed(hosts[m], r, params, plans, sub)[0] for m in order}
            per_rate.setdefault(rate, {m: [] for m in MODES})
            for m in MODES:
                per_rate[rate][m].append(t[m] / t["loop"])
    rows = [{"fleet": name, "rate": f"{rate:g}", "devices/round": round(counts[rate] / rounds, 1),
             "batched:loop": C.median(v["batched"]), "auto:loop": C.median(v["auto"]),
             "auto picks": "batched" if hosts["auto"].choices.get(rate) else "loop"}
            for rate, v in sorted(per_rate.items(), reverse=True)]
    rows.append({"fleet": name, "rate": "round", "devices/round": round(sum(counts.values()) / rounds, 1),
                 "batched:loop": C.median(whole["batched"]), "auto:loop": C.median(whole["auto"]), "auto picks": ""})
    return {"rows": rows, "updates_match": all(exact), "device": device}


def bench_preresnet(device: str, per_round: int, rounds: int = 3) -> dict[str, Any]:
    """PreResNet-18 rounds (CIFAR-10-shaped synthetic data): seconds of the loop, batched and
    auto (medians over `rounds` after a warm-up round), and the ratios."""
    from raysim.inprocess import local_simulation  # noqa: PLC0415
    from raysim.scenario.schema import load_scenario  # noqa: PLC0415

    sc = load_scenario(QUICKSTART, [f"selection.per_round={per_round}", "selection.overcommit=0",
                                    "deadline.seconds=null", "fleet.devices=200", "train.epochs=1",
                                    "runtime.device=cpu", *PRERESNET])
    sim = local_simulation(sc)
    hosts = _hosts(sim, device)
    params = {k: v.clone() for k, v in sim.params.items()}
    times: dict[str, list[float]] = {"loop": [], "batched": [], "auto": []}
    devices = []
    for r in range(1, rounds + 2):   # round 1 warms up and is left out
        plans, tasks = _work(sim, r)
        order = MODES[r % 3:] + MODES[:r % 3]
        got = {m: _timed(hosts[m], r, params, plans, tasks)[0] for m in order}
        if r > 1:
            devices.append(len(tasks))
            for m in MODES:
                times[m].append(got[m])
    return {"devices/round": C.median(devices), "loop_s": C.median(times["loop"]),
            "batched_s": C.median(times["batched"]), "auto_s": C.median(times["auto"]),
            "batched:loop": C.median([b / a for a, b in zip(times["loop"], times["batched"])]),
            "auto:loop": C.median([b / a for a, b in zip(times["loop"], times["auto"])]),
            "auto picks": ",".join(f"{k:g}:{'b' if v else 'l'}" for k, v in sorted(hosts["auto"].choices.items()))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--per-round", type=int, default=50)
    ap.add_argument("--fleets", default=",".join(FLEETS))
    ap.add_argument("--device", choices=["cpu", "cuda", "both"], default="both",
                    help="both: the CPU, and the GPU where there is one")
    ap.add_argument("--preresnet", action="store_true",
                    help="time the PreResNet-18 round on the CPU too (a few minutes; always on a GPU)")
    ap.add_argument("--pre-rounds", type=int, default=3, help="timed PreResNet-18 rounds (after a warm-up)")
    args = ap.parse_args()
    unknown = sorted(set(filter(None, args.fleets.split(","))) - set(FLEETS))
    if unknown:
        sys.exit(f"bench/batched.py: --fleets: no fleet {', '.join(unknown)} (there are: {', '.join(FLEETS)})")
    torch.set_num_threads(1)
    devices = ["cpu", "cuda"] if args.device == "both" else [args.device]
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench/batched.py: --device cuda, but torch.cuda.is_available() is false here")
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    result: dict[str, Any] = {"machine": C.machine_info(), "rounds": args.rounds, "per_round": args.per_round}
    for dev in devices:
        rows = []
        for name in filter(None, args.fleets.split(",")):
            res = bench_fleet(name, FLEETS[name], args.rounds, dev, args.per_round)
            rows += res["rows"]
            result[f"{dev}/{name}"] = res
        if rows:
            C.print_table(rows, title=f"{dev}: time of batched (and auto) training as a ratio to the per-device "
                                      f"loop (medians over {args.rounds} rounds; < 1 is faster)")
        if dev == "cuda" and rows:
            # The GPU target: batched at least 10x faster than the loop at rates up to 1/4.
            low = [r for r in rows if r["rate"] != "round" and float(r["rate"]) <= 0.25 and r["devices/round"] >= 1]
            for r in low:
                print(f"cuda {r['fleet']} rate {r['rate']}: batched {1 / r['batched:loop']:.1f}x faster than the loop "
                      f"(target 10x: {'met' if r['batched:loop'] <= 0.1 else 'not met'})")
        if dev == "cuda" or args.preresnet:
            result[f"{dev}/preresnet18"] = pre = bench_preresnet(dev, args.per_round, args.pre_rounds)
            C.print_table([pre], title=f"{dev}: one PreResNet-18 round, CIFAR-10-shaped synthetic data")
    matched = all(v["updates_match"] for k, v in result.items() if isinstance(v, dict) and "updates_match" in v)
    print(f"batched updates match the loop's (same devices, fixed-point sums within 0.1%): {matched}")
    C.write_json("batched", result)


if __name__ == "__main__":
    main()
