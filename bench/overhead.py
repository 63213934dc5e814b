"""What raysim costs on top of the training itself.

The same rounds of local training (same devices, rates, submodels, data shards, shuffles,
epochs and batch size) are done by

(a) the compute floor: a plain loop in a `multiprocessing` pool of worker processes (one per
    core, one torch thread each, warmed up before timing). Per round the parent sends each
    worker the global weights and its share of the devices, balanced by their real cost
    (steps and training FLOPs, as raysim balances its hosts); a worker extracts each device's submodel,
    trains it with plain SGD, and adds the delta into a float32 sum in global coordinates;
    the parent adds the workers' sums and moves the global model by the per-element mean.
    That is the least any system must do for a round of submodel FedAvg: no Ray, no
    fleet, no cost model, no records, no checks.
(b) raysim: its coordinator actor and device-host actors on a local Ray instance with the same
    number of CPUs, started as `raysim.runtime.runner` starts them, timed by each round's own
    `wall_s` (from selection to the updated global model, records included).

The two sides run round r back to back, alternating which goes first, so that the ratio of a
pair is taken under the same background load; the reported ratio is the median over all pairs
(round 1, the warm-up, is left out). Also reported: the pairs' ratio of CPU seconds (the
floor's parent and workers against raysim's whole process tree: driver, Ray's own daemons,
coordinator and hosts), which other load on the machine barely moves; and the check that
both sides end with the same global model (up to raysim's fixed-point rounding).
Process and Ray start-up are reported on their own, not in the rounds.

    .venv/bin/python bench/overhead.py                       # 100 and 1,000 devices per round
    .venv/bin/python bench/overhead.py --devices-per-round 100 --rounds 10 --repeats 3
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402
from _plain import plain_sgd  # noqa: E402

# ------------------------------------------------------------------------------ the workload


@dataclass
class RoundWork:
    """One round's training work as raysim's coordinator hands it out."""

    round: int
    plans: dict  # plan id -> SubmodelPlan
    tasks: list  # TrainTask


class _Recorder:
    """A backend that records each round's work and trains nothing (the selection, rates and
    plans of the static strategy do not depend on the weights)."""

    def __init__(self) -> None:
        self.rounds: list[RoundWork] = []

    def train(self, round_idx, params, plans, tasks):
        self.rounds.append(RoundWork(round_idx, dict(plans), list(tasks)))
        return []


def record_work(sc, setup) -> list[RoundWork]:
    """The work of every round of the scenario, exactly as the coordinator will hand it out."""
    from raysim.engine.loops import Parts, round_loop  # noqa: PLC0415
    from raysim.scenario.build import round_config, trainer  # noqa: PLC0415
    from raysim.scenario.resolve import components  # noqa: PLC0415

    if sc.compression.strategy not in ("static", "full", "rolling"):
        raise SystemExit("overhead: needs a strategy whose plans do not depend on the weights")
    rec = _Recorder()
    comps = components(sc)
    parts = Parts(strategy=comps.strategy, assigner=comps.assigner, server=comps.server)
    sim = round_loop(setup=setup, parts=parts, backend=rec, cfg=round_config(sc), trainer=trainer(sc, comps))
    for _ in range(sc.rounds):
        sim.step()
    return rec.rounds


# ------------------------------------------------------------------------------ (a) the floor
_W: dict[str, Any] = {}


def _floor_init(sc, x: np.ndarray, y: np.ndarray, shards: list[np.ndarray], num_classes: int) -> None:
    """Worker start-up: one torch thread, the dataset, the model family (raysim's own)."""
    from raysim.scenario.build import model_spec  # noqa: PLC0415
    from raysim.scenario.resolve import components  # noqa: PLC0415

    torch.set_num_threads(1)
    spec = model_spec(components(sc), tuple(x.shape[1:]), num_classes)
    tc = sc.train
    train_cfg = dict(epochs=tc.epochs, batch_size=tc.batch_size, lr=tc.lr,
                     by_samples=sc.server.weighting == "samples")
    seed = sc.seed
    _W.update(spec=spec, x=torch.from_numpy(x), y=torch.from_numpy(y), shards=shards, cfg=train_cfg,
              seed=seed, modules={}, shapes=spec.global_shapes())


def _floor_share(job: tuple) -> tuple[dict, dict, float]:
    """Train one worker's share of a round; return its float32 delta sum and element counts."""
    from raysim.client.evaluate import load_params  # noqa: PLC0415
    from raysim.seeding import torch_generator  # noqa: PLC0415
    from raysim.submodel import extract, plan_indices  # noqa: PLC0415

    t0 = time.perf_counter()
    round_idx, params_np, plans, tasks = job
    spec, cfg, shapes = _W["spec"], _W["cfg"], _W["shapes"]
    params = {k: torch.from_numpy(v) for k, v in params_np.items()}
    acc = {k: torch.zeros(s) for k, s in shapes.items()}
    cnt = {k: torch.zeros(s) for k, s in shapes.items()}
    index = {pid: plan_indices(spec, p, shapes) for pid, p in plans.items()}
    for device_id, pid in tasks:
        plan, ix = plans[pid], index[pid]
        key = (tuple(sorted(plan.sizes().items())), plan.rate)
        model = _W["modules"].get(key)
        if model is None:
            model = _W["modules"][key] = spec.build(plan.sizes(), plan.rate)
        sub = extract(params, ix)
        load_params(model, sub)
        rows = torch.from_numpy(_W["shards"][device_id])
        w = float(len(rows)) if cfg["by_samples"] else 1.0
        plain_sgd(model, _W["x"][rows], _W["y"][rows], cfg["epochs"], cfg["batch_size"], cfg["lr"],
             torch_generator(_W["seed"], "train", round_idx, device_id))
        with torch.no_grad():
            for k, p in model.named_parameters():
                acc[k][ix[k]] += (p - sub[k]) * w if w != 1.0 else p - sub[k]
                cnt[k][ix[k]] += w
    return ({k: v.numpy() for k, v in acc.items()}, {k: v.numpy() for k, v in cnt.items()},
            time.perf_counter() - t0)


def _lpt(costs: list[float], bins: int) -> list[list[int]]:
    """Longest-processing-time-first split of items (by cost) into `bins` lists."""
    load = [0.0] * bins
    out: list[list[int]] = [[] for _ in range(bins)]
    for i in sorted(range(len(costs)), key=lambda i: -costs[i]):
        b = min(range(bins), key=lambda j: load[j])
        out[b].append(i)
        load[b] += costs[i]
    return out


class Floor:
    """The compute floor: a warmed `multiprocessing` pool training the recorded rounds."""

    def __init__(self, sc, setup, workers: int) -> None:
        self.sc, self.setup, self.workers = sc, setup, workers
        t = time.perf_counter()
        ctx = mp.get_context("spawn")  # never fork a process that runs Ray
        tc = sc.train
        if tc.momentum or tc.weight_decay:
            raise SystemExit("overhead: the floor does plain SGD (momentum 0, weight decay 0)")
        ds = setup.dataset
        self.pool = ctx.Pool(workers, initializer=_floor_init,
                             initargs=(sc, ds.x_train, ds.y_train, setup.shards, ds.num_classes))
        # Wait until every worker has started and imported torch (not timed as rounds).
        self.pool.map(_noop, range(workers * 4), chunksize=1)
        self.start_s = time.perf_counter() - t
        torch.manual_seed(sc.seed)  # the same initial global model as raysim's
        model = setup.spec.build()
        self.params = {k: p.detach().clone() for k, p in model.named_parameters()}

    def round(self, work: RoundWork) -> dict[str, Any]:
        from raysim.engine.setup import host_work  # noqa: PLC0415

        pids = [os.getpid()] + [p.pid for p in self.pool._pool]  # parent and pool workers
        c0 = C.cpu_seconds(pids)
        t0 = time.perf_counter()
        costs = self.setup.costs
        n = [len(self.setup.shards[t.device_id]) for t in work.tasks]
        bs, ep = self.sc.train.batch_size, self.sc.train.epochs
        cost = [host_work(-(-n_i // bs) * ep, bs, costs[t.rate].flops_per_sample) for n_i, t in zip(n, work.tasks)]
        pnp = {k: v.numpy() for k, v in self.params.items()}
        jobs = [(work.round, pnp, work.plans, [(work.tasks[i].device_id, work.tasks[i].plan_id) for i in share])
                for share in _lpt(cost, self.workers) if share]
        out = self.pool.map(_floor_share, jobs, chunksize=1)
        acc, cnt = out[0][0], out[0][1]
        for a, c, _ in out[1:]:
            for k in acc:
                acc[k] += a[k]
                cnt[k] += c[k]
        with torch.no_grad():
            for k, p in self.params.items():
                c = torch.from_numpy(cnt[k])
                held = c > 0
                p[held] += torch.from_numpy(acc[k])[held] / c[held]
        wall = time.perf_counter() - t0
        return {"round": work.round, "wall_s": wall, "cpu_s": C.cpu_seconds(pids) - c0, "trained": len(work.tasks),
                "samples": int(sum(n)), "worker_s": [o[2] for o in out]}

    def close(self) -> None:
        self.pool.close()
        self.pool.join()


def _noop(_: int) -> int:
    time.sleep(0.05)
    return os.getpid()


# ------------------------------------------------------------------------------ (b) raysim
def run_raysim(sc, after_round: Optional[Callable[[int], None]] = None) -> dict[str, Any]:
    """One run through raysim's own driver loop on the already started Ray instance."""
    from raysim.rundir.reader import latest_checkpoint, load_checkpoint  # noqa: PLC0415
    from raysim.runtime.runner import run  # noqa: PLC0415

    rows: list[dict] = []
    stamps: list[float] = []
    cpu: list[float] = []

    def on_round(out) -> None:
        rows.append({**out.round_row, "steps": int(sum(out.clients["steps"]))})
        stamps.append(time.perf_counter())
        cpu.append(C.tree_cpu_seconds())  # driver, Ray's processes, coordinator and hosts
        if after_round:
            after_round(int(out.round_row["round"]))

    tmp = tempfile.mkdtemp(prefix="raysim-bench-")
    try:
        t0 = time.perf_counter()
        res = run(sc, out_root=tmp, progress=False, on_round=on_round)
        params = load_checkpoint(latest_checkpoint(res.path))["params"]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    periods = [float("nan")] + [b - a for a, b in zip(stamps, stamps[1:])]
    cpus = [float("nan")] + [b - a for a, b in zip(cpu, cpu[1:])]
    for r, p, c in zip(rows, periods, cpus):
        r["period_s"] = p
        r["cpu_s"] = c
    return {"start_s": stamps[0] - t0 - rows[0]["wall_s"], "rounds": rows, "params": params}


# ------------------------------------------------------------------------------ paired rounds
class RaysimRounds:
    """raysim's coordinator actor and its device hosts, stepped one round at a time."""

    def __init__(self, sc, setup) -> None:
        import ray  # noqa: PLC0415

        from raysim.runtime.coordinator import start_coordinator  # noqa: PLC0415
        from raysim.runtime.runner import engine  # noqa: PLC0415
        from raysim.scenario.resolve import components  # noqa: PLC0415

        t = time.perf_counter()
        # As the driver (raysim.runtime.runner) starts it: next to the driver, one host per CPU.
        self.coord = start_coordinator(engine(sc, components(sc)), setup)
        ray.get(self.coord.info.remote())
        self.start_s = time.perf_counter() - t

    def round(self, not_ours: list[int]) -> dict[str, Any]:
        import ray  # noqa: PLC0415

        ours = [p for p in C.process_tree(os.getpid()) if p not in not_ours]
        c0 = C.cpu_seconds(ours)
        t0 = time.perf_counter()
        row = ray.get(self.coord.step.remote()).round_row
        row["driver_s"] = time.perf_counter() - t0  # + shipping the round's records to the driver
        row["cpu_s"] = C.cpu_seconds(ours) - c0
        return row

    def params(self) -> dict:
        import ray  # noqa: PLC0415

        return ray.get(self.coord.state_dict.remote())["params"]

    def close(self) -> None:
        import ray  # noqa: PLC0415

        ray.kill(self.coord)  # its device hosts go with it


def paired_repeat(sc, setup, work: list[RoundWork], workers: int, rounds: int, rep: int) -> dict[str, Any]:
    """A fresh floor pool and fresh raysim actors run rounds 1..rounds+1 in back-to-back pairs
    (the order alternates with the round); round 1 is the warm-up and is not returned."""
    floor = Floor(sc, setup, workers)
    ray_side = RaysimRounds(sc, setup)
    pairs = []
    try:
        for w in work[:rounds + 1]:
            first_floor = (w.round + rep) % 2 == 0
            if first_floor:
                f = floor.round(w)
            r = ray_side.round([p.pid for p in floor.pool._pool])
            if not first_floor:
                f = floor.round(w)
            if (f["trained"], f["samples"] * sc.train.epochs) != (r["trained"], r["samples_trained"]):
                raise SystemExit(f"overhead: round {w.round} differs: floor {f['trained']} devices "
                                 f"{f['samples']} samples, raysim {r['trained']} / {r['samples_trained']}")
            if w.round == 1:
                continue  # warm-up
            pairs.append({"round": w.round, "first": "floor" if first_floor else "raysim",
                          "floor_s": f["wall_s"], "raysim_s": r["wall_s"], "ratio": r["wall_s"] / f["wall_s"],
                          "driver_s": r["driver_s"], "coordinator_s": r["coordinator_s"], "train_s": r["train_s"],
                          "floor_cpu_s": f["cpu_s"], "raysim_cpu_s": r["cpu_s"],
                          "cpu_ratio": r["cpu_s"] / f["cpu_s"], "worker_s": f["worker_s"]})
        rp = ray_side.params()
        diff = max(float((floor.params[n] - rp[n]).abs().max()) for n in rp)
    finally:
        ray_side.close()
        floor.close()
    return {"pairs": pairs, "max_param_diff": diff, "raysim_params": rp, "floor_params": floor.params,
            "floor": {"start_s": floor.start_s}, "raysim": {"start_s": ray_side.start_s}}


def measure(k: int, args) -> dict[str, Any]:
    """Paired rounds: round r by the floor and by raysim back to back, order alternating."""
    from raysim.scenario.build import prepare  # noqa: PLC0415

    fleet = max(args.fleet, k)
    # Two rounds more than are run: the scenario evaluates only in its last round, never reached.
    sc = C.load_bench_scenario(k, fleet, args.rounds + 3, args.set)
    setup = prepare(sc)
    work = record_work(sc, setup)
    reps = []
    for rep in range(args.repeats):
        got = paired_repeat(sc, setup, work, args.workers, args.rounds, rep)
        pairs, diff, floor, ray_side = got["pairs"], got["max_param_diff"], got["floor"], got["raysim"]
        row = {"repeat": rep + 1, "floor_start_s": floor["start_s"], "raysim_start_s": ray_side["start_s"],
               "max_param_diff": diff, "pairs": pairs}
        for key in ("floor_s", "raysim_s", "ratio", "cpu_ratio", "driver_s"):
            row[key] = C.median(p[key] for p in pairs)
        print(f"  K={k} repeat {rep + 1}/{args.repeats}: floor {row['floor_s']:.3f} s  raysim {row['raysim_s']:.3f} s"
              f"  ratio {row['ratio']:.3f} (pairs {', '.join(format(p['ratio'], '.2f') for p in pairs)})  CPU ratio "
              f"{row['cpu_ratio']:.3f}  max |param diff| {diff:.1e}", flush=True)
        reps.append(row)
    pairs = [p for r in reps for p in r["pairs"]]
    devs = work[1].tasks
    return {
        "devices_per_round": k, "fleet": fleet, "trained_per_round": len(devs),
        "samples_per_round": int(sum(len(setup.shards[t.device_id]) for t in devs)),
        "rates": {str(r): sum(1 for t in devs if t.rate == r) for r in sorted({t.rate for t in devs}, reverse=True)},
        "pairs": len(pairs),
        "floor_s": C.median(p["floor_s"] for p in pairs), "raysim_s": C.median(p["raysim_s"] for p in pairs),
        "ratio": C.median(p["ratio"] for p in pairs),
        "ratio_quartiles": _quartiles([p["ratio"] for p in pairs]),
        "ratio_by_repeat": [r["ratio"] for r in reps],
        "driver_ratio": C.median(p["driver_s"] / p["floor_s"] for p in pairs),
        "cpu_ratio": C.median(p["cpu_ratio"] for p in pairs),
        "floor_cpu_s": C.median(p["floor_cpu_s"] for p in pairs),
        "raysim_cpu_s": C.median(p["raysim_cpu_s"] for p in pairs),
        "coordinator_s": C.median(p["coordinator_s"] for p in pairs),
        "train_s": C.median(p["train_s"] for p in pairs),
        "floor_start_s": C.median(r["floor_start_s"] for r in reps),
        "raysim_start_s": C.median(r["raysim_start_s"] for r in reps),
        "max_param_diff": max(r["max_param_diff"] for r in reps),
        "repeats": reps,
    }


def _quartiles(xs: list[float]) -> tuple[float, float]:
    q = np.quantile(np.array(xs), [0.25, 0.75])
    return float(q[0]), float(q[1])


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices-per-round", default="100,1000", help="comma-separated K values")
    ap.add_argument("--rounds", type=int, default=5, help="measured round pairs per repeat (after a warm-up pair)")
    ap.add_argument("--repeats", type=int, default=2, help="fresh pool and actors per K, each --rounds pairs")
    ap.add_argument("--fleet", type=int, default=1000, help="fleet size (at least K)")
    ap.add_argument("--workers", type=int, default=2, help="floor worker processes = Ray CPUs")
    ap.add_argument("--set", action="append", default=[], help="extra scenario override KEY=VALUE")
    ap.add_argument("--json", default=None, help="output path (default bench/out/overhead-<stamp>.json)")
    args = ap.parse_args(argv)
    ks = [int(k) for k in args.devices_per_round.split(",")]
    info = C.machine_info()
    ray_start_s = C.start_ray(args.workers)
    results = []
    try:
        for k in ks:
            print(f"K = {k} devices per round, {args.repeats} repeats x {args.rounds} measured rounds", flush=True)
            results.append(measure(k, args))
    finally:
        C.stop_ray()
    C.print_table([{"devices/round": r["devices_per_round"], "trained": r["trained_per_round"],
                    "samples": r["samples_per_round"], "pairs": r["pairs"], "floor s/round": r["floor_s"],
                    "raysim s/round": r["raysim_s"], "ratio b/a": r["ratio"],
                    "q1": r["ratio_quartiles"][0], "q3": r["ratio_quartiles"][1],
                    "driver ratio": r["driver_ratio"], "CPU ratio": r["cpu_ratio"],
                    "coord s": r["coordinator_s"]} for r in results],
                  title="raysim vs compute floor: wall time per round (medians over back-to-back round pairs; "
                        "ratio b/a = median of the pairs' raysim/floor)")
    print(f"\nstart-up (not in rounds): Ray {ray_start_s:.1f} s; per run: raysim setup "
          f"{C.median(r['raysim_start_s'] for r in results):.1f} s (data, coordinator and host actors), "
          f"floor pool {C.median(r['floor_start_s'] for r in results):.1f} s")
    path = C.write_json("overhead", {"machine": info, "args": vars(args), "ray_start_s": ray_start_s,
                                     "results": results}, args.json)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
