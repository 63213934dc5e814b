"""Reading trace tables (CSV or parquet) with errors that point at the offending cell.

Both trace kinds (device capacities, availability intervals) are small tables of numbers.
This module reads one and converts columns to numbers, so that every problem becomes a
one-line `FleetError` naming the file, the line (CSV; the header is line 1) or row (parquet;
the first row is row 1) and the column (1-based position and name).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from raysim.errors import FleetError

__all__ = ["Table", "read_table"]


@dataclass(frozen=True)
class Table:
    """Raw cells of a trace file, with where each row came from."""

    path: Path
    frame: pd.DataFrame  # column names stripped and lower-cased; cells as read
    origin: np.ndarray  # line (CSV) or row (parquet) number of each row
    unit: str  # "line" or "row"

    def __len__(self) -> int:
        return len(self.frame)

    def has(self, column: str) -> bool:
        return column in self.frame.columns

    def where(self, i: int, column: str) -> str:
        """'file: line L, column C (name)' for row position i."""
        c = self.frame.columns.get_loc(column) + 1
        return f"{self.path}: {self.unit} {int(self.origin[i])}, column {c} ({column})"

    def require(self, *columns: str) -> None:
        """Fail naming the first absent column."""
        for col in columns:
            if not self.has(col):
                have = ", ".join(map(str, self.frame.columns))
                raise FleetError(f"{self.path}: missing column {col!r} (has: {have})")

    def numbers(self, column: str, *, required: bool = True, integer: bool = False,
                positive: bool = False) -> np.ndarray:
        """A column as float64; non-numeric, non-finite or negative cells are errors.

        Blank cells are errors when `required`, NaN otherwise. `positive` also rejects zero.
        """
        raw = self.frame[column]
        text = raw.astype("string").str.strip()
        blank = _blank_cells(raw)
        if raw.dtype == bool:
            # A parquet boolean would silently read as 0/1.
            values = np.full(len(raw), np.nan)
            bad = ~blank
        else:
            source = raw if pd.api.types.is_numeric_dtype(raw.dtype) else text
            values = pd.to_numeric(source, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
            bad = ~blank & ~np.isfinite(values)
        self._fail_first(bad, column, lambda i: f"{raw.iloc[i]!r} is not a number")
        if required:
            self._fail_first(blank, column, lambda i: "empty cell")
        ok = ~blank
        self._fail_first(ok & (values < 0), column, lambda i: f"negative value {values[i]:g}")
        if positive:
            self._fail_first(ok & (values == 0), column, lambda i: "must be positive, got 0")
        if integer:
            self._fail_first(ok & (values != np.floor(values)), column,
                             lambda i: f"{values[i]:g} is not an integer")
        return values

    def _fail_first(self, mask: np.ndarray, column: str, what) -> None:
        hits = np.flatnonzero(mask)
        if hits.size:
            i = int(hits[0])
            raise FleetError(f"{self.where(i, column)}: {what(i)}")


def read_table(path: str | Path, what: str) -> Table:
    """Read a CSV or parquet file (by extension) into a `Table`; `what` names it in errors."""
    p = Path(path)
    if not p.is_file():
        raise FleetError(f"{p}: no such {what} file")
    suffix = p.suffix.lower()
    if suffix in (".parquet", ".pq"):
        frame, origin, unit = _read_parquet(p)
    elif suffix in (".csv", ".txt"):
        frame, origin, unit = _read_csv(p)
    else:
        raise FleetError(f"{p}: {what} file must be .csv or .parquet, got {suffix or 'no extension'!r}")
    frame.columns = [str(c).strip().lower() for c in frame.columns]
    dupes = frame.columns[frame.columns.duplicated()]
    if len(dupes):
        raise FleetError(f"{p}: column {dupes[0]!r} appears twice")
    if len(frame) == 0:
        raise FleetError(f"{p}: empty {what} (no data rows)")
    return Table(p, frame.reset_index(drop=True), origin, unit)


def _read_csv(p: Path) -> tuple[pd.DataFrame, np.ndarray, str]:
    try:
        # Strings in, numbers later: conversion errors can then name their cell. Blank lines
        # are kept (then dropped below) so row positions map back to file lines.
        frame = pd.read_csv(p, dtype=str, keep_default_na=False, skip_blank_lines=False)
    except pd.errors.EmptyDataError:
        raise FleetError(f"{p}: empty file (no header)") from None
    except pd.errors.ParserError as err:
        raise FleetError(f"{p}: malformed CSV ({_first_line(err)})") from None
    except UnicodeDecodeError:
        raise FleetError(f"{p}: not a text file (not UTF-8)") from None
    origin = np.arange(len(frame), dtype=np.int64) + 2  # header is line 1
    keep = ~_blank_rows(frame)
    return frame[keep], origin[keep], "line"


def _read_parquet(p: Path) -> tuple[pd.DataFrame, np.ndarray, str]:
    try:
        frame = pd.read_parquet(p)
    except Exception as err:  # pyarrow raises several types for corrupt files
        raise FleetError(f"{p}: not a readable parquet file ({_first_line(err)})") from None
    return frame, np.arange(len(frame), dtype=np.int64) + 1, "row"


def _blank_rows(frame: pd.DataFrame) -> np.ndarray:
    blank = np.ones(len(frame), dtype=bool)
    for column in frame.columns:
        blank &= _blank_cells(frame[column])
    return blank


def _blank_cells(raw: pd.Series) -> np.ndarray:
    text = raw.astype("string").str.strip()
    return (raw.isna().to_numpy(dtype=bool) | text.eq("").fillna(True).to_numpy(dtype=bool))


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def optional_column(table: Table, *names: str) -> Optional[str]:
    """The first of `names` the table has, or None."""
    for name in names:
        if table.has(name):
            return name
    return None
