"""Example study: run the quickstart scenario, report it, and read its tables with pandas.

From a fresh clone (`make run` or `make test` creates .venv first):

    .venv/bin/python analysis/quickstart_report.py                    # about a minute on 2 cores
    .venv/bin/python analysis/quickstart_report.py --set rounds=10 --out /tmp/runs

It prints which share of each device class took part at each rate and when the global model
first reached 60% accuracy, and writes the report (PNGs + report.md) into the run directory.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from raysim import load_runs, load_scenario, rate_label, rate_order, run, time_to_target, write_report

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "scenarios" / "quickstart.yaml"


def participation(clients: pd.DataFrame) -> pd.DataFrame:
    """Share (%) of selected devices that trained (ok or partial), per device class and assigned rate."""
    trained = clients["status"].isin(["ok", "partial"])
    table = (clients.assign(rate=clients["rate"].map(rate_label), trained=100.0 * trained)
             .pivot_table(index="device_class", columns="rate", values="trained", aggfunc="mean"))
    return table[rate_order(list(table.columns))].round(1)


def main(argv: Optional[Sequence[str]] = None) -> Path:
    """Run, report and summarise; returns the run directory."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a scenario field (repeatable)")
    p.add_argument("--out", default=str(ROOT / "runs"), help="parent directory for the run (default: runs/)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)

    sc = load_scenario(SCENARIO, args.overrides)
    path = run(sc, out_root=args.out, progress=not args.quiet).path
    runs = load_runs(path)
    report = write_report(runs, path)

    print(f"run      {path}")
    print(f"report   {report.markdown}")
    print("\nparticipation (% of selected devices that trained), by class and assigned rate:")
    print(participation(runs.clients).to_string())
    hit_round, hit_time = time_to_target(runs.rounds, 0.6)
    reached = f"round {hit_round}, {hit_time:.0f} s simulated" if hit_round else "not within the run"
    print(f"\n60% global accuracy: {reached}")
    return path


if __name__ == "__main__":
    main()
