"""Asynchronous vs synchronous FL: does never waiting for stragglers pay, once their updates are stale?

Runs `scenarios/async-vs-sync.yaml` (the quickstart's fleet, data and model, compressed
submodels sized by memory) once per arm and seed into one parent directory, then writes a
table (markdown and CSV) and a plot of global test accuracy against simulated time, and
`raysim report` over the arms of the first seed (staleness figure included).

Arms (every arm may apply about the same number of updates, `--updates`):
  sync                 rounds of K=50 that wait for their slowest device
  sync-deadline        rounds of K=50 over-committed by 20 %, late devices dropped at a deadline
  fedbuff-C50-K10      50 devices train at once; a server step every 10 arrivals
  fedbuff-C100-K10     100 at once, a step every 10
  fedbuff-C100-K25     100 at once, a step every 25
  fedasync-C50         50 at once, every arrival mixed in (alpha 0.6)
Staleness weight (1 + s)^-0.5 in every asynchronous arm.

Reported per arm, up to the common horizon (the shortest simulated time any arm reached):
time to `--target` accuracy, final accuracy, each device class's share of the applied updates
(against its share of the fleet), and the mean staleness of each class's applied updates.

    .venv/bin/python analysis/async_vs_sync.py                       # run and report
    .venv/bin/python analysis/async_vs_sync.py --seeds 0,1,2
    .venv/bin/python analysis/async_vs_sync.py --reuse               # report existing runs
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _study import ROOT, Key, arm_runs, pick, save_plot, spread, study_parser  # noqa: E402

from raysim import Run, RunError, Scenario, ScenarioError, load_scenario  # noqa: E402

SCENARIO = ROOT / "scenarios" / "async-vs-sync.yaml"
PREFIX = "avs-"
EVALS = 30  # evaluations per arm


@dataclass(frozen=True)
class Arm:
    """One arm: its overrides and how many updates one of its steps applies (at most)."""

    name: str
    overrides: tuple[str, ...]
    per_step: int
    mode: str = "sync"


ARMS = (
    Arm("sync", ("server.mode=sync", "deadline.seconds=null"), 50),
    Arm("sync-deadline", ("server.mode=sync", "deadline.seconds=4", "deadline.policy=drop",
                          "selection.overcommit=0.2"), 50),
    Arm("fedbuff-C50-K10", ("server.mode=fedbuff", "server.concurrency=50", "server.buffer=10"), 10, "fedbuff"),
    Arm("fedbuff-C100-K10", ("server.mode=fedbuff", "server.concurrency=100", "server.buffer=10"), 10, "fedbuff"),
    Arm("fedbuff-C100-K25", ("server.mode=fedbuff", "server.concurrency=100", "server.buffer=25"), 25, "fedbuff"),
    Arm("fedasync-C50", ("server.mode=fedasync", "server.concurrency=50"), 1, "fedasync"),
)

def arm_scenario(path: Path, arm: Arm, extra: list[str], updates: int, seed: int) -> Scenario:
    """The study's scenario for one arm and seed: a step budget of `updates` applied updates."""
    steps = max(1, math.ceil(updates / arm.per_step))
    over = [*arm.overrides, f"rounds={steps}", f"eval.every={max(1, steps // EVALS)}",
            f"output.checkpoint_every={max(1, steps // 4)}", *extra, f"name={PREFIX}{arm.name}", f"seed={seed}"]
    return load_scenario(path, over)


def curve(run: Run) -> pd.DataFrame:
    """(round, sim_time, accuracy) of the global model at every evaluation."""
    ev = run.evals[run.evals["model"] == "global"]
    return ev[["round", "sim_time", "accuracy"]].sort_values("round").reset_index(drop=True)


def summarise(runs: dict[str, Run], arms: list[Arm], target: float, last: int = 3) -> tuple[pd.DataFrame, float]:
    """One row per arm. Every arm applies about the same number of updates, in very different
    simulated times: accuracy is given after the whole budget and at the common horizon (the
    shortest simulated time any arm ran), time to target whenever it was reached."""
    horizon = min(float(r.rounds["sim_time"].max()) for r in runs.values())
    rows = []
    for arm in arms:
        run = runs[arm.name]
        c = curve(run)
        by_then = c[c["sim_time"] <= horizon + 1e-9]
        applied = run.clients[run.clients["status"].isin(["ok", "partial"])]
        hit = c[c["accuracy"] >= target]
        share = applied["device_class"].value_counts(normalize=True)
        stale = applied.groupby("device_class")["staleness"].mean()
        row = {"arm": arm.name, "steps": int(len(run.rounds)), "sim_time_s": float(run.rounds["sim_time"].max()),
               "updates": int(len(applied)), "final_acc": float(c["accuracy"].tail(last).mean()),
               "acc_at_horizon": float(by_then["accuracy"].iloc[-1]) if len(by_then) else math.nan,
               "time_to_target_s": float(hit["sim_time"].iloc[0]) if len(hit) else math.nan,
               "updates_to_target": float((applied["round"] <= int(hit["round"].iloc[0])).sum()) if len(hit)
               else math.nan,
               "staleness_mean": float(applied["staleness"].mean()) if len(applied) else math.nan}
        for cls in sorted(run.fleet["device_class"].unique()):
            row[f"share_{cls}"] = float(share.get(cls, 0.0))
            row[f"stale_{cls}"] = float(stale.get(cls, math.nan))
        rows.append(row)
    return pd.DataFrame(rows), horizon


def markdown(table: pd.DataFrame, fleet_share: pd.Series, target: float, horizons: dict[int, float]) -> str:
    """The tables as markdown: accuracy and time, then contribution and staleness by class."""
    n = table["seed"].nunique()
    head = ["arm", "server steps", "updates applied", "simulated time", f"simulated time to {target:.0%}",
            "updates to target", "accuracy at the horizon", "final accuracy", "mean staleness"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm, g in table.groupby("arm", sort=False):
        hit = g["time_to_target_s"].dropna()
        ttt = "not reached" if hit.empty else f"{spread(hit, '.0f')} s"
        if not hit.empty and len(hit) < len(g):
            ttt += f" ({len(hit)} of {len(g)} seeds)"
        at = g["acc_at_horizon"] * 100
        lines.append(f"| {arm} | {spread(g['steps'], '.0f')} | {spread(g['updates'], '.0f')} | "
                     f"{spread(g['sim_time_s'], '.0f')} s | {ttt} | {spread(g['updates_to_target'], '.0f')} | "
                     f"{spread(at, '.1f') + '%' if at.notna().any() else 'no evaluation yet'} | "
                     f"{spread(g['final_acc'] * 100, '.1f')}% | {spread(g['staleness_mean'], '.1f')} |")
    classes = list(fleet_share.index)
    lines += ["", "Share of the applied updates by device class (fleet share in the header), and in brackets "
              "the mean staleness of that class's updates:", "",
              "| arm | " + " | ".join(f"{c} ({fleet_share[c]:.0%})" for c in classes) + " |",
              "|" + "---|" * (len(classes) + 1)]
    for arm, g in table.groupby("arm", sort=False):
        cells = [f"{g[f'share_{c}'].mean():.0%} ({g[f'stale_{c}'].mean():.1f})" for c in classes]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    seeds = ", ".join(str(s) for s in horizons)
    span = ", ".join(f"{h:.0f} s" for h in horizons.values())
    lines += ["", f"Seed{'s' if n > 1 else ''} {seeds}. Every arm may apply the same number of updates; the "
              f"horizon is the shortest simulated time any arm ran ({span}); final accuracy is the mean of the "
              f"last 3 evaluations; a range is min-max over the seeds."]
    return "\n".join(lines)


def plot(runs: dict[Key, Run], arms: list[Arm], seeds: list[int], target: float, png: Path) -> Path:
    """Global accuracy against simulated time, one line per arm (first seed), sync dashed."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=100)
    left, right = math.inf, 0.0
    for i, arm in enumerate(arms):
        c = curve(runs[(arm.name, seeds[0])])
        right = max(right, float(c["sim_time"].max()))
        left = min(left, float(c["sim_time"].min()))
        ax.plot(c["sim_time"], c["accuracy"], "--" if arm.mode == "sync" else "-", color=f"C{i}", lw=1.6,
                label=arm.name)
    ax.axhline(target, color="0.6", lw=0.8, ls=":")
    # Log time: the arms differ by more than an order of magnitude in how long they take.
    ax.set_xscale("log")
    ax.set_xlim(left=max(0.5, left), right=right)
    ax.set_ylim(0, 1)
    ax.set(xlabel="simulated time (s, log scale)", ylabel="global test accuracy")
    ax.set_title(f"Synchronous rounds (dashed) vs asynchronous FedBuff / FedAsync (seed {seeds[0]})", fontsize=10)
    return save_plot(fig, ax, png)


def main(argv: Optional[list[str]] = None) -> int:
    p = study_parser(__doc__, SCENARIO, ROOT / "runs" / "async-vs-sync", target=0.9)
    p.add_argument("--updates", type=int, default=3000, help="updates each arm may apply (its step budget)")
    args = p.parse_args(argv)
    try:
        arms = pick(list(ARMS), args.arms)
        seeds, runs = arm_runs(args, arms, PREFIX,
                               lambda a, s: arm_scenario(args.scenario, a, args.overrides, args.updates, s))
    except (ScenarioError, RunError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    per_seed, horizons = [], {}
    for seed in seeds:
        df, horizons[seed] = summarise({a.name: runs[(a.name, seed)] for a in arms}, arms, args.target)
        per_seed.append(df.assign(seed=seed))
    table = pd.concat(per_seed, ignore_index=True)
    fleet = runs[(arms[0].name, seeds[0])].fleet["device_class"].value_counts(normalize=True).sort_index()
    text = markdown(table, fleet, args.target, horizons)
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "table.csv", index=False)
    (args.out / "table.md").write_text(text + "\n")
    png = plot(runs, arms, seeds, args.target, args.out / "async-vs-sync.png")
    from raysim import load_runs, write_report  # noqa: PLC0415

    rep = write_report(load_runs([runs[(a.name, seeds[0])].path for a in arms]), args.out / "report", args.target)
    print(text)
    print(f"\ntable  {args.out / 'table.md'}\nplot   {png}\nreport {rep.markdown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
