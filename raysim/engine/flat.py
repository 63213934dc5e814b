"""Flat synchronous rounds: every round selects K (1 + overcommit) devices of the whole fleet,
trains them from the global model, and closes at the deadline (or when K are done).

    mode = FlatRounds(rounds=device_rounds, model=model, backend=backend, client=None)
    got = mode.gather(1)       # round 1 trained; its one summed arrival and its records
"""

from __future__ import annotations

import time
from typing import Any, Optional

import numpy as np
import torch

from raysim.client.algorithms import ClientAlgorithm
from raysim.engine.device_round import DeviceRounds, Slot, TaskGroup
from raysim.engine.loop import Gathered, Global
from raysim.engine.setup import Backend
from raysim.messages import PartialSum
from raysim.server.aggregate import extra_total, merge
from raysim.server.rules import Arrival

__all__ = ["FlatRounds"]


class FlatRounds:
    """The flat synchronous mode (a `raysim.engine.loop.Mode`)."""

    def __init__(self, *, rounds: DeviceRounds, model: Global, backend: Backend,
                 client: Optional[ClientAlgorithm] = None) -> None:
        self.rounds, self.model, self.backend, self.client = rounds, model, backend, client
        # A stateful client algorithm's server quantity (SCAFFOLD's c), zero at the start.
        self.client_server = ({k: torch.zeros_like(v) for k, v in model.params.items()}
                              if client is not None and client.server_state else None)
        self._total: Optional[PartialSum] = None

    def gather(self, step: int) -> Gathered:
        rounds, m = self.rounds, self.model
        cfg = rounds.cfg
        draft = rounds.draft(step, Slot(m.clock, cfg.per_round))
        plans, tasks = rounds.plan_tasks(draft, TaskGroup(m.params))
        t0 = time.perf_counter()
        server = {} if self.client_server is None else {"server": self.client_server}
        results = self.backend.train(step, m.params, plans, tasks, **server) if tasks else []
        train_s = time.perf_counter() - t0
        parts, reps = merge(results, m.shapes)
        total = parts.get(0) or PartialSum.zeros(m.shapes)
        reports = {rep.device_id: rep for rep in reps}
        rounds.keep_states(reports)
        sched = rounds.settle(draft, reports, cfg.per_round)
        clients = rounds.client_rows(draft, sched, reports)
        start = m.clock
        end = start + sched.duration
        battery_rows: list[dict[str, Any]] = []
        if rounds.batteries is not None:
            rounds.batteries.advance(start, end, draft.pos, np.asarray(clients.energy_j, dtype=np.float64))
            battery_rows = rounds.batteries.rows(step, end)
        self._total = total
        return Gathered([Arrival(total, step - 1)], start, end, sched.duration, clients, int(total.devices),
                        int(total.samples), train_s, battery_rows)

    def after_step(self, step: int, stepped: bool, got: Gathered) -> None:
        if stepped and self.client is not None and self.client_server is not None and self._total is not None:
            self.client_server = self.client.update_server(self.client_server, extra_total(self._total),
                                                           len(self.rounds.setup.fleet))
        self._total = None

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        state = device_side_state(self.rounds)
        if self.client_server is not None:
            state["client_server"] = self.client_server
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_device_side(self.rounds, state)
        if self.client_server is not None:
            if "client_server" not in state:
                raise ValueError("checkpoint: holds no server state for the client algorithm, which keeps one")
            self.client_server = {k: v.clone() for k, v in state["client_server"].items()}


def device_side_state(rounds: DeviceRounds) -> dict[str, Any]:
    """The batteries and the per-device states, as a checkpoint holds them."""
    state: dict[str, Any] = {}
    if rounds.batteries is not None:
        state["batteries"] = rounds.batteries.state_dict()
    if rounds.device_states is not None:
        state["device_states"] = rounds.device_states.state_dict()
    return state


def load_device_side(rounds: DeviceRounds, state: dict[str, Any]) -> None:
    """Restore the batteries and the per-device states a checkpoint holds."""
    if rounds.batteries is not None:
        if "batteries" not in state:
            raise ValueError("checkpoint: holds no battery state, but the scenario tracks batteries")
        rounds.batteries.load_state_dict(state["batteries"])
    if rounds.device_states is not None:
        rounds.device_states.load_state_dict(state.get("device_states", {}))
