"""The driver: validates inputs, starts the coordinator, streams rounds into the run directory.

All user-input errors (scenario, dataset files, fleet traces) surface here, before any run
directory exists, as one-line exceptions; the CLI turns them into exit code 2.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import ray
from ray.exceptions import RayActorError

from raysim.engine.callbacks import Callback, OnRound, take_returned
from raysim.engine.clock import RealtimeClock, VirtualClock
from raysim.errors import CoordinatorLost, gist, plugin_name
from raysim.records import RoundOutput
from raysim.rundir.reader import latest_checkpoint, load_checkpoint, read_manifest, read_tables
from raysim.rundir.tensorboard import TensorBoard
from raysim.rundir.writer import RunWriter, check_output_root, new_run_dir
from raysim.runtime.gpu import check_device_here, resolve_device, with_device
from raysim.runtime.session import check_hosts_fit, pickle_by_value, start_ray, stop_ray, user_modules
from raysim.scenario.build import async_config, gateways, ladder_note, prepare, round_config, trainer
from raysim.scenario.resolve import Components, components
from raysim.scenario.schema import Scenario

if TYPE_CHECKING:
    from raysim.runtime.coordinator import Engine


@dataclass
class RunResult:
    path: Path
    rounds: list[dict[str, Any]]
    wall_s: float
    stopped_by: Optional[dict[str, Any]] = None  # a callback that ended the run early: callback, reason, round


def engine(sc: Scenario, comps: Components) -> "Engine":
    """The coordinator's `Engine`: the components plus the placement and clock the scenario picks."""
    from raysim.engine.loops import Parts  # noqa: PLC0415
    from raysim.runtime.coordinator import Engine  # noqa: PLC0415
    from raysim.runtime.dedicated import RealTime  # noqa: PLC0415
    from raysim.runtime.placement import Dedicated, Placement, Pooled  # noqa: PLC0415

    rt = sc.runtime
    realtime = rt.clock == "realtime"
    if rt.placement == "dedicated":
        timing = RealTime(rt.time_scale, sc.selection.per_round, sc.deadline.policy == "partial") if realtime else None
        placement: Placement = Dedicated(rt.hosts, timing)
    else:
        placement = Pooled(rt.hosts, rt.hosts_per)
    clock = RealtimeClock(rt.time_scale) if realtime else VirtualClock()
    parts = Parts(strategy=comps.strategy, assigner=comps.assigner, server=comps.server, selector=comps.selector,
                  clock=clock, energy=sc.energy, asynchronous=async_config(sc), gateways=gateways(sc),
                  gateway_server=comps.gateway_server)
    return Engine(parts=parts, trainer=trainer(sc, comps), cfg=round_config(sc), placement=placement)


def run(sc: Scenario, out_root: Optional[str] = None, address: Optional[str] = None,
        progress: bool = True, resume: Optional[Path] = None,
        on_round: Optional[Callable[[RoundOutput], OnRound]] = None, stop_after: Optional[int] = None,
        run_dir: Optional[Path] = None, comps: Optional[Components] = None,
        callbacks: Sequence[Callback] = ()) -> RunResult:
    """Run a scenario end to end and return where its results are.

    `comps`: the components (default: those the scenario names). `resume`: an existing run
    directory to continue from its last checkpoint. `stop_after` stops after that many rounds
    without completing the run (used to test resumption). `run_dir`: write into this new
    directory instead of `<out_root>/<name>-<stamp>` (sweeps). `callbacks` (and `on_round`, a
    plain function) may add metrics to a round or end the run early (`raysim.engine.callbacks`).
    """
    t0 = time.perf_counter()
    check_device_here(sc.runtime.device, address or sc.runtime.address)
    # Built here, before Ray starts: a missing tensorboard package costs nothing.
    builtin: list[Callback] = [TensorBoard()] if sc.output.tensorboard else []
    if resume is None and run_dir is None:
        check_output_root(out_root or sc.output.dir)
    comps = comps or components(sc)
    setup = prepare(sc, comps)
    if resume is not None:
        # Everything the resume reads is checked before Ray starts and before anything is written.
        from raysim.rundir.resume import check_checkpoint  # noqa: PLC0415

        check_checkpoint(resume, setup.spec.global_shapes(), sc.rounds)
        read_tables(resume, ("rounds", "clients", "evals"))
    eng = engine(sc, comps)
    mods = user_modules(comps)
    started = start_ray(address or sc.runtime.address, sc.runtime.num_cpus, mods)
    pickle_by_value(mods)
    live: list[Any] = []   # the coordinator of the moment (a lost one is replaced)
    try:
        eng = with_device(eng, resolve_device(sc.runtime.device, sc.runtime.placement))
        if resume is not None:
            eng = with_choices(eng, (read_manifest(resume).get("info") or {}).get("batched"))
        if sc.runtime.placement == "dedicated":
            from raysim.runtime.capacity import check_dedicated_fits  # noqa: PLC0415

            check_dedicated_fits(sc, setup.spec)  # a round's actors must all fit the cluster
        else:
            check_hosts_fit(sc)
        from raysim.runtime.coordinator import spawn_coordinator  # noqa: PLC0415
        from raysim.runtime.shared import share  # noqa: PLC0415

        light, data = share(setup, sc.eval.max_samples)
        del setup  # the object store holds the one copy of the training data from here on

        def spawn():
            live[:] = [spawn_coordinator(eng, light, data)]
            return live[0]

        coord = spawn()
        info = ray.get(coord.info.remote())
        info["components"] = dict(comps.sources)
        note = ladder_note(sc)
        if note is not None:
            info["notes"] = [note]
            if progress:
                print(f"note: {note}", file=sys.stderr)
        # `train.batched: auto` measured once: a restarted coordinator (spawn reads `eng`
        # when called) and a resumed run train as this one decided, so they stay identical.
        eng = with_choices(eng, info.get("batched"))
        first = 1
        if resume is not None:
            upto = _restore(coord, resume)
            writer = RunWriter.resume(resume, sc, upto)
            first = upto + 1
        else:
            path = Path(run_dir) if run_dir is not None else new_run_dir(out_root or sc.output.dir, sc.name)
            writer = RunWriter(path, sc, info)
            writer.write_fleet(ray.get(coord.fleet_frame.remote()))
        # The built-in TensorBoard writer last: it logs the metrics the others add.
        hooks = [*callbacks, *([_OnRound(on_round)] if on_round is not None else []), *builtin]
        for cb in hooks:
            cb.on_start(writer.path, info)
        status = "failed"
        try:
            coord, stop = _loop(sc, coord, spawn, writer, first, progress, hooks, stop_after)
        except (KeyboardInterrupt, SystemExit) as err:
            # Ctrl-C, or SIGTERM from a scheduler or `kill` (Ray's driver turns it into SystemExit):
            # the run stops where it is and stays resumable.
            why = "terminated" if isinstance(err, SystemExit) else "interrupted"
            status = "interrupted"
            writer.finish("interrupted", error=f"{why}; continue with raysim run --resume {writer.path}")
            raise
        except BaseException as err:
            writer.finish("failed", error=gist(err, 300))   # the traceback: in the CLI's log
            raise
        else:
            done = writer.manifest["completed_rounds"] >= sc.rounds
            status = "complete" if done else "stopped"
            stopped_by = stop if not done else None  # a stop in the last round cut nothing short
            writer.finish(status, wall_s=time.perf_counter() - t0, **({"stopped_by": stopped_by} if stopped_by else {}))
            if stopped_by is not None:
                # Printed even with --quiet and from the API: the run ended before its rounds.
                print(f"{sc.name}: stopped after round {stopped_by['round']} by {stopped_by['callback']}: "
                      f"{stopped_by['reason']}", file=sys.stderr)
            return RunResult(writer.path, writer.rounds, time.perf_counter() - t0, stopped_by)
        finally:
            for cb in hooks:
                cb.on_end(writer.path, status)
    finally:
        # However the run ends: on a caller's own Ray instance, a coordinator left alive would
        # keep its device hosts and their CPUs, and the next run would wait for them.
        for c in live:
            _kill(c)
        if started:
            stop_ray()


def _kill(actor: Any) -> None:
    """Kill an actor (and the device hosts it owns), whether or not it is still alive."""
    try:
        ray.kill(actor)
    except Exception:  # noqa: BLE001 (already gone, or Ray is shutting down: nothing to free)
        pass


def with_choices(eng: Any, choices: Optional[dict[str, bool]]) -> Any:
    """The engine with `train.batched: auto`'s decisions (rate -> batched) fixed, if any."""
    if not choices or eng.trainer.batched != "auto":
        return eng
    fixed = tuple(sorted((float(r), bool(b)) for r, b in choices.items()))
    return replace(eng, trainer=replace(eng.trainer, choices=fixed))


class _OnRound(Callback):
    """A plain function called with every round's records (it may return what `on_round` may)."""

    def __init__(self, fn: Callable[[RoundOutput], OnRound]) -> None:
        self.fn = fn

    def on_round(self, out: RoundOutput) -> OnRound:
        return self.fn(out)


def _on_round(hooks: Sequence[Callback], out: RoundOutput) -> Optional[dict[str, Any]]:
    """Every callback's `on_round`, in order, their metrics added to `out`; the first stop asked
    for (`callback`, `reason`, `round`), or None. Every callback sees the round, stop or not."""
    stop = None
    for cb in hooks:
        owner = cb.fn if isinstance(cb, _OnRound) else cb  # errors name the user's function, not the wrapper
        reason = take_returned(owner, cb.on_round(out), out)
        if reason is not None and stop is None:
            stop = {"callback": plugin_name(owner), "reason": reason, "round": int(out.record.round)}
    return stop


def _restore(coord, path: Path) -> int:
    """Load a run directory's last checkpoint into a fresh `coord`; returns its round (0
    without a checkpoint: the coordinator starts from round 1)."""
    ck = latest_checkpoint(path)
    if ck is None:
        return 0
    state = load_checkpoint(ck)
    ray.get(coord.load_state_dict.remote(state))
    return int(state["round"])


def _loop(sc: Scenario, coord, spawn: Callable[[], Any], writer: RunWriter, first: int, progress: bool,
          hooks: Sequence[Callback], stop_after: Optional[int]) -> tuple[Any, Optional[dict[str, Any]]]:
    """Step the coordinator round by round; returns the coordinator that finished the run, and
    the stop a callback asked for (None: the rounds ran out, or `stop_after`).

    A coordinator that dies (its process killed, its node lost) takes its device hosts with
    it; a new one is spawned from the same stored data and continues from the last
    checkpoint, up to `runtime.coordinator_restarts` times. The rounds after that checkpoint
    are run again and come out identical.
    """
    from tqdm import tqdm  # noqa: PLC0415

    unit = "round" if sc.server.mode == "sync" else "step"  # asynchronous modes count server steps
    bar = tqdm(total=sc.rounds, initial=first - 1, desc=sc.name, unit=unit, file=sys.stderr,
               disable=not progress, dynamic_ncols=True)
    restarts = 0
    r = first
    try:   # closed however the loop ends, so that an error line starts a line of its own
        while r <= sc.rounds:
            try:
                out: RoundOutput = ray.get(coord.step.remote())
                due = r % sc.output.checkpoint_every == 0 or r == sc.rounds
                state = ray.get(coord.state_dict.remote()) if due else None
            except RayActorError as err:
                if restarts >= sc.runtime.coordinator_restarts:
                    raise CoordinatorLost(
                        f"coordinator lost in round {r} ({type(err).__name__}) after {restarts} restart(s); "
                        f"{writer.path} keeps its checkpoints: continue with raysim run --resume {writer.path}") from err
                restarts += 1
                coord = spawn()
                upto = _restore(coord, writer.path)
                writer.rewind(upto)
                writer.note_restart(r, upto, type(err).__name__)
                # Printed even with --quiet: the run goes on, but the user should know it was hit.
                tqdm.write(f"{sc.name}: coordinator lost in round {r} ({type(err).__name__}); restarted from the "
                           f"checkpoint of round {upto}", file=sys.stderr)
                bar.n = upto
                bar.refresh()
                r = upto + 1
                continue
            stop = _on_round(hooks, out)  # before the round is recorded: its metrics go into its row
            writer.add(out)
            rec = out.record
            bar.set_postfix_str(f"t_sim={rec.sim_time:.0f}s acc={rec.accuracy:.3f} "
                                f"late={rec.n_late} offline={rec.n_offline} excl={rec.n_excluded}",
                                refresh=False)
            bar.update(1)
            if stop is not None and state is None:
                # A stopped run is checkpointed at its last round, so that it resumes from there.
                # (A coordinator lost just now fails the run; it resumes from the checkpoint before.)
                state = ray.get(coord.state_dict.remote())
            if state is not None:
                writer.checkpoint(state)
            if stop is not None:
                return coord, stop
            if stop_after is not None and r >= stop_after:
                break
            r += 1
    finally:
        bar.close()
    return coord, None
