"""Extract a submodel's weights from the global model, and remap its update back."""

from __future__ import annotations

from typing import Mapping

import torch

from raysim.submodel.plan import Index


def extract(global_params: Mapping[str, torch.Tensor], index: Mapping[str, Index]) -> dict[str, torch.Tensor]:
    """The submodel's parameters: a fresh contiguous copy of each indexed global tensor."""
    return {k: global_params[k][index[k]].clone().contiguous() for k in global_params}


def remap(delta: Mapping[str, torch.Tensor], index: Mapping[str, Index],
          shapes: Mapping[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """A submodel delta placed in global coordinates (zeros where the submodel holds nothing)."""
    out = {}
    for k, d in delta.items():
        full = torch.zeros(shapes[k], dtype=d.dtype)
        full[index[k]] = d
        out[k] = full
    return out
