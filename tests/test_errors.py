"""The error boundary, the dedicated-round capacity, and no process left behind a killed driver."""

import io
import json
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


# ---------------------------------------------------------------------------- one error tree
ROOT = Path(__file__).resolve().parents[1]
# Private control flow, never shown to anyone (caught where raised).
PRIVATE = {("raysim/slicing/opcall.py", "Unsupported"), ("raysim/client/batched_forward.py", "Unsupported")}


def exception_classes_outside_errors_py():
    """(file, class) of every class in raysim, outside errors.py, that derives from an exception."""
    import ast

    found = []
    for path in sorted((ROOT / "raysim").rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        if rel == "raysim/errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                bases = [ast.unparse(b) for b in node.bases]
                if any(b.endswith(("Error", "Exception", "BadInput", "RunFailed", "Lost")) for b in bases):
                    found.append((rel, node.name))
    return found


def test_every_error_class_lives_in_errors_py():
    assert set(exception_classes_outside_errors_py()) == PRIVATE


def error_classes():
    import raysim.errors as errors

    return {n: c for n, c in vars(errors).items() if isinstance(c, type) and issubclass(c, BaseException)
            and c.__module__ == "raysim.errors"}


def test_every_error_is_bad_input_or_a_failed_run_and_the_docstring_draws_each_with_its_exit_code():
    import raysim.errors as errors

    classes = error_classes()
    assert {"BadInput", "RunFailed", "PluginError", "SlicingError", "RunError", "CoordinatorLost"} <= set(classes)
    tree = {}
    for line in errors.__doc__.splitlines():
        words = line.replace("|--", " ").replace("`--", " ").replace("|", " ").split()
        if len(words) >= 3 and words[0][0].isupper() and "exit" in words:
            tree[words[0]] = int(words[words.index("exit") + 1])
    assert set(tree) == set(classes) | {"KeyboardInterrupt"}, "draw every class in the tree"
    for name, cls in classes.items():
        if name == "InternalError":
            assert tree[name] == errors.EXIT_FAILED and not issubclass(cls, (errors.BadInput, errors.RunFailed))
            continue
        assert issubclass(cls, (errors.BadInput, errors.RunFailed)), name
        code = errors.EXIT_BAD_INPUT if issubclass(cls, errors.BadInput) else errors.EXIT_FAILED
        assert tree[name] == code, name


def test_every_error_pickles_whatever_its_constructor_takes():
    # Ray sends an error raised in an actor back pickled: one whose constructor takes its parts
    # (not the message) must still come back as itself, with its message and fields.
    import pickle

    from raysim.errors import PluginError, SlicingError

    samples = {"PluginError": PluginError(len, "channel.up", "returned x; expected y"),
               "SlicingError": SlicingError("body.0", "torch.roll", "a shift")}
    for name, cls in error_classes().items():
        err = samples.get(name) or cls(f"{name}: one line")
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is cls and str(back) == str(err) and back.__dict__ == err.__dict__, name
    assert pickle.loads(pickle.dumps(samples["PluginError"])).plugin == "builtins:len"


def test_the_old_homes_of_the_errors_still_import_them():
    import raysim
    import raysim.errors as errors
    from raysim.data.base import DataError
    from raysim.fleet import FleetError
    from raysim.rundir.reader import RunError
    from raysim.runtime.gpu import DeviceError
    from raysim.runtime.runner import CoordinatorLost
    from raysim.scenario.strict_yaml import YamlInputError
    from raysim.slicing import SlicingError
    from raysim.sweep import SweepError

    assert (DataError, FleetError, RunError, DeviceError, CoordinatorLost, YamlInputError, SlicingError, SweepError) == (
        errors.DataError, errors.FleetError, errors.RunError, errors.DeviceError, errors.CoordinatorLost,
        errors.YamlInputError, errors.SlicingError, errors.SweepError)
    assert raysim.RunError is errors.RunError


def test_a_model_that_cannot_be_sliced_is_bad_input():
    from raysim.slicing import SlicingError

    def unsliceable():
        raise SlicingError("body", "torch.roll", "a data-dependent shift")

    err = io.StringIO()
    assert guard(unsliceable, stderr=err) == EXIT_BAD_INPUT
    assert err.getvalue() == ("raysim: error: model: cannot slice: module 'body' calls torch.roll (a data-dependent "
                              "shift); use compression.strategy: full\n")


def test_a_sweep_records_a_failed_point_in_a_few_words_not_ray_s_traceback(tmp_path, monkeypatch):
    from ray.exceptions import RayTaskError

    from raysim import sweep
    from raysim.errors import PluginError

    cause = PluginError(len, "channel.up", "decode() returned 'w' of shape (4,); expected (2, 2)")
    wrapped = RayTaskError("Coordinator.step", "Traceback (most recent call last):\n  ...\nPluginError: x",
                           RayTaskError("DeviceHost.train", "Traceback ...", cause).as_instanceof_cause())

    def fails(*args, **kwargs):
        raise wrapped.as_instanceof_cause()

    monkeypatch.setattr("raysim.runtime.runner.run", fails)
    monkeypatch.setattr("raysim.runtime.session.start_ray", lambda *a, **k: False)
    plan = sweep.plan_sweep("scenarios/quickstart.yaml", ["seed=1,2"], tiny_overrides())
    seen = []
    with pytest.raises(RayTaskError):
        sweep.run_sweep(plan, out_root=str(tmp_path), progress=False, on_point=seen.append)
    assert seen[0].error == f"PluginError: {cause}"
    book = json.loads(next(tmp_path.glob("*/sweep.json")).read_text())
    assert book["points"]["seed=1"]["error"] == f"PluginError: {cause}" and book["status"] == "failed"
