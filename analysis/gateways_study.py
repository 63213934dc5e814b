"""Flat FedAvg against HierFAVG through gateways: time, WAN bytes and device energy to a target.

Runs `scenarios/gateways-study.yaml` once per arm into one parent directory, then writes a table
(markdown and CSV) and a plot (accuracy against simulated time and against the megabytes that
cross the gateways' uplinks to the cloud).

Arms (same task, fleet, gateways and seed; every arm trains the same device rounds, 50 devices
a round for 30 rounds):
  flat                      K = 50 a round, each device's update straight to the cloud
  hier-k1, hier-k2, hier-k5 10 gateways x 5 devices a gateway round, kappa2 = 1, 2, 5 gateway
                            rounds a cloud round, 30 / kappa2 cloud rounds
  ...-capable               the same without submodels: fedavg-capable (the full model, only on
                            devices that hold it)
  async-k1, async-k2        asynchronous gateways, FedAsync at the cloud: each gateway's model is
                            mixed in as it arrives (kappa2 = 1, 2), 300 / kappa2 cloud steps
  buff-k2                   asynchronous gateways, FedBuff at the cloud: a step every 5 gateway
                            models (kappa2 = 2), 30 cloud steps

A flat run's device traffic also crosses the gateways' uplinks in a deployment where devices
reach the cloud through gateways (relayed), so its WAN bytes are its devices' bytes; a
hierarchical run's are the gateways' model transfers (`gateways.parquet`).

    .venv/bin/python analysis/gateways_study.py --out runs/gateways-study --seeds 0,1,2
    .venv/bin/python analysis/gateways_study.py --out runs/gateways-study --seeds 0,1,2 --reuse
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Optional

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _study import ROOT, Key, reach, save_plot, spread, study_main  # noqa: E402
from framework_vs_baselines import Arm  # noqa: E402

from raysim import Run  # noqa: E402

SCENARIO = ROOT / "scenarios" / "gateways-study.yaml"
PREFIX = "gateways-"
DEVICE_ROUNDS = 30
CAPABLE = ("compression.baseline=fedavg-capable",)


GATEWAYS = 10


def hier(k: int) -> tuple[str, ...]:
    return (f"topology.gateway_rounds={k}", f"rounds={DEVICE_ROUNDS // k}")


def cloud_async(k: int, mode: str = "fedasync", buffer: int = 1) -> tuple[str, ...]:
    # a cloud step takes `buffer` gateway cycles of k gateway rounds
    return (f"topology.gateway_rounds={k}", f"server.mode={mode}", f"server.buffer={buffer}",
            f"rounds={DEVICE_ROUNDS * GATEWAYS // (k * buffer)}")


ARMS = (
    Arm("flat", ("topology.gateways=0",), "framework"),
    Arm("hier-k1", hier(1), "framework"),
    Arm("hier-k2", hier(2), "framework"),
    Arm("hier-k5", hier(5), "framework"),
    Arm("flat-capable", ("topology.gateways=0", *CAPABLE), "baseline"),
    Arm("hier-k1-capable", (*hier(1), *CAPABLE), "baseline"),
    Arm("hier-k2-capable", (*hier(2), *CAPABLE), "baseline"),
    Arm("hier-k5-capable", (*hier(5), *CAPABLE), "baseline"),
    Arm("async-k1", cloud_async(1), "framework"),
    Arm("async-k2", cloud_async(2), "framework"),
    Arm("buff-k2", cloud_async(2, "fedbuff", 5), "framework"),
)


def wan_mb(run: Run) -> pd.Series:
    """Megabytes over the gateways' uplinks to the cloud per round: a flat run's device traffic
    (relayed), a hierarchical run's gateway transfers."""
    if run.gateways.empty:
        per = run.clients.groupby("round")[["bytes_down", "bytes_up"]].sum().sum(axis=1)
    else:
        per = run.gateways.groupby("round")[["bytes_cloud_down", "bytes_cloud_up"]].sum().sum(axis=1)
    return per.reindex(run.rounds["round"]).fillna(0.0) / 1e6


def summarise(run: Run, arm: Arm, target: float) -> dict:
    """One arm's figures: accuracy, time, WAN megabytes and device joules to the target."""
    ev = run.evals[run.evals["model"] == "global"].sort_values("round")
    hit, hit_round, upto = reach(run, target)
    wan = wan_mb(run)
    # a device round is 50 devices: a flat round, or one gateway round of every gateway
    if run.gateways.empty:
        device_rounds = run.rounds.set_index("round").assign(n=1.0)["n"]
    else:
        device_rounds = run.gateways.groupby("round").size().reindex(run.rounds["round"]).fillna(0) / GATEWAYS
    return {
        "arm": arm.name, "kind": arm.kind,
        "final_acc": float(ev["accuracy"].tail(3).mean()),
        "cloud_rounds_to_target": hit_round,
        "device_rounds_to_target": float(device_rounds.loc[:hit_round].sum()) if hit_round is not None else None,
        "time_to_target_s": float(hit["sim_time"].iloc[0]) if len(hit) else math.nan,
        "wan_mb_to_target": float(wan.loc[:hit_round].sum()) if hit_round else math.nan,
        "device_mb_to_target": float(upto["bytes_down"].sum() + upto["bytes_up"].sum()) / 1e6 if hit_round
        else math.nan,
        "device_kj_to_target": float(upto["energy_j"].sum()) / 1e3 if hit_round else math.nan,
        "wan_mb_total": float(wan.sum()),
        "sim_time_s": float(run.rounds["sim_time"].iloc[-1]),
        "trained_per_device_round": float(run.rounds["trained"].sum() / device_rounds.sum()),
    }


def markdown(table: pd.DataFrame, target: float) -> str:
    """One row per arm; over several seeds, mean (min-max)."""
    n = table["seed"].nunique()
    head = ["arm", "final accuracy", f"time to {target:.0%}", f"device rounds to {target:.0%}",
            f"WAN MB to {target:.0%}", f"device MB to {target:.0%}", f"device kJ to {target:.0%}", "WAN MB, whole run"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm, g in table.groupby("arm", sort=False):
        c = [_to_target(g, col, fmt) for col, fmt in (("time_to_target_s", ".0f"), ("device_rounds_to_target", ".1f"),
                                                     ("wan_mb_to_target", ".1f"), ("device_mb_to_target", ".1f"),
                                                     ("device_kj_to_target", ".2f"))]
        lines.append(f"| {arm} | {spread(g['final_acc'] * 100, '.1f')}% | {c[0]} s | {c[1]} | {c[2]} | {c[3]} | {c[4]} | "
                     f"{spread(g['wan_mb_total'], '.1f')} |")
    seeds = ", ".join(str(s) for s in sorted(table["seed"].unique()))
    lines += ["", f"Seed{'s' if n > 1 else ''} {seeds}; final accuracy = mean of the last 3 evaluations; "
              f"'to target' counts up to the cloud round that first reached it"
              f"{'; a range is min-max over the seeds' if n > 1 else ''}."]
    return "\n".join(lines)


def _to_target(g: pd.DataFrame, col: str, fmt: str) -> str:
    """A figure to the target over the seeds that reached it (and how many did)."""
    reached = int(g["time_to_target_s"].notna().sum())
    if not reached:
        return "not reached"
    return spread(g[col], fmt) + ("" if reached == len(g) else f" ({reached} of {len(g)} seeds)")


def plot(runs: dict[Key, Run], arms: list, seeds: list[int], target: float, png: Path) -> Path:
    """Accuracy against simulated time and against WAN megabytes (first seed)."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, (ax, right) = plt.subplots(1, 2, figsize=(12, 4.4), dpi=100)
    for i, arm in enumerate(arms):
        run = runs[(arm.name, seeds[0])]
        acc = run.rounds.set_index("round")["accuracy"]
        ok = acc.notna().to_numpy()
        # flat and synchronous hierarchies solid (dashed without submodels), asynchronous clouds dash-dot
        style = "--" if arm.kind == "baseline" else "-." if arm.name.startswith(("async", "buff")) else "-"
        colour = f"C{i}" if i < 10 else "k"
        ax.plot(run.rounds["sim_time"].to_numpy()[ok] / 60, acc.to_numpy()[ok], style, color=colour, lw=1.4,
                label=arm.name)
        right.plot(wan_mb(run).cumsum().to_numpy()[ok], acc.to_numpy()[ok], style, color=colour, lw=1.4)
    for a in (ax, right):
        a.axhline(target, color="0.6", lw=0.8, ls=":")
    ax.set(xlabel="simulated time (min)", ylabel="global test accuracy")
    ax.set_title(f"Accuracy against simulated time (seed {seeds[0]})", fontsize=9)
    right.set_xscale("log")
    right.set(xlabel="MB over the gateways' uplinks so far (log scale)")
    right.set_title("Accuracy against WAN traffic", fontsize=9)
    right.grid(alpha=0.3)
    return save_plot(fig, ax, png)


def main(argv: Optional[list[str]] = None) -> int:
    return study_main(argv, __doc__, SCENARIO, "gateways-study", 0.8, ARMS, PREFIX, summarise, markdown, plot)


if __name__ == "__main__":
    raise SystemExit(main())
