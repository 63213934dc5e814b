"""`raysim fleet`: the fleet by class, and which rates each class can train. Trains nothing."""

from __future__ import annotations

import numpy as np
import pandas as pd

from raysim.engine.cost import device_times
from raysim.engine.energy import Phases, phase_energy, seconds
from raysim.engine.setup import Setup
from raysim.scenario.schema import Scenario
from raysim.seeding import rng


def fleet_table(sc: Scenario, setup: Setup) -> pd.DataFrame:
    """One row per device class: size, median profile, and the share able to train each rate."""
    fleet = setup.fleet
    cls = fleet.classes()
    samples = setup.shards.sizes()
    all_idx = np.arange(len(fleet))
    times = {r: device_times(fleet, all_idx, c, samples, sc.train.epochs, rng(sc.seed, "fleet-view"), jitter=0.0).total
             for r, c in setup.costs.items()}
    rows = []
    for name in dict.fromkeys(cls):
        m = cls == name
        row = {
            "class": name, "devices": int(m.sum()),
            "GFLOP/s": float(np.median(fleet.flops[m]) / 1e9),
            "memory_MiB": float(np.median(fleet.memory[m]) / 2**20),
            "down_Mbit/s": float(np.median(fleet.down_bps[m]) / 1e6),
            "up_Mbit/s": float(np.median(fleet.up_bps[m]) / 1e6),
            "samples": float(np.median(samples[m])),
        }
        for r, c in setup.costs.items():
            ok = fleet.memory[m] >= c.memory_bytes
            if sc.deadline.seconds is not None and sc.deadline.policy != "wait":
                ok &= times[r][m] <= sc.deadline.seconds
            row[f"rate {r:g}"] = f"{100 * ok.mean():.0f}%"
        rows.append(row)
    return pd.DataFrame(rows).set_index("class")


def energy_table(sc: Scenario, setup: Setup) -> pd.DataFrame:
    """One row per device class: its radio, and the median joules one round of local work costs
    at each rate (download, compute, upload; no waiting), whether or not the rate fits it."""
    fleet = setup.fleet
    cls = fleet.classes()
    samples = setup.shards.sizes()
    all_idx = np.arange(len(fleet))
    power = fleet.power_of(all_idx)
    joules = {}
    for r, c in setup.costs.items():
        t = device_times(fleet, all_idx, c, samples, sc.train.epochs, rng(sc.seed, "fleet-view"), jitter=0.0)
        phases = Phases(t.download, t.compute, t.upload, np.ones(len(fleet)), np.ones(len(fleet), bool),
                        t.wait_download, t.wait_upload)
        joules[r] = phase_energy(seconds(phases, np.inf), power).total
    radio = dict(zip(fleet.class_names, fleet.power.radio)) if fleet.power is not None else {}
    rows = []
    for name in dict.fromkeys(cls):
        m = cls == name
        row: dict[str, object] = {"class": name, "radio": radio.get(name, "?")}
        row.update({f"J at {r:g}": float(np.median(j[m])) for r, j in joules.items()})
        rows.append(row)
    return pd.DataFrame(rows).set_index("class")


def fleet_summary(sc: Scenario) -> str:
    """The text `raysim fleet` prints."""
    from raysim.scenario.build import prepare  # noqa: PLC0415

    setup = prepare(sc)
    lines = [f"fleet of {len(setup.fleet)} devices; model {setup.spec.name}, batch {sc.train.batch_size}"]
    for r, c in setup.costs.items():
        lines.append(f"  rate {r:<6g} params {c.params:>9,}  train memory {c.memory_bytes / 2**20:8.2f} MiB  "
                     f"{c.flops_per_sample / 1e6:8.2f} MFLOP/sample")
    dl = sc.deadline
    lines.append(f"deadline: {dl.seconds if dl.seconds is not None else 'none'} s ({dl.policy}); a rate counts as "
                 f"trainable when it fits memory"
                 + (" and the predicted time meets the deadline" if dl.seconds and dl.policy != "wait" else ""))
    lines.append("")
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        lines.append(fleet_table(sc, setup).round(2).to_string())
        lines += ["", "energy of one round's local work per device (median J; raysim/fleet/radios.yaml, catalogue.yaml):",
                  energy_table(sc, setup).round(3).to_string()]
    return "\n".join(lines)
