"""The driver: validates inputs, starts the coordinator, streams rounds into the run directory.

All user-input errors (scenario, dataset files, fleet traces) surface here, before any run
directory exists, as one-line exceptions; the CLI turns them into exit code 2.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from raysim.config import Scenario
from raysim.data import load_dataset
from raysim.results import RunWriter, latest_checkpoint, load_checkpoint, new_run_dir
from raysim.runtime.session import cluster_cpus, start_ray
from raysim.simulation import RoundOutput, Setup, build_setup


@dataclass
class RunResult:
    path: Path
    rounds: list[dict[str, Any]]
    wall_s: float


def prepare(sc: Scenario) -> Setup:
    """Load data and derive model, costs, fleet and shards (raises one-line errors on bad input)."""
    dataset = load_dataset(sc.data, sc.seed)
    return build_setup(sc, dataset)


def run(sc: Scenario, out_root: Optional[str] = None, address: Optional[str] = None,
        progress: bool = True, resume: Optional[Path] = None,
        on_round: Optional[Callable[[RoundOutput], None]] = None, stop_after: Optional[int] = None,
        run_dir: Optional[Path] = None) -> RunResult:
    """Run a scenario end to end and return where its results are.

    `resume`: an existing run directory to continue from its last checkpoint. `stop_after`
    stops after that many rounds without completing the run (used to test resumption).
    `run_dir`: write into this new directory instead of `<out_root>/<name>-<stamp>` (sweeps).
    """
    t0 = time.perf_counter()
    setup = prepare(sc)
    started = start_ray(address or sc.runtime.address, sc.runtime.num_cpus)
    try:
        hosts = sc.runtime.hosts or cluster_cpus()
        from raysim.runtime.coordinator import Coordinator  # noqa: PLC0415

        here = ray.get_runtime_context().get_node_id()
        coord = Coordinator.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=True)).remote(sc, setup, hosts)
        info = ray.get(coord.info.remote())
        first = 1
        if resume is not None:
            ck = latest_checkpoint(resume)
            state = load_checkpoint(ck) if ck else None
            upto = int(state["round"]) if state else 0
            writer = RunWriter.resume(resume, sc, upto)
            if state:
                ray.get(coord.load_state_dict.remote(state))
            first = upto + 1
        else:
            path = Path(run_dir) if run_dir is not None else new_run_dir(out_root or sc.output.dir, sc.name)
            writer = RunWriter(path, sc, info)
            writer.write_fleet(ray.get(coord.fleet_frame.remote()))
        try:
            _loop(sc, coord, writer, first, progress, on_round, stop_after)
        except KeyboardInterrupt:
            writer.finish("interrupted", error="interrupted; continue with raysim run --resume")
            raise
        except BaseException as err:
            writer.finish("failed", error=f"{type(err).__name__}: {err}")
            raise
        done = writer.manifest["completed_rounds"] >= sc.rounds
        writer.finish("complete" if done else "stopped", wall_s=time.perf_counter() - t0)
        ray.kill(coord)
        return RunResult(writer.path, writer.rounds, time.perf_counter() - t0)
    finally:
        if started:
            ray.shutdown()


def _loop(sc: Scenario, coord, writer: RunWriter, first: int, progress: bool,
          on_round: Optional[Callable[[RoundOutput], None]], stop_after: Optional[int]) -> None:
    from tqdm import tqdm  # noqa: PLC0415

    bar = tqdm(total=sc.rounds, initial=first - 1, desc=sc.name, unit="round", file=sys.stderr,
               disable=not progress, dynamic_ncols=True)
    for r in range(first, sc.rounds + 1):
        out: RoundOutput = ray.get(coord.step.remote())
        writer.add(out)
        if on_round:
            on_round(out)
        row = out.round_row
        bar.set_postfix_str(f"t_sim={row['sim_time']:.0f}s acc={row['accuracy']:.3f} "
                            f"late={row['n_late']} offline={row['n_offline']} excl={row['n_excluded']}",
                            refresh=False)
        bar.update(1)
        if r % sc.output.checkpoint_every == 0 or r == sc.rounds:
            writer.checkpoint(ray.get(coord.state_dict.remote()))
        if stop_after is not None and r >= stop_after:
            break
    bar.close()
