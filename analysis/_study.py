"""What the arm-by-arm study scripts share: running arms into one parent, finding them again,
and formatting a value over seeds. Pure helpers over raysim's runner and run directories.

    >>> dirs = run_arms(scenarios, Path("runs/my-study"), prefix="my-")   # {(arm, seed): run dir}
    >>> dirs = find_runs(Path("runs/my-study"), "my-", ["a", "b"], [0, 1])
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from raysim import Run, RunError, Scenario, ScenarioError, load_run  # noqa: E402

Key = tuple[str, int]  # (arm, seed)


def run_arms(scenarios: Sequence[Scenario], out: Path, prefix: str) -> dict[Key, Path]:
    """Run every (already validated) scenario into `out` on one Ray instance; an arm's name is
    its scenario name without `prefix`. Returns the run directory of each (arm, seed)."""
    from raysim import ray_session, run  # noqa: PLC0415

    dirs = {}
    with ray_session(scenarios[0].runtime.address, scenarios[0].runtime.num_cpus):
        for sc in scenarios:
            t0 = time.perf_counter()
            res = run(sc, out_root=str(out), progress=False)
            dirs[(sc.name[len(prefix):], sc.seed)] = res.path
            print(f"{sc.name[len(prefix):]:18s} seed {sc.seed}  {len(res.rounds):5d} rounds  "
                  f"wall {time.perf_counter() - t0:6.1f} s  {res.path}", flush=True)
    return dirs


def find_runs(out: Path, prefix: str, arms: Sequence[str], seeds: Sequence[int]) -> dict[Key, Path]:
    """The latest complete run of each arm and seed under `out` (matched by the scenario)."""
    found: dict[Key, Path] = {}
    for d in sorted(p for p in out.glob(f"{prefix}*") if p.is_dir()):
        try:
            sc = load_run(d).scenario
        except RunError:
            continue
        found[(str(sc.get("name", ""))[len(prefix):], int(sc.get("seed", 0)))] = d  # latest stamp wins
    missing = [f"{a} (seed {s})" for s in seeds for a in arms if (a, s) not in found]
    if missing:
        raise RunError(f"{out}: no complete run for {', '.join(missing)}; run without --reuse")
    return {(a, s): found[(a, s)] for s in seeds for a in arms}


def arm_runs(args: argparse.Namespace, arms: Sequence, prefix: str,
             scenario_of: Callable[[object, int], Scenario]) -> tuple[list[int], dict[Key, Run]]:
    """The seeds (`--seeds`, else the scenario's) and the loaded run of each (arm, seed): found
    again (`--reuse`) or run, every scenario (`scenario_of(arm, seed)`) checked before the first
    starts. Bad input or missing runs raise ScenarioError, RunError or ValueError."""
    from raysim import load_scenario  # noqa: PLC0415

    seeds = ([int(x) for x in args.seeds.split(",")] if args.seeds
             else [load_scenario(args.scenario, args.overrides).seed])
    if args.reuse:
        dirs = find_runs(args.out, prefix, [a.name for a in arms], seeds)
    else:
        dirs = run_arms([scenario_of(a, s) for s in seeds for a in arms], args.out, prefix)
    return seeds, {key: load_run(d) for key, d in dirs.items()}


def arms_and_runs(args: argparse.Namespace, all_arms: Sequence, prefix: str,
                  scenario_of: Callable[[object, int], Scenario]) -> Optional[tuple[list, list[int], dict[Key, Run]]]:
    """The `--arms` picked, the seeds and their runs (`arm_runs`); None after printing one
    `error:` line for bad input or missing runs."""
    try:
        arms = pick(list(all_arms), args.arms)
        seeds, runs = arm_runs(args, arms, prefix, scenario_of)
    except (ScenarioError, RunError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return None
    return arms, seeds, runs


def spread(values: pd.Series, fmt: str) -> str:
    """`mean` for one value, `mean (min-max)` for several."""
    v = values.dropna()
    if v.empty:
        return "-"
    if len(v) == 1 or v.min() == v.max():
        return format(v.mean(), fmt)
    return f"{format(v.mean(), fmt)} ({format(v.min(), fmt)}-{format(v.max(), fmt)})"


def pick(arms: list, wanted: str | None) -> list:
    """The arms a comma-separated `--arms` names (all without it); ValueError on unknown names."""
    if not wanted:
        return arms
    names = wanted.split(",")
    unknown = sorted(set(names) - {a.name for a in arms})
    if unknown:
        raise ValueError(f"unknown arm(s) {', '.join(unknown)}")
    return [a for a in arms if a.name in names]


def study_parser(doc: str, scenario: Path, out: Path, target: float) -> argparse.ArgumentParser:
    """The flags every arm-by-arm study takes; a script adds its own."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--scenario", type=Path, default=scenario)
    p.add_argument("--out", type=Path, default=out, help="parent directory of the arms' run directories")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field in every arm, e.g. --set rounds=20")
    p.add_argument("--arms", help="comma-separated subset of the arms")
    p.add_argument("--seeds", help="comma-separated seeds (default: the scenario's); every arm runs at each")
    p.add_argument("--target", type=float, default=target, help="target accuracy for time-to-target")
    p.add_argument("--reuse", action="store_true", help="do not run; report the latest runs under --out")
    return p


def save_plot(fig, ax, png: Path) -> Path:
    """Grid, legend, layout, and the PNG (its folder made); the figure is closed."""
    import matplotlib.pyplot as plt  # noqa: PLC0415

    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right", ncol=2)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)
    plt.close(fig)
    return png


def report_study(args: argparse.Namespace, arms: Sequence, seeds: Sequence[int], runs: dict[Key, Run],
                 summarise: Callable, markdown: Callable[[pd.DataFrame, float], str], plot: Callable, png_name: str,
                 extra: Optional[Callable[[pd.DataFrame], str]] = None) -> int:
    """Summarise every (arm, seed) into a table, write it (CSV, markdown and `extra`'s text under
    it) and the plot into `args.out`, print the table and where they are; returns exit code 0."""
    table = pd.DataFrame([{**summarise(runs[(a.name, s)], a, args.target), "seed": s} for s in seeds for a in arms])
    text = markdown(table, args.target)
    more = extra(table) if extra is not None else ""
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "table.csv", index=False)
    (args.out / "table.md").write_text(text + "\n" + (f"\n{more}\n" if more else ""))
    png = plot(runs, arms, seeds, args.target, args.png or args.out / png_name)
    print(text)
    if more:
        print("\n" + more)
    print(f"\ntable  {args.out / 'table.md'}\nplot   {png}")
    return 0


def arm_scenario(path: Path, arm, extra: Sequence[str], seed: int, prefix: str) -> Scenario:
    """A study's scenario for one arm and seed: the `--set` overrides, then the arm's, its name
    and the seed (raises ScenarioError on a bad override)."""
    from raysim import load_scenario  # noqa: PLC0415

    return load_scenario(path, [*extra, *arm.overrides, f"name={prefix}{arm.name}", f"seed={seed}"])


def study_main(argv: Optional[list[str]], doc: str, scenario: Path, name: str, target: float, arms: Sequence,
               prefix: str, summarise: Callable, markdown: Callable[[pd.DataFrame, float], str],
               plot: Callable) -> int:
    """The whole command line of an arm-by-arm study whose arms differ by overrides only: parse,
    run (or `--reuse`) every arm and seed into `runs/<name>`, write and print the table and plot."""
    p = study_parser(doc, scenario, ROOT / "runs" / name, target=target)
    p.add_argument("--png", type=Path, default=None, help=f"plot file (default: OUT/{name}.png)")
    args = p.parse_args(argv)
    picked = arms_and_runs(args, arms, prefix, lambda a, s: arm_scenario(args.scenario, a, args.overrides, s, prefix))
    if picked is None:
        return 2
    chosen, seeds, runs = picked
    return report_study(args, chosen, seeds, runs, summarise, markdown, plot, f"{name}.png")


def reach(run: Run, target: float) -> tuple[pd.DataFrame, Optional[int], pd.DataFrame]:
    """The global evaluations at or above `target`, the round of the first (None: never), and
    the client rows up to that round (none when never reached)."""
    ev = run.evals[run.evals["model"] == "global"].sort_values("round")
    hit = ev[ev["accuracy"] >= target]
    hit_round = int(hit["round"].iloc[0]) if len(hit) else None
    c = run.clients
    return hit, hit_round, (c[c["round"] <= hit_round] if hit_round is not None else c.iloc[0:0])
