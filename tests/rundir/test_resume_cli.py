"""A killed driver resumes, and a killed coordinator is replaced, with bit-identical final numbers."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import tiny_overrides

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from _common import process_tree  # noqa: E402  (the benchmarks' /proc walk, stdlib only)

# An idle machine runs a tiny round in about 30 ms: 60 of them leave the kills below (each lands
# within a few polls of 10 ms after a checkpoint of round 2 to 6) well over a second of margin
# before the run ends; a loaded machine runs slower rounds, so only more margin.
ROUNDS = 60
SETS = [a for o in tiny_overrides(**{"rounds": ROUNDS, "output.checkpoint_every": 2, "eval.every": 50})
        for a in ("--set", o)]


def cli(*args):
    return [sys.executable, "-m", "raysim", "run", *args, "--quiet", "--no-report"]


def final_params(run: Path):
    ck = sorted((run / "checkpoints").glob("round-*.pt"))[-1]
    return torch.load(ck, weights_only=True)["params"]


def same_params(a: Path, b: Path) -> bool:
    pa, pb = final_params(a), final_params(b)
    return pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)


def wait_for_checkpoint(p: subprocess.Popen, root: Path, round_idx: int, timeout: float = 240) -> Path:
    """The run directory, once a checkpoint of round `round_idx` or later is written (fails
    early, with the driver's stderr, if the driver exits first)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        # Any checkpoint from round_idx on: only the two newest are kept, so an exact name may
        # come and go between two looks.
        for ck in root.glob("*/checkpoints/round-*.pt"):
            if int(ck.stem.split("-")[1]) >= round_idx:
                return ck.parents[1]
        if p.poll() is not None:
            raise AssertionError(f"driver exited ({p.returncode}) before round {round_idx}: {p.stderr.read()[-3000:]}")
        time.sleep(0.01)
    raise AssertionError(f"no checkpoint of round {round_idx} appeared")


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def coordinators(p: subprocess.Popen) -> list[int]:
    return [c for c in process_tree(p.pid) if cmdline(c).startswith("ray::Coordinator")]


def kill_coordinator_after(p: subprocess.Popen, root: Path, round_idx: int, but: tuple[int, ...] = ()) -> int:
    """SIGKILL the driver's coordinator (not one of `but`, killed before) once a checkpoint of
    `round_idx` or later exists and that coordinator runs; its pid."""
    wait_for_checkpoint(p, root, round_idx)
    deadline = time.time() + 120
    while time.time() < deadline:
        live = [c for c in coordinators(p) if c not in but]
        if live:
            assert len(live) == 1, "one coordinator process below the driver"
            os.kill(live[0], signal.SIGKILL)
            return live[0]
        time.sleep(0.01)
    raise AssertionError("no coordinator process below the driver")


@pytest.fixture(scope="module")
def full(tmp_path_factory, ray_local) -> Path:
    """The uninterrupted run every interrupted one must match."""
    from raysim.runtime.runner import run as run_scenario
    from raysim.scenario.schema import load_scenario

    root = tmp_path_factory.mktemp("full")
    sc = load_scenario("scenarios/quickstart.yaml", tiny_overrides(**{"rounds": ROUNDS, "output.checkpoint_every": 2,
                                                                      "eval.every": 50}))
    return run_scenario(sc, out_root=str(root), progress=False).path


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["SIGINT", "SIGTERM", "SIGKILL"])
def test_killed_driver_resumes_to_the_same_numbers(full, tmp_path, sig):
    # A shell starts background jobs with SIGINT ignored, and children inherit that: give the
    # driver the default disposition, as it has when run from a terminal.
    p = subprocess.Popen(cli("scenarios/quickstart.yaml", *SETS, "--out", str(tmp_path)),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    cut = wait_for_checkpoint(p, tmp_path, 2)
    p.send_signal(sig)
    err = p.communicate(timeout=120)[1]
    assert p.returncode != 0
    assert "Traceback" not in err
    manifest = json.loads((cut / "manifest.json").read_text())
    # SIGINT and SIGTERM are caught and marked; SIGKILL leaves the run `running`, which no
    # reader takes as complete.
    assert manifest["status"] == ("running" if sig == signal.SIGKILL else "interrupted")
    assert manifest["completed_rounds"] < ROUNDS

    if sig == signal.SIGKILL:
        r = subprocess.run(cli("--resume", str(cut)), capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
    else:  # the same resume in this process, on the session's Ray (the CLI path is the SIGKILL case's)
        resume_here(cut)
    assert json.loads((cut / "manifest.json").read_text())["status"] == "complete"
    assert same_params(full, cut)


def resume_here(run: Path) -> None:
    """What `raysim run --resume RUN` does, on the test session's Ray instance."""
    from raysim.rundir.resume import resume_scenario
    from raysim.runtime.runner import run as run_scenario

    run_scenario(resume_scenario(run, []), progress=False, resume=run)


@pytest.mark.slow
def test_a_killed_coordinator_is_replaced_and_past_its_restarts_the_run_fails_in_one_line_and_resumes(full, tmp_path):
    # One run, two kills: the first coordinator is replaced from the last checkpoint (one
    # restart allowed); its replacement, killed too, is one restart too many.
    p = subprocess.Popen(cli("scenarios/quickstart.yaml", *SETS, "--set", "runtime.coordinator_restarts=1",
                             "--out", str(tmp_path)), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        first = kill_coordinator_after(p, tmp_path, 2)
        run = next(tmp_path.iterdir())
        deadline = time.time() + 120   # the replacement has checkpointed past where the first died
        while not json.loads((run / "manifest.json").read_text()).get("coordinator_restarts"):
            assert time.time() < deadline and p.poll() is None, "no coordinator restart recorded"
            time.sleep(0.02)
        restart = json.loads((run / "manifest.json").read_text())["coordinator_restarts"][0]
        kill_coordinator_after(p, tmp_path, restart["from_round"] + 2, but=(first,))
        err = p.communicate(timeout=300)[1]
    finally:
        p.kill()
    assert restart["from_round"] >= 2
    assert "coordinator lost in round" in err and "Traceback" not in err
    assert p.returncode == 1
    last = [line for line in err.splitlines() if line.strip()][-1]
    assert last.startswith("raysim: error: coordinator lost in round") and "--resume" in last
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "failed" and len(manifest["coordinator_restarts"]) == 1
    resume_here(run)
    assert json.loads((run / "manifest.json").read_text())["status"] == "complete"
    assert same_params(full, run)
