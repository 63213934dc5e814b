"""raysim against Flower's Ray-based simulation engine on the same FedAvg workload.

Workload: the quickstart's data and CNN, every device capable of the full model (a fleet of
Raspberry Pi 4-class devices, `compression.strategy=full`), no deadline, no over-commitment,
FedAvg weighted by samples. raysim picks the devices of every round; the Flower run trains the
same devices (same shards, initial model, shuffles and SGD steps, see bench/flower_app.py),
and so does the compute floor of bench/overhead.py. All three use the same number of CPUs
(2 by default: Ray's `num_cpus`, Flower's Ray `num_cpus` with 1 CPU per client, 2 pool workers).

A repeat is one Flower run (a fresh process and Ray instance, timed per round between the calls
of Flower's server-side `evaluate_fn`) and one block of raysim rounds paired back to back with
the floor's (as in bench/overhead.py; raysim timed by each round's `wall_s`), the two blocks
alternating which goes first. Round 1 (warm-up) is left out everywhere; the ratios are the
medians over repeats of ratios taken within a repeat.

Flower is installed on first use into bench/.venv-flower (pinned below; never a dependency of
raysim), with the CPU build of torch this project uses.

    .venv/bin/python bench/vs_flower.py
    .venv/bin/python bench/vs_flower.py --devices-per-round 50 --rounds 5 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402
import overhead  # noqa: E402

FLWR = "flwr[simulation]==1.41.0"  # 1.42.0 needs a certifi newer than the registry here serves
TORCH = "torch==2.13.0"  # the CPU wheel this project uses; any other version pulls a CUDA build
FLOWER_VENV = C.ROOT / "bench" / ".venv-flower"


def flower_python(install: bool = True) -> Path:
    """The Flower virtualenv's python, created and filled on first use."""
    py = FLOWER_VENV / "bin" / "python"
    ok = py.exists() and subprocess.run([str(py), "-c", "import flwr, ray, torch, yaml, pydantic"],
                                        capture_output=True).returncode == 0
    if not ok:
        if not install:
            raise SystemExit(f"vs_flower: no Flower environment at {FLOWER_VENV} (run without --no-install)")
        print(f"installing {FLWR} and {TORCH} into {FLOWER_VENV} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(FLOWER_VENV)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "--quiet", FLWR, TORCH, "pyyaml", "pydantic>=2"],
                       check=True)
    return py


def flower_versions(py: Path) -> dict[str, str]:
    out = subprocess.run([str(py), "-c", "import flwr, ray, torch, json; print(json.dumps({'flwr': "
                          "flwr.__version__ if hasattr(flwr, '__version__') else '', 'ray': ray.__version__, "
                          "'torch': torch.__version__}))"], capture_output=True, text=True)
    try:
        v = json.loads(out.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {}
    if not v.get("flwr"):
        pv = subprocess.run([str(py), "-m", "pip", "show", "flwr"], capture_output=True, text=True).stdout
        v["flwr"] = next((ln.split(":", 1)[1].strip() for ln in pv.splitlines() if ln.startswith("Version")), "")
    return v


def export_work(sc, setup, work: list, path: Path, num_cpus: int, n_rounds: int) -> None:
    """Everything the Flower side needs, as plain arrays and JSON."""
    import torch  # noqa: PLC0415

    path.mkdir(parents=True, exist_ok=True)
    flat, offsets = setup.shards.flat, setup.shards.offsets
    torch.manual_seed(sc.seed)  # raysim's initial global model
    init = {f"param/{k}": p.detach().numpy().copy() for k, p in setup.spec.build().named_parameters()}
    rounds = {f"round/{w.round}": np.array([t.device_id for t in w.tasks], np.int64) for w in work}
    ds = setup.dataset
    np.savez(path / "work.npz", x_train=ds.x_train, y_train=ds.y_train, shard_flat=flat, shard_offsets=offsets,
             **init, **rounds)
    meta = {"scenario": sc.model_dump(mode="json"), "input_shape": list(ds.input_shape),
            "num_classes": ds.num_classes, "rounds": n_rounds, "fleet": len(setup.shards), "num_cpus": num_cpus}
    (path / "meta.json").write_text(json.dumps(meta))


def run_flower(py: Path, work_dir: Path, log_path: Path) -> dict[str, Any]:
    """One Flower simulation over the exported rounds (a fresh process and Ray instance)."""
    for f in ("flower-rounds.json", "flower-final.npz"):
        (work_dir / f).unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.setdefault("RAY_DEDUP_LOGS", "1")
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.run([str(py), str(Path(__file__).with_name("flower_app.py")), str(work_dir)],
                              stdout=log, stderr=subprocess.STDOUT, env=env, cwd=C.ROOT)
    total = time.perf_counter() - t0
    if proc.returncode != 0 or not (work_dir / "flower-rounds.json").exists():
        tail = log_path.read_text()[-3000:]
        raise SystemExit(f"vs_flower: the Flower run failed (exit {proc.returncode}); log {log_path}:\n{tail}")
    res = json.loads((work_dir / "flower-rounds.json").read_text())
    final = np.load(work_dir / "flower-final.npz")
    rounds = [{"round": i + 1, "wall_s": s} for i, s in enumerate(res["round_s"])]
    return {"rounds": rounds, "start_s": res["start_s"], "process_s": total,
            "params": {k: final[k] for k in final.files}}


def _max_diff(a: dict, b: dict) -> float:
    return max(float(np.max(np.abs(np.asarray(a[k]) - np.asarray(b[k])))) for k in a)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices-per-round", type=int, default=100)
    ap.add_argument("--fleet", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3, help="measured rounds per run (plus warm-up and last)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cpus", type=int, default=2, help="CPUs for every side")
    ap.add_argument("--no-install", action="store_true", help="fail rather than create bench/.venv-flower")
    ap.add_argument("--set", action="append", default=[], help="extra scenario override KEY=VALUE")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    from raysim.scenario.build import prepare  # noqa: PLC0415

    py = flower_python(install=not args.no_install)
    info = C.machine_info()
    info["flower_env"] = flower_versions(py)
    k = args.devices_per_round
    extra = ["compression.strategy=full", "fleet.mix={rpi4: 1.0}", "server.weighting=samples",
             f"runtime.num_cpus={args.cpus}"] + list(args.set)
    sc = C.load_bench_scenario(k, max(args.fleet, k), args.rounds + 2, extra)
    setup = prepare(sc)
    work = overhead.record_work(sc, setup)
    keep = set(range(2, sc.rounds))
    work_dir = Path(tempfile.mkdtemp(prefix="raysim-vs-flower-"))
    C.OUT.mkdir(parents=True, exist_ok=True)
    log_path = C.OUT / "vs_flower-flower.log"
    reps = []
    try:
        # Flower runs as many rounds as the raysim and floor block (warm-up + measured), so that
        # the three final models can be compared.
        export_work(sc, setup, work, work_dir, args.cpus, args.rounds + 1)
        for rep in range(args.repeats):
            # Blocks alternate: Flower's run, and raysim's rounds paired with the floor's.
            order = ("flower", "raysim+floor") if rep % 2 == 0 else ("raysim+floor", "flower")
            got: dict[str, Any] = {}
            for block in order:
                if block == "flower":
                    got["flower"] = run_flower(py, work_dir, log_path)
                else:
                    t = time.perf_counter()
                    C.start_ray(args.cpus)
                    try:
                        got["pairs"] = overhead.paired_repeat(sc, setup, work, args.cpus, args.rounds, rep)
                    finally:
                        C.stop_ray()
                    got["pairs_s"] = time.perf_counter() - t
            pairs = got["pairs"]["pairs"]
            fl = got["flower"]
            ray_s = C.median(p["raysim_s"] for p in pairs)
            floor_s = C.median(p["floor_s"] for p in pairs)
            fl_rounds = [r["wall_s"] for r in fl["rounds"] if r["round"] in keep]
            flower_s = C.median(fl_rounds)
            ref = {k2: v.numpy() for k2, v in got["pairs"]["raysim_params"].items()}
            row = {"repeat": rep + 1, "order": ",".join(order), "raysim_s": ray_s, "floor_s": floor_s,
                   "flower_s": flower_s, "flower_over_raysim": flower_s / ray_s,
                   "raysim_over_floor": C.median(p["ratio"] for p in pairs), "flower_over_floor": flower_s / floor_s,
                   "raysim_driver_s": C.median(p["driver_s"] for p in pairs),
                   "raysim_start_s": got["pairs"]["raysim"]["start_s"],
                   "flower_process_s": fl["process_s"], "flower_outside_rounds_s": fl["process_s"] - sum(
                       r["wall_s"] for r in fl["rounds"]),
                   "raysim_rounds": [p["raysim_s"] for p in pairs], "floor_rounds": [p["floor_s"] for p in pairs],
                   "flower_rounds": fl_rounds}
            print(f"  repeat {rep + 1}/{args.repeats} ({row['order']}): raysim {ray_s:.3f} s  floor {floor_s:.3f} s"
                  f"  flower {flower_s:.3f} s  flower/raysim {row['flower_over_raysim']:.2f}  raysim/floor "
                  f"{row['raysim_over_floor']:.2f}  (final model, max |diff| to raysim: flower "
                  f"{_max_diff(ref, fl['params']):.1e}, floor {got['pairs']['max_param_diff']:.1e})", flush=True)
            reps.append(row)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
        C.stop_ray()
    summary = {"devices_per_round": k, "fleet": len(setup.shards), "trained_per_round": len(work[1].tasks),
               "samples_per_round": int(sum(len(setup.shards[t.device_id]) for t in work[1].tasks))}
    for key in ("raysim_s", "floor_s", "flower_s", "flower_over_raysim", "raysim_over_floor", "flower_over_floor",
                "raysim_driver_s", "raysim_start_s", "flower_process_s", "flower_outside_rounds_s"):
        summary[key] = C.median(r[key] for r in reps)
    summary["flower_over_raysim_range"] = C.spread(r["flower_over_raysim"] for r in reps)
    C.print_table([{"devices/round": k, "trained": summary["trained_per_round"],
                    "raysim s/round": summary["raysim_s"], "flower s/round": summary["flower_s"],
                    "flower/raysim": summary["flower_over_raysim"],
                    "min": summary["flower_over_raysim_range"][0], "max": summary["flower_over_raysim_range"][1],
                    "floor s/round": summary["floor_s"], "raysim/floor": summary["raysim_over_floor"],
                    "flower/floor": summary["flower_over_floor"]}],
                  title="FedAvg, full model: wall time per round (medians; ratios are medians of same-repeat ratios)")
    print(f"\noutside the rounds: raysim {summary['raysim_start_s']:.1f} s to start its coordinator and hosts "
          f"(plus Ray's start); a Flower run spends {summary['flower_outside_rounds_s']:.1f} s of its "
          f"{summary['flower_process_s']:.1f} s process outside its rounds (imports, Ray, actors, shutdown)")
    path = C.write_json("vs_flower", {"machine": info, "args": vars(args), "summary": summary, "repeats": reps},
                        args.json)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
