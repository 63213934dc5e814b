"""Width-scalable model zoo."""

from __future__ import annotations

from raysim.models.base import ModelSpec, Scaler
from raysim.models.cnn import cnn_spec
from raysim.models.mlp import mlp_spec

__all__ = ["ModelSpec", "Scaler", "cnn_spec", "mlp_spec"]

