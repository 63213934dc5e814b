"""Remap-and-aggregate throughput: GB/s of submodel updates folded into the global model.

A device host folds every device's submodel delta into its partial sum: quantise to fixed
point, scatter-add into the global coordinates the plan names, add the element weights
(`raysim.server.aggregate.fold`), and adds the element weights once per plan. This measures that
for a PreResNet-18 (11.2M parameters) and 1,000
updates spread over the rate ladder, one thread (as in a device host), against

- memcpy: a plain copy of the same bytes (every update's tensors copied into a buffer), and
- float32 remap-add: `acc[index] += delta` in float32 (what a non-deterministic aggregator
  would do), to separate the cost of remapping from the cost of exact fixed-point sums.

Throughput counts the bytes of the updates (float32 submodel deltas). The coordinator's share
(merging the hosts' partial sums, the per-element mean and the server step) is timed once
per round and reported on its own line.

    .venv/bin/python bench/aggregate.py
    .venv/bin/python bench/aggregate.py --updates 200 --strategies static,random --repeats 5
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402


def model_spec():
    """PreResNet-18 (raysim's model zoo) for CIFAR-10-sized inputs."""
    from raysim.models.preresnet import preresnet18_spec  # noqa: PLC0415

    return preresnet18_spec((3, 32, 32), 10, [64, 128, 256, 512], "group")


def make_updates(spec, strategy: str, rates: list[float], n: int, pool: int, seed: int):
    """n updates cycling over the rates: (rate, index, delta). Deltas are drawn once per
    (rate, slot) and reused (at 11M parameters no update stays in any cache anyway)."""
    from raysim.scenario import registry  # noqa: PLC0415
    from raysim.submodel import plan_indices  # noqa: PLC0415

    shapes = spec.global_shapes()
    strat = registry.instantiate("compression.strategy", registry.resolve("compression.strategy", strategy), {})
    params = {k: torch.zeros(s) for k, s in shapes.items()}
    gen = torch.Generator().manual_seed(seed)
    cache: dict[tuple, Any] = {}   # indices per plan
    deltas: dict[tuple, Any] = {}  # deltas per (rate, slot)
    plans_s = 0.0
    out = []
    for i in range(n):
        rate = rates[i % len(rates)]
        t = time.perf_counter()
        key = (rate, i) if strat.per_device else (rate, -1)
        if key not in cache:
            plan = strat.plan(spec, rate, 1, i if strat.per_device else -1, params, seed)
            cache[key] = plan_indices(spec, plan, shapes)
        index = cache[key]
        plans_s += time.perf_counter() - t
        slot = (rate, i // len(rates) % pool)
        if slot not in deltas:
            deltas[slot] = {k: torch.randn(params[k][index[k]].shape, generator=gen) * 1e-3 for k in shapes}
        delta = deltas[slot]
        if strat.per_device:
            cache.pop(key)
        out.append((rate, index, delta))
    return out, plans_s


def nbytes(delta: dict[str, torch.Tensor]) -> int:
    return sum(d.numel() * d.element_size() for d in delta.values())


def run_memcpy(updates, shapes) -> float:
    dst = {k: torch.empty(s).view(-1) for k, s in shapes.items()}
    t = time.perf_counter()
    for _, _, delta in updates:
        for k, d in delta.items():
            dst[k][:d.numel()].copy_(d.view(-1))
    return time.perf_counter() - t


def run_float_add(updates, shapes) -> float:
    acc = {k: torch.zeros(s) for k, s in shapes.items()}
    t = time.perf_counter()
    for _, index, delta in updates:
        for k, d in delta.items():
            acc[k][index[k]] += d
    return time.perf_counter() - t


def run_fold(updates, shapes) -> tuple[float, Any]:
    """As a device host folds: deltas one by one, element weights once per distinct plan."""
    from raysim.server.aggregate import PartialSum, add_weights, fold  # noqa: PLC0415

    acc = PartialSum.zeros(shapes)
    t = time.perf_counter()
    plan_weight: dict[int, tuple[Any, int]] = {}
    for _, index, delta in updates:
        fold(acc, delta, index, 1, 0, count=False)
        w = plan_weight.get(id(index), (index, 0))
        plan_weight[id(index)] = (index, w[1] + 1)
    for index, w in plan_weight.values():
        add_weights(acc, index, w)
    return time.perf_counter() - t, acc


def run_coordinator(acc, shapes, hosts: int) -> float:
    """Merging `hosts` partial sums, the per-element mean and a FedAvg server step."""
    from raysim.server.aggregate import PartialSum, mean_delta  # noqa: PLC0415
    from raysim.server.optimizers import ServerOptimizer  # noqa: PLC0415

    params = {k: torch.zeros(s) for k, s in shapes.items()}
    t = time.perf_counter()
    total = PartialSum.zeros(shapes)
    for _ in range(hosts):
        total.merge(acc)
    delta, held = mean_delta(total)
    ServerOptimizer("fedavg").step(params, delta, held)
    return time.perf_counter() - t


VARIANTS = ("memcpy", "float32 remap-add", "raysim fold")


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--updates", type=int, default=1000)
    ap.add_argument("--rates", default="1,0.5,0.25,0.125", help="rates the updates cycle over")
    ap.add_argument("--strategies", default="static,random", help="plans: static (slices), random (index sets)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--pool", type=int, default=2, help="distinct random deltas per rate")
    ap.add_argument("--hosts", type=int, default=2, help="partial sums the coordinator merges")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # a device host runs one torch thread
    info = C.machine_info()
    spec = model_spec()
    shapes = spec.global_shapes()
    n_params = sum(int(torch.Size(s).numel()) for s in shapes.values())
    rates = [float(r) for r in args.rates.split(",")]
    rows, detail = [], []
    for strategy in args.strategies.split(","):
        updates, plans_s = make_updates(spec, strategy, rates, args.updates, args.pool, 0)
        total = sum(nbytes(d) for _, _, d in updates)
        times: dict[str, list[float]] = {v: [] for v in VARIANTS}
        coord: list[float] = []
        for rep in range(args.repeats):
            order = VARIANTS[rep % 3:] + VARIANTS[:rep % 3]
            for v in order:
                if v == "memcpy":
                    times[v].append(run_memcpy(updates, shapes))
                elif v == "float32 remap-add":
                    times[v].append(run_float_add(updates, shapes))
                else:
                    s, acc = run_fold(updates, shapes)
                    times[v].append(s)
                    coord.append(run_coordinator(acc, shapes, args.hosts))
                    del acc
            print(f"  {strategy} repeat {rep + 1}/{args.repeats}: "
                  + "  ".join(f"{v} {times[v][-1]:.2f} s" for v in VARIANTS), flush=True)
        base = C.median(times["memcpy"])
        for v in VARIANTS:
            med = C.median(times[v])
            rows.append({"strategy": strategy, "variant": v, "updates": args.updates, "GB": total / 1e9,
                         "seconds": med, "GB/s": total / med / 1e9, "x memcpy time": med / base,
                         "per update ms": med / args.updates * 1e3})
        detail.append({"strategy": strategy, "update_bytes": total, "plans_and_indices_s": plans_s,
                       "coordinator_s": C.median(coord), "times": times})
    C.print_table(rows, title=f"remap-and-aggregate, PreResNet-18 ({n_params / 1e6:.2f}M parameters), "
                              f"rates {rates}, 1 thread (median of {args.repeats})")
    for d in detail:
        print(f"{d['strategy']}: coordinator per round (merge {args.hosts} partial sums, mean, server step) "
              f"{d['coordinator_s']:.2f} s; building plans and indices {d['plans_and_indices_s']:.2f} s")
    path = C.write_json("aggregate", {"machine": info, "args": vars(args), "params": n_params, "rows": rows,
                                      "detail": detail}, args.json)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
