"""Figures and a text summary of one or more runs (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from raysim.results import Run  # noqa: E402


def plot_accuracy(runs: Sequence[Run], out: Path) -> Path:
    """Global accuracy vs round and vs simulated time, one line per run."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for run in runs:
        r = run.rounds.dropna(subset=["accuracy"])
        a.plot(r["round"], 100 * r["accuracy"], marker=".", label=run.name)
        b.plot(r["sim_time"] / 60.0, 100 * r["accuracy"], marker=".", label=run.name)
    a.set(xlabel="round", ylabel="global test accuracy (%)", title="Accuracy per round")
    b.set(xlabel="simulated time (min)", ylabel="global test accuracy (%)", title="Accuracy over simulated time")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    out = Path(out)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def summary_table(run: Run) -> pd.DataFrame:
    """One row per device class: selections and outcome counts, rates, mean predicted time."""
    c = run.clients
    if c.empty:
        return pd.DataFrame()
    counts = c.pivot_table(index="device_class", columns="status", values="round", aggfunc="count", fill_value=0)
    g = c.groupby("device_class")
    counts.insert(0, "selected", g.size())
    counts["mean_rate"] = g["rate"].mean().round(3)
    counts["mean_t_total_s"] = g["t_total"].mean().round(1)
    counts.columns.name = None
    return counts


def summary_text(run: Run) -> str:
    """A one-screen summary of a run."""
    r = run.rounds
    last = r.iloc[-1]
    best = r["accuracy"].max()
    lines = [
        f"run        {run.path}",
        f"rounds     {int(last['round'])}   simulated time {last['sim_time'] / 60:.1f} min   "
        f"wall {r['wall_s'].sum():.1f} s",
        f"accuracy   final {100 * last['accuracy']:.2f}%   best {100 * best:.2f}%",
        f"devices    trained {int(r['trained'].sum())}   late {int(r['n_late'].sum())}   "
        f"offline {int(r['n_offline'].sum())}   excluded {int(r['n_excluded'].sum())}   failed {int(r['n_failed'].sum())}",
        "",
        summary_table(run).to_string(),
    ]
    return "\n".join(lines)
