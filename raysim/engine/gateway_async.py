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

    mode = GatewayEvents(cycles=cycles, acfg=AsyncConfig(mode="fedasync", concurrency=gw.count))
    got = mode.gather(1)    # one cloud step: the arriving gateway's rows and its devices'
"""

from __future__ import annotations

from typing import Any

import numpy as np

from raysim.engine import events
from raysim.engine.asynchronous import AsyncConfig
from raysim.engine.events import FINISH, EventQueue, Queued
from raysim.engine.hierarchy import Cycle, CycleDone, Cycles
from raysim.engine.loop import Gathered
from raysim.engine.versions import Versions
from raysim.errors import NoDevices
from raysim.messages import PartialSum
from raysim.records import ClientRecords
from raysim.server.aggregate import fold_held
from raysim.server.rules import Arrival

__all__ = ["GatewayEvents"]

# Attempts in a row that trained nothing anywhere before a run gives up (devices never online,
# or without samples): the flat timeline's bound (`raysim.engine.events.MAX_IDLE`).
MAX_IDLE = events.MAX_IDLE


class GatewayEvents:
    """Gateways on their own clocks, the cloud asynchronous (a `raysim.engine.loop.Mode`; see
    the module docstring)."""

    def __init__(self, *, cycles: Cycles, acfg: AsyncConfig) -> None:
        self.cycles, self.acfg = cycles, acfg
        self.model = cycles.model
        self.versions = Versions(self.model.params)
        self.counts = np.zeros(cycles.gateways.count, np.int64)   # cycles each gateway has started
        self.running: dict[int, Cycle] = {}                      # every gateway's cycle in flight
        # in flight: pending until trained, then at the time it is over (key: the gateway)
        self.queue = EventQueue()
        self._train_s = 0.0
        self._last: tuple[int, float] = (-1, 0.0)                # the step's last arrival: gateway, time
        for g in range(cycles.gateways.count):
            self._start(g, self.model.clock + cycles.t_cloud_down, 0, True)

    def _start(self, g: int, at: float, version: int, download: bool) -> None:
        c = self.running[g] = Cycle(g, version, at, self.versions[version], int(self.counts[g]), download)
        self.counts[g] += 1
        self.queue.defer(at, g, c)   # a cycle is over no earlier than it starts

    def _event(self, d: CycleDone) -> float:
        """When a trained cycle is over: its upload arrives, or (nothing to send) it tries again."""
        if d.samples > 0:
            return d.end + self.cycles.t_cloud_up
        return max(d.end, d.cycle.start + self.acfg.poll_s)

    def _train(self, due: list[Cycle]) -> list[Queued]:
        """The event queue's resolve: train cycles that might be over next, all in one call."""
        out, took = self.cycles.run_cycles(due)
        self._train_s += took
        return [(self._event(d), d.cycle.gateway, FINISH, d) for d in out]

    # ---------------------------------------------------------------- one cloud step
    def gather(self, step: int) -> Gathered:
        cy, w = self.cycles, step
        start = self.model.clock
        arrived: list[tuple[float, CycleDone]] = []
        concluded: list[tuple[float, CycleDone]] = []   # in time order, arrivals and empty tries
        self._train_s, idle = 0.0, 0
        while len(arrived) < self.acfg.per_step:
            t, g, _, d = self.queue.pop(self._train)
            cy.keep_gateway_state(d)
            concluded.append((t, d))
            if d.samples > 0:
                arrived.append((t, d))
                idle = 0
                if len(arrived) < self.acfg.per_step:   # FedBuff: goes on from the cloud's model now
                    self._start(g, t + cy.t_cloud_down, self.model.round, True)
            else:
                idle += 1
                if idle > MAX_IDLE:
                    raise NoDevices(f"topology.gateways: no gateway's devices sent an update in {MAX_IDLE} tries "
                                    f"(simulated time {t:.0f} s): are their devices never online, or without "
                                    f"training samples?")
                fresh = self.model.round != d.cycle.version
                self._start(g, t + (cy.t_cloud_down if fresh else 0.0), self.model.round, fresh)
        now = arrived[-1][0]
        self._last = (arrived[-1][1].cycle.gateway, now)
        clients, rows = self._rows(w, concluded)
        ok = np.array([v >= 0 for v in clients.version_applied], dtype=bool)
        samples = int(np.asarray(clients.samples_trained)[ok].sum()) if len(clients) else 0
        return Gathered(self._arrivals(arrived), start, now, now - start, clients,
                        int(sum(d.devices for _, d in arrived)), samples, self._train_s, [], rows)

    def _arrivals(self, arrived: list[tuple[float, CycleDone]]) -> list[Arrival]:
        """Each arrived gateway's change from the version it started from, as the cloud's rule
        takes it; a fixed order of float additions: by start version, then gateway."""
        out = []
        for _, d in sorted(arrived, key=lambda a: (a[1].cycle.version, a[1].cycle.gateway)):
            part = PartialSum.zeros(self.model.shapes)
            v = d.cycle.version
            fold_held(part, d.change(self.versions[v]), d.held, d.samples)
            out.append(Arrival(part, v, self.versions[v]))
        return out

    def after_step(self, step: int, stepped: bool, got: Gathered) -> None:
        self.versions.add(step, self.model.params)
        last, now = self._last
        self._start(last, now + self.cycles.t_cloud_down, step, True)
        self.versions.keep({c.version for c in self.running.values()} | {self.model.round})

    def _rows(self, w: int, concluded: list[tuple[float, CycleDone]]) -> tuple[ClientRecords, list[dict[str, Any]]]:
        """The device rows and gateway rows of the cycles concluded in step w: an arrival's updates
        went in at w; an empty try's did not."""
        clients = ClientRecords()
        rows: list[dict[str, Any]] = []
        last = self.cycles.gateways.rounds
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
                    began = c.start - (self.cycles.t_cloud_down if c.download else 0.0)
                    row["bytes_cloud_up"], row["t_cloud_up"] = self.cycles.model_bytes, self.cycles.t_cloud_up
                    row["t_gateway_done"] = t - began
                    row["gateway_energy_j"] += self.cycles.gateways.energy_j(0.0, up_s=self.cycles.t_cloud_up)
                rows.append(row)
        return clients, rows

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        st = self.cycles.state_dict()
        st["gateways_async"] = {
            "running": {g: (c.version, c.start, c.number, c.download) for g, c in self.running.items()},
            "counts": self.counts.tolist(),
            "versions": self.versions.plain(c.version for c in self.running.values())}
        return st

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.cycles.load_state_dict(state)
        a = state.get("gateways_async")
        if a is None:
            raise ValueError("checkpoint: holds no asynchronous gateway state, but the scenario runs gateways "
                             "with an asynchronous cloud")
        self.versions.load(a["versions"])
        self.counts = np.asarray(a["counts"], dtype=np.int64)
        self.running = {int(g): Cycle(int(g), int(v), float(s), self.versions[int(v)], int(n), bool(dl))
                        for g, (v, s, n, dl) in a["running"].items()}
        # cycles trained ahead are trained again: to the same numbers (their draws are keyed)
        self.queue = EventQueue()
        for g, c in sorted(self.running.items()):
            self.queue.defer(c.start, g, c)
