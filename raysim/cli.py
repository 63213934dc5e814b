"""Command line: `raysim run`, `raysim fleet`, `raysim report`.

Bad input (scenario, dataset or trace files, flags) gives one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage too)
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
    f = sub.add_parser("fleet", help="describe a scenario's fleet and which rates each class can train")
    f.add_argument("scenario")
    f.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    rep = sub.add_parser("report", help="figures and a summary of run directories")
    rep.add_argument("runs", nargs="+")
    rep.add_argument("--out", help="directory for the figures (default: the first run directory)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.cmd == "run":
            return _cmd_run(args)
        if args.cmd == "fleet":
            return _cmd_fleet(args)
        if args.cmd == "report":
            return _cmd_report(args)
    except KeyboardInterrupt:
        sys.stderr.write("raysim: interrupted\n")
        return 130
    except Exception as err:  # noqa: BLE001 - bad input must never end in a traceback
        if _is_input_error(err):
            sys.stderr.write(f"raysim: error: {err}\n")
            return EXIT_BAD_INPUT
        raise
    return 0


def _is_input_error(err: Exception) -> bool:
    from raysim.config import ScenarioError  # noqa: PLC0415
    from raysim.data import DataError  # noqa: PLC0415
    from raysim.fleet import FleetError  # noqa: PLC0415
    from raysim.results import RunError  # noqa: PLC0415

    return isinstance(err, (ScenarioError, DataError, FleetError, RunError))


def _cmd_run(args: argparse.Namespace) -> int:
    from raysim.config import ScenarioError, load_scenario  # noqa: PLC0415

    resume = Path(args.resume) if args.resume else None
    if resume is not None:
        from raysim.results import RunError  # noqa: PLC0415

        if not (resume / "manifest.json").is_file() or not (resume / "scenario.yaml").is_file():
            raise RunError(f"--resume {resume}: not a run directory")
        sc = load_scenario(resume / "scenario.yaml", args.overrides)
    elif args.scenario is None:
        raise ScenarioError("run: a scenario file is required")
    else:
        sc = load_scenario(args.scenario, args.overrides)
    from raysim.runtime.runner import run  # noqa: PLC0415

    res = run(sc, out_root=args.out, address=args.address, progress=not args.quiet, resume=resume)
    from raysim.report import plot_accuracy, summary_text  # noqa: PLC0415
    from raysim.results import load_run  # noqa: PLC0415

    loaded = load_run(res.path)
    print(summary_text(loaded))
    print()
    print(f"results  {res.path}  (raysim.load_run(path) gives the tables as DataFrames)")
    if sc.output.plots and not args.no_report:
        png = plot_accuracy([loaded], res.path / "accuracy.png")
        print(f"plot     {png}")
    return 0


def _cmd_fleet(args: argparse.Namespace) -> int:
    from raysim.config import load_scenario  # noqa: PLC0415
    from raysim.fleet_view import fleet_summary  # noqa: PLC0415

    sc = load_scenario(args.scenario, args.overrides)
    print(fleet_summary(sc))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from raysim.report import plot_accuracy, summary_text  # noqa: PLC0415
    from raysim.results import load_run  # noqa: PLC0415

    runs = [load_run(p) for p in args.runs]
    out = Path(args.out) if args.out else runs[0].path
    out.mkdir(parents=True, exist_ok=True)
    for run in runs:
        print(summary_text(run))
        print()
    print(f"plot     {plot_accuracy(runs, out / 'accuracy.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
