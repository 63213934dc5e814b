"""The one error type of the fleet package."""

from __future__ import annotations

from raysim.errors import BadInput


class FleetError(BadInput):
    """A fleet, catalogue or trace problem, as one line.

    For trace files the message names the file, and the line (CSV) or row (parquet) and the
    column of the offending cell, so the CLI can print it as is and exit with code 2.
    """
