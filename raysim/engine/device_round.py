"""A synchronous device round, the unit both flat rounds and gateway rounds are made of:
select (from a `Slot`), assign rates, predict times and the schedule (`draft`), plan the
submodels and the training tasks (`plan_tasks`), settle the schedule with what the hosts
reported (`settle`) and write one record per selected device (`client_rows`).

    rounds = DeviceRounds(setup=setup, cfg=cfg, strategy=Static(), assigner=FitMemory(),
                          selector=Uniform(), clock=VirtualClock())
    d = rounds.draft(1, Slot(start=0.0, per_round=10))
    plans, tasks = rounds.plan_tasks(d, TaskGroup(params))
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import torch

from raysim.engine.assignment import Assigner, AssignRequest, check_rates
from raysim.engine.battery import Batteries, death_time
from raysim.engine.clock import Clock, Predicted
from raysim.engine.cost import device_times
from raysim.engine.deadlines import Schedule
from raysim.engine.device_state import DeviceStates
from raysim.engine.energy import Energy, Phases, phase_energy, seconds, work_energy
from raysim.engine.recording import add_device_row
from raysim.engine.selection import Selector, SelectRequest, check_selection
from raysim.engine.setup import RoundConfig, Setup, host_work
from raysim.fleet import Fleet
from raysim.messages import TrainReport, TrainTask
from raysim.records import DEPLETED, EXCLUDED, FAILED, LATE, OFFLINE, OK, OOM, PARTIAL, ClientRecords
from raysim.seeding import rng
from raysim.submodel import SubmodelPlan
from raysim.submodel.strategies import Strategy

__all__ = ["DeviceRounds", "RoundDraft", "Slot", "TaskGroup", "duty_cycle_reasons"]


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



@dataclass(frozen=True, kw_only=True)
class DeviceRounds:
    """The parts a synchronous device round uses (see the module docstring); holds no round state."""

    setup: Setup
    cfg: RoundConfig
    strategy: Strategy
    assigner: Assigner
    selector: Selector
    clock: Clock
    batteries: Optional[Batteries] = None
    device_states: Optional[DeviceStates] = None   # per-device state across rounds (None: nothing keeps any)
    samples: np.ndarray = field(init=False, repr=False)   # every device's training samples, by fleet position

    def __post_init__(self) -> None:
        object.__setattr__(self, "samples", self.setup.shards.sizes())

    def settle(self, d: RoundDraft, reports: dict[int, TrainReport], per_round: int) -> Schedule:
        """The draft's schedule once the hosts have reported (the clock's say on who made it)."""
        return self.clock.settle(d.sched, d.sel, d.train_idx, reports, d.stays, per_round, d.deadline, d.steps_full)

    def select(self, r: int, slot: Slot) -> np.ndarray:
        """Online devices sampled for round r: K * (1 + overcommit) of them, sorted by id
        (`slot`: whom, from when, how many)."""
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
        check_selection(self.selector, picked, want, online)
        return np.sort(picked)


    def draft(self, r: int, slot: Slot) -> RoundDraft:
        """Round r's decisions ahead of training: selection, rates, predicted times, schedule
        (`slot`: whom, when and how many)."""
        cfg, setup = self.cfg, self.setup
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
        rate = check_rates(self.assigner, assign.rate, rates, n)
        has_rate = ~np.isnan(rate)
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
        sched = self.clock.ahead(predicted, slot.per_round, cfg.deadline, cfg.deadline_policy)
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

    def plan_tasks(self, d: RoundDraft, to: TaskGroup) -> tuple[dict[int, SubmodelPlan], list[TrainTask]]:
        """Submodel plans (shared per rate unless the strategy draws one per device) and the
        training task of every device the schedule trains (`to`: the weights they start from and
        the group they fold into when one call trains several groups)."""
        cfg = self.cfg
        params = to.params
        plans: dict[int, SubmodelPlan] = {}
        plan_of_rate: dict[float, int] = {}
        tasks: list[TrainTask] = []
        task_deadline = self.clock.task_deadline(d.deadline)
        for i in d.train_idx:
            rt = float(d.rate[i])
            if self.strategy.per_device:
                pid = to.first_plan + len(plans)
                plans[pid] = self.strategy.plan(self.setup.spec, rt, d.round, int(d.sel[i]), params, cfg.seed)
            else:
                if rt not in plan_of_rate:
                    plan_of_rate[rt] = to.first_plan + len(plans)
                    plans[plan_of_rate[rt]] = self.strategy.plan(self.setup.spec, rt, d.round, -1, params, cfg.seed)
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
            add_device_row(clients, round=d.round, device_id=dev, device_class=str(cls[i]), rate=float(d.rate[i]),
                           status=st, reason=why, times=(float(d.t_down[i]), float(d.t_comp[i]), float(d.t_up[i])),
                           t_finish=float(sched.finish[i]), work_fraction=float(sched.step_fraction[i]),
                           samples=int(d.samples[i]), report=rep, applied=applied,
                           bytes_down=int(bytes_down[i]) if st != EXCLUDED else 0,
                           bytes_up=int(bytes_up[i]) if st in (OK, PARTIAL) else 0, version_start=d.round - 1)
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

