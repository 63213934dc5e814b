"""raysim: a Ray-based simulator for federated learning with compressed submodels on
heterogeneous IoT devices.

The public surface is this module and `raysim.api` (the contracts of pluggable components);
everything else is internal and may move. Run, load, compare and report:

    import raysim
    run = raysim.simulate("scenarios/quickstart.yaml", out="/tmp/runs")   # components as objects: raysim.api
    run.rounds.plot(x="sim_time", y="accuracy")
    runs = raysim.load_runs(["runs/quickstart-..."])
    raysim.write_report(runs, Path("report"))

Importing raysim is cheap: each name is imported when first used.

    >>> import raysim
    >>> raysim.rate_sizes(10, 0.25)
    3
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from raysim.version import __version__

# name -> the module that defines it (imported on first use: `import raysim` needs no torch or Ray)
_HOMES = {
    "simulate": "raysim.api",
    "run": "raysim.runtime.runner", "RunResult": "raysim.runtime.runner",
    "ray_session": "raysim.runtime.session",
    "plan_sweep": "raysim.sweep", "run_sweep": "raysim.sweep",
    "load_scenario": "raysim.scenario.schema", "parse_scenario": "raysim.scenario.schema",
    "Scenario": "raysim.scenario.schema", "ScenarioError": "raysim.errors",
    "load_run": "raysim.rundir.reader", "Run": "raysim.rundir.reader", "RunError": "raysim.errors",
    "load_runs": "raysim.report.tables", "Runs": "raysim.report.tables",
    "write_report": "raysim.report.markdown",
    "time_to_target": "raysim.report.summaries", "default_target": "raysim.report.summaries",
    "rate_label": "raysim.report.summaries", "rate_order": "raysim.report.summaries",
    "rate_sizes": "raysim.submodel.plan",
    "rng": "raysim.seeding",
}

__all__ = [
    "__version__", "api", "simulate", "run", "RunResult", "ray_session", "plan_sweep", "run_sweep",
    "load_scenario", "parse_scenario", "Scenario", "ScenarioError", "load_run", "Run", "RunError", "load_runs",
    "Runs", "write_report", "time_to_target", "default_target", "rate_label", "rate_order", "rate_sizes", "rng",
]

if TYPE_CHECKING:
    from raysim import api
    from raysim.api import simulate
    from raysim.errors import RunError, ScenarioError
    from raysim.report.markdown import write_report
    from raysim.report.summaries import default_target, rate_label, rate_order, time_to_target
    from raysim.report.tables import Runs, load_runs
    from raysim.rundir.reader import Run, load_run
    from raysim.runtime.runner import RunResult, run
    from raysim.runtime.session import ray_session
    from raysim.scenario.schema import Scenario, load_scenario, parse_scenario
    from raysim.seeding import rng
    from raysim.submodel.plan import rate_sizes
    from raysim.sweep import plan_sweep, run_sweep


def __getattr__(name: str) -> Any:
    if name == "api":
        return importlib.import_module("raysim.api")
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'raysim' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
