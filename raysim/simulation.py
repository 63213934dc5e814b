"""The round loop: select, assign, plan, predict, train (through a backend), aggregate, evaluate.

`Simulation` holds the global model and the clock and knows nothing of Ray: the work of a
round goes to a `Backend` (in-process for tests, a pool of Ray actors in `raysim.runtime`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Any, Optional, Protocol

import numpy as np
import torch

from raysim.aggregate import PartialSum, ServerOptimizer, mean_delta
from raysim.config import Scenario, ScenarioError, rate_sizes
from raysim.cost import RateCost, device_times, profile_ladder
from raysim.data import Dataset, Shards, partition
from raysim.fleet import Availability, Fleet, make_fleet
from raysim.models import ModelSpec, make_spec
from raysim.models.base import ModelSpec as _Spec
from raysim.models.calibrate import calibration_sample, recompute_bn_stats
from raysim.policy import assign_rates
from raysim.runtime.tasks import HostResult, TrainReport, TrainTask
from raysim.schedule import EXCLUDED, FAILED, LATE, OK, PARTIAL, STATUSES, Schedule, decide
from raysim.seeding import rng
from raysim.submodel import SubmodelPlan, extract, make_strategy, plan_indices
from raysim.train import evaluate, load_params


class Backend(Protocol):
    """Runs a round's training tasks somewhere and returns the merged result."""

    def train(self, round_idx: int, params: dict[str, torch.Tensor], plans: dict[int, SubmodelPlan],
              tasks: list[TrainTask]) -> list[HostResult]:
        ...


# What one minibatch step costs a host besides its FLOPs (Python, autograd and the update), in
# FLOP-equivalents of a CPU core: measured ~1.9 ms a step against ~16 us per MFLOP of training.
STEP_OVERHEAD_FLOPS = 1.2e8


def host_work(steps: int, batch_size: int, flops_per_sample: float) -> float:
    """A device's real training work on a host, for balancing hosts. (Its simulated compute time
    is no guide: a slow microcontroller and a fast phone may train the same submodel.)"""
    return steps * (STEP_OVERHEAD_FLOPS + batch_size * flops_per_sample)


def scaled_spec(spec: ModelSpec, rate: float) -> ModelSpec:
    """The same family with every group narrowed to `rate` (the global model of fedavg-smallest)."""
    groups = {g: rate_sizes(w, rate) for g, w in spec.groups.items()}
    return _Spec(f"{spec.name}@{rate:g}", groups, spec.axes, spec.builder, spec.input_shape, spec.num_classes)


@dataclass
class Setup:
    """Everything derived from the scenario before round 1 (deterministic from the seed)."""

    spec: ModelSpec
    rates: list[float]
    costs: dict[float, RateCost]
    fleet: Fleet
    availability: Availability
    shards: Shards
    dataset: Dataset


def build_setup(sc: Scenario, dataset: Dataset) -> Setup:
    """Model family, rate ladder and costs, fleet, availability and data shards."""
    spec = make_spec(sc.model, dataset.input_shape, dataset.num_classes)
    rates = list(sc.model.rates)
    if sc.compression.baseline == "fedavg-smallest":
        spec = scaled_spec(spec, min(rates))
        rates = [1.0]
    elif sc.compression.baseline == "fedavg-capable" or sc.compression.strategy == "full":
        rates = [1.0]
    costs = profile_ladder(spec, rates, sc.train.batch_size, momentum=sc.train.momentum > 0)
    # A FedScale-style trace gives ms per sample of a reference model: the global model at rate 1.
    ref = profile_ladder(make_spec(sc.model, dataset.input_shape, dataset.num_classes), [1.0],
                         sc.train.batch_size)[1.0]
    fleet = make_fleet(sc.fleet, sc.seed, reference_flops=ref.forward_flops_per_sample)
    if sc.selection.per_round > len(fleet):
        raise ScenarioError(f"selection.per_round: {sc.selection.per_round} exceeds the fleet's {len(fleet)} devices")
    availability = Availability(fleet, sc.fleet.availability, sc.seed)
    shards = partition(dataset, len(fleet), sc.data.partition, sc.seed)
    return Setup(spec, rates, costs, fleet, availability, shards, dataset)


@dataclass
class RoundOutput:
    """One round's records: a round row, one row per selected device, eval rows."""

    round_row: dict[str, Any]
    clients: dict[str, list]
    evals: list[dict[str, Any]] = field(default_factory=list)


CLIENT_COLUMNS = ["round", "device_id", "device_class", "rate", "status", "reason", "t_download",
                  "t_compute", "t_upload", "t_total", "t_finish", "work_fraction", "samples",
                  "samples_trained", "steps", "loss", "bytes_down", "bytes_up", "host", "wall_s"]


def measured_schedule(sel: np.ndarray, sent: np.ndarray, reports: dict[int, TrainReport], stays: np.ndarray,
                      k: int, deadline: Optional[float], steps_full: np.ndarray) -> Schedule:
    """Decisions of a realtime round from what happened: measured finish times replace predictions.

    A device that reported `late` finished at +inf; one that reported `oom` or `failed` is no
    candidate (it never counts towards K; its record keeps the report's status); devices not
    sent keep their ahead-of-time status (`excluded`, `offline`).
    """
    n = len(sel)
    finish = np.zeros(n)
    cand = ~stays.astype(bool)  # offline devices: `decide` marks them again
    steps = np.zeros(n)
    for i in sent:
        rep = reports.get(int(sel[i]))
        if rep is None or rep.status not in (OK, PARTIAL, LATE):
            continue
        cand[i] = True
        finish[i] = rep.finish_s if rep.status != LATE else np.inf
        steps[i] = rep.steps
    zeros = np.zeros(n)
    sched = decide(finish, zeros, zeros, finish, cand, stays, k, deadline, "drop" if deadline is not None else "wait")
    frac = np.where(sched.step_fraction > 0, np.minimum(1.0, steps / np.maximum(steps_full, 1)), 0.0)
    return replace(sched, step_fraction=frac)


@dataclass
class RoundDraft:
    """A round's decisions before training (per selected device, in id order)."""

    round: int
    sel: np.ndarray          # selected device ids
    pos: np.ndarray          # their fleet positions
    samples: np.ndarray      # their training samples
    rate: np.ndarray         # assigned rate (NaN: excluded)
    reason: np.ndarray       # why excluded, or the schedule's reason ("" when none)
    t_down: np.ndarray       # predicted seconds at the assigned rate (NaN: none)
    t_comp: np.ndarray
    t_up: np.ndarray
    stays: np.ndarray        # online until it would finish
    sched: Schedule          # the ahead-of-time schedule (predictions)
    steps_full: np.ndarray   # local steps of the full work
    deadline: Optional[float]

    @property
    def train_idx(self) -> np.ndarray:
        """Positions (in `sel`) of the devices sent to train."""
        return np.flatnonzero(self.sched.step_fraction > 0)


def merge_results(results: list[HostResult], shapes: dict[str, tuple]) -> tuple[PartialSum, dict[int, TrainReport]]:
    """Add the hosts' partial sums (exact, so in any order) and index their reports by device."""
    total = PartialSum.zeros(shapes)
    reports: dict[int, TrainReport] = {}
    for res in sorted(results, key=lambda h: h.host):
        total.merge(res.partial)
        for rep in res.reports:
            reports[rep.device_id] = rep
    return total, reports


def round_totals(clients: dict[str, list], evals: list[dict[str, Any]]) -> dict[str, Any]:
    """The round row's counts per status, bytes, and the global model's accuracy and loss."""
    status = np.array(clients["status"], dtype=object)
    row: dict[str, Any] = {f"n_{s}": int(np.sum(status == s)) for s in STATUSES}
    row["bytes_down"] = int(np.sum(clients["bytes_down"]))
    row["bytes_up"] = int(np.sum(clients["bytes_up"]))
    glob = [e for e in evals if e["model"] == "global"]
    row["accuracy"] = glob[0]["accuracy"] if glob else float("nan")
    row["loss"] = glob[0]["loss"] if glob else float("nan")
    return row


class Simulation:
    """Global model, server optimizer and virtual clock, advanced one round per `step()`."""

    def __init__(self, sc: Scenario, setup: Setup, backend: Backend) -> None:
        torch.set_num_threads(max(1, sc.runtime.torch_threads))
        self.sc = sc
        self.setup = setup
        self.backend = backend
        self.spec = setup.spec
        self.strategy = make_strategy("full" if sc.compression.baseline != "none" else sc.compression.strategy)
        torch.manual_seed(sc.seed)  # the global model's initialisation
        model = self.spec.build()
        self.params = {k: p.detach().clone() for k, p in model.named_parameters()}
        self.shapes = {k: tuple(p.shape) for k, p in self.params.items()}
        s = sc.server
        self.server = ServerOptimizer(s.optimizer, s.lr, s.momentum, s.beta1, s.beta2, s.eps)
        # On the realtime clock the backend's real timeouts, not predictions, decide who is late.
        self.realtime = sc.runtime.clock == "realtime"
        self.round = 0        # rounds completed
        self.clock = 0.0      # simulated seconds
        self.samples = setup.shards.sizes()
        ds = setup.dataset
        n_eval = len(ds.y_test) if sc.eval.max_samples is None else min(sc.eval.max_samples, len(ds.y_test))
        self.x_test = torch.from_numpy(np.array(ds.x_test[:n_eval], copy=True))
        self.y_test = torch.from_numpy(np.array(ds.y_test[:n_eval], copy=True))

    # ---------------------------------------------------------------- state (checkpoints)
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit-identically (random streams are derived, not stored)."""
        return {"round": self.round, "clock": self.clock, "params": self.params,
                "server": {k: dict(v) for k, v in self.server.state.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from `state_dict()`."""
        self.round = int(state["round"])
        self.clock = float(state["clock"])
        self.params = {k: v.clone() for k, v in state["params"].items()}
        self.server.state = {k: {n: t.clone() for n, t in v.items()} for k, v in state["server"].items()}

    # ---------------------------------------------------------------- one round
    def select(self, r: int) -> np.ndarray:
        """Online devices sampled for round r: K * (1 + overcommit) of them, sorted by id."""
        fleet = self.setup.fleet
        ids = fleet.device_id
        online = ids[self.setup.availability.online(ids, self.clock)]
        want = math.ceil(self.sc.selection.per_round * (1 + self.sc.selection.overcommit) - 1e-9)
        want = min(want, len(online))
        if want == 0:
            return np.zeros(0, np.int64)
        pick = rng(self.sc.seed, "select", r).choice(len(online), size=want, replace=False)
        return np.sort(online[pick])

    def step(self) -> RoundOutput:
        """Run the next round and return its records."""
        r = self.round + 1
        wall0 = time.perf_counter()
        draft = self.draft(r)
        plans, tasks = self.plan_tasks(draft)
        coord_s = time.perf_counter() - wall0
        t_train = time.perf_counter()
        results = self.backend.train(r, self.params, plans, tasks) if tasks else []
        train_s = time.perf_counter() - t_train
        t_agg = time.perf_counter()
        total_sum, reports = merge_results(results, self.shapes)
        sched = draft.sched
        if self.realtime:
            sched = measured_schedule(draft.sel, draft.train_idx, reports, draft.stays, self.sc.selection.per_round,
                                      draft.deadline, draft.steps_full)
        if total_sum.devices:
            delta, held = mean_delta(total_sum)
            self.server.step(self.params, delta, held)
        clients = self.client_rows(draft, sched, reports)
        start = self.clock
        self.clock += sched.duration
        self.round = r
        evals = self.evaluate(r) if (r % self.sc.eval.every == 0 or r == self.sc.rounds) else []
        agg_s = time.perf_counter() - t_agg
        row: dict[str, Any] = dict(round=r, sim_start=start, sim_time=self.clock, duration=sched.duration,
                                   wall_s=time.perf_counter() - wall0, coordinator_s=coord_s + agg_s,
                                   train_s=train_s, selected=len(draft.sel), trained=int(total_sum.devices),
                                   samples_trained=int(total_sum.samples))
        row.update(round_totals(clients, evals))
        return RoundOutput(row, clients, evals)

    def draft(self, r: int) -> RoundDraft:
        """Round r's decisions ahead of training: selection, rates, predicted times, schedule."""
        sc, setup = self.sc, self.setup
        sel = self.select(r)
        pos = np.searchsorted(setup.fleet.device_id, sel)
        n = len(sel)
        samples = self.samples[pos]
        costs, rates = setup.costs, setup.rates
        deadline = sc.deadline.seconds if sc.deadline.policy != "wait" else None
        # One jitter draw per device and round, shared by every rate, so fit-deadline compares
        # rates under the same network and load conditions.
        times_at = {rt: device_times(setup.fleet, pos, costs[rt], samples, sc.train.epochs,
                                     rng(sc.seed, "jitter", r)) for rt in rates}
        assign = assign_rates(sc.assignment.policy if sc.compression.baseline == "none" else "fit-memory",
                              rates, {rt: c.memory_bytes for rt, c in costs.items()},
                              setup.fleet.memory[pos], sc.assignment.fixed_rate,
                              lambda rt: times_at[rt].total, deadline)
        rate = assign.rate
        if sc.compression.baseline == "fedavg-smallest" or sc.compression.strategy == "full":
            rate = np.where(np.isnan(rate), np.nan, 1.0)
        has_rate = ~np.isnan(rate)
        reason = assign.reason.copy()
        reason[has_rate & (samples == 0)] = "no training samples"
        assigned = has_rate & (samples > 0)
        # Each device's predicted times at its assigned rate (NaN where none): one mask per rate.
        t_down, t_comp, t_up = (np.full(n, np.nan) for _ in range(3))
        for rt, times in times_at.items():
            at = rate == rt
            t_down[at], t_comp[at], t_up[at] = times.download[at], times.compute[at], times.upload[at]
        total = t_down + t_comp + t_up
        horizon = np.where(np.isnan(total), 0.0, total)
        if deadline is not None:
            horizon = np.minimum(horizon, deadline)
        stays = setup.availability.online_during(sel, self.clock, self.clock + horizon) if n else np.zeros(0, bool)
        # On the realtime clock only exclusion and availability are decided ahead: the backend's
        # real timeouts decide who is late and who is among the first K.
        ahead = (n, None, "wait") if self.realtime else (sc.selection.per_round, sc.deadline.seconds, sc.deadline.policy)
        sched = decide(np.nan_to_num(total, nan=np.inf), np.nan_to_num(t_down), np.nan_to_num(t_up),
                       np.nan_to_num(t_comp), assigned, stays, *ahead)
        reason = np.where(sched.reason != "", sched.reason, reason)
        steps_full = np.ceil(samples / sc.train.batch_size).astype(np.int64) * sc.train.epochs
        return RoundDraft(r, sel, pos, samples, rate, reason, t_down, t_comp, t_up, stays, sched, steps_full,
                          deadline)

    def plan_tasks(self, d: RoundDraft) -> tuple[dict[int, SubmodelPlan], list[TrainTask]]:
        """Submodel plans (shared per rate unless the strategy draws one per device) and the
        training task of every device the schedule trains."""
        sc = self.sc
        plans: dict[int, SubmodelPlan] = {}
        plan_of_rate: dict[float, int] = {}
        tasks: list[TrainTask] = []
        for i in d.train_idx:
            rt = float(d.rate[i])
            if self.strategy.per_device:
                pid = len(plans)
                plans[pid] = self.strategy.plan(self.spec, rt, d.round, int(d.sel[i]), self.params, sc.seed)
            else:
                if rt not in plan_of_rate:
                    plan_of_rate[rt] = len(plans)
                    plans[plan_of_rate[rt]] = self.strategy.plan(self.spec, rt, d.round, -1, self.params, sc.seed)
                pid = plan_of_rate[rt]
            max_steps = None
            if d.sched.status[i] == PARTIAL:
                max_steps = max(1, int(math.floor(d.sched.step_fraction[i] * d.steps_full[i])))
            hint = host_work(max_steps if max_steps is not None else int(d.steps_full[i]), sc.train.batch_size,
                             self.setup.costs[rt].flops_per_sample)
            tasks.append(TrainTask(int(d.sel[i]), rt, pid, max_steps, sc.server.weighting, hint,
                                   float(d.t_down[i]), float(d.t_comp[i]), float(d.t_up[i]),
                                   d.deadline if self.realtime else None))
        return plans, tasks

    def client_rows(self, d: RoundDraft, sched: Schedule, reports: dict[int, TrainReport]) -> dict[str, list]:
        """One record per selected device: the schedule's decision, overridden by what the
        backend reported (a device sent but never reported was lost with its host)."""
        costs = self.setup.costs
        n = len(d.sel)
        reason = np.where(sched.reason != "", sched.reason, d.reason)
        cls = self.setup.fleet.classes()[d.pos] if n else np.zeros(0, dtype=object)
        bytes_down = np.array([costs[rt].param_bytes if not np.isnan(rt) else 0 for rt in d.rate], dtype=np.int64)
        total = d.t_down + d.t_comp + d.t_up
        clients: dict[str, list] = {c: [] for c in CLIENT_COLUMNS}
        sent = set(int(i) for i in d.train_idx)
        for i in range(n):
            dev = int(d.sel[i])
            rep = reports.get(dev)
            st, why = sched.status[i], reason[i]
            if i in sent and rep is None:
                st, why = FAILED, "device host lost"
            elif rep is not None and rep.status != "ok":
                st, why = rep.status, rep.reason
            trained = rep.samples if rep is not None and st in (OK, PARTIAL) else 0
            up = int(bytes_down[i]) if st in (OK, PARTIAL) else 0
            row = dict(round=d.round, device_id=dev, device_class=str(cls[i]), rate=float(d.rate[i]), status=st,
                       reason=why, t_download=float(d.t_down[i]), t_compute=float(d.t_comp[i]),
                       t_upload=float(d.t_up[i]), t_total=float(total[i]), t_finish=float(sched.finish[i]),
                       work_fraction=float(sched.step_fraction[i]), samples=int(d.samples[i]),
                       samples_trained=int(trained), steps=int(rep.steps) if rep else 0,
                       loss=float(rep.loss) if rep else float("nan"),
                       bytes_down=int(bytes_down[i]) if st != EXCLUDED else 0, bytes_up=up,
                       host=int(rep.host) if rep else -1, wall_s=float(rep.wall_s) if rep else 0.0)
            for c in CLIENT_COLUMNS:
                clients[c].append(row[c])
        return clients

    def evaluate(self, r: int) -> list[dict[str, Any]]:
        """Accuracy of the global model and (optionally) of each rate's submodel (the strategy's
        `eval_plan`). Static batch norm gets statistics recomputed on a fixed training sample."""
        out = []
        calib = calibration_sample(self.setup.dataset.x_train, self.sc.seed)
        model = self.spec.build()
        load_params(model, self.params)
        recompute_bn_stats(model, calib)
        acc, loss = evaluate(model, self.x_test, self.y_test, self.sc.eval.batch_size)
        out.append(dict(round=r, model="global", rate=1.0, accuracy=acc, loss=loss, sim_time=self.clock))
        if self.sc.eval.per_rate:
            for rt in self.setup.rates:
                if rt >= 1.0:
                    continue
                plan = self.strategy.eval_plan(self.spec, rt, self.params)
                sub = self.spec.build(plan.sizes(), rt)
                load_params(sub, extract(self.params, plan_indices(self.spec, plan, self.shapes)))
                recompute_bn_stats(sub, calib)
                a, lo = evaluate(sub, self.x_test, self.y_test, self.sc.eval.batch_size)
                out.append(dict(round=r, model=f"rate-{rt:g}", rate=rt, accuracy=a, loss=lo, sim_time=self.clock))
        return out
