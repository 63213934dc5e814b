"""The round loop: select, assign, plan, predict, train (through a backend), aggregate, evaluate.

`Simulation` is the engine. It takes components (the model as a width family with its rate
ladder and costs, the data and fleet, a compression strategy, a rate assigner, a server
optimizer, a clock and a backend that trains devices) and a small `RoundConfig`, and produces
records; it never sees a scenario, and knows nothing of Ray: the work of a round goes to a
`Backend` (in-process for tests, Ray actors in `raysim.runtime`). `raysim.scenario.build` turns a
scenario into these components.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Optional, Protocol

import numpy as np
import torch

from raysim.client.evaluate import evaluate, load_params
from raysim.data import Dataset, Shards
from raysim.engine.assignment import Assigner, AssignRequest
from raysim.engine.clock import Clock, Predicted, VirtualClock
from raysim.engine.cost import RateCost, device_times
from raysim.engine.deadlines import Schedule
from raysim.engine.energy import Phases, phase_energy, seconds
from raysim.fleet import Availability, Fleet
from raysim.messages import GroupResult, HostResult, TrainReport, TrainTask
from raysim.models import ModelSpec
from raysim.models.calibrate import calibration_sample, recompute_bn_stats
from raysim.records import EXCLUDED, FAILED, OK, OOM, PARTIAL, STATUSES, ClientRecords, EvalRecord, RoundOutput, RoundRecord
from raysim.seeding import rng
from raysim.server.aggregate import mean_delta, merge_results
from raysim.server.optimizers import ServerOptimizer, ServerState
from raysim.submodel import SubmodelPlan, extract, plan_indices
from raysim.submodel.strategies import Strategy


class Backend(Protocol):
    """Runs a round's training tasks somewhere and returns the hosts' results.

    `train_groups` is the asynchronous form: tasks start from several global versions and
    each host answers with one partial sum per task group; `live` names the versions still
    needed later (a backend may keep those and drop the rest).
    """

    def train(self, round_idx: int, params: dict[str, torch.Tensor], plans: dict[int, SubmodelPlan],
              tasks: list[TrainTask]) -> list[HostResult]:
        ...

    def train_groups(self, versions: dict[int, dict[str, torch.Tensor]], plans: dict[int, SubmodelPlan],
                     tasks: list[TrainTask], live: set[int]) -> list[GroupResult]:
        ...


# What one minibatch step costs a host besides its FLOPs (Python, autograd and the update), in
# FLOP-equivalents of a CPU core: measured ~1.9 ms a step against ~16 us per MFLOP of training.
STEP_OVERHEAD_FLOPS = 1.2e8


def host_work(steps: int, batch_size: int, flops_per_sample: float) -> float:
    """A device's real training work on a host, for balancing hosts. (Its simulated compute time
    is no guide: a slow microcontroller and a fast phone may train the same submodel.)"""
    return steps * (STEP_OVERHEAD_FLOPS + batch_size * flops_per_sample)


@dataclass
class Setup:
    """The world a run simulates, fixed before round 1 (deterministic from the seed): the model
    family with its rate ladder and measured costs, the fleet and its availability, the data
    and its shards over the fleet."""

    spec: ModelSpec
    rates: list[float]
    costs: dict[float, RateCost]
    fleet: Fleet
    availability: Availability
    shards: Shards
    dataset: Dataset


@dataclass(frozen=True)
class RoundConfig:
    """The round loop's own settings (the scenario's selection, deadline, budget, evaluation)."""

    seed: int
    rounds: int
    per_round: int                  # K: results a round aggregates at most
    overcommit: float = 0.0         # select K * (1 + overcommit)
    deadline: Optional[float] = None
    deadline_policy: str = "drop"   # drop | partial | wait
    epochs: int = 1
    batch_size: int = 20
    weighting: str = "uniform"      # uniform | samples
    eval_every: int = 1
    eval_per_rate: bool = True
    eval_batch_size: int = 512
    eval_max_samples: Optional[int] = None
    torch_threads: int = 1
    device: str = "cpu"             # cuda: evaluate on the GPU (where this process has one)

    @property
    def enforced_deadline(self) -> Optional[float]:
        """The deadline rounds close at (None when they wait for K)."""
        return self.deadline if self.deadline_policy != "wait" else None


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


def round_totals(clients: ClientRecords, evals: list[EvalRecord]) -> dict[str, Any]:
    """The round record's counts per status, bytes, and the global model's accuracy and loss."""
    status = np.array(clients.status, dtype=object)
    row: dict[str, Any] = {f"n_{s}": int(np.sum(status == s)) for s in STATUSES}
    row["bytes_down"] = int(np.sum(clients.bytes_down))
    row["bytes_up"] = int(np.sum(clients.bytes_up))
    row["energy_j"] = float(np.sum(clients.energy_j))
    glob = [e for e in evals if e.model == "global"]
    row["accuracy"] = glob[0].accuracy if glob else float("nan")
    row["loss"] = glob[0].loss if glob else float("nan")
    return row


class Simulation:
    """Global model, server optimizer and clock, advanced one round per `step()`.

        sim = Simulation(setup, Static(), FitMemory(), FedAvg(), backend, RoundConfig(seed=0, rounds=5, per_round=10))
        out = sim.step()          # one round's records (RoundOutput)
    """

    def __init__(self, setup: Setup, strategy: Strategy, assigner: Assigner, server: ServerOptimizer,
                 backend: Backend, cfg: RoundConfig, clock: Optional[Clock] = None) -> None:
        torch.set_num_threads(max(1, cfg.torch_threads))
        self.cfg = cfg
        self.setup = setup
        self.backend = backend
        self.spec = setup.spec
        self.strategy = strategy
        self.assigner = assigner
        self.server = server
        self.clock_kind = clock or VirtualClock()
        torch.manual_seed(cfg.seed)  # the global model's initialisation
        model = self.spec.build()
        self.params = {k: p.detach().clone() for k, p in model.named_parameters()}
        self.shapes = {k: tuple(p.shape) for k, p in self.params.items()}
        self.server_state = ServerState()
        self.round = 0        # rounds completed
        self.clock = 0.0      # simulated seconds
        self.samples = setup.shards.sizes()
        ds = setup.dataset
        n_eval = len(ds.y_test) if cfg.eval_max_samples is None else min(cfg.eval_max_samples, len(ds.y_test))
        # A GPU run evaluates on the GPU when this process has one (the test set moves there once).
        self.eval_device = torch.device("cuda" if cfg.device == "cuda" and torch.cuda.is_available() else "cpu")
        if self.eval_device.type == "cuda":
            from raysim.hosts.cuda import EVAL_GPU_SHARE, cuda_host  # noqa: PLC0415

            cuda_host(EVAL_GPU_SHARE, owner=self)
        self.x_test = torch.from_numpy(np.array(ds.x_test[:n_eval], copy=True)).to(self.eval_device)
        self.y_test = torch.from_numpy(np.array(ds.y_test[:n_eval], copy=True)).to(self.eval_device)

    # ---------------------------------------------------------------- state (checkpoints)
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit-identically (random streams are derived, not stored)."""
        return {"round": self.round, "clock": self.clock, "params": self.params,
                "server": {k: dict(v) for k, v in self.server_state.slots.items()},
                "server_steps": self.server_state.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from `state_dict()`."""
        self.round = int(state["round"])
        self.clock = float(state["clock"])
        self.params = {k: v.clone() for k, v in state["params"].items()}
        self.server_state = ServerState({k: {n: t.clone() for n, t in v.items()} for k, v in state["server"].items()},
                                        int(state.get("server_steps", 0)))

    # ---------------------------------------------------------------- one round
    def select(self, r: int) -> np.ndarray:
        """Online devices sampled for round r: K * (1 + overcommit) of them, sorted by id."""
        fleet = self.setup.fleet
        ids = fleet.device_id
        online = ids[self.setup.availability.online(ids, self.clock)]
        want = math.ceil(self.cfg.per_round * (1 + self.cfg.overcommit) - 1e-9)
        want = min(want, len(online))
        if want == 0:
            return np.zeros(0, np.int64)
        pick = rng(self.cfg.seed, "select", r).choice(len(online), size=want, replace=False)
        return np.sort(online[pick])

    def step(self) -> RoundOutput:
        """Run the next round and return its records."""
        cfg = self.cfg
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
        sched = self.clock_kind.settle(draft.sched, draft.sel, draft.train_idx, reports, draft.stays, cfg.per_round,
                                       draft.deadline, draft.steps_full)
        if total_sum.devices:
            delta, held = mean_delta(total_sum)
            self.server.step(self.params, delta, held, self.server_state)
            self.server_state.steps += 1
        clients = self.client_rows(draft, sched, reports)
        start = self.clock
        self.clock += sched.duration
        self.round = r
        evals = self.evaluate(r) if (r % cfg.eval_every == 0 or r == cfg.rounds) else []
        agg_s = time.perf_counter() - t_agg
        record = RoundRecord(round=r, sim_start=start, sim_time=self.clock, duration=sched.duration,
                             wall_s=time.perf_counter() - wall0, coordinator_s=coord_s + agg_s, train_s=train_s,
                             selected=len(draft.sel), trained=int(total_sum.devices),
                             samples_trained=int(total_sum.samples), **round_totals(clients, evals))
        return RoundOutput(record, clients, evals)

    def draft(self, r: int) -> RoundDraft:
        """Round r's decisions ahead of training: selection, rates, predicted times, schedule."""
        cfg, setup = self.cfg, self.setup
        sel = self.select(r)
        pos = np.searchsorted(setup.fleet.device_id, sel)
        n = len(sel)
        samples = self.samples[pos]
        costs, rates = setup.costs, setup.rates
        deadline = cfg.enforced_deadline
        # One jitter draw per device and round, shared by every rate, so fit-deadline compares
        # rates under the same network and load conditions.
        times_at = {rt: device_times(setup.fleet, pos, costs[rt], samples, cfg.epochs,
                                     rng(cfg.seed, "jitter", r)) for rt in rates}
        assign = self.assigner.assign(AssignRequest(r, sel, list(rates), {rt: c.memory_bytes for rt, c in costs.items()},
                                                    setup.fleet.memory[pos], lambda rt: times_at[rt].total, deadline))
        rate = np.asarray(assign.rate, dtype=np.float64)
        has_rate = ~np.isnan(rate)
        off_ladder = has_rate & ~np.isin(rate, list(rates))
        if off_ladder.any():
            raise ValueError(f"assignment: {type(self.assigner).__name__} assigned rate {float(rate[off_ladder][0]):g}, "
                             f"which is not on the ladder {list(rates)}")
        reason = np.asarray(assign.reason, dtype=object).copy()
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
        predicted = Predicted(np.nan_to_num(total, nan=np.inf), np.nan_to_num(t_down), np.nan_to_num(t_up),
                              np.nan_to_num(t_comp), assigned, stays)
        sched = self.clock_kind.ahead(predicted, cfg.per_round, cfg.deadline, cfg.deadline_policy)
        reason = np.where(sched.reason != "", sched.reason, reason)
        steps_full = np.ceil(samples / cfg.batch_size).astype(np.int64) * cfg.epochs
        return RoundDraft(r, sel, pos, samples, rate, reason, t_down, t_comp, t_up, stays, sched, steps_full,
                          deadline)

    def plan_tasks(self, d: RoundDraft) -> tuple[dict[int, SubmodelPlan], list[TrainTask]]:
        """Submodel plans (shared per rate unless the strategy draws one per device) and the
        training task of every device the schedule trains."""
        cfg = self.cfg
        plans: dict[int, SubmodelPlan] = {}
        plan_of_rate: dict[float, int] = {}
        tasks: list[TrainTask] = []
        task_deadline = self.clock_kind.task_deadline(d.deadline)
        for i in d.train_idx:
            rt = float(d.rate[i])
            if self.strategy.per_device:
                pid = len(plans)
                plans[pid] = self.strategy.plan(self.spec, rt, d.round, int(d.sel[i]), self.params, cfg.seed)
            else:
                if rt not in plan_of_rate:
                    plan_of_rate[rt] = len(plans)
                    plans[plan_of_rate[rt]] = self.strategy.plan(self.spec, rt, d.round, -1, self.params, cfg.seed)
                pid = plan_of_rate[rt]
            max_steps = None
            if d.sched.status[i] == PARTIAL:
                max_steps = max(1, int(math.floor(d.sched.step_fraction[i] * d.steps_full[i])))
            hint = host_work(max_steps if max_steps is not None else int(d.steps_full[i]), cfg.batch_size,
                             self.setup.costs[rt].flops_per_sample)
            tasks.append(TrainTask(int(d.sel[i]), rt, pid, max_steps, cfg.weighting, hint,
                                   float(d.t_down[i]), float(d.t_comp[i]), float(d.t_up[i]), task_deadline))
        return plans, tasks

    def client_rows(self, d: RoundDraft, sched: Schedule, reports: dict[int, TrainReport]) -> ClientRecords:
        """One record per selected device: the schedule's decision, overridden by what the
        backend reported (a device sent but never reported was lost with its host)."""
        costs = self.setup.costs
        n = len(d.sel)
        reason = np.where(sched.reason != "", sched.reason, d.reason)
        cls = self.setup.fleet.classes()[d.pos] if n else np.zeros(0, dtype=object)
        bytes_down = np.array([costs[rt].param_bytes if not np.isnan(rt) else 0 for rt in d.rate], dtype=np.int64)
        total = d.t_down + d.t_comp + d.t_up
        clients = ClientRecords()
        sent = set(int(i) for i in d.train_idx)
        for i in range(n):
            dev = int(d.sel[i])
            rep = reports.get(dev)
            st, why = sched.status[i], reason[i]
            if i in sent and rep is None:
                st, why = FAILED, "device host lost"
            elif rep is not None and rep.status != OK:
                st, why = rep.status, rep.reason
            applied = rep is not None and st in (OK, PARTIAL)
            trained = rep.samples if rep is not None and applied else 0
            up = int(bytes_down[i]) if st in (OK, PARTIAL) else 0
            clients.append(round=d.round, device_id=dev, device_class=str(cls[i]), rate=float(d.rate[i]), status=st,
                           reason=why, t_download=float(d.t_down[i]), t_compute=float(d.t_comp[i]),
                           t_upload=float(d.t_up[i]), t_total=float(total[i]), t_finish=float(sched.finish[i]),
                           work_fraction=float(sched.step_fraction[i]), samples=int(d.samples[i]),
                           samples_trained=int(trained), steps=int(rep.steps) if rep else 0,
                           loss=float(rep.loss) if rep else float("nan"),
                           bytes_down=int(bytes_down[i]) if st != EXCLUDED else 0, bytes_up=up,
                           host=int(rep.host) if rep else -1, wall_s=float(rep.wall_s) if rep else 0.0,
                           version_start=d.round - 1, version_applied=d.round if applied else -1,
                           staleness=0 if applied else -1)
        status = np.array(clients.status, dtype=object)
        # an out-of-memory device fails at its first step: no compute, no upload
        oom = status == OOM
        work = np.where(status == PARTIAL, sched.step_fraction, np.where(oom, 0.0, 1.0))
        timeline = Phases(d.t_down, d.t_comp, np.where(oom, 0.0, d.t_up), work, status != EXCLUDED)
        e = phase_energy(seconds(timeline, sched.duration), self.setup.fleet.power_of(d.pos))
        clients.add_energy(e.compute, e.tx, e.rx, e.idle)
        return clients

    def evaluate(self, r: int) -> list[EvalRecord]:
        """Accuracy of the global model and (optionally) of each rate's submodel (the strategy's
        `eval_plan`). Static batch norm gets statistics recomputed on a fixed training sample."""
        cfg = self.cfg
        out = []
        dev = self.eval_device
        calib = calibration_sample(self.setup.dataset.x_train, cfg.seed).to(dev)
        model = self.spec.build().to(dev)
        load_params(model, {k: v.to(dev) for k, v in self.params.items()})
        recompute_bn_stats(model, calib)
        acc, loss = evaluate(model, self.x_test, self.y_test, cfg.eval_batch_size)
        out.append(EvalRecord(r, "global", 1.0, acc, loss, self.clock))
        if cfg.eval_per_rate:
            for rt in self.setup.rates:
                if rt >= 1.0:
                    continue
                plan = self.strategy.eval_plan(self.spec, rt, self.params)
                sub = self.spec.build(plan.sizes(), rt).to(dev)
                load_params(sub, {k: v.to(dev) for k, v in
                                  extract(self.params, plan_indices(self.spec, plan, self.shapes)).items()})
                recompute_bn_stats(sub, calib)
                a, lo = evaluate(sub, self.x_test, self.y_test, cfg.eval_batch_size)
                out.append(EvalRecord(r, f"rate-{rt:g}", rt, a, lo, self.clock))
        return out
