"""Asynchronous FL on the event-queue clock: FedBuff and FedAsync, with compressed submodels.

`FlatEvents` is a mode of the one round loop (`raysim.engine.loop`): a step is one server
step; its `state_dict()` / `load_state_dict()` resume it exactly, so the coordinator, the run
directory and `raysim report` treat it like any run.

- The timeline (`raysim.engine.events`) decides, from predictions alone, which device trains from
  which global version and which server step its update goes into.
- Devices train their rate's submodel of the version they downloaded. Their deltas are
  remapped into global coordinates and folded, exactly (int64), into one partial sum per
  (step, start version): the devices of such a group share their staleness.
- A server step combines the groups of its arrivals (`raysim.server.rules`): FedBuff takes the per-element mean of
  s(staleness) x delta over the devices that held each element (Nguyen et al., 2022: the
  buffer of K updates, each down-weighted by staleness); FedAsync mixes the one arrival into
  the model, x <- x + alpha s (x_start + delta - x) on the elements it held (Xie et al., 2019).
  Either result goes through the server optimizer; elements nobody held do not move.
- Devices are trained ahead of time: once their start version exists, the arrivals of the
  next steps are trained in one backend call (grouped by start version), so hosts stay busy
  even when a step takes one update. Which call trains a device changes nothing in the numbers.

    mode = FlatEvents(setup=setup, cfg=cfg, strategy=Static(), assigner=FitMemory(), model=model,
                      backend=backend, acfg=AsyncConfig(mode="fedbuff", concurrency=100, buffer=10))
    got = mode.gather(1)   # the arrivals of server step 1
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from raysim.engine.assignment import Assigner, AssignRequest, check_rates
from raysim.engine.cost import device_times
from raysim.engine.energy import Phases, phase_energy, seconds
from raysim.engine.events import Dispatched, Job, Refusal, Timeline, Window
from raysim.engine.loop import Gathered, Global
from raysim.engine.recording import add_device_row
from raysim.engine.setup import Backend, RoundConfig, Setup, host_work
from raysim.engine.versions import Versions
from raysim.messages import GroupResult, PartialSum, TrainReport, TrainTask
from raysim.records import EXCLUDED, FAILED, OFFLINE, OK, ClientRecords
from raysim.seeding import rng
from raysim.server.aggregate import merge
from raysim.server.rules import MODES, Arrival, Rule, rule_for
from raysim.server.staleness import Polynomial, Staleness
from raysim.submodel import SubmodelPlan
from raysim.submodel.strategies import Strategy

__all__ = ["AsyncConfig", "Dispatcher", "FlatEvents"]


@dataclass(frozen=True, kw_only=True)
class AsyncConfig:
    """The asynchronous server: `mode` fedbuff (step every `buffer` arrivals) or fedasync (every
    arrival, mixed in with weight `alpha` x staleness); `concurrency` devices train at once."""

    mode: str
    concurrency: int
    buffer: int = 10
    staleness: Staleness = Polynomial(0.5)
    alpha: float = 0.6
    poll_s: float = 10.0        # retry an empty training slot after this many simulated seconds
    batch: Optional[int] = None  # devices per backend call to aim for (None: 4 per host)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"server.mode: {self.mode!r} is not one of {MODES}")

    @property
    def rule(self) -> Rule:
        """How the server combines arrivals (FedBuff's buffer or FedAsync's mix)."""
        return rule_for(self.mode, self.staleness, self.alpha)

    @property
    def per_step(self) -> int:
        """Arrivals that trigger a server step."""
        return self.rule.per_step(self.buffer)


class Dispatcher:
    """Picks idle online devices for free training slots and assigns their rates and times."""

    def __init__(self, setup: Setup, assigner: Assigner, cfg: RoundConfig) -> None:
        self.setup, self.assigner, self.cfg = setup, assigner, cfg
        self.samples = setup.shards.sizes()
        self.ids = setup.fleet.device_id

    def candidates(self, n: int, t: float, busy: frozenset[int], key: int) -> np.ndarray:
        """Up to n distinct fleet positions of devices online at t and not training, at random."""
        g = rng(self.cfg.seed, "dispatch", key)
        size = len(self.ids)
        # Rejection sampling first: a handful of random devices is almost always enough, and
        # asking the availability model about the whole fleet per dispatch would not scale.
        draw = g.integers(0, size, size=4 * n + 8)
        _, first = np.unique(draw, return_index=True)
        draw = draw[np.sort(first)]
        draw = draw[~np.isin(self.ids[draw], list(busy))] if busy else draw
        ok = draw[self.setup.availability.online(self.ids[draw], t)] if len(draw) else draw
        if len(ok) >= n:
            return ok[:n]
        free = np.flatnonzero(self.setup.availability.online(self.ids, t))
        if busy:
            free = free[~np.isin(self.ids[free], list(busy))]
        if len(free) <= n:
            return free
        return np.sort(g.choice(free, size=n, replace=False))

    def __call__(self, n: int, t: float, version: int, first_job: int, busy: frozenset[int]) -> Dispatched:
        setup, cfg = self.setup, self.cfg
        jobs: list[Job] = []
        refused: list[Refusal] = []
        job = first_job
        for _attempt in range(4):  # devices that cannot train are refused; try others at once
            want = n - len(jobs)
            if want <= 0:
                break
            taken = busy | {j.device for j in jobs} | {r.device for r in refused}
            pos = self.candidates(want, t, frozenset(taken), job)
            if len(pos) == 0:
                break
            ids = self.ids[pos]
            samples = self.samples[pos]
            times_at = {rt: device_times(setup.fleet, pos, setup.costs[rt], samples, cfg.epochs,
                                         rng(cfg.seed, "jitter", job)) for rt in setup.rates}
            req = AssignRequest(version + 1, ids, list(setup.rates),
                                {rt: c.memory_bytes for rt, c in setup.costs.items()}, setup.fleet.memory[pos],
                                lambda rt: times_at[rt].total, None)  # noqa: B023 - called before the loop moves on
            assign = self.assigner.assign(req)
            rate = check_rates(self.assigner, assign.rate, list(setup.rates), len(pos))
            for i in range(len(pos)):
                p, dev = int(pos[i]), int(ids[i])
                if np.isnan(rate[i]) or samples[i] == 0:
                    why = "no training samples" if not np.isnan(rate[i]) else str(assign.reason[i])
                    refused.append(Refusal(job, dev, p, version, t, why))
                else:
                    tm = times_at[float(rate[i])]
                    d, c, u = float(tm.download[i]), float(tm.compute[i]), float(tm.upload[i])
                    stays = bool(setup.availability.online_during(np.array([dev]), t, t + d + c + u)[0])
                    jobs.append(Job(job, dev, p, float(rate[i]), version, t, d, c, u, int(samples[i]), not stays,
                                    float(tm.wait_download[i]), float(tm.wait_upload[i])))
                job += 1
        return Dispatched(jobs, refused, job - first_job)


class FlatEvents:
    """The flat asynchronous mode (a `raysim.engine.loop.Mode`): one step per server step (see
    the module docstring)."""

    def __init__(self, *, setup: Setup, cfg: RoundConfig, strategy: Strategy, assigner: Assigner, model: Global,
                 backend: Backend, acfg: AsyncConfig) -> None:
        self.setup, self.cfg, self.strategy, self.model, self.backend = setup, cfg, strategy, model, backend
        self.acfg = acfg
        self.samples = setup.shards.sizes()
        self.timeline = Timeline(Dispatcher(setup, assigner, cfg), acfg.concurrency, acfg.per_step, acfg.poll_s)
        self.windows: dict[int, Window] = {}     # computed, not yet applied (step -> window)
        self.versions = Versions(model.params)
        self.results: dict[tuple[int, int], PartialSum] = {}  # (step, start version) -> exact sum
        self.reports: dict[int, TrainReport] = {}              # job -> report
        self.trained: set[int] = set()                         # jobs trained (or lost with their host)
        self._applied_state = self.timeline.snapshot()  # the timeline as of the last applied step
        self._plans: dict[tuple[int, float, int], SubmodelPlan] = {}   # by `_plan_key`
        self._win: Optional[Window] = None

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        tl = self._applied_state
        keep = tl.versions() | {self.model.round}
        return {"async": {"timeline": tl.plain(), "versions": self.versions.plain(keep)}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        a = state["async"]
        self.timeline.load_state(a["timeline"])
        self._applied_state = self.timeline.snapshot()
        self.versions.load(a["versions"])
        self.windows.clear()
        self.results.clear()
        self.reports.clear()
        self.trained.clear()
        self._plans.clear()

    # ---------------------------------------------------------------- one server step
    def window(self, step: int) -> Window:
        """The timeline's window of `step` (the timeline runs ahead as far as asked)."""
        while self.timeline.steps < step:
            w = self.timeline.next_window()
            self.windows[w.step] = w
        return self.windows[step]

    def gather(self, step: int) -> Gathered:
        w = step
        win = self.window(w)
        train_s = 0.0
        if any(j.job not in self.trained for j in win.arrivals):
            train_s = self.train_ahead(w)
        applied = {j.job for j in win.arrivals if j.job in self.reports and self.reports[j.job].status == OK}
        # a fixed order of float additions: ascending start version
        keys = sorted(k for k in self.results if k[0] == w)
        arrivals = [Arrival(self.results.pop(k), k[1], self.versions[k[1]]) for k in keys]
        clients = self.window_rows(win, applied)
        ok = [j for j in win.arrivals if j.job in applied]
        self._win = win
        return Gathered(arrivals, win.start, win.time, win.time - win.start, clients, len(ok),
                        int(sum(self.reports[j.job].samples for j in ok)), train_s)

    def after_step(self, step: int, stepped: bool, got: Gathered) -> None:
        win = self._win
        assert win is not None and win.state is not None  # `Timeline.next_window` always records it
        self.versions.add(step, self.model.params)
        self._applied_state = win.state
        del self.windows[step]
        self._release()
        for j in win.arrivals:
            self.reports.pop(j.job, None)
            self.trained.discard(j.job)
        self._win = None

    def train_ahead(self, w: int) -> float:
        """Train every arrival of step w, and of the next steps whose start version exists,
        in one backend call; returns the seconds it took."""
        batch = self.acfg.batch or 4 * max(1, int(getattr(self.backend, "parallelism", 1)))
        jobs: list[tuple[int, Job]] = []
        step = w
        # Whole windows only: a (step, version) group is always trained in one call.
        while step == w or (len(jobs) < batch and step <= self.cfg.rounds and step < w + 4 * batch):
            win = self.window(step)
            jobs += [(step, j) for j in win.arrivals if j.version <= w - 1 and j.job not in self.trained]
            step += 1
        plans: dict[int, SubmodelPlan] = {}
        plan_ids: dict[tuple[int, float, int], int] = {}
        groups: dict[tuple[int, int], int] = {}
        tasks: list[TrainTask] = []
        for arrival, j in jobs:
            key = self._plan_key(j)
            if key not in plan_ids:
                plan_ids[key] = len(plans)
                plans[plan_ids[key]] = self._plan(j)
            gid = groups.setdefault((arrival, j.version), len(groups))
            steps = math.ceil(j.samples / self.cfg.batch_size) * self.cfg.epochs
            hint = host_work(steps, self.cfg.batch_size, self.setup.costs[j.rate].flops_per_sample)
            tasks.append(TrainTask(j.device, j.rate, plan_ids[key], None, self.cfg.weighting, hint, j.t_download,
                                   j.t_compute, j.t_upload, None, version=j.version, group=gid, stream=j.job))
        versions = self.versions.plain(j.version for _, j in jobs)
        t0 = time.perf_counter()
        results: list[GroupResult] = self.backend.train_groups(versions, plans, tasks, self._live())
        took = time.perf_counter() - t0
        by_gid = {g: k for k, g in groups.items()}
        _, reports = merge(results, self.model.shapes, into=self.results, key=by_gid.__getitem__)
        self.reports.update((rep.job, rep) for rep in reports)
        self.trained.update(j.job for _, j in jobs)
        return took

    def _plan_key(self, j: Job) -> tuple[int, float, int]:
        """Devices that share a plan: one per (version, rate), or per device where the strategy
        draws one per device."""
        return j.version, j.rate, j.device if self.strategy.per_device else -1

    def _plan(self, j: Job) -> SubmodelPlan:
        key = self._plan_key(j)
        plan = self._plans.get(key)
        if plan is None:
            # The strategy sees the step the device joins (rolling windows move per version) and
            # the weights it downloaded (magnitude).
            plan = self.strategy.plan(self.setup.spec, j.rate, j.version + 1, key[2], self.versions[j.version],
                                      self.cfg.seed)
            self._plans[key] = plan
        return plan

    def _live(self) -> set[int]:
        """Versions some device still needs (in flight, or arriving in a computed window)."""
        live = {j.version for j in self.timeline.in_flight()}
        for win in self.windows.values():
            live.update(j.version for j in win.arrivals)
        live.add(self.model.round)
        return live

    def _release(self) -> None:
        live = self._live()
        self.versions.keep(live)
        self._plans = {k: p for k, p in self._plans.items() if k[0] in live}

    # ---------------------------------------------------------------- records
    def window_rows(self, win: Window, applied: set[int]) -> ClientRecords:
        """One record per dispatch concluded in this step: refused, lost, or arrived."""
        costs, fleet = self.setup.costs, self.setup.fleet
        classes = fleet.classes()
        out = ClientRecords()
        w = win.step
        nan = float("nan")
        # energy inputs, row by row: (position, download, compute, upload, sent, off-air waits)
        phases: list[tuple[int, float, float, float, bool, float, float]] = []
        for r in win.refused:
            phases.append((r.pos, 0.0, 0.0, 0.0, False, 0.0, 0.0))
            add_device_row(out, round=w, device_id=r.device, device_class=str(classes[r.pos]), rate=nan,
                           status=EXCLUDED, reason=r.reason, times=(nan, nan, nan), t_finish=nan, work_fraction=0.0,
                           samples=int(self.samples[r.pos]), report=None, applied=False, bytes_down=0, bytes_up=0,
                           version_start=r.version)
        for j in win.lost + win.arrivals:
            # no round closes on a device here: it does its whole timeline; a lost one never sends
            phases.append((j.pos, j.t_download, j.t_compute, 0.0 if j.lost else j.t_upload, True, j.w_download,
                           0.0 if j.lost else j.w_upload))
            rep = self.reports.get(j.job)
            if j.lost:
                st, why = OFFLINE, "went offline while training: the update never arrived"
            elif rep is None:
                st, why = FAILED, "device host lost"
            elif rep.status != OK:
                st, why = rep.status, rep.reason
            else:
                st, why = OK, ""
            ok = j.job in applied
            nbytes, up_bytes = int(costs[j.rate].wire_down), int(costs[j.rate].wire_up)
            add_device_row(out, round=w, device_id=j.device, device_class=str(classes[j.pos]), rate=j.rate,
                           status=st, reason=why, times=(j.t_download, j.t_compute, j.t_upload),
                           t_finish=j.finish - win.start, work_fraction=1.0 if ok else 0.0, samples=j.samples,
                           report=rep, applied=ok, bytes_down=nbytes, bytes_up=up_bytes if ok else 0,
                           version_start=j.version)
        pos, dl, comp, up, sent, wd, wu = (np.array(c) for c in zip(*phases)) if phases else (np.zeros(0, np.int64),) * 7
        todo = Phases(dl.astype(float), comp.astype(float), up.astype(float), np.ones(len(pos)), sent.astype(bool),
                      wd.astype(float), wu.astype(float))
        e = phase_energy(seconds(todo, np.inf), fleet.power_of(pos.astype(np.int64)))
        out.add_energy(e.compute, e.tx, e.rx, e.idle)
        return out
