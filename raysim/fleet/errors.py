"""The one error type of the fleet package: `raysim.errors.FleetError` (a `BadInput`), here where
the fleet modules have always imported it."""

from __future__ import annotations

from raysim.errors import FleetError

__all__ = ["FleetError"]
