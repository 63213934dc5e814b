"""The numbers a report shows, computed from run tables (pure pandas; no plotting).

    runs = load_runs("runs/quickstart-*")
    run_summary(runs, target=0.6)[["final_acc_pct", "time_to_target_s"]]
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Optional

import numpy as np
import pandas as pd

from raysim.records import STATUSES
from raysim.report.tables import Runs, is_result_param
from raysim.rundir.reader import Run

NO_RATE = "none"  # the rate column of a device that got no submodel (excluded)


def rate_label(rate: float) -> str:
    """A width rate as people write it: 1, 1/2, 1/8 (ladders halve), or 0.3 for any other rate."""
    if rate is None or (isinstance(rate, float) and math.isnan(rate)):
        return NO_RATE
    frac = Fraction(float(rate)).limit_denominator(1024)
    if frac.numerator == 1 and abs(float(frac) - rate) < 1e-9:
        return "1" if frac.denominator == 1 else f"1/{frac.denominator}"
    return f"{rate:g}"


def rate_order(labels: list[str]) -> list[str]:
    """Rate labels from the largest rate down, `none` last."""
    def key(label: str) -> float:
        return -1.0 if label == NO_RATE else float(Fraction(label)) if "/" in label else float(label)
    return sorted(set(labels), key=key, reverse=True)


def default_target(runs: Runs) -> float:
    """90% of the best accuracy any run reached, floored to a whole percent (a level to compare speed at)."""
    best = max((float(r.rounds["accuracy"].max()) for r in runs if not r.rounds.empty), default=float("nan"))
    if not np.isfinite(best):
        return float("nan")
    return math.floor(90.0 * best) / 100.0


def time_to_target(rounds: pd.DataFrame, target: float) -> tuple[Optional[int], Optional[float]]:
    """First round whose global accuracy reaches `target`, and the simulated seconds by its end."""
    hit = rounds[rounds["accuracy"] >= target]
    if hit.empty:
        return None, None
    first = hit.iloc[0]
    return int(first["round"]), float(first["sim_time"])


LEGEND_CHARS = 60  # a label longer than this crowds a legend; the shorter naming wins then


def short_labels(runs: Runs, sep: str = ", ") -> list[str]:
    """Labels for legends: the values of the parameters the runs differ in, or the run labels.

    The parameter values say most, so they win unless they are not unique or run long (many
    parameters differ) while the run labels are shorter; report.md lists the parameters per run.
    """
    keys = [k for k in runs.varying if is_result_param(k)]
    by_run = list(runs.labels)
    if not keys:
        return by_run
    by_value = [sep.join(f"{k}={format_value(runs.params.at[lab, k])}" for k in keys) for lab in runs.labels]
    if len(set(by_value)) < len(by_value):
        return by_run
    longest = max(len(s) for s in by_value)
    return by_value if longest <= LEGEND_CHARS or longest <= max(len(s) for s in by_run) else by_run


def format_value(value: object) -> str:
    """A parameter value as it reads in a label or table: 0.5, [1,0.5], - for missing."""
    if isinstance(value, tuple):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def outcome_shares(clients: pd.DataFrame, by: str) -> pd.DataFrame:
    """Share (%) of selections ending in each status, per value of `by` (`device_class` or `rate`).

    Rows: the values (rates as labels, largest first); columns: every status, then `selected`.
    """
    if clients.empty:
        return pd.DataFrame(columns=[*STATUSES, "selected"])
    key = clients["rate"].map(rate_label) if by == "rate" else clients[by].astype(str)
    counts = pd.crosstab(key, clients["status"]).reindex(columns=list(STATUSES), fill_value=0)
    order = rate_order(list(counts.index)) if by == "rate" else sorted(counts.index)
    counts = counts.reindex(order)
    selected = counts.sum(axis=1)
    shares = 100.0 * counts.div(selected.replace(0, np.nan), axis=0)
    shares["selected"] = selected
    shares.index.name = by
    shares.columns.name = None
    return shares


def bytes_by_class(clients: pd.DataFrame) -> pd.DataFrame:
    """Megabytes (10^6 bytes) downloaded and uploaded per device class over the whole run."""
    if clients.empty:
        return pd.DataFrame(columns=["mb_down", "mb_up"])
    g = clients.groupby("device_class")[["bytes_down", "bytes_up"]].sum() / 1e6
    return g.rename(columns={"bytes_down": "mb_down", "bytes_up": "mb_up"}).sort_index()


def energy_by_class(run: Run) -> pd.DataFrame:
    """Joules per device class: over the whole run, and per round on average (rounds run)."""
    c = run.clients
    if c.empty or "energy_j" not in c:
        return pd.DataFrame(columns=["energy_j", "j_per_round"])
    rounds = max(1, int(run.rounds["round"].max())) if not run.rounds.empty else 1
    g = c.groupby("device_class")["energy_j"].sum(min_count=1).to_frame("energy_j").sort_index()
    g["j_per_round"] = g["energy_j"] / rounds
    return g


def energy_to(rounds: pd.DataFrame, clients: pd.DataFrame, last_round: Optional[int]) -> Optional[float]:
    """Joules the selected devices spent in rounds 1..`last_round` (None when it was never reached
    or the run has no energy columns)."""
    if last_round is None or "energy_j" not in clients or clients.empty:
        return None
    return float(clients.loc[clients["round"] <= last_round, "energy_j"].sum())


def lost_to_battery(clients: pd.DataFrame) -> tuple[int, int]:
    """Selections whose battery ran empty mid-round (update lost), and those refused for battery."""
    if clients.empty:
        return 0, 0
    depleted = int((clients["status"] == "depleted").sum())
    refused = int(((clients["status"] == "excluded") & clients["reason"].astype(str).str.startswith("battery")).sum())
    return depleted, refused


def cumulative_mb(run: Run) -> np.ndarray:
    """Megabytes moved (down and up) by the end of each round of `run.rounds`."""
    if run.rounds.empty:
        return np.zeros(0)
    c = run.clients
    per_round = (c.groupby("round")[["bytes_down", "bytes_up"]].sum().sum(axis=1) if not c.empty
                 else pd.Series(dtype=float))
    return np.cumsum(per_round.reindex(run.rounds["round"]).fillna(0.0).to_numpy(float)) / 1e6


def dense_mb_up(run: Run) -> pd.Series:
    """Megabytes per device class the applied updates would have taken as dense float32 (the
    rate's parameters x 4 bytes, from the manifest), for runs that compress their uplink."""
    params = (run.manifest.get("info") or {}).get("params") or {}
    c = run.clients
    if c.empty or not params:
        return pd.Series(dtype=float)
    sent = c[c["bytes_up"] > 0]
    dense = sent["rate"].map(lambda r: 4.0 * float(params.get(str(float(r)), params.get(str(r), np.nan))))
    return dense.groupby(sent["device_class"]).sum() / 1e6


def class_table(run: Run) -> pd.DataFrame:
    """One row per device class: selections, outcome counts, mean rate, mean predicted time, MB
    moved, and joules (all rounds, and the mean per selection)."""
    c = run.clients
    if c.empty:
        return pd.DataFrame()
    counts = pd.crosstab(c["device_class"], c["status"])
    counts = counts[[s for s in STATUSES if s in counts.columns]]
    g = c.groupby("device_class")
    counts.insert(0, "selected", g.size())
    counts["mean_rate"] = g["rate"].mean().round(3)
    counts["mean_t_total_s"] = g["t_total"].mean().round(1)
    counts = counts.join(bytes_by_class(c).round(2))
    if str((run.scenario.get("channel") or {}).get("up", "none")) != "none":
        counts["mb_up_dense"] = dense_mb_up(run).reindex(counts.index).round(2)
    if "energy_j" in c:  # runs written before energy was modelled have no such column
        counts["energy_j"] = g["energy_j"].sum(min_count=1).round(1)
        counts["mean_energy_j"] = g["energy_j"].mean().round(2)
    counts.index.name = "device_class"
    counts.columns.name = None
    return counts


def run_summary(runs: Runs, target: float) -> pd.DataFrame:
    """One row per run: length, accuracy, time to `target`, outcome rates (% of selections), traffic."""
    rows = []
    for label, run in zip(runs.labels, runs):
        r = run.rounds
        c = run.clients
        acc = r.dropna(subset=["accuracy"]) if not r.empty else r
        n_sel = max(1, len(c))
        status = c["status"].value_counts() if not c.empty else pd.Series(dtype=int)
        hit_round, hit_time = time_to_target(acc, target) if not acc.empty else (None, None)
        depleted, refused = lost_to_battery(c)
        joules = energy_to(r, c, hit_round)
        rows.append({
            "run": label,
            "rounds": int(r["round"].max()) if not r.empty else 0,
            "sim_time_s": float(r["sim_time"].max()) if not r.empty else float("nan"),
            "final_acc_pct": 100.0 * float(acc["accuracy"].iloc[-1]) if not acc.empty else float("nan"),
            "best_acc_pct": 100.0 * float(acc["accuracy"].max()) if not acc.empty else float("nan"),
            "rounds_to_target": hit_round,
            "time_to_target_s": hit_time,
            "trained_per_round": float(r["trained"].mean()) if not r.empty else float("nan"),
            **{f"{s}_pct": 100.0 * int(status.get(s, 0)) / n_sel for s in STATUSES},
            "mb_down": float(c["bytes_down"].sum()) / 1e6 if not c.empty else 0.0,
            "mb_up": float(c["bytes_up"].sum()) / 1e6 if not c.empty else 0.0,
            "energy_kj": float(c["energy_j"].sum()) / 1e3 if "energy_j" in c and not c.empty else float("nan"),
            "energy_to_target_kj": joules / 1e3 if joules is not None else None,
            "battery_depleted": depleted,
            "battery_refused": refused,
            "wall_s": float(r["wall_s"].sum()) if not r.empty else float("nan"),
        })
    return pd.DataFrame(rows).set_index("run")


def final_rate_accuracy(run: Run) -> pd.Series:
    """Test accuracy (%) of the global model and of each rate's submodel at the last evaluation."""
    e = run.evals
    if e.empty:
        return pd.Series(dtype=float)
    last = e[e["round"] == e["round"].max()]
    return pd.Series(100.0 * last["accuracy"].to_numpy(), index=[rate_label(x) for x in last["rate"]])


def staleness_of(clients: pd.DataFrame) -> pd.DataFrame:
    """The applied updates' staleness (server steps between download and arrival) with their
    device class; runs written before the column existed were synchronous (staleness 0)."""
    if clients.empty or "status" not in clients:
        return pd.DataFrame({"device_class": pd.Series(dtype=object), "staleness": pd.Series(dtype=np.int64)})
    applied = clients[clients["status"].isin(["ok", "partial"])]
    st = applied["staleness"] if "staleness" in applied else pd.Series(0, index=applied.index)
    return pd.DataFrame({"device_class": applied["device_class"].to_numpy(), "staleness": st.to_numpy(np.int64)})


def tier_frame(run: Run) -> pd.DataFrame:
    """Per cloud round: simulated seconds in gateway rounds (the slowest gateway's) and on the
    gateway-cloud link, and megabytes on each tier (device-gateway, gateway-cloud)."""
    g = run.gateways
    per_gw = g.groupby(["round", "gateway"]).agg(rounds_s=("duration", "sum"), link_s=("t_cloud_down", "sum"),
                                                  up_s=("t_cloud_up", "sum"), done=("t_gateway_done", "max"))
    slowest = per_gw.loc[per_gw.groupby("round")["done"].idxmax()].droplevel("gateway")
    by_round = g.groupby("round")
    return pd.DataFrame({
        "gateway_rounds_s": slowest["rounds_s"], "cloud_link_s": slowest["link_s"] + slowest["up_s"],
        "mb_devices": (by_round["bytes_down"].sum() + by_round["bytes_up"].sum()) / 1e6,
        "mb_cloud": (by_round["bytes_cloud_down"].sum() + by_round["bytes_cloud_up"].sum()) / 1e6,
    })
