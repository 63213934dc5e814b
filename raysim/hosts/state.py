"""A device's state between rounds, in a form any host can continue from.

A state holds named parts (`residual`: the uplink channel's error feedback; `client`: a
stateful client algorithm's own, SCAFFOLD's control variate), each a dict of tensors in the
coordinates of the plan the device trained. The engine keeps it and sends it with the device's
next task; a device that trains another submodel next time (a new rate, a rolling window) gets
every part moved into the new plan's coordinates through the global model's. Entries outside
the new plan are dropped (the device no longer holds them).

    state = pack(plan, {"residual": residual})     # numpy: survives Ray and checkpoints
    parts = unpack(spec, shapes, new_plan, state)  # {"residual": {...}} in new_plan's coordinates
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np
import torch

from raysim.models.base import ModelSpec
from raysim.submodel import SubmodelPlan, extract, plan_indices
from raysim.submodel.extract import remap

__all__ = ["pack", "unpack", "state_bytes", "PARTS"]

State = dict[str, Any]
Tensors = Mapping[str, torch.Tensor]
PARTS = ("residual", "client")


def pack(plan: SubmodelPlan, parts: Mapping[str, Optional[Tensors]]) -> Optional[State]:
    """The non-empty parts and the plan they belong to, as numpy arrays (None: no part)."""
    kept = {name: t for name, t in parts.items() if t is not None}
    if not kept:
        return None
    state: State = {"rate": float(plan.rate), "keep": {g: np.asarray(ix, np.int64) for g, ix in plan.keep.items()}}
    for name, tensors in kept.items():
        state[name] = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in tensors.items()}
    return state


def unpack(spec: ModelSpec, shapes: Mapping[str, tuple[int, ...]], plan: SubmodelPlan,
           state: Optional[State]) -> dict[str, dict[str, torch.Tensor]]:
    """Every part of the state in `plan`'s coordinates (empty: no state yet)."""
    if state is None:
        return {}
    parts = {name: {k: torch.from_numpy(np.array(v, np.float32)) for k, v in state[name].items()}
             for name in PARTS if name in state}
    old = SubmodelPlan(float(state["rate"]), {g: np.asarray(ix, np.int64) for g, ix in state["keep"].items()})
    if old.key() == plan.key():
        return parts
    old_ix, new_ix = plan_indices(spec, old, shapes), plan_indices(spec, plan, shapes)
    return {name: extract(remap(t, old_ix, shapes), new_ix) for name, t in parts.items()}


def state_bytes(state: Optional[State]) -> int:
    """Bytes a state holds (its parts' values and the plan's indices)."""
    if state is None:
        return 0
    return int(sum(a.nbytes for name in PARTS if name in state for a in state[name].values())
               + sum(a.nbytes for a in state["keep"].values()))
