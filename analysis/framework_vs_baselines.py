"""Framework vs baselines: does training compressed submodels beat plain FedAvg on a fleet
where most devices cannot hold the full model?

Runs `scenarios/framework-vs-baselines.yaml` once per arm into one parent directory, then
writes a table (markdown and CSV) and a plot of global test accuracy against simulated time.

Arms (same fleet, data, seed and selection; only `compression` differs):
  static, rolling, random, magnitude  the framework: every device trains the largest submodel
                                      that fits its memory, remapped into the global model
  fedavg-capable                      the full model, on the devices that can hold it only
  fedavg-smallest                     the smallest submodel on every device; it *is* the
                                      global model
With `--ablations`, two more variants of `static`: static batch norm instead of group norm,
and no scaler.

fedavg-smallest's rounds are much shorter in simulated time (tiny model, tiny transfers), so it
runs `--stretch` times the rounds (and evaluates `--stretch` times less often per round) to cover
about the same simulated time as the others. Accuracy is compared up to the common horizon: the
shortest simulated time any arm reached.

    .venv/bin/python analysis/framework_vs_baselines.py                  # run and report
    .venv/bin/python analysis/framework_vs_baselines.py --reuse          # report existing runs
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

SCENARIO = ROOT / "scenarios" / "framework-vs-baselines.yaml"
PREFIX = "fvb-"
TRAINED = ("ok", "partial")


@dataclass(frozen=True)
class Arm:
    """One arm of the study: its scenario overrides and how it is drawn."""

    name: str
    overrides: tuple[str, ...]
    kind: str  # framework | baseline | ablation
    stretch: bool = False  # runs --stretch times the rounds (short simulated rounds)


ARMS = (
    Arm("static", ("compression.strategy=static",), "framework"),
    Arm("rolling", ("compression.strategy=rolling",), "framework"),
    Arm("random", ("compression.strategy=random",), "framework"),
    Arm("magnitude", ("compression.strategy=magnitude",), "framework"),
    Arm("fedavg-capable", ("compression.baseline=fedavg-capable",), "baseline"),
    Arm("fedavg-smallest", ("compression.baseline=fedavg-smallest",), "baseline", stretch=True),
)
ABLATIONS = (
    Arm("static+static-bn", ("compression.strategy=static", "model.norm=static-bn"), "ablation"),
    Arm("static-no-scaler", ("compression.strategy=static", "model.scaler=false"), "ablation"),
)


def arm_scenario(path: Path, arm: Arm, extra: list[str], stretch: int, seed: int) -> Scenario:
    """The study's scenario for one arm and seed (raises ScenarioError on a bad override)."""
    base = load_scenario(path, extra)
    over = [*extra, *arm.overrides, f"name={PREFIX}{arm.name}", f"seed={seed}"]
    if arm.stretch and stretch > 1:
        over += [f"rounds={base.rounds * stretch}", f"eval.every={base.eval.every * stretch}"]
    return load_scenario(path, over)


def global_curve(run: Run) -> pd.DataFrame:
    """(round, sim_time, accuracy) of the global model at every evaluation."""
    ev = run.evals[run.evals["model"] == "global"]
    return ev[["round", "sim_time", "accuracy"]].sort_values("round").reset_index(drop=True)


def smallest_curve(run: Run) -> pd.DataFrame:
    """(round, sim_time, accuracy) of the smallest rate's submodel: what the weakest devices
    would deploy. For fedavg-smallest that is the global model; fedavg-capable has none."""
    if run.scenario.get("compression", {}).get("baseline") == "fedavg-smallest":
        return global_curve(run)
    rate = min(run.scenario.get("model", {}).get("rates", [1.0]))
    ev = run.evals[run.evals["model"] == f"rate-{rate:g}"]
    return ev[["round", "sim_time", "accuracy"]].sort_values("round").reset_index(drop=True)


def summarise(runs: dict[str, Run], arms: list[Arm], target: float, last: int = 3) -> tuple[pd.DataFrame, float]:
    """One row per arm, every figure taken up to the common simulated-time horizon."""
    horizon = min(float(r.rounds["sim_time"].max()) for r in runs.values())
    rows = []
    for arm in arms:
        run = runs[arm.name]
        curve = global_curve(run)
        upto = curve[curve["sim_time"] <= horizon + 1e-9]
        rounds = run.rounds[run.rounds["sim_time"] <= horizon + 1e-9]
        cl = run.clients[run.clients["round"].isin(rounds["round"])]
        trained = cl[cl["status"].isin(TRAINED)]
        small = smallest_curve(run)
        small = small[small["sim_time"] <= horizon + 1e-9]
        hit = upto[upto["accuracy"] >= target]
        by_rate = trained.groupby("rate")["device_id"].nunique()
        rows.append({
            "arm": arm.name,
            "kind": arm.kind,
            "rounds": int(len(rounds)),
            "sim_time_s": float(rounds["sim_time"].max()),
            "round_s": float(rounds["duration"].mean()),
            "trained_per_round": float(len(trained) / max(len(rounds), 1)),
            "devices_took_part": int(trained["device_id"].nunique()),
            "devices_selected": int(cl["device_id"].nunique()),
            "full_model_devices": int(by_rate.get(1.0, 0)) if arm.name != "fedavg-smallest" else 0,
            "final_acc": float(upto["accuracy"].tail(last).mean()),
            "best_acc": float(upto["accuracy"].max()),
            "smallest_final_acc": float(small["accuracy"].tail(last).mean()) if len(small) else math.nan,
            "time_to_target_s": float(hit["sim_time"].iloc[0]) if len(hit) else math.nan,
            "rounds_to_target": int(hit["round"].iloc[0]) if len(hit) else None,
        })
    return pd.DataFrame(rows), horizon


def combine(per_seed: dict[int, pd.DataFrame]) -> pd.DataFrame:
    """Per-seed summaries stacked into one frame with a `seed` column (arm order kept)."""
    return pd.concat([df.assign(seed=seed) for seed, df in per_seed.items()], ignore_index=True)


def markdown(table: pd.DataFrame, target: float, horizons: dict[int, float], last: int = 3) -> str:
    """The table as markdown: one row per arm; over several seeds, mean (min-max)."""
    n = table["seed"].nunique()
    head = ["arm", "rounds", "devices trained / round", "devices that took part (of selected)",
            f"final accuracy (mean of last {last} evals)", "best accuracy",
            f"simulated time to {target:.0%}", "smallest submodel, final accuracy"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm, g in table.groupby("arm", sort=False):
        hit = g["time_to_target_s"].dropna()
        ttt = "not reached" if hit.empty else f"{spread(hit, '.0f')} s"
        if not hit.empty and len(hit) < len(g):
            ttt += f" (reached in {len(hit)} of {len(g)} seeds)"
        elif not hit.empty and n == 1:
            ttt += f" (round {int(g['rounds_to_target'].iloc[0])})"
        lines.append(f"| {arm} | {spread(g['rounds'], '.0f')} | {g['trained_per_round'].mean():.1f} | "
                     f"{g['devices_took_part'].mean():.0f} ({g['devices_selected'].mean():.0f}) | "
                     f"{spread(g['final_acc'] * 100, '.1f')}% | {spread(g['best_acc'] * 100, '.1f')}% | {ttt} | "
                     f"{spread(g['smallest_final_acc'] * 100, '.1f')}{'' if g['smallest_final_acc'].isna().all() else '%'} |")
    lines.append("")
    seeds = ", ".join(str(s) for s in horizons)
    span = ", ".join(f"{h:.0f} s" for h in horizons.values())
    lines.append(f"Seed{'s' if n > 1 else ''} {seeds}; every figure is taken up to the common horizon "
                 f"(the shortest simulated time any arm reached) of {span} of simulated time"
                 + (" respectively; a range is min-max over the seeds." if n > 1 else "."))
    return "\n".join(lines)


def plot(runs: dict[Key, Run], arms: list[Arm], horizons: dict[int, float], target: float, png: Path) -> Path:
    """Accuracy of the global model against simulated time, one line per arm (ablations are in
    the table only): the mean over seeds at each evaluated round (x = mean simulated time),
    shaded from min to max."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    style = {"framework": "-", "baseline": "--"}
    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=100)
    for i, arm in enumerate(arms):
        if arm.kind == "ablation":
            continue
        curves = []
        for seed, h in horizons.items():
            c = global_curve(runs[(arm.name, seed)])
            curves.append(c[c["sim_time"] <= h + 1e-9].set_index("round"))
        rounds = sorted(set.intersection(*(set(c.index) for c in curves)))
        t = pd.concat([c.loc[rounds, "sim_time"] for c in curves], axis=1).mean(axis=1)
        acc = pd.concat([c.loc[rounds, "accuracy"] for c in curves], axis=1)
        ax.plot(t, acc.mean(axis=1), style[arm.kind], color=f"C{i}", lw=1.6, label=arm.name)
        if len(curves) > 1:
            ax.fill_between(t, acc.min(axis=1), acc.max(axis=1), color=f"C{i}", alpha=0.08, lw=0)
    ax.axhline(target, color="0.6", lw=0.8, ls=":")
    ax.set_xlim(0, max(horizons.values()))
    ax.set_ylim(0, 1)
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("global test accuracy")
    n = len(horizons)
    ax.set_title("Compressed submodels (solid) vs FedAvg baselines (dashed)"
                 + (f": mean of {n} seeds, band = min-max" if n > 1 else ""), fontsize=10)
    return save_plot(fig, ax, png)


def main(argv: Optional[list[str]] = None) -> int:
    p = study_parser(__doc__, SCENARIO, ROOT / "runs" / "framework-vs-baselines", target=0.8)
    p.add_argument("--ablations", action="store_true", help="also run static with static BN, and without scaler")
    p.add_argument("--stretch", type=int, default=2, help="round multiplier of fedavg-smallest")
    p.add_argument("--png", type=Path, default=None, help="plot file (default: OUT/framework-vs-baselines.png)")
    args = p.parse_args(argv)
    try:
        arms = pick(list(ARMS) + (list(ABLATIONS) if args.ablations else []), args.arms)
        seeds, runs = arm_runs(args, arms, PREFIX,
                               lambda a, s: arm_scenario(args.scenario, a, args.overrides, args.stretch, s))
    except (ScenarioError, RunError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    per_seed, horizons = {}, {}
    for seed in seeds:
        per_seed[seed], horizons[seed] = summarise({a.name: runs[(a.name, seed)] for a in arms}, arms, args.target)
    table = combine(per_seed)
    text = markdown(table, args.target, horizons)
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "table.csv", index=False)
    (args.out / "table.md").write_text(text + "\n")
    png = plot(runs, arms, horizons, args.target, args.png or args.out / "framework-vs-baselines.png")
    print(text)
    print(f"\ntable  {args.out / 'table.md'}\nplot   {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
