"""Faults: a device host that dies mid-round loses only that round's work of its devices."""

import os
import signal

import numpy as np
import pytest
import ray
from helpers import coordinator, tiny_overrides

from raysim.scenario.schema import load_scenario

pytestmark = pytest.mark.usefixtures("ray_local")


@pytest.fixture(scope="module")
def faults():
    """One coordinator with 2 device hosts, through both faults in turn (one start instead of
    two): rounds 1-3, host 0 dies half-way through round 2; then rounds 4-6, host 1 is killed
    from outside between rounds 4 and 5. What each test checks is recorded as it happens."""
    sc = load_scenario("scenarios/quickstart.yaml", tiny_overrides(**{"runtime.hosts": 2, "rounds": 6}))
    coord = coordinator(sc, 2)
    seen = {}
    try:
        ray.get(coord.arm_host_crash.remote(0, 2))
        seen["crash"] = [ray.get(coord.step.remote()) for _ in range(3)]
        seen["crash_restarts"] = ray.get(coord.host_restarts.remote())
        seen["crash_refs"] = ray.get(coord.data_ref_ids.remote())
        seen["first"] = ray.get(coord.step.remote())
        seen["victim"] = victim = ray.get(coord.host_pids.remote())[1]
        os.kill(victim, signal.SIGKILL)
        seen["kill"] = [ray.get(coord.step.remote()) for _ in range(2)]
        seen["kill_pids"] = ray.get(coord.host_pids.remote())
    finally:
        ray.kill(coord)
    return seen


def test_dead_host_devices_are_failed_and_the_run_goes_on(faults):
    outs = faults["crash"]
    st = [np.array(o.clients["status"]) for o in outs]
    host = [np.array(o.clients["host"]) for o in outs]
    assert (st[0] == "failed").sum() == 0
    failed = st[1] == "failed"
    assert failed.sum() > 0, "host 0's devices in round 2 must be recorded failed"
    assert all(r == "device host lost" for r in np.array(outs[1].clients["reason"])[failed])
    assert set(host[1][st[1] == "ok"]) == {1}, "only host 1's devices trained in round 2"
    assert outs[1].round_row["n_failed"] == int(failed.sum())
    assert (st[2] == "failed").sum() == 0 and set(host[2][st[2] == "ok"]) == {0, 1}, "host 0 replaced"
    assert faults["crash_restarts"] == 1
    refs = faults["crash_refs"]
    assert all(h == refs["coordinator"] for h in refs["hosts"]), "the replacement reads the stored copy"
    assert np.isfinite(outs[2].round_row["accuracy"])


def test_a_host_killed_from_outside_between_rounds_is_replaced(faults):
    first, outs, victim = faults["first"], faults["kill"], faults["victim"]
    st = [np.array(o.clients["status"]) for o in outs]
    host = [np.array(o.clients["host"]) for o in outs]
    assert (np.array(first.clients["status"]) == "failed").sum() == 0
    assert (st[0] == "failed").sum() > 0 and set(host[0][st[0] == "ok"]) == {0}
    assert (st[1] == "failed").sum() == 0 and set(host[1][st[1] == "ok"]) == {0, 1}
    assert victim not in faults["kill_pids"], "a new process took host 1's place"
