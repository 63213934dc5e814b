"""Straggler mechanics and rate assignment as specifications."""

import numpy as np

from raysim.engine.assignment import AssignRequest, FitDeadline, FitMemory, Fixed
from raysim.engine.deadlines import EXCLUDED, LATE, OFFLINE, OK, PARTIAL, decide

RATES = [1.0, 0.5, 0.25]
NEED = {1.0: 400, 0.5: 200, 0.25: 100}


def request(memory, times=None, deadline=None):
    n = len(memory)
    return AssignRequest(1, np.arange(n), RATES, NEED, np.array(memory),
                         (lambda r: times[r]) if times else (lambda r: np.zeros(n)), deadline)


def test_fit_memory_picks_largest_rate_that_fits():
    a = FitMemory().assign(request([1000, 399, 150, 99]))
    assert a.rate[:3].tolist() == [1.0, 0.5, 0.25]
    assert np.isnan(a.rate[3]) and "memory" in a.reason[3]


def test_fit_deadline_also_needs_time():
    times = {1.0: np.array([50.0, 50.0]), 0.5: np.array([20.0, 50.0]), 0.25: np.array([5.0, 50.0])}
    a = FitDeadline().assign(request([1000, 1000], times, 30.0))
    assert a.rate[0] == 0.5
    assert np.isnan(a.rate[1]) and "deadline" in a.reason[1]


def test_fixed_rate_excludes_devices_that_cannot_hold_it():
    a = Fixed(1.0).assign(request([500, 300]))
    assert a.rate[0] == 1.0 and np.isnan(a.rate[1])


def _decide(total, k=10, deadline=10.0, policy="drop", assigned=None, online=None):
    total = np.asarray(total, float)
    n = len(total)
    comp = total * 0.8
    io = total * 0.1
    return decide(total, io, io, comp, np.ones(n, bool) if assigned is None else np.asarray(assigned),
                  np.ones(n, bool) if online is None else np.asarray(online), k, deadline, policy)


def test_drop_marks_late_and_waits_for_deadline():
    s = _decide([3.0, 12.0, 5.0])
    assert s.status.tolist() == [OK, LATE, OK]
    assert s.step_fraction.tolist() == [1.0, 0.0, 1.0]
    assert s.duration == 10.0  # the server cannot know the late one will never arrive


def test_no_stragglers_round_ends_at_last_finish():
    s = _decide([3.0, 4.0, 5.0])
    assert s.duration == 5.0


def test_partial_trains_share_that_fits():
    s = _decide([20.0, 5.0], policy="partial")
    assert s.status.tolist() == [PARTIAL, OK]
    # budget = 10 - 2 - 2 = 6 s of 16 s compute
    assert np.isclose(s.step_fraction[0], 6.0 / 16.0)
    assert s.duration == 10.0


def test_wait_has_no_deadline():
    s = _decide([20.0, 5.0], policy="wait")
    assert s.status.tolist() == [OK, OK] and s.duration == 20.0


def test_overcommit_keeps_first_k_and_round_ends_at_kth_finish():
    s = _decide([9.0, 1.0, 3.0, 2.0], k=2)
    assert s.status.tolist() == [LATE, OK, LATE, OK]
    assert "over-commitment" in s.reason[0]
    assert s.duration == 2.0


def test_offline_devices_contribute_nothing():
    s = _decide([1.0, 2.0], online=[True, False])
    assert s.status.tolist() == [OK, OFFLINE] and s.step_fraction[1] == 0.0


def test_unassigned_devices_stay_excluded():
    s = _decide([1.0, 2.0], assigned=[True, False])
    assert s.status[1] == EXCLUDED
