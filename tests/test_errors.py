"""The error boundary, the dedicated-round capacity, and no process left behind a killed driver."""

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import tiny_overrides
from ray_start import session_pids

from raysim.errors import EXIT_BAD_INPUT, EXIT_FAILED, InternalError, RunFailed, api_boundary, guard
from raysim.scenario.schema import ScenarioError, load_scenario


def test_an_unanticipated_failure_is_one_line_naming_a_log_with_the_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYSIM_LOG_DIR", str(tmp_path))

    def bug():
        return {}["missing"]

    err = io.StringIO()
    assert guard(bug, stderr=err, argv=["run", "x.yaml"]) == EXIT_FAILED
    line, = err.getvalue().splitlines()
    assert line.startswith("raysim: error: unexpected failure (KeyError: 'missing')")
    log = Path(line.split("the traceback is in ")[1].split(";")[0])
    assert log.parent == tmp_path and "Traceback" in log.read_text() and "run x.yaml" in log.read_text()


def test_an_unanticipated_failure_in_a_ray_task_is_one_short_line(tmp_path, monkeypatch, ray_local):
    # A host's error reaches the driver as a RayTaskError whose text is the whole remote
    # traceback (7 KB on one line before): the line says what in a few words, the log has it all.
    monkeypatch.setenv("RAYSIM_LOG_DIR", str(tmp_path))

    def _deep(n):   # defined here: pickled by value, so a worker needs no test module
        if n == 0:
            raise TypeError("max_pool2d() got an unexpected keyword argument 'return_indices'")
        return _deep(n - 1)

    fails = ray_local.remote(_deep)
    err = io.StringIO()
    assert guard(lambda: ray_local.get(fails.remote(40)), stderr=err) == EXIT_FAILED
    line, = err.getvalue().splitlines()
    assert len(line) < 300, line
    assert line.startswith("raysim: error: unexpected failure (TypeError: max_pool2d() got an unexpected keyword")
    log = Path(line.split("the traceback is in ")[1].split(";")[0])
    text = log.read_text()
    assert log.parent == tmp_path and "in _deep" in text and "return_indices" in text


def test_the_gist_of_an_error_is_its_last_traceback_line_and_short():
    from raysim.errors import gist

    died = RuntimeError("The actor died because of an error raised in its creation task, ray::C.__init__() (pid=1)\n"
                        "Traceback (most recent call last):\n  File \"x.py\", line 1, in f\n    g()\n"
                        "ValueError: bad width")
    assert gist(died) == "RuntimeError: ValueError: bad width"
    assert len(gist(ValueError("x" * 1000))) == 160 and gist(ValueError("x" * 1000)).endswith("...")
    assert gist(KeyError("missing")) == "KeyError: 'missing'"


def test_anticipated_failures_keep_their_exit_codes():
    def bad():
        raise ScenarioError("fleet.devices: must be positive")

    def failed():
        raise RunFailed("coordinator lost\nin round 3")

    err = io.StringIO()
    assert guard(bad, stderr=err) == EXIT_BAD_INPUT
    assert guard(failed, stderr=err) == EXIT_FAILED
    assert err.getvalue().splitlines() == ["raysim: error: fleet.devices: must be positive",
                                           "raysim: error: coordinator lost in round 3"]


def test_the_api_boundary_raises_one_line_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYSIM_LOG_DIR", str(tmp_path))
    with pytest.raises(ScenarioError) as info, api_boundary():
        try:
            raise KeyError("inner")
        except KeyError:
            raise ScenarioError("rounds: must be at least 1")  # noqa: B904 - the boundary must drop the context
    assert info.value.__cause__ is None and info.value.__suppress_context__
    with pytest.raises(InternalError, match="ZeroDivisionError.*traceback is in"), api_boundary():
        1 / 0  # noqa: B018
    assert len(list(tmp_path.glob("raysim-*.log"))) == 1


def test_a_dedicated_round_must_fit_the_measured_cluster(ray_local):
    from raysim.runtime.capacity import check_dedicated_fits
    from raysim.scenario.build import prepare

    sc = load_scenario("scenarios/quickstart.yaml", tiny_overrides(**{"runtime.placement": "dedicated"}))
    spec = prepare(sc).spec
    cap = check_dedicated_fits(sc, spec)
    assert 20 << 20 < cap.per_actor < 4 << 30  # a torch process: tens to hundreds of MB
    assert cap.actors >= 8
    big = sc.model_copy(update={"selection": sc.selection.model_copy(update={"per_round": cap.actors + 1})})
    with pytest.raises(ScenarioError, match=r"'dedicated' starts one Ray actor .* room for \d+"):
        check_dedicated_fits(big, spec)


def test_more_pooled_hosts_than_the_cluster_has_cpus_is_one_line_not_a_wait(ray_local, tmp_path):
    from raysim.errors import ClusterError
    from raysim.runtime.runner import run as run_scenario

    sc = load_scenario("scenarios/quickstart.yaml", tiny_overrides(**{"runtime.hosts": 3}))   # the session has 2
    with pytest.raises(ClusterError, match=r"runtime.hosts: 3 device hosts take a CPU each, but the cluster has 2 CPUs"):
        run_scenario(sc, out_root=str(tmp_path), progress=False)
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_a_killed_local_driver_leaves_no_process_behind(tmp_path):
    sets = [a for o in tiny_overrides(rounds=500, **{"eval.every": 100}) for a in ("--set", o)]
    p = subprocess.Popen([sys.executable, "-m", "raysim", "run", "scenarios/quickstart.yaml", *sets, "--out",
                          str(tmp_path), "--quiet", "--no-report"], start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 180
        while not list(tmp_path.glob("*/checkpoints/round-*.pt")):
            assert p.poll() is None and time.time() < deadline, "the run did not reach its first checkpoint"
            time.sleep(0.1)
        ray_procs = session_pids(p.pid)
        assert len(ray_procs) >= 4  # driver, GCS, raylet, agents, workers
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        deadline = time.time() + 20
        while session_pids(p.pid) and time.time() < deadline:
            time.sleep(0.5)
        left = session_pids(p.pid)
        assert left == [], [Path(f"/proc/{q}/cmdline").read_bytes()[:60] for q in left]
    finally:
        for q in session_pids(p.pid):
            os.kill(q, signal.SIGKILL)
