"""Command line: `raysim run`, `raysim fleet`, `raysim report`, `raysim sweep`.

Bad input (scenario, dataset or trace files, flags) gives one line on stderr and exit code 2;
every other failure one line too (`raysim.errors.guard`), exit code 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, Optional, Sequence

if TYPE_CHECKING:
    from raysim.report.tables import Runs

from raysim.errors import EXIT_BAD_INPUT, guard


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2 (argparse prints usage too)
        sys.stderr.write(f"raysim: error: {message}\n")
        raise SystemExit(EXIT_BAD_INPUT)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="raysim", description="Federated learning with compressed submodels on simulated IoT fleets.")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    r = sub.add_parser("run", help="run a scenario")
    r.add_argument("scenario", nargs="?", help="scenario YAML file")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a scenario field, e.g. --set fleet.devices=2000 (repeatable)")
    r.add_argument("--out", help="parent directory for the run directory (default: output.dir)")
    r.add_argument("--address", help="Ray address to join, e.g. 'auto' for an existing cluster")
    r.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.add_argument("--no-report", action="store_true", help="skip the figures")
    r.add_argument("--tensorboard", action="store_true",
                   help="log every round's scalars as TensorBoard events under RUN_DIR/tensorboard "
                        "(output.tensorboard=true)")
    f = sub.add_parser("fleet", help="describe a scenario's fleet and which rates each class can train")
    f.add_argument("scenario")
    f.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    sub.add_parser("reference", help="print every scenario key with its type, default and meaning (markdown)")
    rep = sub.add_parser("report", help="figures and a markdown summary of run directories")
    rep.add_argument("runs", nargs="+", metavar="RUN_DIR",
                     help="run directories, globs, or a sweep's parent directory (holds its runs)")
    rep.add_argument("--out", help="directory for the figures and report.md "
                                   "(default: the parent directory if one was named, else the first run directory)")
    rep.add_argument("--allow-incomplete", action="store_true", help="include runs that did not finish")
    _report_flags(rep)
    sw = sub.add_parser("sweep", help="run a scenario over a grid of parameters, then report it")
    sw.add_argument("scenario", help="scenario YAML file")
    sw.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                    help="a parameter and its values, e.g. --grid deadline.seconds=30,120 (repeatable: product)")
    sw.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a field at every point (repeatable)")
    sw.add_argument("--out", help="where the sweep's parent directory goes (default: output.dir)")
    sw.add_argument("--address", help="Ray address to join, e.g. 'auto' for an existing cluster")
    sw.add_argument("--parallel", type=int, default=1, metavar="N",
                    help="points run at once, each on CPUs/N device hosts (default 1: one after another)")
    sw.add_argument("--dry-run", action="store_true", help="validate and list the points, run nothing")
    sw.add_argument("--quiet", action="store_true", help="no progress bars")
    sw.add_argument("--no-report", action="store_true", help="skip the report")
    sw.add_argument("--tensorboard", action="store_true",
                    help="TensorBoard events in every run directory: tensorboard --logdir SWEEP_DIR shows "
                         "the points side by side (output.tensorboard=true)")
    _report_flags(sw)
    return p


def _report_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", type=float, metavar="ACC",
                   help="accuracy for time-to-target, as a fraction or percent (default: 90%% of the best reached)")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    return guard(lambda: _dispatch(args), argv=list(argv) if argv is not None else None)


def _dispatch(args: argparse.Namespace) -> int:
    if args.cmd == "run":
        return _cmd_run(args)
    if args.cmd == "fleet":
        return _cmd_fleet(args)
    if args.cmd == "report":
        return _cmd_report(args)
    if args.cmd == "reference":
        from raysim.scenario.reference import scenario_reference  # noqa: PLC0415

        sys.stdout.write(scenario_reference())
        return 0
    if args.cmd == "sweep":
        return _cmd_sweep(args)
    return 0


def _with_tensorboard(args: argparse.Namespace) -> list[str]:
    """The `--set` overrides, plus `output.tensorboard=true` under --tensorboard (a field that
    changes no number, so a resumed run may switch it on)."""
    return [*args.overrides, "output.tensorboard=true"] if args.tensorboard else list(args.overrides)


def _cmd_run(args: argparse.Namespace) -> int:
    from raysim.scenario.schema import ScenarioError, load_scenario  # noqa: PLC0415

    overrides = _with_tensorboard(args)
    resume = Path(args.resume) if args.resume else None
    if resume is not None:
        if args.scenario is not None:
            raise ScenarioError(f"run: give a scenario file or --resume {resume}, not both")
        from raysim.rundir.resume import resume_scenario  # noqa: PLC0415

        sc = resume_scenario(resume, overrides)
        _check_resumable_here(resume)
    elif args.scenario is None:
        raise ScenarioError("run: a scenario file is required")
    else:
        sc = load_scenario(args.scenario, overrides)
    from raysim.runtime.runner import run  # noqa: PLC0415

    res = run(sc, out_root=args.out, address=args.address, progress=not args.quiet, resume=resume)
    from raysim.report.markdown import summary_text, write_report  # noqa: PLC0415
    from raysim.report.tables import load_runs  # noqa: PLC0415
    from raysim.rundir.reader import load_run  # noqa: PLC0415

    loaded = load_run(res.path)
    print(summary_text(loaded))
    print()
    print(f"results  {res.path}  (raysim.load_run(path) gives the tables as DataFrames)")
    if sc.output.tensorboard:
        print(f"events   tensorboard --logdir {res.path / 'tensorboard'}")
    if sc.output.plots and not args.no_report:
        rep = write_report(load_runs([res.path]), res.path)
        print(f"plot     {res.path / 'accuracy.png'}")
        print(f"report   {rep.markdown}  ({len(rep.figures)} figures)")
    return 0


def _check_resumable_here(path: Path) -> None:
    """A run whose components were Python objects cannot be rebuilt from its scenario file."""
    import json  # noqa: PLC0415

    from raysim.rundir.reader import RunError  # noqa: PLC0415

    try:
        info = json.loads((path / "manifest.json").read_text()).get("info", {})
    except (OSError, ValueError):
        raise RunError(f"--resume {path}: manifest.json is unreadable") from None
    objects = [k for k, v in (info.get("components") or {}).items() if v == "object"]
    if objects:
        raise RunError(f"--resume {path}: the run's {', '.join(objects)} came from Python objects, which its "
                       f"scenario.yaml cannot name; resume it from Python with the same objects "
                       f"(raysim.simulate(..., resume=path))")


def _cmd_fleet(args: argparse.Namespace) -> int:
    from raysim.scenario.fleet_view import fleet_summary  # noqa: PLC0415
    from raysim.scenario.preflight import check_sizes  # noqa: PLC0415
    from raysim.scenario.schema import load_scenario  # noqa: PLC0415

    sc = load_scenario(args.scenario, args.overrides)
    check_sizes(sc)  # the fleet is built in this process
    print(fleet_summary(sc))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    target = _target(args.target)
    runs = _load_runs(args.runs, args.allow_incomplete)
    out = Path(args.out) if args.out else _default_out(args.runs, runs)
    _write_report(runs, out, target)
    return 0


def _default_out(args: Sequence[str], runs: Runs) -> Path:
    """A sweep's (or any parent's) own directory when that alone was named, else the first run's."""
    if len(args) == 1 and Path(args[0]).is_dir() and not (Path(args[0]) / "manifest.json").is_file():
        return Path(args[0])
    return runs.runs[0].path


def _target(value: Optional[float]) -> Optional[float]:
    """--target as an accuracy in (0, 1]; a value above 1 is read as a percentage."""
    if value is None:
        return None
    acc = value / 100.0 if value > 1.0 else value
    if not 0.0 < acc <= 1.0:
        from raysim.scenario.schema import ScenarioError  # noqa: PLC0415 - cheap: rejecting a flag needs no torch

        raise ScenarioError(f"--target {value:g}: expected an accuracy in (0, 1] or a percentage in (1, 100]")
    return acc


def _load_runs(paths: Sequence[str], allow_incomplete: bool = False) -> Runs:
    import warnings  # noqa: PLC0415

    from raysim.report.tables import load_runs  # noqa: PLC0415

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # On failure only the error is shown: it names the first run skipped, and why.
        runs = load_runs(list(paths), allow_incomplete=allow_incomplete)
    for w in caught:  # one line each, not Python's two-line warning format
        sys.stderr.write(f"raysim: warning: {w.message}\n")
    return runs


def _write_report(runs: Runs, out: Path, target: Optional[float]) -> None:
    from raysim.report.markdown import write_report  # noqa: PLC0415

    rep = write_report(runs, out, target)
    cols = ["rounds", "final_acc_pct", "best_acc_pct", "time_to_target_s", "late_pct", "offline_pct", "excluded_pct"]
    print(rep.summary[cols].round(2).to_string())
    print()
    print(f"target   {100 * rep.target:.0f}% accuracy")
    print(f"report   {rep.markdown}")
    print(f"figures  {', '.join(p.name for p in rep.figures)}")


def _cmd_sweep(args: argparse.Namespace) -> int:
    from raysim.sweep import plan_sweep, run_sweep  # noqa: PLC0415

    target = _target(args.target)
    plan = plan_sweep(args.scenario, args.grid, _with_tensorboard(args))
    if args.parallel < 1:
        from raysim.scenario.schema import ScenarioError  # noqa: PLC0415

        raise ScenarioError(f"--parallel {args.parallel}: must be at least 1")
    if args.dry_run:
        for p in plan.points:
            print(f"{p.dirname}")
        print(f"{len(plan.points)} points")
        return 0

    def done(res) -> None:
        print(f"point    {res.point.label}  {res.status}  {res.wall_s:.1f} s", flush=True)

    result = run_sweep(plan, out_root=args.out, address=args.address, progress=not args.quiet,
                       parallel=args.parallel, on_point=done)
    print(f"sweep    {result.path}  ({len(result.run_dirs)} runs; raysim.load_runs(path) stacks their tables)")
    if any(p.scenario.output.tensorboard for p in plan.points):
        print(f"events   tensorboard --logdir {result.path}  (one run per point)")
    if not args.no_report:
        _write_report(_load_runs([str(result.path)]), result.path, target)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
