"""Automatic channel groups for any plain torch module (see `raysim.slicing.infer`)."""

from raysim.slicing.errors import SlicingError
from raysim.slicing.infer import infer_spec

__all__ = ["SlicingError", "infer_spec"]
