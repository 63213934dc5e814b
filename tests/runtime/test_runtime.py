"""The Ray runtime end to end: run directory, determinism across host counts, resume."""

import json

import pandas as pd
import pytest
import torch
from helpers import tiny_overrides

from raysim.rundir.reader import RunError, latest_checkpoint, load_checkpoint, load_run
from raysim.runtime.runner import run
from raysim.scenario.schema import load_scenario

pytestmark = pytest.mark.usefixtures("ray_local")


def scenario(**over):
    return load_scenario("scenarios/quickstart.yaml", tiny_overrides(**over))


def final_params(path):
    return load_checkpoint(latest_checkpoint(path))["params"]


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """One uninterrupted run of the tiny scenario (2 device hosts: one per CPU of the session's
    Ray), read by every test below (none of them writes to it)."""
    return run(scenario(), out_root=str(tmp_path_factory.mktemp("default")), progress=False)


def test_run_writes_a_complete_run_directory(default_run):
    res = default_run
    r = load_run(res.path)
    assert r.manifest["status"] == "complete"
    assert list(r.rounds["round"]) == [1, 2, 3]
    for col in ["round", "sim_time", "wall_s", "accuracy", "n_ok", "n_late", "n_excluded"]:
        assert col in r.rounds.columns
    for col in ["round", "device_id", "device_class", "rate", "status", "t_total", "samples", "loss"]:
        assert col in r.clients.columns
    assert len(r.clients) == 3 * 10  # 8 per round, over-committed by 20 %
    assert set(r.evals["model"]) >= {"global"}
    assert len(r.fleet) == 60 and "samples" in r.fleet.columns
    assert (res.path / "scenario.yaml").is_file()
    assert r.rounds["sim_time"].is_monotonic_increasing


def test_same_numbers_with_a_different_number_of_hosts(default_run, tmp_path):
    a = run(scenario(**{"runtime.hosts": 1}), out_root=str(tmp_path / "a"), progress=False)
    b = default_run  # runtime.hosts unset: one host per CPU, 2 (checked below)
    ra, rb = load_run(a.path), load_run(b.path)
    pd.testing.assert_series_equal(ra.rounds["accuracy"], rb.rounds["accuracy"])
    pa, pb = final_params(a.path), final_params(b.path)
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert set(ra.clients["host"]) - {-1} == {0} and set(rb.clients["host"]) - {-1} == {0, 1}


def test_resume_reaches_the_same_final_numbers(default_run, tmp_path):
    full = default_run
    part = run(scenario(), out_root=str(tmp_path / "part"), progress=False, stop_after=2)
    assert json.loads((part.path / "manifest.json").read_text())["status"] == "stopped"
    with pytest.raises(RunError):
        load_run(part.path)
    run(scenario(), resume=part.path, progress=False)
    a, b = load_run(full.path), load_run(part.path)
    pd.testing.assert_series_equal(a.rounds["accuracy"], b.rounds["accuracy"])
    pa, pb = final_params(full.path), final_params(part.path)
    assert all(torch.equal(pa[k], pb[k]) for k in pa)


def test_a_failed_run_frees_its_coordinator_and_hosts(tmp_path):
    import time

    import ray

    from raysim.api import Callback

    class Boom(Callback):
        def on_round(self, out):
            raise RuntimeError("the user's callback fails")

    # the error is held (as a notebook holds its last traceback): its frames hold the handles
    with pytest.raises(RuntimeError, match="callback fails") as held:
        run(scenario(), out_root=str(tmp_path), progress=False, callbacks=[Boom()])
    assert json.loads(next(tmp_path.glob("*/manifest.json")).read_text())["status"] == "failed"
    # on the caller's own Ray instance, the next run must find every CPU free again
    total = ray.cluster_resources()["CPU"]
    deadline = time.time() + 20
    while ray.available_resources().get("CPU", 0) < total and time.time() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU", 0) == total
    assert held.value is not None
