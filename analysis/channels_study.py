"""What compressing updates buys on slow IoT radios: bytes, time and accuracy to a target.

Runs `scenarios/channels-study.yaml` once per arm into one parent directory, then writes a table
(markdown and CSV) and a plot (accuracy against megabytes moved, and against simulated time).

Arms (same fleet, data, seed and selection; only the channels, and for two arms the baseline):
  dense                    float32 both ways
  fp16, q8, q4             the update in half precision, 8-bit, 4-bit (per output channel)
  topk1, topk10 (+ef)      the 1% / 10% largest values of the update, without and with error feedback
  sign+ef                  one bit per value and a scale, with error feedback
  q8-both                  8-bit both ways (the downloaded submodel too)
  capable, capable+q8-both fedavg-capable (the full model, on devices that hold it), dense and 8-bit both ways

    .venv/bin/python analysis/channels_study.py --out runs/channels-study --seeds 0,1,2
    .venv/bin/python analysis/channels_study.py --out runs/channels-study --seeds 0,1,2 --reuse
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

SCENARIO = ROOT / "scenarios" / "channels-study.yaml"
PREFIX = "channels-"
Q8 = ("channel.up=quantize", "channel.up_params={bits: 8, scale: channel}")
Q8_DOWN = ("channel.down=quantize", "channel.down_params={bits: 8, scale: channel}")

ARMS = (
    Arm("dense", (), "framework"),
    Arm("fp16", ("channel.up=fp16",), "framework"),
    Arm("q8", Q8, "framework"),
    Arm("q4", ("channel.up=quantize", "channel.up_params={bits: 4, scale: channel}"), "framework"),
    Arm("topk1", ("channel.up=topk", "channel.up_params={fraction: 0.01}"), "framework"),
    Arm("topk1+ef", ("channel.up=topk", "channel.up_params={fraction: 0.01, error_feedback: true}"), "framework"),
    Arm("topk10", ("channel.up=topk", "channel.up_params={fraction: 0.1}"), "framework"),
    Arm("topk10+ef", ("channel.up=topk", "channel.up_params={fraction: 0.1, error_feedback: true}"), "framework"),
    Arm("sign+ef", ("channel.up=sign", "channel.up_params={error_feedback: true}"), "framework"),
    Arm("q8-both", (*Q8, *Q8_DOWN), "framework"),
    Arm("capable", ("compression.baseline=fedavg-capable",), "baseline"),
    Arm("capable+q8-both", ("compression.baseline=fedavg-capable", *Q8, *Q8_DOWN), "baseline"),
)


def summarise(run: Run, arm: Arm, target: float) -> dict:
    """One arm's figures: accuracy, bytes and time to the target, devices late, rates trained."""
    ev = run.evals[run.evals["model"] == "global"].sort_values("round")
    hit, hit_round, upto = reach(run, target)
    c = run.clients
    trained = c[c["status"].isin(["ok", "partial"])]
    late = c[c["status"] == "late"]
    return {
        "arm": arm.name, "kind": arm.kind,
        "final_acc": float(ev["accuracy"].tail(3).mean()),
        "rounds_to_target": hit_round,
        "time_to_target_s": float(hit["sim_time"].iloc[0]) if len(hit) else math.nan,
        "mb_to_target": float(upto["bytes_down"].sum() + upto["bytes_up"].sum()) / 1e6 if hit_round else math.nan,
        "mb_up_to_target": float(upto["bytes_up"].sum()) / 1e6 if hit_round else math.nan,
        "late_per_round": float(len(late) / max(1, len(run.rounds))),
        "trained_per_round": float(len(trained) / max(1, len(run.rounds))),
        "mean_rate": float(trained["rate"].mean()),
        "nbiot_mean_rate": float(trained.loc[trained["device_class"] == "mcu-nbiot", "rate"].mean()),
        "kb_up_per_update": float(trained["bytes_up"].mean()) / 1e3,
    }


def markdown(table: pd.DataFrame, target: float) -> str:
    """One row per arm; over several seeds, mean (min-max)."""
    n = table["seed"].nunique()
    head = ["arm", "KB per update", "final accuracy", f"MB to {target:.0%} (of which up)", f"time to {target:.0%}",
            "late / round", "NB-IoT mean rate"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm, g in table.groupby("arm", sort=False):
        reached = int(g["time_to_target_s"].notna().sum())
        note = "" if reached == len(g) else f" ({reached} of {len(g)} seeds)"
        mb = f"{spread(g['mb_to_target'], '.1f')} ({g['mb_up_to_target'].mean():.1f}){note}" if reached else "not reached"
        ttt = f"{spread(g['time_to_target_s'], '.0f')} s" if reached else "-"
        lines.append(f"| {arm} | {g['kb_up_per_update'].mean():.2f} | {spread(g['final_acc'] * 100, '.1f')}% | {mb} | "
                     f"{ttt} | {spread(g['late_per_round'], '.1f')} | {g['nbiot_mean_rate'].mean():.2f} |")
    seeds = ", ".join(str(s) for s in sorted(table["seed"].unique()))
    lines += ["", f"Seed{'s' if n > 1 else ''} {seeds}; final accuracy = mean of the last 3 evaluations; MB are all "
              f"transfers (downloads and updates) up to the round that first reached the target"
              f"{'; a range is min-max over the seeds' if n > 1 else ''}."]
    return "\n".join(lines)


def plot(runs: dict[Key, Run], arms: list, seeds: list[int], target: float, png: Path) -> Path:
    """Accuracy against megabytes moved and against simulated time (first seed)."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, (ax, right) = plt.subplots(1, 2, figsize=(12, 4.4), dpi=100)
    for i, arm in enumerate(arms):
        run = runs[(arm.name, seeds[0])]
        per_round = run.clients.groupby("round")[["bytes_down", "bytes_up"]].sum().sum(axis=1)
        mb = per_round.reindex(run.rounds["round"]).fillna(0.0).cumsum() / 1e6
        acc = run.rounds.set_index("round")["accuracy"]
        ok = acc.notna().to_numpy()
        style = "--" if arm.kind == "baseline" else "-"
        ax.plot(mb.to_numpy()[ok], acc.to_numpy()[ok], style, color=f"C{i % 10}", lw=1.4, label=arm.name)
        right.plot(run.rounds["sim_time"].to_numpy()[ok] / 60, acc.to_numpy()[ok], style, color=f"C{i % 10}", lw=1.4)
    for a in (ax, right):
        a.axhline(target, color="0.6", lw=0.8, ls=":")
        a.set_ylim(0.5, 0.95)
    ax.set_xscale("log")
    ax.set(xlabel="MB moved so far (log scale)", ylabel="global test accuracy")
    ax.set_title(f"Accuracy against traffic (seed {seeds[0]})", fontsize=9)
    right.set(xlabel="simulated time (min)")
    right.set_title("Accuracy against simulated time", fontsize=9)
    right.grid(alpha=0.3)
    return save_plot(fig, ax, png)


def main(argv: Optional[list[str]] = None) -> int:
    return study_main(argv, __doc__, SCENARIO, "channels-study", 0.85, ARMS, PREFIX, summarise, markdown, plot)


if __name__ == "__main__":
    raise SystemExit(main())
