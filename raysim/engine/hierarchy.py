"""Hierarchical FL through gateways: devices -> gateways -> cloud, on one simulated clock.

HierFAVG (Liu et al., ICC 2020): each cloud round, every gateway downloads the global model
and runs `kappa2` gateway rounds over its own devices (selection, rate assignment, deadline and
over-commitment as a flat round has them, K per gateway); each gateway round aggregates its
devices' submodel updates per element into the gateway's model. The gateway then sends its
model's change to the cloud, which aggregates the gateways' changes per element (weighted by
the samples trained under each) and takes its server optimizer's step.

Time: a gateway's rounds run one after the other from when its download arrives (each lasts
as long as its devices under the deadline, and availability is read at its own start); the
cloud round lasts until the last gateway's upload arrives, or until `cloud_deadline`, past
which a gateway is left out of the round. Gateway rounds of all gateways that run at the same
time are trained in one backend call, one task group per gateway: hosts pre-aggregate per
gateway, so a hierarchical run costs about what a flat one does.

    gw = Gateways(count=10, rounds=2, per_gateway=5, attach="random", down_bps=5e7, up_bps=5e7,
                  latency_s=0.02)
    mode = GatewayRounds(cycles=Cycles(rounds=device_rounds, model=model, backend=backend, gateways=gw))
    got = mode.gather(1)      # one cloud round; got.gateways: its rows of gateways.parquet
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch

from raysim.engine.battery import Batteries
from raysim.engine.device_round import DeviceRounds, RoundDraft, Slot, TaskGroup
from raysim.engine.flat import device_side_state, load_device_side
from raysim.engine.loop import Gathered, Global
from raysim.engine.setup import Backend
from raysim.engine.topology import Gateways, attach, dominant_labels
from raysim.messages import PartialSum, TrainTask
from raysim.records import STATUSES, ClientRecords
from raysim.server.aggregate import fold_held, mean_delta, merge
from raysim.server.optimizers import FedAvg, ServerOptimizer, ServerState
from raysim.server.rules import Arrival
from raysim.submodel import SubmodelPlan

__all__ = ["Cycles", "GatewayRounds", "Cycle", "CycleDone", "gateway_row"]


@dataclass(frozen=True)
class Cycle:
    """A gateway's kappa2 gateway rounds from one cloud model: the gateway, the cloud version
    it starts from (`params`), when its first gateway round starts (the model has arrived),
    and the gateway's count of cycles so far (default: the version, as in synchronous cloud
    rounds), which keeps the random streams of its cycles apart."""

    gateway: int
    version: int
    start: float
    params: dict[str, torch.Tensor]
    count: Optional[int] = None
    download: bool = True      # False: the gateway holds this version already (a retry)

    @property
    def number(self) -> int:
        return self.version if self.count is None else self.count

    @property
    def key(self) -> tuple[int, ...]:
        """Extra key of its draws: none when it is the gateway's v-th cycle from version v,
        so that it draws what the synchronous cloud round would."""
        return () if self.number == self.version else (self.number,)


@dataclass
class CycleDone:
    """What a cycle ends with: the gateway's model and the elements its devices held, the
    devices and samples folded in, when its last gateway round ended, and its records (device
    rows and the gateway row, one of each per gateway round)."""

    cycle: Cycle
    model: dict[str, torch.Tensor]
    held: dict[str, torch.Tensor]
    devices: int
    samples: int
    end: float
    clients: list[ClientRecords]
    rows: list[dict[str, Any]]
    opt_state: ServerState = field(default_factory=ServerState)   # the gateway optimizer's, at its end

    def change(self, base: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The gateway model's change from `base` (the weights it started from, in the synchronous loop)."""
        return {k: self.model[k] - base[k] for k in base}


class Cycles:
    """The gateway tier both gateway modes share: which devices each gateway serves, the
    gateway-cloud link, each gateway's optimizer and its state, and `run_cycles`, which trains
    gateways' kappa2 rounds from the models they start from."""

    def __init__(self, *, rounds: DeviceRounds, model: Global, backend: Backend, gateways: Gateways,
                 gateway_server: Optional[ServerOptimizer] = None) -> None:
        self.rounds, self.model, self.backend = rounds, model, backend
        gw = self.gateways = gateways
        self.gateway_server = gateway_server or FedAvg()
        setup = rounds.setup
        n = len(setup.fleet)
        if gw.count > n:
            raise ValueError(f"topology.gateways: {gw.count} gateways for {n} devices")
        labels = dominant_labels(setup.dataset.y_train, setup.shards) if gw.attach == "label" else None
        self.gateway_of = attach(gw.attach, gw.count, n, rounds.cfg.seed, labels, setup.fleet.gateway)
        self.members = [self.gateway_of == g for g in range(gw.count)]
        # The gateway-cloud link carries the global model, dense float32, each way.
        self.model_bytes = int(sum(v.numel() for v in model.params.values()) * 4)
        self.t_cloud_down, self.t_cloud_up = gw.link_s(self.model_bytes)
        self.battery_at = np.zeros(gw.count)   # how far each gateway's devices' batteries have moved
        self.gateway_states: dict[int, ServerState] = {}   # kept gateway optimizer states (keep_state)

    @property
    def batteries(self) -> Optional[Batteries]:
        return self.rounds.batteries

    def _key(self, g: int, j: int) -> tuple[int, ...]:
        # One gateway with one gateway round is FedAvg through a relay: it draws what a flat round draws.
        return () if (self.gateways.count, self.gateways.rounds) == (1, 1) else (g, j)

    def gateway_state_of(self, g: int) -> ServerState:
        """The optimizer state gateway g's next cycle starts from (a copy: fresh per cycle unless kept)."""
        kept = self.gateway_states.get(g) if self.gateways.keep_state else None
        return ServerState() if kept is None else kept.copy()

    def keep_gateway_state(self, done: CycleDone) -> None:
        """A concluded cycle's optimizer state, kept for its gateway's next (with `keep_state`)."""
        if self.gateways.keep_state:
            self.gateway_states[done.cycle.gateway] = done.opt_state

    def state_dict(self) -> dict[str, Any]:
        """The device side (batteries, device states) and the kept gateway optimizer states."""
        st = device_side_state(self.rounds)
        if self.gateways.keep_state:
            st["gateway_states"] = {g: s.plain() for g, s in self.gateway_states.items()}
        return st

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_device_side(self.rounds, state)
        self.gateway_states = {int(g): ServerState.from_plain(s) for g, s in state.get("gateway_states", {}).items()}

    def run_cycles(self, cycles: list[Cycle]) -> tuple[list[CycleDone], float]:
        """Run each cycle's kappa2 gateway rounds (all cycles' j-th rounds in one backend call,
        one task group each) and return what each gateway ends with, and the seconds training took.
        At most one cycle per gateway."""
        gw = self.gateways
        models = [{k: v.clone() for k, v in c.params.items()} for c in cycles]
        held = [{k: torch.zeros(v.shape, dtype=torch.bool) for k, v in self.model.params.items()} for _ in cycles]
        rounds, shapes = self.rounds, self.model.shapes
        out = [CycleDone(c, models[i], held[i], 0, 0, c.start, [], []) for i, c in enumerate(cycles)]
        # A gateway optimizer's state lasts one cycle (each starts from a cloud model), or the run:
        # then a cycle starts from a copy of the state its gateway's last concluded cycle left,
        # which the caller keeps when the cycle concludes (trained ahead, it may not have yet).
        opt_states = [self.gateway_state_of(c.gateway) for c in cycles]
        for o, st in zip(out, opt_states):
            o.opt_state = st
        train_s = 0.0
        for j in range(1, gw.rounds + 1):
            drafts: list[RoundDraft] = []
            plans: dict[int, SubmodelPlan] = {}
            tasks: list[TrainTask] = []
            versions: dict[int, dict[str, torch.Tensor]] = {}
            for i, c in enumerate(cycles):
                g = c.gateway
                # the devices' random streams' key: the cloud round itself when kappa2 is 1
                stream = c.number * gw.rounds + j
                d = rounds.draft(c.version + 1, Slot(out[i].end, gw.per_gateway, self.members[g],
                                                   self._key(g, j) + c.key))
                drafts.append(d)
                # Version ids are unique across the run (hosts cache weights by version); in a
                # cycle's first gateway round every gateway starts from the cloud's model: one
                # version for all that start from it, sent to each host once.
                vid = stream * gw.count + g if j > 1 else (c.version * gw.rounds + 1) * gw.count
                p, t = rounds.plan_tasks(d, TaskGroup(models[i], vid, i, stream, len(plans)))
                plans.update(p)
                tasks += t
                if t and vid not in versions:
                    versions[vid] = models[i]
            t0 = time.perf_counter()
            results = self.backend.train_groups(versions, plans, tasks, set(versions)) if tasks else []
            train_s += time.perf_counter() - t0
            parts, got = merge(results, shapes)
            reports = {rep.device_id: rep for rep in got}
            rounds.keep_states(reports)
            for i, c in enumerate(cycles):
                d, o, g = drafts[i], out[i], c.gateway
                reps = {int(dev): reports[int(dev)] for dev in d.sel if int(dev) in reports}
                sched = rounds.settle(d, reps, gw.per_gateway)
                part = parts.get(i)
                if part is not None and part.devices:
                    delta, h = mean_delta(part)
                    self.gateway_server.apply(models[i], delta, h, opt_states[i])
                    for k in models[i]:
                        held[i][k] |= h[k]
                    o.devices += part.devices
                    o.samples += part.samples
                rows_g = rounds.client_rows(d, sched, reps)
                rows_g.gateway = [g] * len(rows_g)
                rows_g.gateway_round = [j] * len(rows_g)
                o.clients.append(rows_g)
                if self.batteries is not None:
                    # a gateway's devices live on its clock: their batteries move with its rounds
                    self.batteries.advance(float(self.battery_at[g]), o.end + sched.duration, d.pos,
                                           np.asarray(rows_g.energy_j, dtype=np.float64), among=self.members[g])
                    self.battery_at[g] = o.end + sched.duration
                fetched = j == 1 and c.download
                t_down = self.t_cloud_down if fetched else 0.0
                o.rows.append(gateway_row(c.version + 1, j, g, o.end, sched.duration, rows_g, part,
                                          self.model_bytes if fetched else 0, t_down,
                                          gw.energy_j(sched.duration, down_s=t_down)))
                o.end += sched.duration
        return out, train_s


def gateway_row(r: int, j: int, g: int, start: float, duration: float, rows: ClientRecords,
                part: Optional[PartialSum], cloud_down_bytes: int, t_cloud_down: float,
                gateway_j: float = float("nan")) -> dict[str, Any]:
    """One row of gateways.parquet: a gateway round's devices, time, bytes and energy per tier
    (`gateway_j`: the gateway's own joules in the row's span)."""
    status = np.array(rows.status, dtype=object)
    row: dict[str, Any] = {"round": r, "gateway_round": j, "gateway": g, "sim_start": start, "duration": duration,
                           "selected": len(rows), "trained": int(part.devices) if part is not None else 0,
                           "samples_trained": int(part.samples) if part is not None else 0}
    row.update({f"n_{s}": int(np.sum(status == s)) for s in STATUSES})
    row.update({"bytes_down": int(np.sum(rows.bytes_down)), "bytes_up": int(np.sum(rows.bytes_up)),
                "energy_j": float(np.sum(rows.energy_j)), "bytes_cloud_down": int(cloud_down_bytes),
                "t_cloud_down": float(t_cloud_down), "bytes_cloud_up": 0, "t_cloud_up": 0.0,
                "t_gateway_done": math.nan, "gateway_energy_j": float(gateway_j), "applied": False})
    return row


class GatewayRounds:
    """Synchronous cloud rounds through gateways (a `raysim.engine.loop.Mode`): one step is one
    cloud round (see the module docstring)."""

    def __init__(self, *, cycles: Cycles) -> None:
        self.cycles = cycles

    def gather(self, step: int) -> Gathered:
        cy = self.cycles
        gw, m = cy.gateways, cy.model
        start = m.clock
        cy.battery_at[:] = start
        done, train_s = cy.run_cycles([Cycle(g, step - 1, start + cy.t_cloud_down, m.params)
                                       for g in range(gw.count)])
        finish = np.array([c.end for c in done]) + cy.t_cloud_up - start
        in_time = finish <= gw.cloud_deadline if gw.cloud_deadline is not None else np.ones(gw.count, bool)
        duration = float(finish.max()) if in_time.all() else float(gw.cloud_deadline)  # type: ignore[arg-type]
        # the cloud's one arrival: the in-time gateways' changes, each weighted by its samples
        acc = PartialSum.zeros(m.shapes)
        for c in done:
            if c.samples > 0 and in_time[c.cycle.gateway]:
                fold_held(acc, c.change(m.params), c.held, c.samples)
        for c in done:
            cy.keep_gateway_state(c)
        # rows in gateway-round order, then gateway order
        clients = ClientRecords()
        rows: list[dict[str, Any]] = []
        for j in range(gw.rounds):
            for c in done:
                clients.extend(c.clients[j])
                rows.append(c.rows[j])
        self._finish_rows(rows, clients, in_time, finish)
        end = start + duration
        battery_rows: list[dict[str, Any]] = []
        if cy.batteries is not None:
            # every gateway's devices idle from its last gateway round to the cloud round's end
            for g in range(gw.count):
                cy.batteries.advance(float(cy.battery_at[g]), end, np.zeros(0, np.int64), np.zeros(0),
                                     among=cy.members[g])
            battery_rows = cy.batteries.rows(step, end)
        applied = in_time[np.asarray(clients.gateway, dtype=np.int64)] if len(clients) else np.zeros(0, bool)
        ok_rows = np.array([v >= 0 for v in clients.version_applied], dtype=bool) & applied
        trained = sum(c.devices for c in done if in_time[c.cycle.gateway])
        samples = int(np.asarray(clients.samples_trained)[ok_rows].sum()) if len(clients) else 0
        return Gathered([Arrival(acc, step - 1)], start, end, duration, clients, int(trained), samples, train_s,
                        battery_rows, rows)

    def after_step(self, step: int, stepped: bool, got: Gathered) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return self.cycles.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.cycles.load_state_dict(state)

    def _finish_rows(self, rows: list[dict[str, Any]], clients: ClientRecords, in_time: np.ndarray,
                     finish: np.ndarray) -> None:
        """Fill the cloud link and whether the cloud took each gateway's model; a device under a
        gateway the cloud left out had no update applied."""
        last = self.cycles.gateways.rounds
        for row in rows:
            g = row["gateway"]
            row["applied"] = bool(in_time[g])
            if row["gateway_round"] == last:
                row["bytes_cloud_up"] = self.cycles.model_bytes
                row["t_cloud_up"] = self.cycles.t_cloud_up
                row["t_gateway_done"] = float(finish[g])
                row["gateway_energy_j"] += self.cycles.gateways.energy_j(0.0, up_s=self.cycles.t_cloud_up)
        for i, g in enumerate(clients.gateway):
            if not in_time[g] and clients.version_applied[i] >= 0:
                clients.version_applied[i] = -1
                clients.staleness[i] = -1
                clients.samples_trained[i] = 0
                clients.reason[i] = (clients.reason[i] + "; " if clients.reason[i] else "") + \
                    f"gateway {g} missed the cloud deadline"


