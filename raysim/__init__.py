"""raysim: a Ray-based simulator for federated learning with compressed submodels on
heterogeneous IoT devices.

    >>> import raysim
    >>> run = raysim.simulate("scenarios/quickstart.yaml", out="/tmp/runs")   # components as objects: raysim.api
    >>> run = raysim.load_run("runs/quickstart-...")
    >>> run.rounds.plot(x="sim_time", y="accuracy")
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy: `import raysim` stays cheap (no torch/ray import) until something is used.
    if name in ("load_run", "Run", "RunError"):
        from raysim import results  # noqa: PLC0415

        return getattr(results, name)
    if name in ("load_runs", "Runs"):
        from raysim import tables  # noqa: PLC0415

        return getattr(tables, name)
    if name == "simulate":
        from raysim.api import simulate  # noqa: PLC0415

        return simulate
    if name == "api":
        import importlib  # noqa: PLC0415

        return importlib.import_module("raysim.api")
    if name in ("load_scenario", "Scenario", "ScenarioError"):
        from raysim import config  # noqa: PLC0415

        return getattr(config, name)
    raise AttributeError(name)


__all__ = ["simulate", "api", "load_run", "Run", "RunError", "load_runs", "Runs", "load_scenario", "Scenario", "ScenarioError", "__version__"]
