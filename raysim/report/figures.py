"""The report's figures (matplotlib, headless). Each takes runs and a path and writes one PNG.

Every figure draws one colour per run, the same in every figure, and puts the run legend
below the axes so long labels never cover data.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from raysim.records import STATUSES  # noqa: E402
from raysim.report.summaries import (  # noqa: E402
    bytes_by_class,
    cumulative_mb,
    energy_by_class,
    final_rate_accuracy,
    outcome_shares,
    rate_order,
    staleness_of,
    tier_frame,
    time_to_target,
)
from raysim.rundir.reader import Run  # noqa: E402

DPI = 120
STATUS_COLOURS = {"ok": "#2ca02c", "partial": "#98df8a", "late": "#ff7f0e", "offline": "#7f7f7f",
                  "excluded": "#c5b0d5", "failed": "#8c564b", "oom": "#d62728", "depleted": "#17becf"}


def run_colours(n: int) -> list:
    """One distinct colour per run: tab10 up to 10 runs, then an evenly spaced colormap."""
    if n <= 10:
        return [plt.get_cmap("tab10")(i) for i in range(n)]
    return [plt.get_cmap("viridis")(x) for x in np.linspace(0.0, 0.92, n)]


def time_unit(max_seconds: float) -> tuple[float, str]:
    """Divisor and name of the unit that keeps simulated times readable (s, min or h)."""
    if not np.isfinite(max_seconds) or max_seconds < 180:
        return 1.0, "s"
    if max_seconds < 3 * 3600:
        return 60.0, "min"
    return 3600.0, "h"


def wrap(label: str, width: int = 32) -> str:
    """Break a long label at its commas/spaces so a tick label stays narrow."""
    return "\n".join(textwrap.wrap(label, width, break_long_words=False, break_on_hyphens=False)) or label


def _legend_below(fig, handles, labels) -> None:
    ncol = 1 if max((len(s) for s in labels), default=0) > 45 else min(len(labels), 3)
    fig.legend(handles, labels, loc="outside lower center", ncol=ncol, fontsize=8, frameon=False)


def _save(fig, out: Path) -> Path:
    out = Path(out)
    fig.savefig(out, dpi=DPI)
    plt.close(fig)
    return out


def plot_accuracy(runs: Sequence[Run], out: Path, labels: Sequence[str] | None = None) -> Path:
    """Global test accuracy vs round and vs simulated time, one line per run."""
    labels = list(labels) if labels is not None else [r.name for r in runs]
    colours = run_colours(len(runs))
    div, unit = time_unit(max((float(r.rounds["sim_time"].max()) for r in runs if not r.rounds.empty), default=0.0))
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2 + 0.22 * _legend_rows(labels)), layout="constrained")
    lines = []
    for run, colour in zip(runs, colours):
        r = run.rounds.dropna(subset=["accuracy"]) if not run.rounds.empty else run.rounds
        if r.empty:
            lines.append(a.plot([], [], color=colour)[0])
            continue
        marker = "." if len(r) <= 60 else None
        lines.append(a.plot(r["round"], 100 * r["accuracy"], marker=marker, color=colour)[0])
        b.plot(r["sim_time"] / div, 100 * r["accuracy"], marker=marker, color=colour)
    a.set(xlabel="round", ylabel="global test accuracy (%)", title="Accuracy per round")
    b.set(xlabel=f"simulated time ({unit})", ylabel="global test accuracy (%)", title="Accuracy over simulated time")
    for ax in (a, b):
        ax.grid(alpha=0.3)
    _legend_below(fig, lines, labels)
    return _save(fig, out)


def _legend_rows(labels: Sequence[str]) -> int:
    ncol = 1 if max((len(s) for s in labels), default=0) > 45 else min(len(labels), 3)
    return -(-len(labels) // max(1, ncol))


def plot_time_to_target(runs: Sequence[Run], out: Path, target: float, labels: Sequence[str]) -> Path:
    """Simulated time each run needs to first reach `target` global accuracy (one bar per run)."""
    hits = [time_to_target(r.rounds.dropna(subset=["accuracy"]), target) if not r.rounds.empty else (None, None)
            for r in runs]
    times = [t for _, t in hits if t is not None]
    div, unit = time_unit(max(times, default=0.0))
    colours = run_colours(len(runs))
    ticks = [wrap(s) for s in labels]
    fig, ax = plt.subplots(figsize=(8, 1.4 + 0.5 * sum(t.count("\n") + 1 for t in ticks)), layout="constrained")
    y = np.arange(len(runs))
    right = max(times, default=1.0) / div
    for i, ((rnd, t), colour) in enumerate(zip(hits, colours)):
        if t is None:
            ax.text(0.01 * right, i, "not reached", va="center", fontsize=8, color="0.35")
            continue
        ax.barh(i, t / div, color=colour, height=0.6)
        ax.text(t / div + 0.01 * right, i, f"round {rnd}", va="center", fontsize=8)
    ax.set_yticks(y, ticks, fontsize=8)
    ax.set_ylim(len(runs) - 0.5, -0.5)  # first run on top; rows without a bar keep their place
    ax.set_xlim(0, right * 1.18 if right > 0 else 1.0)
    ax.set(xlabel=f"simulated time to {100 * target:.0f}% global test accuracy ({unit})",
           title=f"Time to target accuracy ({100 * target:.0f}%)")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, out)


def plot_round_durations(runs: Sequence[Run], out: Path, labels: Sequence[str]) -> Path:
    """Distribution of simulated round durations per run (box, every round as a dot, the deadline)."""
    data = [r.rounds["duration"].to_numpy(float) if not r.rounds.empty else np.zeros(0) for r in runs]
    colours = run_colours(len(runs))
    ticks = [wrap(s) for s in labels]
    fig, ax = plt.subplots(figsize=(8, 1.6 + 0.55 * sum(t.count("\n") + 1 for t in ticks)), layout="constrained")
    y = np.arange(len(runs))
    box = ax.boxplot([d if len(d) else [np.nan] for d in data], positions=y, orientation="horizontal",
                     widths=0.55, showfliers=False, patch_artist=True, medianprops={"color": "black"})
    jitter = np.random.default_rng(0)  # fixed: the same runs give the same picture
    for i, (d, colour, patch) in enumerate(zip(data, colours, box["boxes"])):
        patch.set_facecolor((*colour[:3], 0.25))
        patch.set_edgecolor(colour)
        ax.scatter(d, i + jitter.uniform(-0.18, 0.18, len(d)), s=8, color=colour, alpha=0.7, zorder=3)
    longest = max((float(d.max()) for d in data if len(d)), default=1.0)
    deadlines = [_deadline(r) for r in runs]
    # A deadline far beyond every round would squash the boxes: then it is written, not drawn.
    right = max([longest] + [d for d in deadlines if d is not None and d <= 2 * longest]) * 1.08
    deadline_drawn = False
    for i, dl in enumerate(deadlines):
        if dl is None:
            continue
        if dl <= right:
            ax.plot([dl] * 2, [i - 0.38, i + 0.38], ls="--", color="black", lw=1.2, zorder=4)
            deadline_drawn = True
        else:
            ax.annotate(f"deadline {dl:g} s \u2192", (1.0, i - 0.38), xycoords=("axes fraction", "data"),
                        xytext=(-4, 0), textcoords="offset points", ha="right", va="center", fontsize=8)
    ax.set_yticks(y, ticks, fontsize=8)
    ax.set_ylim(len(runs) - 0.5, -0.5)
    ax.set(xlabel="simulated round duration (s)", title="Round duration")
    ax.set_xlim(0, right)
    ax.grid(axis="x", alpha=0.3)
    if deadline_drawn:
        ax.legend([plt.Line2D([], [], ls="--", color="black")], ["round deadline"], fontsize=8,
                  loc="lower right" if len(runs) > 1 else "upper right")
    return _save(fig, out)


def _deadline(run: Run) -> float | None:
    """The run's round deadline in seconds, or None when rounds wait for everyone."""
    dl = run.scenario.get("deadline") or {}
    return None if dl.get("seconds") is None or dl.get("policy") == "wait" else float(dl["seconds"])


def plot_outcomes(runs: Sequence[Run], out: Path, labels: Sequence[str]) -> Path:
    """Per run: what became of the selected devices (% per status), by device class and by rate."""
    n = len(runs)
    tables = [(outcome_shares(r.clients, "device_class"), outcome_shares(r.clients, "rate")) for r in runs]
    titles = ["" if n == 1 else wrap(label, 110) for label in labels]
    # One band per run: its label across the full width, then the two panels.
    heights = [0.75 + 0.3 * max(len(a), len(b), 1) + 0.18 * (t.count("\n") + 1 if t else 0)
               for (a, b), t in zip(tables, titles)]
    fig = plt.figure(figsize=(11, sum(heights) + 0.9), layout="constrained")
    bands = fig.subfigures(n, 1, height_ratios=heights, squeeze=False)[:, 0]
    for i, (band, (by_class, by_rate), title) in enumerate(zip(bands, tables, titles)):
        axes = band.subplots(1, 2)
        for ax, table, what in ((axes[0], by_class, "device class"), (axes[1], by_rate, "assigned rate")):
            _stacked_shares(ax, table)
            ax.set_title(f"by {what}", fontsize=9)
            ax.set_xlabel("share of selected devices (%)" if i == n - 1 else "")
        if title:
            band.suptitle(title, fontsize=9, fontweight="bold")
    handles = [Patch(color=STATUS_COLOURS[s]) for s in STATUSES]
    fig.legend(handles, list(STATUSES), loc="outside lower center", ncol=len(STATUSES), fontsize=8, frameon=False)
    fig.suptitle("Outcome of selected devices (participation = ok + partial)", fontsize=11)
    return _save(fig, out)


def _stacked_shares(ax, table) -> None:
    if table.empty:
        ax.text(0.5, 0.5, "no selections", ha="center", va="center", transform=ax.transAxes)
        ax.set_yticks([])
        return
    y = np.arange(len(table))
    left = np.zeros(len(table))
    for s in STATUSES:
        v = table[s].fillna(0.0).to_numpy()
        ax.barh(y, v, left=left, color=STATUS_COLOURS[s], height=0.7)
        left += v
    ax.set_yticks(y, [f"{k} (n={int(n)})" for k, n in zip(table.index, table["selected"])], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.grid(axis="x", alpha=0.3)


def plot_bytes(runs: Sequence[Run], out: Path, labels: Sequence[str]) -> Path:
    """Megabytes downloaded and uploaded per device class over each run (grouped bars, one per run)."""
    tables = [bytes_by_class(r.clients) for r in runs]
    classes = sorted(set().union(*[set(t.index) for t in tables])) if tables else []
    colours = run_colours(len(runs))
    n = len(runs)
    height = 0.8 / max(1, n)
    fig, axes = plt.subplots(1, 2, figsize=(11, 1.6 + max(1, len(classes)) * (0.3 + 0.12 * n)
                                            + 0.22 * _legend_rows(labels)),
                             layout="constrained", sharey=True)
    values = np.array([[t.reindex(classes)[col].fillna(0.0).to_numpy() for col in ("mb_down", "mb_up")]
                       for t in tables]) if classes else np.zeros((n, 2, 0))
    positive = values[values > 0]
    log = positive.size > 0 and positive.max() / positive.min() > 50
    y = np.arange(len(classes))
    bars = []
    for ax, j, what in ((axes[0], 0, "downloaded"), (axes[1], 1, "uploaded")):
        for i, colour in enumerate(colours):
            offset = (i - (n - 1) / 2) * height
            b = ax.barh(y + offset, values[i, j] if classes else [], height=height * 0.95, color=colour)
            if j == 0:
                bars.append(b)
        ax.set(xlabel=f"MB {what} over the run" + (" (log scale)" if log else ""), title=f"Bytes {what}")
        if log:
            ax.set_xscale("log")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y, classes, fontsize=8)
    axes[0].set_ylabel("device class")
    axes[0].invert_yaxis()
    if n > 1:
        _legend_below(fig, bars, list(labels))
    return _save(fig, out)


def plot_rate_accuracy(runs: Sequence[Run], out: Path, labels: Sequence[str]) -> Path:
    """Final test accuracy of the global model and of each rate's submodel (grouped bars, one per run)."""
    finals = [final_rate_accuracy(r) for r in runs]
    order = rate_order([k for f in finals for k in f.index]) if any(len(f) for f in finals) else []
    colours = run_colours(len(runs))
    n = len(runs)
    width = 0.8 / max(1, n)
    fig, ax = plt.subplots(figsize=(8, 4.0 + 0.22 * _legend_rows(labels)), layout="constrained")
    x = np.arange(len(order))
    bars = []
    for i, (f, colour) in enumerate(zip(finals, colours)):
        v = f.groupby(level=0).first().reindex(order).to_numpy(float) if order else np.zeros(0)
        bars.append(ax.bar(x + (i - (n - 1) / 2) * width, v, width=width * 0.95, color=colour))
    ax.set_xticks(x, [("global (1)" if k == "1" else k) for k in order])
    ax.set(xlabel="model rate (width of the evaluated submodel)", ylabel="test accuracy at the last round (%)",
           title="Accuracy of each rate's submodel")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    if n > 1:
        _legend_below(fig, bars, list(labels))
    return _save(fig, out)


def plot_staleness(runs: Sequence[Run], out: Path, labels: Sequence[str]) -> Path:
    """How stale the applied updates were: their distribution per run, and the mean by device
    class (synchronous rounds apply every update fresh: staleness 0)."""
    tables = [staleness_of(r.clients) for r in runs]
    colours = run_colours(len(runs))
    n = len(runs)
    classes = sorted(set().union(*[set(t["device_class"]) for t in tables])) if tables else []
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.0 + 0.22 * _legend_rows(labels)), layout="constrained")
    top = max((int(t["staleness"].max()) for t in tables if len(t)), default=0)
    edges = np.arange(-0.5, top + 1.5, max(1, (top + 1) // 40))
    lines = []
    for t, colour in zip(tables, colours):
        counts, _ = np.histogram(t["staleness"], bins=edges)
        share = 100 * counts / max(1, counts.sum())
        lines.append(a.step(edges[:-1] + 0.5, share, where="mid", color=colour)[0])
    a.set(xlabel="staleness of an applied update (server steps)", ylabel="share of applied updates (%)",
          title="Staleness distribution")
    a.grid(alpha=0.3)
    width = 0.8 / max(1, n)
    x = np.arange(len(classes))
    for i, (t, colour) in enumerate(zip(tables, colours)):
        mean = t.groupby("device_class")["staleness"].mean().reindex(classes).to_numpy(float) if classes else []
        b.bar(x + (i - (n - 1) / 2) * width, mean, width=width * 0.95, color=colour)
    b.set_xticks(x, classes, fontsize=8)
    b.set(xlabel="device class", ylabel="mean staleness (server steps)", title="Staleness by device class")
    b.grid(axis="y", alpha=0.3)
    _legend_below(fig, lines, list(labels))
    return _save(fig, out)


def plot_energy(runs: Sequence[Run], out: Path, labels: Sequence[str]) -> Path:
    """Joules per device class per round (grouped bars, one per run) and the run's total over
    simulated time (one line per run)."""
    tables = [energy_by_class(r) for r in runs]
    classes = sorted(set().union(*[set(t.index) for t in tables])) if tables else []
    colours = run_colours(len(runs))
    n = len(runs)
    height = 0.8 / max(1, n)
    fig, axes = plt.subplots(1, 2, figsize=(11, 1.8 + max(1, len(classes)) * (0.3 + 0.12 * n)
                                            + 0.22 * _legend_rows(labels)), layout="constrained")
    ax = axes[0]
    values = np.array([t.reindex(classes)["j_per_round"].fillna(0.0).to_numpy() for t in tables]) if classes \
        else np.zeros((n, 0))
    positive = values[values > 0]
    log = positive.size > 0 and positive.max() / positive.min() > 50
    y = np.arange(len(classes))
    bars = []
    for i, colour in enumerate(colours):
        bars.append(ax.barh(y + (i - (n - 1) / 2) * height, values[i] if classes else [], height=height * 0.95,
                            color=colour))
    ax.set_yticks(y, classes, fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel="J per round (all selected devices of the class)" + (" (log scale)" if log else ""),
           ylabel="device class", title="Energy per device class")
    if log:
        ax.set_xscale("log")
    ax.grid(axis="x", alpha=0.3)
    ax = axes[1]
    longest = max((float(r.rounds["sim_time"].max()) for r in runs if not r.rounds.empty), default=1.0)
    scale, unit = time_unit(longest)
    for r, colour in zip(runs, colours):
        c = r.clients
        if c.empty or "energy_j" not in c or r.rounds.empty:
            continue
        per_round = c.groupby("round")["energy_j"].sum().reindex(r.rounds["round"]).fillna(0.0).to_numpy()
        ax.plot(r.rounds["sim_time"].to_numpy() / scale, np.cumsum(per_round) / 1e3, color=colour)
    ax.set(xlabel=f"simulated time ({unit})", ylabel="kJ spent by selected devices", title="Energy over time")
    ax.grid(alpha=0.3)
    if n > 1:
        _legend_below(fig, bars, list(labels))
    return _save(fig, out)


def has_batteries(run: Run) -> bool:
    """Whether a run tracked batteries (it has a `batteries.parquet`)."""
    return not run.batteries.empty


def plot_batteries(runs: Sequence[Run], out: Path, labels: Sequence[str]) -> Path:
    """Charge of each battery class over simulated time: the median device (line) and the 10th to
    90th percentile (band), one colour per run; devices whose battery ran empty, per round."""
    with_b = [(r, lab, c) for r, lab, c in zip(runs, labels, run_colours(len(runs))) if has_batteries(r)]
    classes = sorted(set().union(*[set(r.batteries["device_class"]) for r, _, _ in with_b]))
    longest = max(float(r.batteries["sim_time"].max()) for r, _, _ in with_b)
    scale, unit = time_unit(longest)
    fig, axes = plt.subplots(len(classes), 2, figsize=(11, 0.6 + 2.2 * len(classes) + 0.22 * _legend_rows(labels)),
                             layout="constrained", squeeze=False)
    lines = []
    for k, cls in enumerate(classes):
        left, right = axes[k]
        for r, _lab, colour in with_b:
            b = r.batteries[r.batteries["device_class"] == cls]
            t = b["sim_time"].to_numpy() / scale
            (line,) = left.plot(t, 100 * b["charge_p50"].to_numpy(), color=colour)
            left.fill_between(t, 100 * b["charge_p10"].to_numpy(), 100 * b["charge_p90"].to_numpy(), color=colour,
                              alpha=0.15, lw=0)
            right.plot(t, b["empty"].to_numpy(), color=colour)
            if k == 0:
                lines.append(line)
        left.set(ylabel=f"{cls}\ncharge (% of capacity)", ylim=(0, 100))
        right.set(ylabel="devices empty")
        for ax in (left, right):
            ax.grid(alpha=0.3)
    axes[0][0].set_title("Battery charge: median, 10th-90th percentile")
    axes[0][1].set_title("Devices with an empty battery")
    for ax in axes[-1]:
        ax.set_xlabel(f"simulated time ({unit})")
    if len(with_b) > 1:
        _legend_below(fig, lines, [lab for _, lab, _ in with_b])
    return _save(fig, out)


def has_gateways(run: Run) -> bool:
    """Whether a run went through gateways (it has a `gateways.parquet`)."""
    return not run.gateways.empty


def plot_gateways(runs: Sequence[Run], out: Path, labels: Sequence[str]) -> Path:
    """Runs through gateways: per cloud round, the slowest gateway's time in its gateway rounds
    and on the cloud link, and the megabytes on each tier; one colour per run."""
    with_g = [(r, lab, c) for r, lab, c in zip(runs, labels, run_colours(len(runs))) if has_gateways(r)]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8 + 0.22 * _legend_rows(labels)), layout="constrained")
    lines = []
    for r, _lab, colour in with_g:
        t = tier_frame(r)
        (line,) = left.plot(t.index, t["gateway_rounds_s"], color=colour)
        left.plot(t.index, t["cloud_link_s"], color=colour, ls="--")
        right.plot(t.index, t["mb_devices"], color=colour)
        right.plot(t.index, t["mb_cloud"], color=colour, ls="--")
        lines.append(line)
    left.set(xlabel="cloud round", ylabel="simulated seconds",
             title="Slowest gateway: gateway rounds (solid), cloud link (dashed)")
    right.set(xlabel="cloud round", ylabel="MB", title="Traffic: devices-gateways (solid), gateways-cloud (dashed)")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if len(with_g) > 1:
        _legend_below(fig, lines, [lab for _, lab, _ in with_g])
    return _save(fig, out)


def plot_accuracy_bytes(runs: Sequence[Run], out: Path, labels: Sequence[str]) -> Path:
    """Global test accuracy against the megabytes moved so far (down and up), one line per run:
    what a channel or a smaller submodel buys in traffic."""
    colours = run_colours(len(runs))
    fig, ax = plt.subplots(figsize=(7.5, 4.2 + 0.22 * _legend_rows(labels)), layout="constrained")
    lines = []
    mbs = [cumulative_mb(r) for r in runs]
    positive = [float(m[m > 0].min()) for m in mbs if (m > 0).any()]
    log = bool(positive) and max(float(m.max()) for m in mbs if len(m)) / min(positive) > 100
    for run, mb, colour in zip(runs, mbs, colours):
        r = run.rounds
        acc = r["accuracy"].to_numpy(float) if not r.empty else np.zeros(0)
        keep = ~np.isnan(acc)
        lines.append(ax.plot(mb[keep], 100 * acc[keep], marker="." if keep.sum() <= 60 else None, color=colour)[0])
    ax.set(xlabel="MB moved so far, down and up" + (" (log scale)" if log else ""), ylabel="global test accuracy (%)",
           title="Accuracy against traffic")
    if log:
        ax.set_xscale("log")
    ax.grid(alpha=0.3)
    _legend_below(fig, lines, list(labels))
    return _save(fig, out)
