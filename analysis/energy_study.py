"""Energy to target accuracy on a battery-powered IoT fleet: which design spends fewer joules,
and loses fewer devices to their batteries, on the way to a target accuracy?

Runs `scenarios/energy-study.yaml` once per arm into one parent directory, then writes a table
(markdown and CSV) and a plot (accuracy against simulated time; joules per device class to the
target).

Arms (same fleet, data, seed and batteries; devices know only their charge unless said):
  static, rolling, random, magnitude  the framework: each device trains the largest submodel
                                      that fits its memory, remapped into the global model
  fedavg-capable                      the full model, on the devices that can hold it only
  fedavg-smallest                     the smallest submodel on every device
  static+energy-aware                 static, with selection weighted by battery level
                                      (EAFL-style) instead of uniform
  static+fit-energy                   static, with each device assigned the largest rate its
                                      battery covers and devices refusing work they cannot finish

    .venv/bin/python analysis/energy_study.py --out runs/energy-study --seeds 0,1,2
    .venv/bin/python analysis/energy_study.py --out runs/energy-study --reuse
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Optional

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _study import ROOT, Key, arms_and_runs, reach, report_study, save_plot, spread, study_parser  # noqa: E402
from framework_vs_baselines import ARMS as BASE_ARMS  # noqa: E402
from framework_vs_baselines import Arm  # noqa: E402

from raysim import Run, Scenario, load_scenario  # noqa: E402

SCENARIO = ROOT / "scenarios" / "energy-study.yaml"
PREFIX = "energy-"


# The framework's four strategies and both baselines (fedavg-smallest's rounds are far shorter in
# simulated time, so it runs `--stretch` times the rounds), then two energy-aware variants.
ARMS = (
    *BASE_ARMS,
    Arm("static+energy-aware", ("compression.strategy=static", "selection.policy=energy-aware"), "energy"),
    Arm("static+fit-energy", ("compression.strategy=static", "assignment.policy=fit-energy", "energy.check=work"),
        "energy"),
)


def arm_scenario(path: Path, arm: Arm, extra: list[str], seed: int, stretch: int = 1) -> Scenario:
    """The study's scenario for one arm and seed (raises ScenarioError on a bad override)."""
    over = [*extra, *arm.overrides, f"name={PREFIX}{arm.name}", f"seed={seed}"]
    if arm.stretch and stretch > 1:
        base = load_scenario(path, extra)
        over += [f"rounds={base.rounds * stretch}", f"eval.every={base.eval.every * stretch}"]
    return load_scenario(path, over)


def mains_classes(run: Run) -> set[str]:
    """The run's mains-powered classes (no battery rows)."""
    batt = set(run.batteries["device_class"]) if not run.batteries.empty else set()
    return set(run.clients["device_class"].astype(str)) - batt


def summarise(run: Run, arm: Arm, target: float) -> dict:
    """One arm's figures: accuracy, time and joules to the target, devices lost to battery."""
    ev = run.evals[run.evals["model"] == "global"].sort_values("round")
    hit, hit_round, upto = reach(run, target)
    c = run.clients
    mains = mains_classes(run)
    battery = ~upto["device_class"].astype(str).isin(mains)
    b = run.batteries
    last = b[b["round"] == b["round"].max()]
    return {
        "arm": arm.name, "kind": arm.kind,
        "final_acc": float(ev["accuracy"].tail(3).mean()), "best_acc": float(ev["accuracy"].max()),
        "rounds_to_target": hit_round,
        "time_to_target_s": float(hit["sim_time"].iloc[0]) if len(hit) else math.nan,
        "battery_j_to_target": float(upto.loc[battery, "energy_j"].sum()) if hit_round else math.nan,
        "mains_j_to_target": float(upto.loc[~battery, "energy_j"].sum()) if hit_round else math.nan,
        "battery_j_run": float(c.loc[~c["device_class"].astype(str).isin(mains), "energy_j"].sum()),
        "trained_per_round": float(c["status"].isin(["ok", "partial"]).sum() / max(1, len(run.rounds))),
        "ran_empty": int((c["status"] == "depleted").sum()),
        "refused_battery": int(((c["status"] == "excluded") & c["reason"].astype(str).str.startswith("battery")).sum()),
        "empty_at_end": int(last["empty"].sum()),
        "battery_devices": int(last["devices"].sum()),
        **{f"j_{k}": float(v) for k, v in upto.groupby("device_class")["energy_j"].sum().items()},
    }


def markdown(table: pd.DataFrame, target: float) -> str:
    """One row per arm; over several seeds, mean (min-max)."""
    n = table["seed"].nunique()
    head = ["arm", "final accuracy", f"simulated time to {target:.0%}", f"battery J to {target:.0%}",
            f"mains J to {target:.0%}", "ran empty mid-round (updates lost)", "refused: battery",
            "batteries empty at the end"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm, g in table.groupby("arm", sort=False):
        reached = g["time_to_target_s"].notna().sum()
        note = "" if reached == len(g) else f" ({reached} of {len(g)} seeds)" if reached else ""
        ttt = f"{spread(g['time_to_target_s'], '.0f')} s{note}" if reached else "not reached"
        lines.append(f"| {arm} | {spread(g['final_acc'] * 100, '.1f')}% | {ttt} | "
                     f"{spread(g['battery_j_to_target'], '.0f') if reached else '-'} | "
                     f"{spread(g['mains_j_to_target'], '.0f') if reached else '-'} | "
                     f"{spread(g['ran_empty'], '.0f')} | {spread(g['refused_battery'], '.0f')} | "
                     f"{spread(g['empty_at_end'], '.0f')} of {g['battery_devices'].iloc[0]} |")
    lines.append("")
    seeds = ", ".join(str(s) for s in sorted(table["seed"].unique()))
    lines.append(f"Seed{'s' if n > 1 else ''} {seeds}; final accuracy = mean of the last 3 evaluations; joules are "
                 f"those of the selected devices up to the round that first reached the target"
                 f"{'; a range is min-max over the seeds' if n > 1 else ''}.")
    return "\n".join(lines)


def class_joules(table: pd.DataFrame) -> pd.DataFrame:
    """Mean joules per device class to the target (arms as rows)."""
    cols = [c for c in table.columns if c.startswith("j_")]
    out = table.groupby("arm", sort=False)[cols].mean()
    out.columns = [c[2:] for c in cols]
    return out


def plot(runs: dict[Key, Run], arms: list, seeds: list[int], target: float, png: Path) -> Path:
    """Accuracy against simulated time, and the battery joules spent so far (first seed), one line per arm."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    style = {"framework": "-", "baseline": "--", "energy": ":"}
    fig, (ax, right) = plt.subplots(1, 2, figsize=(12, 4.4), dpi=100)
    for i, arm in enumerate(arms):
        run = runs[(arm.name, seeds[0])]
        ev = run.evals[run.evals["model"] == "global"].sort_values("round")
        ax.plot(ev["sim_time"] / 60, ev["accuracy"], style[arm.kind], color=f"C{i}", lw=1.6, label=arm.name)
        c = run.clients[~run.clients["device_class"].astype(str).isin(mains_classes(run))]
        spent = c.groupby("round")["energy_j"].sum().reindex(run.rounds["round"]).fillna(0.0).cumsum()
        right.plot(run.rounds["sim_time"] / 60, spent.to_numpy(), style[arm.kind], color=f"C{i}", lw=1.6)
    ax.axhline(target, color="0.6", lw=0.8, ls=":")
    ax.set_ylim(0.6, 0.95)
    ax.set_xlabel("simulated time (min)")
    ax.set_ylabel("global test accuracy")
    ax.set_title(f"Accuracy (seed {seeds[0]}): framework (solid), baselines (dashed), energy-aware (dotted)",
                 fontsize=9)
    right.set(xlabel="simulated time (min)", ylabel="J spent by battery-powered devices")
    right.set_title("Battery energy spent", fontsize=9)
    right.grid(alpha=0.3)
    return save_plot(fig, ax, png)


def main(argv: Optional[list[str]] = None) -> int:
    p = study_parser(__doc__, SCENARIO, ROOT / "runs" / "energy-study", target=0.9)
    p.add_argument("--png", type=Path, default=None, help="plot file (default: OUT/energy-study.png)")
    p.add_argument("--stretch", type=int, default=5, help="round multiplier of fedavg-smallest")
    args = p.parse_args(argv)
    picked = arms_and_runs(args, ARMS, PREFIX,
                           lambda a, s: arm_scenario(args.scenario, a, args.overrides, s, args.stretch))
    if picked is None:
        return 2
    arms, seeds, runs = picked

    def per_class(table: pd.DataFrame) -> str:
        return ("Joules per device class to the target (mean over seeds):\n\n```\n"
                + class_joules(table).round(1).to_string() + "\n```")

    return report_study(args, arms, seeds, runs, summarise, markdown, plot, "energy-study.png", per_class)


if __name__ == "__main__":
    raise SystemExit(main())
