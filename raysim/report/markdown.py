"""A report over one or more runs: the figures as PNGs and a short markdown summary.

    from raysim.report.tables import load_runs
    rep = write_report(load_runs("runs/quickstart-sweep-*"), Path("out"))
    rep.markdown, [p.name for p in rep.figures]
    # (PosixPath('out/report.md'), ['accuracy.png', 'time_to_target.png', ...])
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import pandas as pd

from raysim.records import STATUSES
from raysim.report import figures
from raysim.report.figures import has_batteries, plot_accuracy
from raysim.report.summaries import (
    class_table,
    default_target,
    format_value,
    lost_to_battery,
    run_summary,
    short_labels,
    tier_frame,
)
from raysim.report.tables import Runs
from raysim.rundir.reader import Run, RunError
from raysim.rundir.writer import atomic_write_text

__all__ = ["FIGURES", "Report", "plot_accuracy", "summary_table", "summary_text", "write_report"]


@dataclass(frozen=True)
class Figure:
    """One figure of the report: its file, its heading in report.md, and what draws it."""

    file: str
    title: str
    caption: str
    draw: Callable[..., Path]
    shown: Callable[[list[Run]], bool] = lambda runs: True  # whether it says anything about these runs


FIGURES = (
    Figure("accuracy.png", "Accuracy", "Global test accuracy per round and over simulated time.",
           lambda runs, out, labels, target: figures.plot_accuracy(runs, out, labels)),
    Figure("time_to_target.png", "Time to target accuracy",
           "Simulated time until the global model first reaches the target accuracy.",
           lambda runs, out, labels, target: figures.plot_time_to_target(runs, out, target, labels)),
    Figure("round_duration.png", "Round duration",
           "Simulated length of each round; the dashed mark is the round deadline.",
           lambda runs, out, labels, target: figures.plot_round_durations(runs, out, labels)),
    Figure("outcomes.png", "Participation and stragglers",
           "What became of the selected devices, by device class and by assigned rate: trained "
           "(ok, partial), late (stragglers), offline, out of memory, failed, excluded (no rate fits).",
           lambda runs, out, labels, target: figures.plot_outcomes(runs, out, labels)),
    Figure("accuracy_bytes.png", "Accuracy against traffic",
           "Global test accuracy against the megabytes moved so far (downloads and updates): what a channel "
           "(channel.up, channel.down) or smaller submodels buy in traffic.",
           lambda runs, out, labels, target: figures.plot_accuracy_bytes(runs, out, labels)),
    Figure("bytes.png", "Traffic", "Megabytes moved per device class, down (global weights) and up (updates).",
           lambda runs, out, labels, target: figures.plot_bytes(runs, out, labels)),
    Figure("energy.png", "Energy",
           "Joules the selected devices of each class spent per round (compute, radio, waiting for the round "
           "to close), and the run's total over simulated time.",
           lambda runs, out, labels, target: figures.plot_energy(runs, out, labels),
           lambda runs: any("energy_j" in r.clients for r in runs)),
    Figure("batteries.png", "Batteries",
           "Charge of each battery-powered class over simulated time (median device and 10th-90th "
           "percentile), and devices whose battery ran empty.",
           lambda runs, out, labels, target: figures.plot_batteries(runs, out, labels),
           lambda runs: any(figures.has_batteries(r) for r in runs)),
    Figure("gateways.png", "Gateways",
           "Runs through gateways: per cloud round, the slowest gateway's simulated time in its gateway rounds "
           "and on its link to the cloud, and the megabytes on each tier.",
           lambda runs, out, labels, target: figures.plot_gateways(runs, out, labels),
           lambda runs: any(figures.has_gateways(r) for r in runs)),
    Figure("staleness.png", "Staleness",
           "Server steps between the version a device downloaded and the step its update went into "
           "(asynchronous modes; synchronous rounds apply every update fresh), overall and by device class.",
           lambda runs, out, labels, target: figures.plot_staleness(runs, out, labels),
           lambda runs: any(is_asynchronous(r) for r in runs)),
    Figure("rate_accuracy.png", "Accuracy per rate",
           "Test accuracy of the global model and of each rate's submodel at the last evaluation.",
           lambda runs, out, labels, target: figures.plot_rate_accuracy(runs, out, labels)),
)


@dataclass
class Report:
    """What `write_report` wrote."""

    markdown: Path
    figures: list[Path]
    summary: pd.DataFrame
    target: float


def is_asynchronous(run: Run) -> bool:
    """Whether a run's server applied updates asynchronously (FedBuff, FedAsync)."""
    return (run.scenario.get("server") or {}).get("mode", "sync") != "sync"


def figures_for(runs: Runs) -> list[Figure]:
    """The report's figures that say something about these runs (staleness: asynchronous ones)."""
    return [f for f in FIGURES if f.shown(list(runs))]


def write_report(runs: Runs, out: Path, target: Optional[float] = None) -> Report:
    """Write every figure and `report.md` into `out`; `target` is an accuracy in [0, 1]."""
    if target is not None and not 0.0 < target <= 1.0:
        raise RunError(f"target accuracy {target}: must be in (0, 1] (or a percentage in (1, 100])")
    empty = [str(r.path) for r in runs if r.rounds.empty]
    if empty:
        raise RunError(f"{', '.join(empty)}: no round has completed yet, so there is nothing to report")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    target = default_target(runs) if target is None else target
    labels = short_labels(runs)
    paths = [fig.draw(list(runs), out / fig.file, labels, target) for fig in figures_for(runs)]
    summary = run_summary(runs, target)
    md = out / "report.md"
    atomic_write_text(md, markdown(runs, summary, target, out))
    return Report(md, paths, summary, target)


def markdown(runs: Runs, summary: pd.DataFrame, target: float, out: Path) -> str:
    """The text of report.md: the runs side by side, the figures, outcomes per device class."""
    lines = [f"# raysim report: {len(runs)} run{'s' if len(runs) != 1 else ''}", ""]
    if runs.varying:
        lines += [f"Parameters that differ: {', '.join(f'`{k}`' for k in runs.varying)}.", ""]
    tgt = f"{100 * target:.0f}%" if math.isfinite(target) else "n/a"
    lines += [f"Target accuracy {tgt} (time to target below; `raysim report --target` sets it).", "",
              "## Runs", "", markdown_table(_runs_table(runs, summary)), ""]
    for fig in figures_for(runs):
        lines += [f"## {fig.title}", "", fig.caption, "", f"![{fig.title}]({fig.file})", ""]
    lines += ["## Outcomes by device class", ""]
    for label, run in zip(runs.labels, runs):
        lines += [f"### {label}", "", f"Run directory: `{_rel(run.path, out)}`", "",
                  markdown_table(class_table(run).reset_index()), ""]
    return "\n".join(lines)


def _runs_table(runs: Runs, summary: pd.DataFrame) -> pd.DataFrame:
    s = summary
    t = pd.DataFrame({"run": runs.labels}, index=s.index)
    for k in runs.varying:
        t[k] = [format_value(v) for v in runs.params[k]]
    t["rounds"] = s["rounds"]
    t["sim. time (s)"] = s["sim_time_s"].round(1)
    t["final acc. (%)"] = s["final_acc_pct"].round(2)
    t["best acc. (%)"] = s["best_acc_pct"].round(2)
    t["time to target (s)"] = [("-" if v is None or pd.isna(v) else f"{v:.1f}") for v in s["time_to_target_s"]]
    t["rounds to target"] = [("-" if v is None or pd.isna(v) else str(int(v))) for v in s["rounds_to_target"]]
    t["trained / round"] = s["trained_per_round"].round(1)
    for st in ("late", "offline", "oom", "excluded"):
        t[f"{st} (%)"] = s[f"{st}_pct"].round(1)
    t["MB down"] = s["mb_down"].round(1)
    t["MB up"] = s["mb_up"].round(1)
    if s["energy_kj"].notna().any():
        t["energy (kJ)"] = s["energy_kj"].round(3)
        t["kJ to target"] = [("-" if v is None or pd.isna(v) else f"{v:.3g}") for v in s["energy_to_target_kj"]]
    if any(has_batteries(r) for r in runs):
        t["battery: ran empty"] = s["battery_depleted"]
        t["battery: refused"] = s["battery_refused"]
    t["wall (s)"] = s["wall_s"].round(1)
    return t.reset_index(drop=True)


def markdown_table(df: pd.DataFrame) -> str:
    """A DataFrame as a GitHub markdown table (no index)."""
    if df.empty:
        return "_no rows_"
    cols = [str(c) for c in df.columns]
    cells = [[_cell(v) for v in row] for row in df.itertuples(index=False)]
    head = "| " + " | ".join(cols) + " |"
    rule = "|" + "|".join("---:" if pd.api.types.is_numeric_dtype(df[c]) else "---" for c in df.columns) + "|"
    return "\n".join([head, rule, *("| " + " | ".join(r) + " |" for r in cells)])


def _cell(v: object) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    return str(v).replace("|", "\\|")


def _rel(path: Path, start: Path) -> str:
    """`path` relative to the report when it lies near it (a sweep's runs), else absolute."""
    try:
        rel = os.path.relpath(path, start)
    except ValueError:  # another drive
        return str(path)
    return str(path) if rel.startswith(os.path.join(os.pardir, os.pardir)) else rel


def summary_table(run: Run) -> pd.DataFrame:
    """One row per device class: selections and outcome counts, rates, mean predicted time, MB moved."""
    return class_table(run)


def summary_text(run: Run) -> str:
    """A one-screen summary of a run."""
    r = run.rounds
    last = r.iloc[-1]
    best = r["accuracy"].max()
    counts = {s: int(r[f"n_{s}"].sum()) for s in STATUSES if f"n_{s}" in r.columns}
    lines = [
        f"run        {run.path}",
        f"rounds     {int(last['round'])}   simulated time {last['sim_time'] / 60:.1f} min   "
        f"wall {r['wall_s'].sum():.1f} s",
        f"accuracy   final {100 * last['accuracy']:.2f}%   best {100 * best:.2f}%",
        f"devices    trained {int(r['trained'].sum())}   late {counts.get('late', 0)}   "
        f"offline {counts.get('offline', 0)}   oom {counts.get('oom', 0)}   "
        f"excluded {counts.get('excluded', 0)}   failed {counts.get('failed', 0)}",
    ]
    if "energy_j" in r.columns and r["energy_j"].notna().any():
        e = run.clients
        parts = {k: float(e[f"energy_{k}_j"].sum()) for k in ("compute", "tx", "rx", "idle")}
        total = float(r["energy_j"].sum())
        lines.append(f"energy     {total:.1f} J in all:   " + "   ".join(
            f"{k} {100 * v / total if total else 0:.0f}%" for k, v in parts.items()))
    if has_batteries(run):
        b = run.batteries[run.batteries["round"] == run.batteries["round"].max()]
        depleted, refused = lost_to_battery(run.clients)
        lines.append(f"batteries  ran empty mid-round {depleted}   refused for battery {refused}   at the end: " +
                     "   ".join(f"{row.device_class} median {100 * row.charge_p50:.0f}% ({row.empty} empty)"
                                for row in b.itertuples()))
    if figures.has_gateways(run):
        t = tier_frame(run)
        g = run.gateways
        span = float((t["gateway_rounds_s"] + t["cloud_link_s"]).sum())
        shape = (f"{g['gateway'].nunique()} gateways, {int(g['gateway_round'].max())} gateway rounds an upload, "
                 f"the cloud {run.scenario['server']['mode']}" if is_asynchronous(run) else
                 f"{g['gateway'].nunique()} x {int(g['gateway_round'].max())} gateway rounds a cloud round")
        lines.append(f"gateways   {shape}:"
                     f"   MB devices-gateways {t['mb_devices'].sum():.1f}, gateways-cloud {t['mb_cloud'].sum():.1f}"
                     f"   gateways' own energy {g['gateway_energy_j'].sum() / 1e3:.1f} kJ"
                     f"   slowest gateway's time on the cloud link "
                     f"{100 * float(t['cloud_link_s'].sum()) / span if span else 0:.0f}%")
    training = _training_line(run)
    if training:
        lines.append(f"training   {training}")
    lines += ["", summary_table(run).to_string()]
    return "\n".join(lines)


def _training_line(run: Run) -> str:
    """Where hosts trained and how: per device, batched, or per rate (`auto`'s choice, or the
    rates of `on` whose batched training could not be built)."""
    info = run.manifest.get("info", {})
    mode = str((run.scenario.get("train") or {}).get("batched", "off"))
    if "device" not in info:
        return ""
    how = {"off": "one device at a time", "on": "batched"}.get(mode, "")
    choices = info.get("batched") or {}
    if mode in ("auto", "on") and choices and (mode == "auto" or not all(choices.values())):
        pick: dict[bool, list[str]] = {True: [], False: []}
        for rate, b in sorted(choices.items(), key=lambda kv: -float(kv[0])):
            pick[bool(b)].append(f"{float(rate):g}")
        how = f"{mode}: " + "; ".join(f"{word} at rate {', '.join(pick[b])}" for b, word in
                                      ((True, "batched"), (False, "one at a time")) if pick[b])
        if info.get("unbatched"):
            how += " (why: the manifest's info.unbatched)"
    return f"{info['device']}, {how}" if how else str(info["device"])
