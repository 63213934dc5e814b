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
from typing import Any, Callable, Optional, Protocol

import numpy as np
import torch

from raysim.client.algorithms import ClientAlgorithm
from raysim.client.evaluate import evaluate, load_params
from raysim.data import Dataset, Shards
from raysim.engine.assignment import Assigner, AssignRequest
from raysim.engine.battery import Batteries, death_time
from raysim.engine.clock import Clock, Predicted, VirtualClock
from raysim.engine.cost import RateCost, device_times
from raysim.engine.deadlines import Schedule
from raysim.engine.device_state import DeviceStates
from raysim.engine.energy import Energy, Phases, phase_energy, seconds, work_energy
from raysim.engine.selection import Selector, SelectRequest, Uniform
from raysim.fleet import Availability, Fleet
from raysim.messages import GroupResult, HostResult, TrainReport, TrainTask
from raysim.models import ModelSpec
from raysim.models.calibrate import calibration_sample, recompute_bn_stats
from raysim.records import (
    DEPLETED,
    EXCLUDED,
    FAILED,
    LATE,
    OFFLINE,
    OK,
    OOM,
    PARTIAL,
    STATUSES,
    ClientRecords,
    EvalRecord,
    RoundOutput,
    RoundRecord,
)
from raysim.seeding import rng
from raysim.server.aggregate import extra_total, mean_delta, merge_results
from raysim.server.optimizers import ServerOptimizer, ServerState
from raysim.submodel import SubmodelPlan, extract, plan_indices
from raysim.submodel.strategies import Strategy


class Backend(Protocol):
    """Runs a round's training tasks somewhere and returns the hosts' results.

    `server` is a stateful client algorithm's server quantity (SCAFFOLD's control variate),
    sent to every device with the weights. `train_groups` is the asynchronous form: tasks start from several global versions and
    each host answers with one partial sum per task group; `live` names the versions still
    needed later (a backend may keep those and drop the rest).
    """

    def train(self, round_idx: int, params: dict[str, torch.Tensor], plans: dict[int, SubmodelPlan],
              tasks: list[TrainTask], server: Optional[dict[str, torch.Tensor]] = None) -> list[HostResult]:
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


@dataclass(frozen=True)
class Slot:
    """Whom a selection draws from, when, and how many it asks: a flat round's is the whole
    fleet at the simulated clock's now, K; a gateway round's is the gateway's devices at the
    gateway's own clock, K per gateway, with `key` (gateway, gateway round) keeping the random
    streams of the gateways and their rounds apart."""

    start: float
    per_round: int
    among: Optional[np.ndarray] = None   # fleet-position mask of the devices to draw from (None: all)
    key: tuple[int, ...] = ()


@dataclass(frozen=True)
class TaskGroup:
    """Where a draft's tasks start and fold: the weights they start from, the version and group
    they carry (one backend call may train several groups, each from its own weights), their
    random stream's key (-1: the round's) and the first plan id they may use."""

    params: dict[str, torch.Tensor]
    version: int = 0
    group: int = 0
    stream: int = -1
    first_plan: int = 0


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
    w_down: np.ndarray       # of which a duty-cycled radio waits off air (0: none)
    w_up: np.ndarray
    stays: np.ndarray        # online until it would finish
    sched: Schedule          # the ahead-of-time schedule (predictions)
    steps_full: np.ndarray   # local steps of the full work
    deadline: Optional[float]
    t_empty: Optional[np.ndarray] = None  # seconds into the round its battery runs empty (inf: never)

    @property
    def train_idx(self) -> np.ndarray:
        """Positions (in `sel`) of the devices sent to train."""
        return np.flatnonzero(self.sched.step_fraction > 0)


def duty_cycle_reasons(reason: np.ndarray, status: np.ndarray, total: np.ndarray, wait: np.ndarray,
                       deadline: float, fleet: Fleet, pos: np.ndarray) -> np.ndarray:
    """Name the radio's duty cycle as the reason a device is late when it is: without the time
    its radio must stay off air, it would have met the deadline."""
    by_duty = (status == LATE) & (wait > 0) & (total > deadline) & (total - wait <= deadline)
    if not by_duty.any():
        return reason
    out = reason.copy()
    radio = np.asarray(fleet.power.radio if fleet.power is not None else ("",) * len(fleet.class_names), dtype=object)
    duty, _ = fleet.duty_of(pos)
    for i in np.flatnonzero(by_duty):
        out[i] = (f"radio duty cycle: {radio[fleet.class_idx[pos[i]]]} may be on air {duty[i]:.0%} of the time; "
                  f"waiting {wait[i]:.0f} s off air takes the device from {total[i] - wait[i]:.0f} s to "
                  f"{total[i]:.0f} s, past the {deadline:g} s deadline")
    return out


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
                 backend: Backend, cfg: RoundConfig, clock: Optional[Clock] = None,
                 selector: Optional[Selector] = None, batteries: Optional[Batteries] = None,
                 device_states: Optional[DeviceStates] = None, client: Optional[ClientAlgorithm] = None) -> None:
        torch.set_num_threads(max(1, cfg.torch_threads))
        self.cfg = cfg
        self.selector = selector or Uniform()
        self.batteries = batteries
        self.device_states = device_states  # per-device state across rounds (None: nothing keeps any)
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
        # A stateful client algorithm's server quantity (SCAFFOLD's c), zero at the start.
        self.client = client
        self.client_server = ({k: torch.zeros_like(v) for k, v in self.params.items()}
                              if client is not None and client.server_state else None)
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
        state = {"round": self.round, "clock": self.clock, "params": self.params,
                 "server": {k: dict(v) for k, v in self.server_state.slots.items()},
                 "server_steps": self.server_state.steps}
        if self.batteries is not None:
            state["batteries"] = self.batteries.state_dict()
        if self.device_states is not None:
            state["device_states"] = self.device_states.state_dict()
        if self.client_server is not None:
            state["client_server"] = self.client_server
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from `state_dict()`."""
        self.round = int(state["round"])
        self.clock = float(state["clock"])
        self.params = {k: v.clone() for k, v in state["params"].items()}
        self.server_state = ServerState({k: {n: t.clone() for n, t in v.items()} for k, v in state["server"].items()},
                                        int(state.get("server_steps", 0)))
        if self.batteries is not None:
            if "batteries" not in state:
                raise ValueError("checkpoint: holds no battery state, but the scenario tracks batteries")
            self.batteries.load_state_dict(state["batteries"])
        if self.device_states is not None:
            self.device_states.load_state_dict(state.get("device_states", {}))
        if self.client_server is not None:
            if "client_server" not in state:
                raise ValueError("checkpoint: holds no server state for the client algorithm, which keeps one")
            self.client_server = {k: v.clone() for k, v in state["client_server"].items()}

    # ---------------------------------------------------------------- one round
    def select(self, r: int, slot: Optional["Slot"] = None) -> np.ndarray:
        """Online devices sampled for round r: K * (1 + overcommit) of them, sorted by id
        (`slot`: among some devices, from another time, K of its own; default the whole fleet now)."""
        slot = slot or self.slot()
        fleet = self.setup.fleet
        ids = fleet.device_id
        online_mask = self.setup.availability.online(ids, slot.start)
        if slot.among is not None:
            online_mask &= slot.among
        online = ids[online_mask]
        want = math.ceil(slot.per_round * (1 + self.cfg.overcommit) - 1e-9)
        want = min(want, len(online))
        if want == 0:
            return np.zeros(0, np.int64)
        bat = self.batteries

        def level() -> np.ndarray:
            return bat.level(np.flatnonzero(online_mask)) if bat is not None else np.ones(len(online))

        picked = np.asarray(self.selector.select(SelectRequest(r, online, want, self.cfg.seed, slot.start, level,
                                                               slot.key)), dtype=np.int64)
        if len(picked) != want or len(np.unique(picked)) != want or not np.isin(picked, online).all():
            raise ValueError(f"selection: {type(self.selector).__name__} must return {want} distinct online device "
                             f"ids, returned {len(picked)} ({len(np.unique(picked))} distinct)")
        return np.sort(picked)

    def step(self) -> RoundOutput:
        """Run the next round and return its records."""
        cfg = self.cfg
        r = self.round + 1
        wall0 = time.perf_counter()
        draft = self.draft(r)
        plans, tasks = self.plan_tasks(draft)
        coord_s = time.perf_counter() - wall0
        t_train = time.perf_counter()
        server = {} if self.client_server is None else {"server": self.client_server}
        results = self.backend.train(r, self.params, plans, tasks, **server) if tasks else []
        train_s = time.perf_counter() - t_train
        t_agg = time.perf_counter()
        total_sum, reports = merge_results(results, self.shapes)
        self.keep_states(reports)
        sched = self.clock_kind.settle(draft.sched, draft.sel, draft.train_idx, reports, draft.stays, cfg.per_round,
                                       draft.deadline, draft.steps_full)
        if total_sum.devices:
            delta, held = mean_delta(total_sum)
            self.server.step(self.params, delta, held, self.server_state)
            self.server_state.steps += 1
            if self.client is not None and self.client_server is not None:
                self.client_server = self.client.update_server(self.client_server, extra_total(total_sum),
                                                               len(self.setup.fleet))
        clients = self.client_rows(draft, sched, reports)
        start = self.clock
        self.clock += sched.duration
        self.round = r
        battery_rows: list[dict[str, Any]] = []
        if self.batteries is not None:
            self.batteries.advance(start, self.clock, draft.pos, np.asarray(clients.energy_j, dtype=np.float64))
            battery_rows = self.batteries.rows(r, self.clock)
        evals = self.evaluate(r) if (r % cfg.eval_every == 0 or r == cfg.rounds) else []
        agg_s = time.perf_counter() - t_agg
        record = RoundRecord(round=r, sim_start=start, sim_time=self.clock, duration=sched.duration,
                             wall_s=time.perf_counter() - wall0, coordinator_s=coord_s + agg_s, train_s=train_s,
                             selected=len(draft.sel), trained=int(total_sum.devices),
                             samples_trained=int(total_sum.samples), **round_totals(clients, evals))
        return RoundOutput(record, clients, evals, battery_rows)

    def slot(self) -> "Slot":
        """A flat round's slot: the whole fleet, from the simulated clock's now."""
        return Slot(self.clock, self.cfg.per_round)

    def draft(self, r: int, slot: Optional["Slot"] = None) -> RoundDraft:
        """Round r's decisions ahead of training: selection, rates, predicted times, schedule
        (`slot`: whom, when and how many; default the whole fleet, now, K)."""
        cfg, setup = self.cfg, self.setup
        slot = slot or self.slot()
        sel = self.select(r, slot)
        pos = np.searchsorted(setup.fleet.device_id, sel)
        n = len(sel)
        samples = self.samples[pos]
        costs, rates = setup.costs, setup.rates
        deadline = cfg.enforced_deadline
        # One jitter draw per device and round, shared by every rate, so fit-deadline compares
        # rates under the same network and load conditions.
        times_at = {rt: device_times(setup.fleet, pos, costs[rt], samples, cfg.epochs,
                                     rng(cfg.seed, "jitter", r, *slot.key)) for rt in rates}
        power = setup.fleet.power_of(pos)
        energy_at: dict[float, Energy] = {}

        def work_at(rt: float) -> Energy:  # predicted joules of the work at a rate, on demand
            if rt not in energy_at:
                t = times_at[rt]
                energy_at[rt] = work_energy(t.download, t.compute, t.upload, t.wait_download, t.wait_upload, power)
            return energy_at[rt]

        bat = self.batteries
        available = bat.available(pos) if bat is not None else None
        assign = self.assigner.assign(AssignRequest(r, sel, list(rates), {rt: c.memory_bytes for rt, c in costs.items()},
                                                    setup.fleet.memory[pos], lambda rt: times_at[rt].total, deadline,
                                                    lambda rt: work_at(rt).total, available))
        rate = np.asarray(assign.rate, dtype=np.float64)
        has_rate = ~np.isnan(rate)
        off_ladder = has_rate & ~np.isin(rate, list(rates))
        if off_ladder.any():
            raise ValueError(f"assignment: {type(self.assigner).__name__} assigned rate {float(rate[off_ladder][0]):g}, "
                             f"which is not on the ladder {list(rates)}")
        reason = np.asarray(assign.reason, dtype=object).copy()
        reason[has_rate & (samples == 0)] = "no training samples"
        assigned = has_rate & (samples > 0)
        if bat is not None and available is not None and n:
            assigned, rate = self.battery_check(pos, rate, assigned, reason, available, work_at)
        # Each device's predicted times at its assigned rate (NaN where none): one mask per rate.
        t_down, t_comp, t_up, w_down, w_up = (np.full(n, np.nan) for _ in range(5))
        for rt, times in times_at.items():
            at = rate == rt
            t_down[at], t_comp[at], t_up[at] = times.download[at], times.compute[at], times.upload[at]
            w_down[at], w_up[at] = times.wait_download[at], times.wait_upload[at]
        total = t_down + t_comp + t_up
        horizon = np.where(np.isnan(total), 0.0, total)
        if deadline is not None:
            horizon = np.minimum(horizon, deadline)
        stays = setup.availability.online_during(sel, slot.start, slot.start + horizon) if n else np.zeros(0, bool)
        t_empty = None
        if bat is not None and n:
            # a battery that runs empty before the device is done (or the deadline) loses the update
            t_empty = np.full(n, np.inf)
            for rt in set(rate[assigned].tolist()):
                at = assigned & (rate == rt)
                e, t = work_at(rt), times_at[rt]
                with np.errstate(divide="ignore", invalid="ignore"):
                    p_down, p_comp, p_up = (np.nan_to_num(j / s_) for j, s_ in
                                            ((e.rx, t.download), (e.compute, t.compute), (e.tx, t.upload)))
                t_empty[at] = death_time(bat.charge[pos[at]], t.download[at], t.compute[at], t.upload[at],
                                         p_down[at], p_comp[at], p_up[at])
            t_empty = np.where(t_empty < horizon, t_empty, np.inf)  # only an end before it is done counts
            stays = stays & ~np.isfinite(t_empty)
        predicted = Predicted(np.nan_to_num(total, nan=np.inf), np.nan_to_num(t_down), np.nan_to_num(t_up),
                              np.nan_to_num(t_comp), assigned, stays)
        sched = self.clock_kind.ahead(predicted, slot.per_round, cfg.deadline, cfg.deadline_policy)
        reason = np.where(sched.reason != "", sched.reason, reason)
        steps_full = np.ceil(samples / cfg.batch_size).astype(np.int64) * cfg.epochs
        return RoundDraft(r, sel, pos, samples, rate, reason, t_down, t_comp, t_up, np.nan_to_num(w_down),
                          np.nan_to_num(w_up), stays, sched, steps_full, deadline, t_empty)

    def battery_check(self, pos: np.ndarray, rate: np.ndarray, assigned: np.ndarray, reason: np.ndarray,
                      available: np.ndarray, work_at: Callable[[float], Energy]) -> tuple[np.ndarray, np.ndarray]:
        """Exclude (reason `battery`) devices at or below their reserve and, with check `work`,
        those whose predicted work would take them below it. Updates `reason` in place."""
        bat = self.batteries
        assert bat is not None
        assigned, rate = assigned.copy(), rate.copy()
        low = assigned & np.isfinite(available) & (available <= 0)
        for i in np.flatnonzero(low):
            reason[i] = f"battery: at or below its reserve ({bat.charge[pos[i]]:.3g} J left)"
        over = np.zeros(len(pos), bool)
        if bat.check == "work":
            for rt in set(rate[assigned & ~low].tolist()):
                at = assigned & ~low & (rate == rt)
                need = work_at(rt).total
                over |= at & (need > available)
                for i in np.flatnonzero(at & (need > available)):
                    reason[i] = (f"battery: rate {rt:g} needs {need[i]:.3g} J, {available[i]:.3g} J above its "
                                 f"reserve")
        out = low | over
        assigned[out] = False
        rate[out] = np.nan
        return assigned, rate

    def keep_states(self, reports: dict[int, TrainReport]) -> None:
        """Keep the states the devices that trained report (in device order: deterministic)."""
        if self.device_states is None:
            return
        for dev in sorted(reports):
            rep = reports[dev]
            if rep.state is not None and rep.status in (OK, PARTIAL):
                self.device_states.put(dev, rep.state)

    def plan_tasks(self, d: RoundDraft, to: Optional["TaskGroup"] = None
                   ) -> tuple[dict[int, SubmodelPlan], list[TrainTask]]:
        """Submodel plans (shared per rate unless the strategy draws one per device) and the
        training task of every device the schedule trains (`to`: the weights they start from and
        the group they fold into when one call trains several groups; default the global model)."""
        cfg = self.cfg
        to = to or TaskGroup(self.params)
        params = to.params
        plans: dict[int, SubmodelPlan] = {}
        plan_of_rate: dict[float, int] = {}
        tasks: list[TrainTask] = []
        task_deadline = self.clock_kind.task_deadline(d.deadline)
        for i in d.train_idx:
            rt = float(d.rate[i])
            if self.strategy.per_device:
                pid = to.first_plan + len(plans)
                plans[pid] = self.strategy.plan(self.spec, rt, d.round, int(d.sel[i]), params, cfg.seed)
            else:
                if rt not in plan_of_rate:
                    plan_of_rate[rt] = to.first_plan + len(plans)
                    plans[plan_of_rate[rt]] = self.strategy.plan(self.spec, rt, d.round, -1, params, cfg.seed)
                pid = plan_of_rate[rt]
            max_steps = None
            if d.sched.status[i] == PARTIAL:
                max_steps = max(1, int(math.floor(d.sched.step_fraction[i] * d.steps_full[i])))
            hint = host_work(max_steps if max_steps is not None else int(d.steps_full[i]), cfg.batch_size,
                             self.setup.costs[rt].flops_per_sample)
            state = self.device_states.get(int(d.sel[i])) if self.device_states is not None else None
            tasks.append(TrainTask(int(d.sel[i]), rt, pid, max_steps, cfg.weighting, hint,
                                   float(d.t_down[i]), float(d.t_comp[i]), float(d.t_up[i]), task_deadline,
                                   version=to.version, group=to.group, stream=to.stream, state=state))
        return plans, tasks

    def client_rows(self, d: RoundDraft, sched: Schedule, reports: dict[int, TrainReport]) -> ClientRecords:
        """One record per selected device: the schedule's decision, overridden by what the
        backend reported (a device sent but never reported was lost with its host)."""
        costs = self.setup.costs
        n = len(d.sel)
        reason = np.where(sched.reason != "", sched.reason, d.reason)
        total = d.t_down + d.t_comp + d.t_up
        if d.deadline is not None:
            reason = duty_cycle_reasons(reason, sched.status, total, d.w_down + d.w_up, d.deadline, self.setup.fleet,
                                        d.pos)
        cls = self.setup.fleet.classes()[d.pos] if n else np.zeros(0, dtype=object)
        bytes_down = np.array([costs[rt].wire_down if not np.isnan(rt) else 0 for rt in d.rate], dtype=np.int64)
        bytes_up = np.array([costs[rt].wire_up if not np.isnan(rt) else 0 for rt in d.rate], dtype=np.int64)
        clients = ClientRecords()
        sent = set(int(i) for i in d.train_idx)
        for i in range(n):
            dev = int(d.sel[i])
            rep = reports.get(dev)
            st, why = sched.status[i], reason[i]
            if d.t_empty is not None and st == OFFLINE and np.isfinite(d.t_empty[i]):
                if d.t_empty[i] < sched.duration:
                    st = DEPLETED
                    why = (f"battery ran empty {d.t_empty[i]:.1f} s into the round, before it finished: the update "
                           f"is lost")
                else:  # the round closed first: it was cut off like any device not done by then
                    st, why = LATE, f"not done when the round closed at {sched.duration:.1f} s"
            elif i in sent and rep is None:
                st, why = FAILED, "device host lost"
            elif rep is not None and rep.status != OK:
                st, why = rep.status, rep.reason
            applied = rep is not None and st in (OK, PARTIAL)
            trained = rep.samples if rep is not None and applied else 0
            up = int(bytes_up[i]) if st in (OK, PARTIAL) else 0
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
        timeline = Phases(d.t_down, d.t_comp, np.where(oom, 0.0, d.t_up), work, status != EXCLUDED, d.w_down, d.w_up)
        stop: Any = sched.duration  # a device whose battery runs empty stops there
        if d.t_empty is not None:
            stop = np.where(status == DEPLETED, np.minimum(d.t_empty, sched.duration), sched.duration)
        e = phase_energy(seconds(timeline, stop), self.setup.fleet.power_of(d.pos))
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
