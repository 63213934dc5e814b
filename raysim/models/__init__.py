"""Width-scalable model zoo."""

from __future__ import annotations

from raysim.config import ModelConfig
from raysim.models.base import ModelSpec, Scaler
from raysim.models.cnn import cnn_spec
from raysim.models.mlp import mlp_spec

__all__ = ["ModelSpec", "Scaler", "make_spec"]


def make_spec(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> ModelSpec:
    """The model family named by the scenario, for the dataset's input shape and classes."""
    if cfg.arch == "cnn":
        return cnn_spec(input_shape, num_classes, list(cfg.widths), cfg.hidden, cfg.norm, cfg.scaler)
    if cfg.arch == "mlp":
        return mlp_spec(input_shape, num_classes, list(cfg.widths), cfg.scaler)
    if cfg.arch == "preresnet18":
        from raysim.models.preresnet import preresnet18_spec  # noqa: PLC0415

        return preresnet18_spec(input_shape, num_classes, list(cfg.widths), cfg.norm, cfg.scaler)
    raise ValueError(f"model.arch: unknown architecture {cfg.arch!r}")
