"""Compression strategies: (global model, rate, round, device) -> submodel plan.

- static: the first channels of every group (HeteroFL).
- rolling: a window that moves by one channel per round and wraps (FedRolex); all devices at
  a rate share it.
- random: a random subset per device and round (Federated Dropout).
- magnitude: the channels whose filters (the weights that produce the channel) have the
  largest L1 norm in the current global model (structured filter pruning, Li et al.,
  "Pruning Filters for Efficient ConvNets", ICLR 2017).
- full: no compression (rate is ignored; every device gets the whole model).

Every strategy keeps exactly `rate_sizes(width, rate)` sorted, unique indices of every group;
the plan of a residual stream is one group, so it is consistent across the layers sharing it.
Every plan a strategy returns is checked against that contract as it leaves `plan` (or
`eval_plan`): a plug-in that breaks it is one line naming it (`raysim.errors.PluginError`),
before any host indexes a tensor with it.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from typing import Any, Callable, Mapping

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from raysim.errors import broken
from raysim.models.base import ModelSpec
from raysim.models.span import Fixed, Span
from raysim.seeding import rng
from raysim.submodel.plan import SubmodelPlan, full_plan, plan_problem, prefix_plan, rate_sizes

ROLE = "compression.strategy"


def _checked(fn: Callable[..., SubmodelPlan], method: str) -> Callable[..., SubmodelPlan]:
    """`fn` (a strategy's `plan` or `eval_plan`) with its result checked: the groups of the model,
    each at most its width, sorted and unique, and `rate_sizes(width, rate)` of them at the
    rate asked for (every channel when the strategy does not compress)."""

    @functools.wraps(fn)
    def checked(self: Strategy, *args: Any, **kwargs: Any) -> SubmodelPlan:
        out = fn(self, *args, **kwargs)
        spec = args[0] if args else kwargs.get("spec")
        rate = args[1] if len(args) > 1 else kwargs.get("rate")
        if isinstance(spec, ModelSpec) and isinstance(rate, (int, float)):
            why = plan_problem(spec, out, float(rate) if self.compresses else 1.0)
            if why is not None:
                want = (f"rate_sizes(width, {float(rate):g}) sorted, unique indices in [0, width) of each of its "
                        f"groups" if self.compresses else "every channel of each of its groups (compresses is False)")
                raise broken(self, ROLE, f"{method}(rate {float(rate):g}) returned a plan that {why}; expected "
                             f"{want} (docs/plugins.md)")
        return out

    checked._plan_checked = True  # type: ignore[attr-defined]
    return checked


class Strategy(ABC):
    """Turns a rate into a submodel plan.

    `per_device` says whether devices at the same rate in the same round need plans of their
    own (otherwise the coordinator builds one per rate and round, and hosts share it).
    `compresses` is False for a strategy that always trains the whole model: the rate ladder
    then collapses to rate 1. `Params` validates `compression.params`; the instance is built
    as `cls(**params)`. A new strategy subclasses this and implements `plan`:

        class EveryOther(Strategy):          # even channels first, then odd ones
            def plan(self, spec, rate, round_idx, device_id, global_params, seed):
                keep = {}
                for g, w in spec.groups.items():
                    order = np.r_[np.arange(0, w, 2), np.arange(1, w, 2)]
                    keep[g] = np.sort(order[:rate_sizes(w, rate)])
                return SubmodelPlan(rate, keep)
    """

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

    name: str = ""
    per_device: bool = False
    compresses: bool = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for method in ("plan", "eval_plan"):
            fn = cls.__dict__.get(method)
            if callable(fn) and not getattr(fn, "_plan_checked", False):
                setattr(cls, method, _checked(fn, method))

    @abstractmethod
    def plan(self, spec: ModelSpec, rate: float, round_idx: int, device_id: int,
             global_params: Mapping[str, torch.Tensor], seed: int) -> SubmodelPlan:
        """The plan for one device in one round."""

    def eval_plan(self, spec: ModelSpec, rate: float, global_params: Mapping[str, torch.Tensor]) -> SubmodelPlan:
        """The submodel at `rate` that stands for this strategy when a rate's accuracy is
        evaluated: the first channels (HeteroFL's evaluation), unless the strategy keeps a
        particular part of the model for good."""
        return prefix_plan(spec, rate)


class Static(Strategy):
    name = "static"

    def plan(self, spec, rate, round_idx, device_id, global_params, seed):
        return prefix_plan(spec, rate)


class Full(Strategy):
    name = "full"
    compresses = False

    def plan(self, spec, rate, round_idx, device_id, global_params, seed):
        return full_plan(spec)


class Rolling(Strategy):
    name = "rolling"

    def plan(self, spec, rate, round_idx, device_id, global_params, seed):
        keep = {}
        for g, w in spec.groups.items():
            k = rate_sizes(w, rate)
            start = round_idx % w
            keep[g] = np.sort((start + np.arange(k, dtype=np.int64)) % w)
        return SubmodelPlan(rate, keep)


class Random(Strategy):
    name = "random"
    per_device = True

    def plan(self, spec, rate, round_idx, device_id, global_params, seed):
        gen = rng(seed, "random-plan", round_idx, device_id)
        keep = {}
        for g in sorted(spec.groups):  # sorted: the draw order must not depend on dict order
            w = spec.groups[g]
            keep[g] = np.sort(gen.choice(w, size=rate_sizes(w, rate), replace=False).astype(np.int64))
        return SubmodelPlan(rate, keep)


class Magnitude(Strategy):
    name = "magnitude"

    def plan(self, spec, rate, round_idx, device_id, global_params, seed):
        scores = channel_l1(spec, global_params)
        keep = {}
        for g, w in spec.groups.items():
            k = rate_sizes(w, rate)
            # Stable sort on -score: ties go to the lower index, so plans are deterministic.
            order = np.argsort(-scores[g], kind="stable")
            keep[g] = np.sort(order[:k].astype(np.int64))
        return SubmodelPlan(rate, keep)

    def eval_plan(self, spec, rate, global_params):
        # The pruned model is the part of the global model this strategy trains and deploys.
        return self.plan(spec, rate, 0, -1, global_params, 0)


def channel_l1(spec: ModelSpec, global_params: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """L1 norm of each channel's filters: the slices of every weight tensor (conv or linear,
    norms excluded) whose first axis is the channel's group. A residual stream sums over all
    the convs that write to it."""
    scores = {g: np.zeros(w, dtype=np.float64) for g, w in spec.groups.items()}
    for name, axes in spec.axes.items():
        if axes and axes[0] is not None and name.endswith("weight") and len(axes) > 1:
            t = global_params[name].detach().abs().double()
            rows = t.reshape(t.shape[0], -1).sum(dim=1).numpy()
            if isinstance(axes[0], Span):
                _add_span_rows(scores, axes[0], rows, spec.groups)
            else:
                scores[axes[0]] += rows
    return scores


def _add_span_rows(scores: dict[str, np.ndarray], span: Span, rows: np.ndarray, widths: Mapping[str, int]) -> None:
    """Row norms of a tensor whose first axis lays groups side by side (a conv whose outputs
    a split cuts into groups), each channel's block of rows added to it."""
    offset = 0
    for part in span.parts:
        if isinstance(part, Fixed):
            offset += part.size
            continue
        n = widths[part.group] * part.block
        scores[part.group] += rows[offset:offset + n].reshape(-1, part.block).sum(axis=1)
        offset += n
