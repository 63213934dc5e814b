"""The round loop: one loop for every run, flat or through gateways, synchronous or asynchronous.

A step of the loop is a round (synchronous) or a server step (asynchronous):

1-5. select, assign, plan, predict and train: the run's `Mode` gathers the updates the step
     aggregates, with one record per device whose part in the step concluded;
6.   aggregate: the `Rule` turns them into one update per element (mean, FedBuff, FedAsync);
7.   step the server: the server optimizer moves the global model and counts its step;
8.   the mode's bookkeeping after the step (versions kept for later arrivals, SCAFFOLD's
     server quantity), and the clock moves to the step's end;
9.   evaluate, when due;
10.  record: one round record, from what was gathered.
Checkpoints are `state_dict()` of the loop, its model, its server state and its mode; the
driver takes them between steps.

What differs between runs is the mode (`raysim.engine.modes`: `FlatRounds`, `FlatEvents`,
`GatewayRounds`, `GatewayEvents`): who trains and when, and where updates meet first. A mode
sees the global model through `Global` and never steps the server itself.

    loop = RoundLoop(model=Global.init(spec, seed), mode=mode, rule=Mean(), server=FedAvg(),
                     evaluator=Evaluator(setup, cfg, strategy))
    out = loop.step()        # one step's records (RoundOutput)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from raysim.engine.evaluation import Evaluator
from raysim.engine.recording import round_record
from raysim.models import ModelSpec
from raysim.records import ClientRecords, RoundOutput
from raysim.server.optimizers import ServerOptimizer, ServerState
from raysim.server.rules import Arrival, Rule

__all__ = ["Global", "Gathered", "Mode", "RoundLoop"]


@dataclass
class Global:
    """The global model and where the run stands: steps completed and simulated seconds."""

    params: dict[str, torch.Tensor]
    round: int = 0
    clock: float = 0.0
    server_state: ServerState = field(default_factory=ServerState)

    @classmethod
    def init(cls, spec: ModelSpec, seed: int) -> "Global":
        """The model's initial weights, from the seed."""
        torch.manual_seed(seed)
        model = spec.build()
        return cls({k: p.detach().clone() for k, p in model.named_parameters()})

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(p.shape) for k, p in self.params.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"round": self.round, "clock": self.clock, "params": self.params,
                "server": self.server_state.plain()["slots"], "server_steps": self.server_state.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.round = int(state["round"])
        self.clock = float(state["clock"])
        self.params = {k: v.clone() for k, v in state["params"].items()}
        self.server_state = ServerState.from_plain({"slots": state["server"], "steps": state.get("server_steps", 0)})


@dataclass
class Gathered:
    """What a mode gathered for one step: the arrivals the rule combines, the step's span of
    simulated time, its records, the device updates behind the arrivals that went in, and the
    seconds spent training."""

    arrivals: list[Arrival]
    start: float
    end: float
    duration: float
    clients: ClientRecords
    trained: int = 0
    samples_trained: int = 0
    train_s: float = 0.0
    batteries: list[dict[str, Any]] = field(default_factory=list)   # rows of batteries.parquet
    gateways: list[dict[str, Any]] = field(default_factory=list)    # rows of gateways.parquet


class Mode(Protocol):
    """Who trains and when, and where their updates meet before the server (see the module
    docstring). A new mode is one module with a class of these four methods."""

    def gather(self, step: int) -> Gathered:
        """Run everything up to step `step`'s server step and return what it aggregates."""
        ...

    def after_step(self, step: int, stepped: bool, got: Gathered) -> None:
        """Bookkeeping once the server has stepped (`stepped`: it had an update to apply)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """The mode's part of a checkpoint (merged into the loop's)."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from a checkpoint (the whole of it: the loop's keys are there too)."""
        ...


class RoundLoop:
    """The one round loop: `step()` runs the steps of the module docstring once."""

    def __init__(self, *, model: Global, mode: Mode, rule: Rule, server: ServerOptimizer,
                 evaluator: Evaluator) -> None:
        self.model, self.mode, self.rule, self.server, self.evaluator = model, mode, rule, server, evaluator
        self.shapes = model.shapes

    def step(self) -> RoundOutput:
        """Run the next step and return its records."""
        m = self.model
        w = m.round + 1
        wall0 = time.perf_counter()
        # 1-5. select, assign, plan, predict, train: the mode gathers what step w aggregates
        got = self.mode.gather(w)
        # 6. aggregate
        update = self.rule.combine(w, got.arrivals, m.params, self.shapes)
        # 7. step the server
        if update is not None:
            self.server.apply(m.params, update[0], update[1], m.server_state)
        # 8. the clock moves to the step's end; the mode's bookkeeping
        m.round, m.clock = w, got.end
        self.mode.after_step(w, update is not None, got)
        # 9. evaluate
        evals = self.evaluator(w, m.params, m.clock) if self.evaluator.due(w) else []
        # 10. record
        record = round_record(w, got.start, got.end, got.duration, got.clients, evals, got.trained,
                              got.samples_trained, time.perf_counter() - wall0, got.train_s)
        return RoundOutput(record, got.clients, evals, got.batteries, got.gateways)

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit-identically (random streams are derived, not stored)."""
        return {**self.model.state_dict(), **self.mode.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from `state_dict()`."""
        self.model.load_state_dict(state)
        self.mode.load_state_dict(state)

    # ---------------------------------------------------------------- views
    @property
    def params(self) -> dict[str, torch.Tensor]:
        return self.model.params

    @property
    def round(self) -> int:
        return self.model.round

    @property
    def clock(self) -> float:
        return self.model.clock

    @property
    def cfg(self) -> Any:
        return self.evaluator.cfg

    @property
    def setup(self) -> Any:
        return self.evaluator.setup

    @property
    def spec(self) -> ModelSpec:
        return self.evaluator.setup.spec

    @property
    def eval_device(self) -> torch.device:
        return self.evaluator.eval_device
