"""Hashes of the reference runs' final weights and records, to check that an engine change
changes no number.

Each reference run (the quickstart, the four strategies and two baselines, FedProx, SCAFFOLD,
FedBuff, FedAsync, a channel with error feedback, batteries, synchronous and asynchronous
gateways) runs a few rounds in this process, on one in-process host and again on two; the script
prints one line per run with the hash of its final weights and of its records (rounds, clients,
evals and gateway rows, wall-clock columns left out), and fails if the two host counts differ.

    .venv/bin/python bench/reference_hashes.py --save /tmp/before.json     # before the change
    .venv/bin/python bench/reference_hashes.py --check /tmp/before.json    # after: same hashes?

Hashes hold for one machine and one torch build (float kernels differ across CPUs), so they are
compared before and after on the same machine, not stored in the repository.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raysim.inprocess import local_simulation
from raysim.scenario.schema import load_scenario

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["fleet.devices=120", "selection.per_round=8", "eval.max_samples=300", "data.synthetic.samples=4000"]

# name -> (scenario file, overrides)
RUNS: dict[str, tuple[str, list[str]]] = {
    "quickstart": ("quickstart.yaml", ["rounds=3"]),
    "static": ("framework-vs-baselines.yaml", ["rounds=3"]),
    "rolling": ("framework-vs-baselines.yaml", ["rounds=3", "compression.strategy=rolling"]),
    "random": ("framework-vs-baselines.yaml", ["rounds=3", "compression.strategy=random"]),
    "magnitude": ("framework-vs-baselines.yaml", ["rounds=3", "compression.strategy=magnitude"]),
    "fedavg-capable": ("framework-vs-baselines.yaml", ["rounds=3", "compression.baseline=fedavg-capable"]),
    "fedavg-smallest": ("framework-vs-baselines.yaml", ["rounds=3", "compression.baseline=fedavg-smallest"]),
    "fedprox": ("quickstart.yaml", ["rounds=3", "train.algorithm=fedprox"]),
    "scaffold": ("quickstart.yaml", ["rounds=3", "train.algorithm=scaffold"]),
    "fedbuff": ("quickstart.yaml", ["rounds=6", "server.mode=fedbuff", "server.concurrency=12", "server.buffer=4"]),
    "fedasync": ("quickstart.yaml", ["rounds=6", "server.mode=fedasync", "server.concurrency=6"]),
    "error-feedback": ("quickstart.yaml", ["rounds=3", "channel.up=topk",
                                           "channel.up_params={fraction: 0.1, error_feedback: true}"]),
    "batteries": ("energy-study.yaml", ["rounds=3"]),
    "gateways": ("gateways.yaml", ["rounds=2", "topology.gateways=3", "topology.per_gateway=3"]),
    "gateways-fedbuff": ("gateways.yaml", ["rounds=3", "topology.gateways=3", "topology.per_gateway=3",
                                           "server.mode=fedbuff"]),
    "gateways-fedasync": ("gateways.yaml", ["rounds=3", "topology.gateways=3", "topology.per_gateway=3",
                                            "server.mode=fedasync"]),
}

# Columns that measure this process (wall clock, which host trained a device), not the run.
VOLATILE = {"wall_s", "coordinator_s", "train_s", "host"}


def _digest(obj: Any, h: "hashlib._Hash") -> None:
    if isinstance(obj, torch.Tensor):
        h.update(obj.detach().contiguous().numpy().tobytes())
    elif isinstance(obj, dict):
        for k in sorted(obj, key=str):
            if k in VOLATILE:
                continue
            h.update(str(k).encode())
            _digest(obj[k], h)
    elif isinstance(obj, (list, tuple, np.ndarray)):
        for v in obj:
            _digest(v, h)
    elif isinstance(obj, float):
        h.update(b"nan" if math.isnan(obj) else repr(obj).encode())
    else:
        h.update(repr(obj).encode())


def run_once(name: str, hosts: int) -> dict[str, str]:
    """Run one reference run and hash its final weights and its records."""
    path, extra = RUNS[name]
    sc = load_scenario(str(ROOT / "scenarios" / path), SMALL + extra)
    sim = local_simulation(sc, hosts=hosts)
    records = hashlib.sha256()
    for _ in range(sc.rounds):
        out = sim.step()
        _digest(out.record.__dict__, records)
        _digest(out.clients.columns(), records)
        _digest([e.__dict__ for e in out.evals], records)
        _digest(list(out.batteries), records)
        _digest(list(out.gateways), records)
    weights = hashlib.sha256()
    _digest(sim.params, weights)
    return {"weights": weights.hexdigest()[:16], "records": records.hexdigest()[:16]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--save", type=Path, help="write the hashes to this JSON file")
    ap.add_argument("--check", type=Path, help="compare with hashes saved earlier; exit 1 on a difference")
    ap.add_argument("--only", nargs="*", help="these runs only")
    ap.add_argument("--ignore", nargs="*", default=[], help="record columns left out of the hash (a column "
                    "whose meaning a change redefines)")
    args = ap.parse_args(argv)
    VOLATILE.update(args.ignore)
    names = args.only or list(RUNS)
    got: dict[str, dict[str, str]] = {}
    bad = 0
    for name in names:
        one, two = run_once(name, 1), run_once(name, 2)
        same_hosts = one == two
        got[name] = one
        line = f"{name:18s} weights {one['weights']}  records {one['records']}"
        if not same_hosts:
            line += f"  DIFFERS ON 2 HOSTS ({two['weights']} / {two['records']})"
            bad += 1
        if args.check is not None:
            want = json.loads(args.check.read_text()).get(name)
            if want is None:
                line += "  (not in the saved file)"
            elif want != one:
                line += f"  CHANGED (was {want['weights']} / {want['records']})"
                bad += 1
            else:
                line += "  same"
        print(line, flush=True)
    if args.save is not None:
        args.save.write_text(json.dumps(got, indent=1))
    print(f"{len(names)} runs, {bad} problem(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
