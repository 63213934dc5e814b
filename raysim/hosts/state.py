"""A device's residual (error feedback) between rounds, in a form any host can continue from.

The engine keeps each device's state and sends it with the device's next task; the state
records the plan it was made under, so a device that trains another submodel next time (a new
rate, a rolling window) gets its residual moved into the new plan's coordinates, through the
global model's. Entries outside the new plan are dropped (the device no longer holds them).

    state = pack(plan, residual)                 # numpy: survives Ray and checkpoints
    residual = unpack(spec, shapes, new_plan, state)
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np
import torch

from raysim.models.base import ModelSpec
from raysim.submodel import SubmodelPlan, extract, plan_indices
from raysim.submodel.extract import remap

__all__ = ["pack", "unpack", "state_bytes"]

State = dict[str, Any]


def pack(plan: SubmodelPlan, residual: Mapping[str, torch.Tensor]) -> State:
    """A residual and the plan it belongs to, as numpy arrays."""
    return {"rate": float(plan.rate), "keep": {g: np.asarray(ix, np.int64) for g, ix in plan.keep.items()},
            "residual": {k: v.detach().cpu().numpy().astype(np.float32) for k, v in residual.items()}}


def unpack(spec: ModelSpec, shapes: Mapping[str, tuple[int, ...]], plan: SubmodelPlan,
           state: Optional[State]) -> Optional[dict[str, torch.Tensor]]:
    """The residual in `plan`'s coordinates (None: no state yet)."""
    if state is None:
        return None
    residual = {k: torch.from_numpy(np.array(v, np.float32)) for k, v in state["residual"].items()}
    old = SubmodelPlan(float(state["rate"]), {g: np.asarray(ix, np.int64) for g, ix in state["keep"].items()})
    if old.key() == plan.key():
        return residual
    full = remap(residual, plan_indices(spec, old, shapes), shapes)
    return extract(full, plan_indices(spec, plan, shapes))


def state_bytes(state: Optional[State]) -> int:
    """Bytes a state holds (residual values and plan indices)."""
    if state is None:
        return 0
    return int(sum(a.nbytes for a in state["residual"].values()) + sum(a.nbytes for a in state["keep"].values()))
