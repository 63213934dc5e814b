"""The one error automatic slicing raises: `raysim.errors.SlicingError` (a `BadInput`), here
where the slicing modules have always imported it."""

from __future__ import annotations

from raysim.errors import SlicingError

__all__ = ["SlicingError"]
