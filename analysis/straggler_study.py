"""Straggler study: the round deadline and over-commitment against time-to-accuracy, per device class.

Sweeps `deadline.seconds` x `selection.overcommit` over `scenarios/straggler-study.yaml` (one
Ray session, one parent directory, `raysim.sweep`), then writes one figure with three panels:

  time to target   simulated time until the global model first reaches the target accuracy,
                   against the deadline, one line per over-commitment
  stragglers       share of each device class's trainable selections recorded `late` (past the
                   deadline, or not among the first K to finish), against the deadline
  accuracy         global accuracy against simulated time, every point of the grid

and `straggler-study.csv` / `straggler-classes.csv` next to the runs. A selection counts as
trainable when it got a rate and stayed online (`ok`, `partial` or `late`); `excluded` and
`offline` devices are no stragglers.

    .venv/bin/python analysis/straggler_study.py                          # run the sweep and plot
    .venv/bin/python analysis/straggler_study.py --reuse runs/straggler-study-sweep-<stamp>
    .venv/bin/python analysis/straggler_study.py --deadlines 5,50 --overcommit 0 --set rounds=10
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from raysim import RunError, ScenarioError  # noqa: E402

SCENARIO = ROOT / "scenarios" / "straggler-study.yaml"
PNG = ROOT / "docs" / "img" / "straggler-study.png"
DEADLINE, OVERCOMMIT = "deadline.seconds", "selection.overcommit"
TRAINABLE = ("ok", "partial", "late")


def straggler_rates(clients: pd.DataFrame) -> pd.DataFrame:
    """Per (deadline, over-commitment, device class): trainable selections and the share late (%)."""
    c = clients[clients["status"].isin(TRAINABLE)]
    g = c.groupby([DEADLINE, OVERCOMMIT, "device_class"], observed=True)["status"]
    out = pd.DataFrame({"trainable": g.size(), "late": g.apply(lambda s: int((s == "late").sum()))})
    out["late_pct"] = 100.0 * out["late"] / out["trainable"]
    return out.reset_index()


def run_table(runs, target: float) -> pd.DataFrame:
    """One row per grid point: time to target, final accuracy, round length, stragglers overall."""
    from raysim import time_to_target  # noqa: PLC0415

    rows = []
    for run in runs:
        sc = run.scenario
        r = run.rounds
        rnd, t = time_to_target(r.dropna(subset=["accuracy"]), target)
        c = run.clients
        trainable = c["status"].isin(TRAINABLE)
        rows.append({
            DEADLINE: float(sc["deadline"]["seconds"]), OVERCOMMIT: float(sc["selection"]["overcommit"]),
            "time_to_target_s": t if t is not None else np.nan, "round_to_target": rnd,
            "final_accuracy": float(r["accuracy"].dropna().iloc[-1]), "mean_round_s": float(r["duration"].mean()),
            "trained_per_round": float(r["trained"].mean()),
            "late_pct": 100.0 * float((c["status"] == "late").sum()) / max(int(trainable.sum()), 1),
        })
    return pd.DataFrame(rows).sort_values([OVERCOMMIT, DEADLINE]).reset_index(drop=True)


def plot(table: pd.DataFrame, rates: pd.DataFrame, curves: pd.DataFrame, target: float, out: Path) -> Path:
    """The study's figure (three panels); returns its path."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    styles = ["-", "--", ":", "-."]
    ocs = sorted(table[OVERCOMMIT].unique())
    ax = axes[0]
    for j, oc in enumerate(ocs):
        t = table[table[OVERCOMMIT] == oc]
        ax.plot(t[DEADLINE], t["time_to_target_s"] / 60.0, styles[j % 4], marker="o", color="k",
                label=f"over-commit {oc:g}")
        missed = t[t["time_to_target_s"].isna()]
        if not missed.empty:
            top = np.nanmax(table["time_to_target_s"]) / 60.0 if table["time_to_target_s"].notna().any() else 1.0
            ax.plot(missed[DEADLINE], [top * 1.05] * len(missed), "x", color="red",
                    label="target not reached" if j == 0 else None)
    ax.set(xscale="log", xlabel="round deadline (simulated s)", ylabel="simulated minutes",
           title=f"time to {100 * target:.0f}% accuracy")
    ax.set_xticks(sorted(table[DEADLINE].unique()), [f"{d:g}" for d in sorted(table[DEADLINE].unique())])
    ax.legend(fontsize=8)

    ax = axes[1]
    classes = sorted(rates["device_class"].astype(str).unique())
    colours = plt.get_cmap("tab10")
    for i, cls in enumerate(classes):
        for j, oc in enumerate(ocs):
            s = rates[(rates["device_class"].astype(str) == cls) & (rates[OVERCOMMIT] == oc)].sort_values(DEADLINE)
            ax.plot(s[DEADLINE], s["late_pct"], styles[j % 4], marker=".", color=colours(i),
                    label=cls if j == 0 else None)
    ax.set(xscale="log", xlabel="round deadline (simulated s)", ylabel="% of trainable selections late",
           title="straggler rate per device class", ylim=(-3, 103))
    ax.set_xticks(sorted(table[DEADLINE].unique()), [f"{d:g}" for d in sorted(table[DEADLINE].unique())])
    handles, labels = ax.get_legend_handles_labels()
    for j, oc in enumerate(ocs):
        handles.append(plt.Line2D([], [], color="grey", linestyle=styles[j % 4]))
        labels.append(f"over-commit {oc:g}")
    ax.legend(handles, labels, fontsize=8)

    ax = axes[2]
    deadlines = sorted(curves[DEADLINE].unique())
    shades = plt.get_cmap("viridis")(np.linspace(0.0, 0.9, len(deadlines)))
    for (d, oc), cur in curves.groupby([DEADLINE, OVERCOMMIT]):
        ax.plot(cur["sim_time"] / 60.0, cur["accuracy"], styles[ocs.index(oc) % 4],
                color=shades[deadlines.index(d)], label=f"{d:g} s" if oc == ocs[0] else None)
    ax.axhline(target, color="grey", linewidth=0.8)
    ax.set(xscale="log", xlabel="simulated minutes", ylabel="global test accuracy", title="accuracy over time")
    ax.legend(title="deadline", fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--deadlines", default="1,2,4,8,16,32", help="deadline.seconds values (comma-separated)")
    p.add_argument("--overcommit", default="0,0.5", help="selection.overcommit values (comma-separated)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", default=str(ROOT / "runs"), help="parent directory for the sweep")
    p.add_argument("--reuse", metavar="SWEEP_DIR", help="plot an existing sweep instead of running one")
    p.add_argument("--target", type=float, help="target accuracy (default: 90%% of the best reached)")
    p.add_argument("--png", default=str(PNG), help="where the figure goes")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    try:
        from raysim import default_target, load_runs, plan_sweep, run_sweep  # noqa: PLC0415

        if args.reuse:
            parent = Path(args.reuse)
        else:
            grid = [f"{DEADLINE}={args.deadlines}", f"{OVERCOMMIT}={args.overcommit}"]
            plan = plan_sweep(SCENARIO, grid, args.overrides)

            def said(res) -> None:
                print(f"{res.point.label:45s} {res.status}  {res.wall_s:6.1f} s", flush=True)

            parent = run_sweep(plan, out_root=args.out, progress=not args.quiet, on_point=said).path
        runs = load_runs(parent)
    except (ScenarioError, RunError) as err:  # bad grid, scenario or run directory: one line, exit 2
        print(f"straggler_study: error: {err}", file=sys.stderr)
        return 2
    target = args.target if args.target is not None else default_target(runs)
    table = run_table(runs, target)
    rates = straggler_rates(runs.clients)
    curves = runs.rounds.dropna(subset=["accuracy"])[[DEADLINE, OVERCOMMIT, "sim_time", "accuracy"]]
    table.to_csv(parent / "straggler-study.csv", index=False)
    rates.to_csv(parent / "straggler-classes.csv", index=False)
    png = plot(table, rates, curves, target, Path(args.png))
    pd.set_option("display.width", 160)
    print(f"\ntarget {100 * target:.0f}% global accuracy\n")
    print(table.round(2).to_string(index=False))
    print()
    print(rates.pivot_table(index=[OVERCOMMIT, "device_class"], columns=DEADLINE, values="late_pct",
                            observed=True).round(0).to_string())
    print(f"\nsweep   {parent}\nfigure  {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
