"""Many run directories as tidy DataFrames, with the scenario's parameters as columns.

`load_runs` reads every run a glob (or a sweep's parent directory) names and stacks their
tables: one row per round, per (round, device), per (round, evaluated model), each with a
`run` column and one column per scenario parameter that differs between the runs, so a study
is a `groupby` away:

    runs = load_runs("runs/quickstart-sweep-*/")
    runs.varying
    # ['deadline.seconds']
    runs.rounds.groupby("deadline.seconds")["accuracy"].max()
    runs.clients.groupby(["deadline.seconds", "device_class"])["status"].value_counts()
"""

from __future__ import annotations

import glob as _glob
import json
import os
import re
import warnings
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator, Sequence

import pandas as pd

from raysim.rundir.reader import SWEEP_FILE, Run, RunError, load_run

# Parameters that never change what a run computes (where it writes, how many processes do
# the work) or that label it; they are kept in `Runs.params` but not used to tell runs apart.
NON_RESULT_PARAMS = ("name", "output.", "runtime.")


def flatten_params(scenario: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested scenario mapping as `section.field` keys; lists become tuples (hashable, groupable)."""
    flat: dict[str, Any] = {}
    for key, value in scenario.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten_params(value, f"{name}."))
        elif isinstance(value, list):
            flat[name] = tuple(value)
        else:
            flat[name] = value
    return flat


def is_result_param(name: str) -> bool:
    """False for parameters that cannot change a run's numbers (name, output.*, runtime.*)."""
    return not any(name == p or (p.endswith(".") and name.startswith(p)) for p in NON_RESULT_PARAMS)


def find_run_dirs(patterns: str | Path | Sequence[str | Path]) -> list[Path]:
    """Run directories named by paths or globs; a directory that is no run is searched below.

    Order: as the patterns are given; a glob's matches and a directory's runs in natural order
    (`=2` before `=120`), a sweep's points in the order of its grid. Raises RunError when a
    pattern names nothing or a directory holds no run.
    """
    if isinstance(patterns, (str, Path)):
        patterns = [patterns]
    found: dict[Path, None] = {}  # ordered set, keyed by resolved path
    for pat in patterns:
        text = str(pat)
        matches = sorted(_glob.glob(text), key=natural_key) if _glob.has_magic(text) else [text]
        if not matches:
            raise RunError(f"{text}: no run directories match")
        for m in matches:
            for d in _runs_under(Path(m)):
                found.setdefault(d.resolve(), None)
    return list(found)


def natural_key(text: str | Path) -> list:
    """Sort key that compares the numbers inside names as numbers (0.25 < 0.5 < 2 < 120)."""
    parts = re.split(r"(\d+(?:\.\d+)?)", str(text))
    return [(0, float(p), "") if i % 2 else (1, 0.0, p) for i, p in enumerate(parts)]


def _runs_under(path: Path) -> list[Path]:
    if (path / "manifest.json").is_file():
        return [path]
    if not path.is_dir():
        raise RunError(f"{path}: not a run directory (no such directory)")
    below = sorted((m.parent for m in path.rglob("manifest.json") if m.parent != path), key=natural_key)
    if not below:
        raise RunError(f"{path}: not a run directory (no manifest.json), and holds none")
    return _grid_order(path, below)


def _grid_order(parent: Path, runs: list[Path]) -> list[Path]:
    """A sweep's runs in the order of its grid (as `sweep.json` lists the points)."""
    book = parent / SWEEP_FILE
    if not book.is_file():
        return runs
    try:
        dirs = [p["dir"] for p in json.loads(book.read_text())["points"].values()]
    except (ValueError, KeyError, TypeError):
        return runs  # an unreadable sweep.json only loses the order
    rank = {parent / d: i for i, d in enumerate(dirs)}
    return sorted(runs, key=lambda r: rank.get(r, len(rank)))


def run_labels(runs: Sequence[Run]) -> list[str]:
    """Unique, short names for runs: their scenario names, else directory names, else relative paths."""
    for candidate in ([r.name for r in runs], [r.path.name for r in runs]):
        if len(set(candidate)) == len(candidate):
            return candidate
    paths = [str(r.path.resolve()) for r in runs]
    root = os.path.commonpath(paths) if len(paths) > 1 else os.path.dirname(paths[0])
    return [os.path.relpath(p, root) for p in paths]


def _same(values: pd.Series) -> bool:
    # repr: None, NaN, tuples and mixed types compare the way they read.
    return values.map(repr).nunique() <= 1


class Runs:
    """Several runs: each as a `Run`, and their tables stacked with `run` and parameter columns.

    `params` has one row per run (index: the run label) and every flattened scenario
    parameter; `varying` names those that differ between the runs (and could change results).
    """

    def __init__(self, runs: Sequence[Run], all_params: bool = False) -> None:
        if not runs:
            raise RunError("no runs to compare")
        self.runs: list[Run] = list(runs)
        self.labels: list[str] = run_labels(self.runs)
        self.params = pd.DataFrame([flatten_params(r.scenario) for r in self.runs], index=self.labels)
        self.params.index.name = "run"
        self.varying: list[str] = [c for c in self.params.columns
                                   if is_result_param(c) and not _same(self.params[c])]
        self.all_params = all_params

    def __len__(self) -> int:
        return len(self.runs)

    def __iter__(self) -> Iterator[Run]:
        return iter(self.runs)

    def __getitem__(self, label: str) -> Run:
        return self.runs[self.labels.index(label)]

    @property
    def columns(self) -> list[str]:
        """The parameter columns added to every table."""
        return [c for c in self.params.columns if c != "name"] if self.all_params else list(self.varying)

    @cached_property
    def rounds(self) -> pd.DataFrame:
        """One row per (run, round)."""
        return self._stack("rounds")

    @cached_property
    def clients(self) -> pd.DataFrame:
        """One row per (run, round, selected device)."""
        return self._stack("clients")

    @cached_property
    def evals(self) -> pd.DataFrame:
        """One row per (run, round, evaluated model)."""
        return self._stack("evals")

    @cached_property
    def fleet(self) -> pd.DataFrame:
        """One row per (run, device)."""
        return self._stack("fleet")

    @cached_property
    def batteries(self) -> pd.DataFrame:
        """One row per (run, round, battery class); none from runs that track no battery."""
        return self._stack("batteries")

    @cached_property
    def gateways(self) -> pd.DataFrame:
        """One row per (run, cloud round, gateway round, gateway); none from flat runs."""
        return self._stack("gateways")

    def _stack(self, table: str) -> pd.DataFrame:
        parts = []
        for label, run in zip(self.labels, self.runs):
            df = getattr(run, table)
            front = {"run": label}
            for col in self.columns:
                # A parameter never hides a recorded column of the same name.
                front[f"scenario.{col}" if col in df.columns else col] = self.params.at[label, col]
            head = pd.DataFrame({k: [v] * len(df) for k, v in front.items()}, index=df.index)
            parts.append(pd.concat([head, df], axis=1))
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def load_runs(patterns: str | Path | Sequence[str | Path], all_params: bool = False,
              allow_incomplete: bool = False) -> Runs:
    """Read the runs that paths or globs name (a sweep's parent directory names all its points).

    `all_params`: add every scenario parameter as a column, not only those that differ.
    Runs that are not complete are skipped with a warning unless `allow_incomplete`.
    Raises RunError when nothing readable is found.
    """
    runs, skipped = [], []
    for d in find_run_dirs(patterns):
        try:
            runs.append(load_run(d, allow_incomplete=allow_incomplete))
        except RunError as err:
            skipped.append(str(err))
            warnings.warn(f"skipped {err}", stacklevel=2)
    if not runs:
        why = f"; skipped {skipped[0]}" + (f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else "") if skipped else ""
        raise RunError(f"{_describe(patterns)}: no complete runs{why}")
    return Runs(runs, all_params=all_params)


def _describe(patterns: str | Path | Sequence[str | Path]) -> str:
    if isinstance(patterns, (str, Path)):
        return str(patterns)
    return ", ".join(str(p) for p in patterns)
