"""Asynchronous gateways: each gateway answers the cloud when its own rounds are done.

With gateways and `server.mode: fedasync | fedbuff`, the cloud takes gateway models as they
arrive instead of waiting for the slowest gateway. A gateway downloads the cloud's latest
model, runs its kappa2 gateway rounds over its devices (a `Cycle`: synchronous rounds with
selection, rates, deadline and over-commitment, as in `raysim.engine.hierarchy`), uploads its
model and at once starts again from the model the cloud has then.

- FedAsync at the cloud (Xie et al., 2019): each arrival is mixed in on the elements its
  devices held, x <- x + alpha s(t) (x_gateway - x), t the cloud steps since the version the
  gateway started from.
- FedBuff at the cloud (Nguyen et al., 2022): a step every K arrivals, the per-element mean
  of s(t) x (x_gateway - x_start) weighted by the samples behind each.
Either result goes through the cloud's server optimizer. One `step()` is one cloud step, so
`rounds` counts cloud steps.

Cycles are trained lazily, in simulated-time order: a cycle is trained once it might be the
next to arrive (it starts before the earliest arrival computed so far), so every gateway's
first cycle trains in one backend call and later ones as their turn comes. A cycle in which
no device's update reached the gateway sends nothing; the gateway tries again from the cloud's
latest model (after `poll_s` if the attempt took no time).

Resume: the state is each gateway's running cycle (start version, start time, count) and the
cloud versions they start from; cycles trained ahead are trained again after a resume, to the
same numbers (their draws are keyed, aggregation is exact).

    sim = AsyncGatewaySimulation(setup, Static(), FitMemory(), FedAvg(), backend, cfg, gateways=gw,
                                 acfg=AsyncConfig("fedasync", concurrency=gw.count))
    out = sim.step()        # one cloud step: the arriving gateway's rows and its devices'
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch

from raysim.engine.asynchronous import AsyncConfig, AsyncSimulation
from raysim.engine.hierarchy import Cycle, CycleDone, HierarchicalSimulation
from raysim.engine.rounds import round_totals
from raysim.messages import PartialSum
from raysim.records import ClientRecords, RoundOutput, RoundRecord
from raysim.server.aggregate import buffered_mean, fold_held, mixed_update

__all__ = ["AsyncGatewaySimulation"]

# Attempts in a row that trained nothing anywhere before a run gives up (devices never online,
# or without samples): at a 10 s poll, about 11 simulated days for one gateway.
_MAX_IDLE = 100_000
_copy = AsyncSimulation._copy   # the flat asynchronous engine's copy of a version's weights


class AsyncGatewaySimulation(HierarchicalSimulation):
    """Gateways on their own clocks, the cloud asynchronous (see the module docstring)."""

    def __init__(self, *args: Any, acfg: AsyncConfig, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.gateways.cloud_deadline is not None:
            raise ValueError("topology.cloud_deadline: applies to synchronous cloud rounds; with server.mode "
                             f"{acfg.mode!r} the cloud waits for no gateway")
        if self.batteries is not None:
            raise ValueError(f"energy.batteries: tracked in synchronous rounds only; server.mode {acfg.mode!r} "
                             f"does not track them yet")
        self.acfg = acfg
        self.versions: dict[int, dict[str, torch.Tensor]] = {0: _copy(self.params)}
        self.counts = np.zeros(self.gateways.count, np.int64)   # cycles each gateway has started
        self.running: dict[int, Cycle] = {}
        self.done: dict[int, CycleDone] = {}                     # trained ahead, not yet arrived
        for g in range(self.gateways.count):
            self._start(g, self.clock + self.t_cloud_down, 0, True)

    def _start(self, g: int, at: float, version: int, download: bool) -> None:
        self.running[g] = Cycle(g, version, at, self.versions[version], int(self.counts[g]), download)
        self.counts[g] += 1

    def _event(self, g: int) -> float:
        """When gateway g's trained cycle is over: its upload arrives, or (nothing to send) it tries again."""
        d = self.done[g]
        if d.samples > 0:
            return d.end + self.t_cloud_up
        return max(d.end, d.cycle.start + self.acfg.poll_s)

    def _train_due(self) -> float:
        """Train the cycles that might arrive before every trained one; returns the seconds it took."""
        took = 0.0
        while True:
            bound = min((self._event(g) for g in self.done), default=math.inf)
            # a cycle is over no earlier than it starts
            due = [g for g in sorted(self.running) if g not in self.done and self.running[g].start <= bound]
            if not due:
                return took
            out, s = self.run_cycles([self.running[g] for g in due])
            took += s
            self.done.update(zip(due, out))

    # ---------------------------------------------------------------- one cloud step
    def step(self) -> RoundOutput:
        """Run the next cloud step and return its records."""
        cfg, w = self.cfg, self.round + 1
        wall0 = time.perf_counter()
        start = self.clock
        arrived: list[tuple[float, CycleDone]] = []
        concluded: list[tuple[float, CycleDone]] = []   # in time order, arrivals and empty tries
        train_s, idle = 0.0, 0
        while len(arrived) < self.acfg.per_step:
            train_s += self._train_due()
            g = min(self.done, key=lambda h: (self._event(h), h))
            t = self._event(g)
            d = self.done.pop(g)
            self.keep_gateway_state(d)
            concluded.append((t, d))
            if d.samples > 0:
                arrived.append((t, d))
                idle = 0
                if len(arrived) < self.acfg.per_step:   # FedBuff: goes on from the cloud's model now
                    self._start(g, t + self.t_cloud_down, self.round, True)
            else:
                idle += 1
                if idle > _MAX_IDLE:
                    raise ValueError(f"topology.gateways: no gateway's devices sent an update in {_MAX_IDLE} tries "
                                     f"(simulated time {t:.0f} s): are their devices never online, or without "
                                     f"training samples?")
                fresh = self.round != d.cycle.version
                self._start(g, t + (self.t_cloud_down if fresh else 0.0), self.round, fresh)
        self._apply(w, arrived)
        now = arrived[-1][0]
        last = arrived[-1][1].cycle.gateway
        self.round, self.clock = w, now
        self.versions[w] = _copy(self.params)
        self._start(last, now + self.t_cloud_down, w, True)
        self._release()
        clients, rows = self._rows(w, concluded)
        evals = self.evaluate(w) if (w % cfg.eval_every == 0 or w == cfg.rounds) else []
        ok = np.array([v >= 0 for v in clients.version_applied], dtype=bool)
        wall = time.perf_counter() - wall0
        record = RoundRecord(round=w, sim_start=start, sim_time=now, duration=now - start, wall_s=wall,
                             coordinator_s=wall - train_s, train_s=train_s, selected=len(clients),
                             trained=int(sum(d.devices for _, d in arrived)),
                             samples_trained=int(np.asarray(clients.samples_trained)[ok].sum()) if len(clients) else 0,
                             **round_totals(clients, evals))
        return RoundOutput(record, clients, evals, [], rows)

    def _apply(self, w: int, arrived: list[tuple[float, CycleDone]]) -> None:
        """The cloud's step on the arrived gateway models."""
        parts = []
        # a fixed order of float additions: by start version, then gateway
        for _, d in sorted(arrived, key=lambda a: (a[1].cycle.version, a[1].cycle.gateway)):
            part = PartialSum.zeros(self.shapes)
            fold_held(part, d.change(self.versions[d.cycle.version]), d.held, d.samples)
            parts.append((d.cycle.version, part))
        if self.acfg.mode == "fedasync":
            ((v, part),) = parts
            delta, held = mixed_update(part, self.acfg.alpha * self.acfg.staleness(w - 1 - v), self.versions[v],
                                       self.params)
        else:
            delta, held = buffered_mean([(self.acfg.staleness(w - 1 - v), p) for v, p in parts], self.shapes)
        self.server.step(self.params, delta, held, self.server_state)
        self.server_state.steps += 1

    def _release(self) -> None:
        keep = {c.version for c in self.running.values()} | {self.round}
        for v in [v for v in self.versions if v not in keep]:
            del self.versions[v]

    def _rows(self, w: int, concluded: list[tuple[float, CycleDone]]) -> tuple[ClientRecords, list[dict[str, Any]]]:
        """The device rows and gateway rows of the cycles concluded in step w: an arrival's updates
        went in at w; an empty try's did not."""
        clients = ClientRecords()
        rows: list[dict[str, Any]] = []
        last = self.gateways.rounds
        for t, d in concluded:
            c, sent = d.cycle, d.samples > 0
            if not sent and not any(len(x) for x in d.clients) and not c.download:
                continue   # an attempt that found nobody online: nothing happened worth a row
            for j in range(last):
                rc = d.clients[j]
                rc.round = [w] * len(rc)
                for i, v in enumerate(rc.version_applied):
                    if v >= 0 and sent:
                        rc.version_applied[i], rc.staleness[i] = w, w - 1 - c.version
                    elif v >= 0:
                        rc.version_applied[i], rc.staleness[i], rc.samples_trained[i] = -1, -1, 0
                clients.extend(rc)
                row = d.rows[j]
                row["round"], row["applied"] = w, sent
                if j + 1 == last and sent:
                    began = c.start - (self.t_cloud_down if c.download else 0.0)
                    row["bytes_cloud_up"], row["t_cloud_up"] = self.model_bytes, self.t_cloud_up
                    row["t_gateway_done"] = t - began
                    row["gateway_energy_j"] += self.gateways.energy_j(0.0, up_s=self.t_cloud_up)
                rows.append(row)
        return clients, rows

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        st = super().state_dict()
        st["gateways_async"] = {
            "running": {g: (c.version, c.start, c.number, c.download) for g, c in self.running.items()},
            "counts": self.counts.tolist(),
            "versions": {v: self.versions[v] for v in sorted({c.version for c in self.running.values()})}}
        return st

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        a = state.get("gateways_async")
        if a is None:
            raise ValueError("checkpoint: holds no asynchronous gateway state, but the scenario runs gateways "
                             "with an asynchronous cloud")
        self.versions = {int(v): _copy(p) for v, p in a["versions"].items()}
        self.counts = np.asarray(a["counts"], dtype=np.int64)
        self.running = {int(g): Cycle(int(g), int(v), float(s), self.versions[int(v)], int(n), bool(dl))
                        for g, (v, s, n, dl) in a["running"].items()}
        self.done.clear()
