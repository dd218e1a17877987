"""Backend health (fastlb/health.py): the state table, active check counting, passive
outlier ejection, slow start, admin events — sans-IO, time passed in — and the probe
and the Prober over real sockets on 127.0.0.1.

Pool-based tests about selection run on both twins of the selectors (the ``sel``
fixture swaps fastlb.balancer's selector classes for the pure twin's).
"""

import asyncio
import socket
import time
from dataclasses import replace

import pytest
import uvloop

from fastlb import balancer, config, health
from fastlb.balancer import RAMP_SCALE, RAMP_STEP, Pool
from fastlb.health import (
    CHECKING, DISABLED, DOWN, DRAINING, EJECTED, EVENTS, HISTORY, SLOW_START, STATES, TRANSITIONS, UP,
    check_result, probe, report_failure, report_success, tick, transition,
)
from fastlb.model import HealthSpec
from tests.conftest import load_twin

CHECKS = {"interval": "1s", "timeout": "500ms", "rise": 2, "fall": 3, "jitter": 0}
ADMIN = ("drain", "undrain", "disable", "enable")


def make_pool(algorithm="round_robin", weights=(1, 1, 1), ports=None, now=0.0, **extra):
    ports = ports or [9001 + i for i in range(len(weights))]
    body = {"algorithm": algorithm,
            "backends": [{"address": "127.0.0.1:%d" % p, "weight": w} for p, w in zip(ports, weights)]}
    body.update(extra)
    cfg = config.from_dict({"listeners": [{"bind": "127.0.0.1:0", "pool": "p"}], "pools": {"p": body}})
    return Pool(cfg.pool("p"), seed=7, now=now)


@pytest.fixture
def sel(twin, monkeypatch):
    """One twin's selectors (and hashing) in fastlb.balancer, where Pool builds them."""
    mod = load_twin("selectors", twin)
    for name in ("RoundRobin", "LeastConnections", "LoadState", "WeightedRandom", "P2C", "PeakEWMA"):
        monkeypatch.setattr(balancer, name, getattr(mod, name))
    hashing = load_twin("hashing", twin)
    for name in ("KetamaRing", "Maglev", "key_hash"):
        monkeypatch.setattr(balancer, name, getattr(hashing, name))
    return mod


def assert_twin(pool, sel):
    assert type(pool.selector).__module__ == sel.__name__
    assert type(pool.load).__module__ == sel.__name__


def in_step(pool):
    """usable mirrors every backend's state."""
    assert list(pool.usable) == [1 if b.state in (UP, SLOW_START) else 0 for b in pool.backends]


def put(pool, backend, state):
    """Place a backend in a state directly (test setup only), usable in step."""
    backend.state = state
    pool.state_changed(backend, state, 0.0)
    in_step(pool)


class FakeConn:
    def __init__(self):
        self.closed = 0

    def close(self):
        self.closed += 1


def expected_target(target, checks, slow):
    if target == "RETURN":
        target = CHECKING if checks else "USABLE"
    if target == "USABLE":
        target = SLOW_START if slow else UP
    return target


def counts(pool, n, hold=False):
    """Pick n times; with hold, every pick stays in flight (least connections)."""
    out = [0] * len(pool.backends)
    held = []
    for _ in range(n):
        b = pool.pick()
        out[b.index] += 1
        if hold:
            pool.started(b)
            held.append(b)
    for b in held:
        pool.finished(b)
    return out


# ------------------------------------------------------------------------ the table
def test_table_keys_are_known_states_and_events():
    for (state, event), target in TRANSITIONS.items():
        assert state in STATES and event in EVENTS
        assert target in STATES or target in ("USABLE", "RETURN")


@pytest.mark.parametrize("checks", [False, True], ids=["nochecks", "checks"])
@pytest.mark.parametrize("slow", [False, True], ids=["noslow", "slow"])
def test_every_transition_resolves_to_a_state(checks, slow):
    extra = {}
    if checks:
        extra["health_check"] = CHECKS
    if slow:
        extra["slow_start"] = "10s"
    for (state, event), target in TRANSITIONS.items():
        pool = make_pool(**extra)
        b = pool.backends[0]
        put(pool, b, state)
        got = transition(pool, b, event, 5.0, "why")
        assert got in STATES, (state, event, got)
        assert got == expected_target(target, checks, slow), (state, event)
        assert b.state == got
        assert b.history[-1] == (5.0, state, got, event, "why")
        in_step(pool)


@pytest.mark.parametrize("state", STATES)
def test_events_not_in_the_table_are_ignored(state):
    for event in EVENTS + ("bogus",):
        if (state, event) in TRANSITIONS:
            continue
        pool = make_pool(health_check=CHECKS, slow_start="10s")
        b = pool.backends[1]
        put(pool, b, state)
        b.state_reason, b.state_since = "before", 1.0
        conn = FakeConn()
        b.idle.append(conn)
        usable = bytes(pool.usable)
        assert transition(pool, b, event, 9.0, "ignored") is None
        assert (b.state, b.state_reason, b.state_since, b.history) == (state, "before", 1.0, [])
        assert bytes(pool.usable) == usable
        assert b.idle == [conn] and conn.closed == 0


def test_usable_resolves_by_slow_start_and_return_by_checks():
    # USABLE: (checking, pass), (down, rise)
    for slow, want in ((None, UP), ("10s", SLOW_START)):
        extra = {"slow_start": slow} if slow else {}
        pool = make_pool(health_check=CHECKS, **extra)
        assert transition(pool, pool.backends[0], "pass", 1.0, "r") == want
        put(pool, pool.backends[1], DOWN)
        assert transition(pool, pool.backends[1], "rise", 1.0, "r") == want
    # RETURN: (ejected, ejection_over), (draining, undrain/enable), (disabled, enable)
    for extra, want in (({}, UP), ({"slow_start": "5s"}, SLOW_START), ({"health_check": CHECKS}, CHECKING),
                        ({"health_check": CHECKS, "slow_start": "5s"}, CHECKING)):
        for state, event in ((EJECTED, "ejection_over"), (DRAINING, "undrain"), (DRAINING, "enable"),
                             (DISABLED, "enable")):
            pool = make_pool(**extra)
            put(pool, pool.backends[0], state)
            assert transition(pool, pool.backends[0], event, 1.0, "r") == want, (extra, state, event)


def test_transition_records_reason_time_and_history():
    pool = make_pool()
    b = pool.backends[2]
    assert transition(pool, b, "drain", 12.5, "operator") == DRAINING
    assert (b.state, b.state_reason, b.state_since) == (DRAINING, "operator", 12.5)
    assert b.history == [(12.5, UP, DRAINING, "drain", "operator")]
    assert transition(pool, b, "disable", 13.0, "maintenance") == DISABLED
    assert b.history[-1] == (13.0, DRAINING, DISABLED, "disable", "maintenance")
    d = pool.backend_dict(b, 14.0)
    assert d["state"] == DISABLED and d["state_reason"] == "maintenance" and d["state_for_seconds"] == 1.0
    assert [t["event"] for t in d["transitions"]] == ["disable", "drain"]  # newest first


def test_history_is_bounded():
    pool = make_pool()
    b = pool.backends[0]
    n = HISTORY * 2 + 3
    for i in range(n):
        transition(pool, b, "drain" if b.state == UP else "undrain", float(i), "step %d" % i)
    assert len(b.history) == HISTORY
    assert b.history[-1][0] == n - 1 and b.history[-1][4] == "step %d" % (n - 1)
    assert b.history[0][0] == n - HISTORY  # the oldest ones were dropped, in order
    assert [h[0] for h in b.history] == [float(i) for i in range(n - HISTORY, n)]


def test_usable_is_one_exactly_for_up_and_slow_start():
    pool = make_pool(health_check=CHECKS, slow_start="10s")
    b = pool.backends[0]
    seen = set()
    for event in ("pass", "ramped", "eject", "fall", "rise", "drain", "disable", "enable", "pass", "drain",
                  "undrain", "pass", "ramped", "fall"):
        state = transition(pool, b, event, 1.0, "r")
        assert state is not None, event
        seen.add(state)
        assert pool.usable[0] == (1 if state in (UP, SLOW_START) else 0), state
        in_step(pool)
    assert seen == set(STATES)


@pytest.mark.parametrize("state, event", [(UP, "drain"), (UP, "disable"), (UP, "fall"), (UP, "eject"),
                                          (SLOW_START, "eject"), (SLOW_START, "drain")])
def test_leaving_rotation_closes_idle_connections(state, event):
    pool = make_pool(slow_start="10s")
    b, other = pool.backends[0], pool.backends[1]
    put(pool, b, state)
    conns = [FakeConn() for _ in range(3)]
    b.idle.extend(conns)
    other_conn = FakeConn()
    other.idle.append(other_conn)
    transition(pool, b, event, 1.0, "r")
    assert b.idle == [] and [c.closed for c in conns] == [1, 1, 1]
    assert other.idle == [other_conn] and other_conn.closed == 0  # only that backend's


def test_staying_in_rotation_keeps_idle_connections():
    pool = make_pool(slow_start="10s")
    b = pool.backends[0]
    put(pool, b, SLOW_START)
    conn = FakeConn()
    b.idle.append(conn)
    assert transition(pool, b, "ramped", 1.0, "r") == UP
    assert b.idle == [conn] and conn.closed == 0


# ------------------------------------------------------------------ active checks
def test_pool_with_checks_starts_checking_and_takes_no_traffic(sel):
    pool = make_pool(health_check=CHECKS)
    assert_twin(pool, sel)
    assert [b.state for b in pool.backends] == [CHECKING] * 3
    assert list(pool.usable) == [0, 0, 0]
    assert pool.pick() is None
    assert make_pool().usable == bytearray(b"\x01\x01\x01")  # without checks: up at once


def test_one_pass_makes_a_checking_backend_usable(sel):
    pool = make_pool(health_check=CHECKS)  # rise 2: does not apply to the first pass
    b = pool.backends[1]
    check_result(pool, b, True, 3.0, "status 200")
    assert b.state == UP and pool.usable[1] == 1
    assert b.state_reason == "check passed: status 200" and b.state_since == 3.0
    assert [pool.pick().index for _ in range(5)] == [1] * 5  # the only usable one
    assert (b.checks_total, b.checks_passed, b.checks_failed) == (1, 1, 0)
    assert (b.last_check, b.last_check_ok, b.last_check_detail) == (3.0, True, "status 200")


def test_fall_failures_in_a_row_take_it_down():
    pool = make_pool(health_check=CHECKS)  # fall 3
    b = pool.backends[0]
    check_result(pool, b, True, 0.0, "ok")
    for t in (1.0, 2.0):
        check_result(pool, b, False, t, "status 503")
    assert b.state == UP
    check_result(pool, b, True, 3.0, "ok")  # the run is broken
    for t in (4.0, 5.0):
        check_result(pool, b, False, t, "status 503")
    assert b.state == UP and b.fails == 2
    check_result(pool, b, False, 6.0, "status 503")
    assert b.state == DOWN and pool.usable[0] == 0
    assert b.state_reason == "3 checks failed in a row: status 503"
    assert (b.checks_total, b.checks_passed, b.checks_failed) == (7, 2, 5)
    check_result(pool, b, False, 7.0, "status 503")  # (down, fall) is not in the table: stays down
    assert b.state == DOWN and len(b.history) == 2


def test_checking_backend_that_fails_goes_down():
    pool = make_pool(health_check=CHECKS)
    b = pool.backends[0]
    for t in (1.0, 2.0):
        check_result(pool, b, False, t, "connect failed")
    assert b.state == CHECKING
    check_result(pool, b, False, 3.0, "connect failed")
    assert b.state == DOWN


def test_rise_passes_in_a_row_bring_it_back():
    pool = make_pool(health_check=CHECKS)  # rise 2, fall 3
    b = pool.backends[0]
    for t in range(3):
        check_result(pool, b, False, float(t), "timed out")
    assert b.state == DOWN
    check_result(pool, b, True, 10.0, "ok")
    check_result(pool, b, False, 11.0, "timed out")  # resets the run of passes
    check_result(pool, b, True, 12.0, "ok")
    assert b.state == DOWN and pool.usable[0] == 0
    check_result(pool, b, True, 13.0, "ok")
    assert b.state == UP and pool.usable[0] == 1
    assert b.state_reason == "2 checks passed in a row: ok"


def test_rise_from_down_with_slow_start():
    pool = make_pool(health_check=CHECKS, slow_start="10s")
    b = pool.backends[0]
    put(pool, b, DOWN)
    check_result(pool, b, True, 1.0, "ok")
    check_result(pool, b, True, 2.0, "ok")
    assert b.state == SLOW_START and b.state_since == 2.0


def test_ejected_backend_falls_to_down_but_does_not_rise_early():
    pool = make_pool(weights=(1, 1, 1, 1), health_check=CHECKS, outlier_detection={"consecutive_failures": 1})
    b = pool.backends[0]
    check_result(pool, b, True, 0.0, "ok")
    report_failure(pool, b, 1.0, "reset")
    assert b.state == EJECTED
    for t in (2.0, 3.0, 4.0):
        check_result(pool, b, True, t, "ok")  # passing checks do not end an ejection
    assert b.state == EJECTED
    for t in (5.0, 6.0):
        check_result(pool, b, False, t, "status 500")
    assert b.state == EJECTED
    check_result(pool, b, False, 7.0, "status 500")
    assert b.state == DOWN and pool.usable[0] == 0
    tick(pool, 1000.0)  # the ejection time running out does not matter any more
    assert b.state == DOWN


# ------------------------------------------------------- passive outlier detection
def test_consecutive_failures_eject_and_success_resets():
    pool = make_pool(weights=(1, 1, 1, 1), outlier_detection={"consecutive_failures": 3,
                                                               "base_ejection_time": "10s"})
    b = pool.backends[0]
    report_failure(pool, b, 1.0, "reset")
    report_failure(pool, b, 1.0, "reset")
    report_success(b)
    report_failure(pool, b, 2.0, "reset")
    report_failure(pool, b, 2.0, "reset")
    assert b.state == UP and b.consecutive_failures == 2
    report_failure(pool, b, 3.0, "status 502")
    assert b.state == EJECTED and pool.usable[0] == 0
    assert b.state_reason == "3 failures in a row, last: status 502"
    assert (b.ejections, b.ejected_until, b.last_ejection) == (1, 13.0, 3.0)
    assert b.failures_total == 5
    assert pool.backend_dict(b, 5.0)["ejected_for_seconds"] == 8.0
    # failures while out of rotation count in the total, not towards another ejection
    report_failure(pool, b, 4.0, "reset")
    assert b.failures_total == 6 and b.ejections == 1 and b.consecutive_failures == 0


def test_ejection_time_doubles_and_is_capped():
    pool = make_pool(weights=(1, 1, 1, 1), outlier_detection={
        "consecutive_failures": 2, "base_ejection_time": "10s", "max_ejection_time": "35s"})
    b = pool.backends[0]
    now = 0.0
    lengths = []
    for _ in range(5):
        report_failure(pool, b, now, "reset")
        report_failure(pool, b, now, "reset")
        assert b.state == EJECTED
        lengths.append(b.ejected_until - now)
        tick(pool, b.ejected_until - 0.001)
        assert b.state == EJECTED
        now = b.ejected_until
        tick(pool, now)
        assert b.state == UP
        assert b.state_reason == "ejection time (%gs) is over" % lengths[-1]
    assert lengths == [10.0, 20.0, 35.0, 35.0, 35.0]
    assert b.ejections == 5


def test_ejection_over_goes_to_checking_with_active_checks():
    pool = make_pool(weights=(1, 1), health_check=CHECKS,
                     outlier_detection={"consecutive_failures": 1, "max_ejection_percent": 50})
    b = pool.backends[0]
    check_result(pool, b, True, 0.0, "ok")
    report_failure(pool, b, 1.0, "reset")
    assert b.state == EJECTED
    tick(pool, 31.0)
    assert b.state == CHECKING and pool.usable[0] == 0 and (b.passes, b.fails) == (0, 0)
    check_result(pool, b, True, 32.0, "ok")  # one passing check, not rise
    assert b.state == UP and pool.usable[0] == 1


def test_ejection_over_goes_to_slow_start_without_checks(sel):
    pool = make_pool(weights=(1, 1), slow_start="10s", outlier_detection={"consecutive_failures": 1})
    assert_twin(pool, sel)
    b = pool.backends[0]
    report_failure(pool, b, 0.0, "reset")
    tick(pool, 30.0)
    assert b.state == SLOW_START and b.state_since == 30.0 and pool.usable[0] == 1
    tick(pool, 40.0)
    assert b.state == UP


def test_max_ejection_percent():
    pool = make_pool(weights=(1, 1, 1, 1), outlier_detection={"consecutive_failures": 1,
                                                               "max_ejection_percent": 50})
    b0, b1, b2, b3 = pool.backends
    report_failure(pool, b0, 0.0, "reset")
    report_failure(pool, b1, 1.0, "reset")
    assert (b0.state, b1.state) == (EJECTED, EJECTED)
    report_failure(pool, b2, 2.0, "reset")
    assert b2.state == UP and b2.ejections_refused == 1 and b2.ejections == 0
    report_failure(pool, b2, 2.5, "reset")
    assert b2.state == UP and b2.ejections_refused == 2
    assert list(pool.usable) == [0, 0, 1, 1]
    tick(pool, 30.0)  # b0's ejection is over: room for one more
    assert b0.state == UP
    report_failure(pool, b2, 30.5, "reset")
    assert b2.state == EJECTED and b2.ejections_refused == 2
    report_failure(pool, b3, 31.0, "reset")
    assert b3.state == UP and b3.ejections_refused == 1


@pytest.mark.parametrize("n, percent, most", [(3, 50, 1), (5, 50, 2), (10, 10, 1), (9, 10, 0), (4, 0, 0),
                                              (3, 100, 3)])
def test_max_ejection_percent_rounds_down(n, percent, most):
    pool = make_pool(weights=(1,) * n, outlier_detection={"consecutive_failures": 1,
                                                           "max_ejection_percent": percent})
    for b in pool.backends:
        report_failure(pool, b, 0.0, "reset")
    assert sum(b.state == EJECTED for b in pool.backends) == most
    assert sum(b.ejections_refused for b in pool.backends) == n - most


def test_pool_of_one_is_never_ejected():
    pool = make_pool(weights=(1,), outlier_detection={"consecutive_failures": 1})  # default 50%
    b = pool.backends[0]
    for t in range(10):
        report_failure(pool, b, float(t), "reset")
    assert b.state == UP and pool.usable[0] == 1
    assert b.ejections_refused == 10 and b.failures_total == 10


def test_no_outlier_detection_never_ejects_but_counts():
    pool = make_pool(weights=(1, 1, 1, 1), outlier_detection=False)
    assert pool.outlier is None and pool.fail_statuses == frozenset()
    b = pool.backends[0]
    for t in range(50):
        report_failure(pool, b, float(t), "reset")
    assert b.state == UP and b.failures_total == 50
    assert b.consecutive_failures == 0 and b.ejections_refused == 0
    tick(pool, 1000.0)
    assert b.state == UP


def _ejected_once(max_time="100s"):
    pool = make_pool(weights=(1, 1), outlier_detection={
        "consecutive_failures": 1, "base_ejection_time": "10s", "max_ejection_time": max_time})
    b = pool.backends[0]
    report_failure(pool, b, 0.0, "reset")
    tick(pool, 10.0)
    assert b.state == UP and b.ejections == 1
    return pool, b


def test_ejection_count_resets_after_max_ejection_time_in_rotation():
    # The rule (tick): the count goes back to 0 once the backend is usable and
    # max_ejection_time has passed since its last ejection *ended* (ejected_until).
    pool, b = _ejected_once()
    tick(pool, 109.9)
    assert b.ejections == 1
    tick(pool, 110.0)
    assert b.ejections == 0
    report_failure(pool, b, 111.0, "reset")
    assert b.ejected_until - 111.0 == 10.0  # base again, not doubled


def test_ejection_count_kept_just_before_the_reset():
    pool, b = _ejected_once()
    tick(pool, 109.9)
    report_failure(pool, b, 109.9, "reset")
    assert b.ejections == 2 and b.ejected_until == pytest.approx(109.9 + 20.0)  # doubled


def test_ejection_count_not_reset_while_out_of_rotation():
    pool, b = _ejected_once()
    transition(pool, b, "disable", 20.0, "admin")
    tick(pool, 500.0)
    assert b.ejections == 1
    transition(pool, b, "enable", 600.0, "admin")
    tick(pool, 600.0)
    assert b.ejections == 0


# --------------------------------------------------------------------- slow start
def test_pass_with_slow_start_ramps_effective_weight():
    pool = make_pool(weights=(4, 1, 1), health_check=CHECKS, slow_start="10s")
    b = pool.backends[0]
    check_result(pool, b, True, 100.0, "ok")
    assert b.state == SLOW_START and pool.ramping
    for now, want in ((100.0, 0.0), (101.0, 0.4), (102.5, 1.0), (105.0, 2.0), (107.5, 3.0), (110.0, 4.0),
                      (130.0, 4.0)):
        assert pool.effective_weight(b, now) == pytest.approx(want), now
    assert pool.backend_dict(b, 102.5)["effective_weight"] == 1.0
    tick(pool, 109.9)
    assert b.state == SLOW_START
    tick(pool, 110.0)
    assert b.state == UP and not pool.ramping
    assert pool.effective_weight(b, 110.0) == 4.0


@pytest.mark.parametrize("algorithm, hold", [("round_robin", False), ("least_connections", True)])
def test_slow_start_scales_selector_weights_and_picks(sel, algorithm, hold):
    pool = make_pool(algorithm, weights=(2, 1, 1), slow_start="10s")
    assert_twin(pool, sel)
    b = pool.backends[0]
    assert counts(pool, 40, hold) == [20, 10, 10]
    transition(pool, b, "disable", 100.0, "admin")
    assert counts(pool, 20, hold) == [0, 10, 10]
    transition(pool, b, "enable", 100.0, "admin")
    assert b.state == SLOW_START
    # the ramp starts at once, at ~0 (1 out of 100 per weight unit of the others)
    assert pool.selector.weights() == [1, RAMP_SCALE, RAMP_SCALE]
    assert counts(pool, 201, hold) == [1, 100, 100]
    # 25% of the ramp: weight 2 x 0.25 = 0.5 -> 50 against 100 and 100
    tick(pool, 102.5)
    assert pool.selector.weights() == [50, 100, 100]
    assert counts(pool, 250, hold) == [50, 100, 100]
    assert counts(pool, 2500, hold) == [500, 1000, 1000]  # 20% of the picks instead of 50%
    # 10% of the ramp: 20 against 100 and 100
    pool2 = make_pool(algorithm, weights=(2, 1, 1), slow_start="10s")
    transition(pool2, pool2.backends[0], "disable", 0.0, "admin")
    transition(pool2, pool2.backends[0], "enable", 0.0, "admin")
    tick(pool2, 1.0)
    assert pool2.selector.weights() == [20, 100, 100]
    got = counts(pool2, 2200, hold)
    assert got == [200, 1000, 1000]
    # done: plain weights again, picks exactly by weight
    tick(pool, 110.0)
    assert b.state == UP
    assert pool.selector.weights() == [2, 1, 1]
    assert counts(pool, 40, hold) == [20, 10, 10]


def test_ramp_rebuilds_at_most_every_ramp_step(sel):
    pool = make_pool(weights=(1, 1), slow_start="10s")
    b = pool.backends[0]
    transition(pool, b, "disable", 0.0, "admin")
    transition(pool, b, "enable", 0.0, "admin")
    tick(pool, 1.0)
    first = pool.selector
    assert first.weights() == [10, 100]
    tick(pool, 1.0 + RAMP_STEP / 2)
    assert pool.selector is first  # not rebuilt within RAMP_STEP
    tick(pool, 1.0 + RAMP_STEP)
    assert pool.selector is not first and pool.selector.weights() == [12, 100]


def test_leaving_slow_start_early_restores_plain_weights(sel):
    pool = make_pool(weights=(3, 1, 1, 1), slow_start="10s", outlier_detection={"consecutive_failures": 1})
    b = pool.backends[0]
    transition(pool, b, "drain", 0.0, "admin")
    transition(pool, b, "undrain", 0.0, "admin")
    tick(pool, 5.0)
    assert pool.selector.weights() == [150, 100, 100, 100]
    report_failure(pool, b, 5.0, "reset")
    assert b.state == EJECTED and not pool.ramping
    assert pool.selector.weights() == [3, 1, 1, 1]
    assert counts(pool, 30) == [0, 10, 10, 10]


# --------------------------------------------------------------------- admin events
def test_admin_drain_undrain_disable_enable():
    for extra, back in (({}, UP), ({"health_check": CHECKS}, CHECKING), ({"slow_start": "3s"}, SLOW_START)):
        pool = make_pool(**extra)
        b = pool.backends[0]
        put(pool, b, UP)
        assert transition(pool, b, "drain", 1.0, "a") == DRAINING and pool.usable[0] == 0
        assert transition(pool, b, "drain", 1.5, "a") is None  # repeating is not a transition
        assert transition(pool, b, "disable", 2.0, "a") == DISABLED and pool.usable[0] == 0
        assert transition(pool, b, "disable", 2.5, "a") is None
        assert transition(pool, b, "undrain", 2.5, "a") is None  # undrain does not enable
        assert transition(pool, b, "drain", 3.0, "a") == DRAINING
        assert transition(pool, b, "undrain", 4.0, "a") == back
        assert transition(pool, b, "disable", 5.0, "a") == DISABLED
        assert transition(pool, b, "enable", 6.0, "a") == back
        assert transition(pool, b, "drain", 7.0, "a") == DRAINING
        assert transition(pool, b, "enable", 8.0, "a") == back  # enable also ends a drain
        assert [h[2] for h in b.history] == [DRAINING, DISABLED, DRAINING, back, DISABLED, back, DRAINING, back]
        in_step(pool)


@pytest.mark.parametrize("state", [CHECKING, UP, SLOW_START, DOWN, EJECTED])
@pytest.mark.parametrize("event, target", [("drain", DRAINING), ("disable", DISABLED)])
def test_admin_from_every_health_state(state, event, target):
    pool = make_pool(health_check=CHECKS, slow_start="10s")
    b = pool.backends[0]
    put(pool, b, state)
    assert transition(pool, b, event, 1.0, "admin") == target
    assert pool.usable[0] == 0
    assert transition(pool, b, "enable", 2.0, "admin") == CHECKING  # checks: must pass one again
    assert (b.passes, b.fails) == (0, 0)


@pytest.mark.parametrize("state", [CHECKING, UP, SLOW_START, DOWN, EJECTED])
def test_enable_and_undrain_do_nothing_in_health_states(state):
    pool = make_pool(health_check=CHECKS, slow_start="10s")
    b = pool.backends[0]
    put(pool, b, state)
    assert transition(pool, b, "enable", 1.0, "admin") is None
    assert transition(pool, b, "undrain", 1.0, "admin") is None
    assert b.state == state and b.history == []


# ---------------------------------------------------------------------------- docs
def test_state_table_markdown_has_one_row_per_transition():
    md = health.state_table_markdown()
    lines = md.splitlines()
    assert lines[:2] == ["| state | event | next state |", "|---|---|---|"]
    rows = lines[2:]
    assert len(rows) == len(TRANSITIONS)
    keys = set()
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == 3, row
        keys.add((cells[0].strip("`"), cells[1]))
        target = TRANSITIONS[(cells[0].strip("`"), cells[1])]
        if target in STATES:
            assert cells[2] == "`%s`" % target
        else:
            assert "slow_start" in cells[2] and "up" in cells[2]
            assert ("checking" in cells[2]) == (target == "RETURN")
    assert keys == set(TRANSITIONS)


# -------------------------------------------------------------------------- probes
LOOPS = {"asyncio": None, "uvloop": uvloop.new_event_loop}


def run(coro_fn, loop="asyncio"):
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        return runner.run(coro_fn())


def spec(**kw):
    # a probe that should succeed gets a generous timeout (a loaded CI machine must not
    # turn it into a failure); the timeout tests set their own short one
    kw.setdefault("timeout", 5.0)
    kw.setdefault("interval", 10.0)
    return HealthSpec(**kw)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Backend:
    """A tiny server: reads one request head, answers ``respond`` (bytes, a callable
    of the head, or None = never answer), half-closes, and records whether the
    client closed its side (EOF)."""

    def __init__(self, respond, half_close=True):
        self.respond = respond
        self.half_close = half_close
        self.heads = []
        self.connections = 0
        self.eof = asyncio.Event()

    async def __aenter__(self):
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        self.server.close()
        await self.server.wait_closed()

    async def _handle(self, reader, writer):
        self.connections += 1
        try:
            try:
                self.heads.append(await reader.readuntil(b"\r\n\r\n"))
            except asyncio.IncompleteReadError as exc:
                self.heads.append(exc.partial)
            resp = self.respond(self.heads[-1]) if callable(self.respond) else self.respond
            if resp is not None:
                writer.write(resp)
                await writer.drain()
                if self.half_close:
                    writer.write_eof()
            while await reader.read(4096):
                pass
            self.eof.set()
        except ConnectionError:
            self.eof.set()
        finally:
            writer.close()


def ok_response(status=200, body=b"", reason=b"X"):
    return b"HTTP/1.1 %d %s\r\nContent-Length: %d\r\n\r\n%s" % (status, reason, len(body), body)


async def probe_once(respond, sp=None, host_header="127.0.0.1:1", half_close=True):
    async with Backend(respond, half_close) as srv:
        loop = asyncio.get_running_loop()
        result = await probe(loop, sp or spec(), "127.0.0.1", srv.port, host_header)
        await asyncio.wait_for(srv.eof.wait(), 2.0)  # the probe closed its connection
        return result, srv


@pytest.mark.parametrize("loop", LOOPS)
def test_probe_200_ok_and_closes(loop):
    (ok, detail), srv = run(lambda: probe_once(ok_response(200, b"fine")), loop)
    assert (ok, detail) == (True, "status 200")
    assert srv.connections == 1


@pytest.mark.parametrize("loop", LOOPS)
def test_probe_503_not_ok(loop):
    (ok, detail), _ = run(lambda: probe_once(ok_response(503)), loop)
    assert (ok, detail) == (False, "status 503")


@pytest.mark.parametrize("status, ok", [(200, True), (204, True), (205, False), (301, True), (302, False),
                                        (418, True), (500, False)])
def test_probe_expect_status_ranges_and_lists(status, ok):
    ranges = config.parse_statuses(["200-204", 301, "418"])
    (got, detail), _ = run(lambda: probe_once(ok_response(status), spec(expect_status=ranges)))
    assert (got, detail) == (ok, "status %d" % status)


def test_probe_default_expect_status_is_2xx_3xx():
    for status, ok in ((200, True), (399, True), (400, False), (199, False)):
        (got, _), _ = run(lambda: probe_once(ok_response(status)))
        assert got == ok, status


def test_probe_expect_body():
    sp = spec(expect_body="ready")
    (ok, detail), _ = run(lambda: probe_once(ok_response(200, b'{"status": "ready"}'), sp))
    assert (ok, detail) == (True, "status 200")
    (ok, detail), _ = run(lambda: probe_once(ok_response(200, b'{"status": "starting"}'), sp))
    assert (ok, detail) == (False, "status 200, body lacks 'ready'")
    (ok, detail), _ = run(lambda: probe_once(ok_response(503, b"ready"), sp))
    assert (ok, detail) == (False, "status 503")  # status first


def test_probe_expect_body_chunked():
    body = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nrea\r\n2\r\ndy\r\n0\r\n\r\n"
    (ok, _), _ = run(lambda: probe_once(body, spec(expect_body="ready")))
    assert ok  # h11 decodes the chunks: the substring spans two of them


@pytest.mark.parametrize("loop", LOOPS)
def test_probe_times_out_when_never_answered(loop):
    t0 = time.monotonic()
    (ok, detail), srv = run(lambda: probe_once(None, spec(timeout=0.3)), loop)
    elapsed = time.monotonic() - t0
    assert (ok, detail) == (False, "timed out after 0.3s")
    assert 0.25 <= elapsed < 4.0  # generous: a probe that ignored its timeout would hang on
    assert srv.eof.is_set()  # closed on the timeout too


def test_probe_passes_when_server_keeps_the_connection_open():
    # A complete 200 from a server that ignores "Connection: close" (RFC 9112 §9.6: it
    # MUST close) still passes: the probe ends at the end of the message, not at the close.
    (ok, detail), _ = run(lambda: probe_once(ok_response(200), half_close=False))
    assert (ok, detail) == (True, "status 200")


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("kind", ["http", "tcp"])
def test_probe_connection_refused(loop, kind):
    port = free_port()

    async def go():
        return await probe(asyncio.get_running_loop(), spec(kind=kind), "127.0.0.1", port, "x")

    ok, detail = run(go, loop)
    assert not ok and detail.startswith("connect failed"), detail


@pytest.mark.parametrize("garbage", [b"garbage\r\n\r\n", b"\x00\x01\x02\xff", b"HTTP/1.1 200 OK\r\n",
                                     b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nx",
                                     b"HTTP/1.1 2000 OK\r\n\r\n", b"SSH-2.0-OpenSSH_9.0\r\n"])
def test_probe_garbage_not_ok(garbage):
    (ok, detail), _ = run(lambda: probe_once(garbage))
    assert not ok
    assert detail.startswith("invalid response"), detail


def test_probe_closed_without_answer_not_ok():
    (ok, detail), _ = run(lambda: probe_once(b""))
    assert not ok


def test_probe_closed_without_answer_says_so():
    (ok, detail), _ = run(lambda: probe_once(b""))
    assert (ok, detail) == (False, "connection closed before a response")


def test_probe_truncated_body_is_not_ok():
    # Content-Length 100, 3 bytes, close: a backend dying mid-response fails its check.
    cut = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc"
    (ok, detail), _ = run(lambda: probe_once(cut))
    assert not ok and detail.startswith("status 200, response cut short"), detail
    (ok, _), _ = run(lambda: probe_once(cut, spec(expect_body="abc")))
    assert not ok


def test_probe_body_beyond_limit_is_not_waited_for():
    big = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"a" * (health.PROBE_BODY_LIMIT + 10)

    async def go():
        async with Backend(big, half_close=False) as srv:  # sends part of the body, never closes
            return await probe(asyncio.get_running_loop(), spec(timeout=10.0), "127.0.0.1", srv.port, "h")

    t0 = time.monotonic()
    assert run(go) == (True, "status 200")
    assert time.monotonic() - t0 < 8.0  # done at the limit, not at the 10 s timeout


def test_probe_informational_then_final():
    resp = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"
    (ok, detail), _ = run(lambda: probe_once(resp))
    assert (ok, detail) == (True, "status 204")


@pytest.mark.parametrize("loop", LOOPS)
def test_probe_tcp_ok_on_accept(loop):
    (ok, detail), srv = run(lambda: probe_once(None, spec(kind="tcp")), loop)
    assert (ok, detail) == (True, "connected")
    assert srv.heads == [b""]  # nothing sent, then EOF


def _head(raw):
    lines = raw.decode("latin-1").split("\r\n")
    assert lines[-2:] == ["", ""]
    fields = [tuple(x.strip() for x in line.split(":", 1)) for line in lines[1:-2]]
    return lines[0], fields


@pytest.mark.parametrize("sp_host, host_header, want", [(None, "backend.example:8080", "backend.example:8080"),
                                                       ("health.example", "backend.example:8080",
                                                        "health.example")])
def test_probe_request_line_and_headers(sp_host, host_header, want):
    sp = spec(method="HEAD", path="/healthz?deep=1", host=sp_host)
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"  # HEAD: no body follows
    (ok, detail), srv = run(lambda: probe_once(resp, sp, host_header))
    assert (ok, detail) == (True, "status 200")
    line, fields = _head(srv.heads[0])
    assert line == "HEAD /healthz?deep=1 HTTP/1.1"
    names = [n.lower() for n, _ in fields]
    assert names.count("host") == 1 and names.count("connection") == 1
    d = {n.lower(): v for n, v in fields}
    assert d["host"] == want
    assert d["connection"].lower() == "close"


def test_probe_default_request():
    (ok, _), srv = run(lambda: probe_once(ok_response(200), spec(), "127.0.0.1:9001"))
    line, fields = _head(srv.heads[0])
    assert line == "GET / HTTP/1.1"
    assert ("Host", "127.0.0.1:9001") in fields


# -------------------------------------------------------------------------- Prober
def test_prober_checking_up_down_on_a_real_backend():
    status = {"code": 200}

    async def go():
        async with Backend(lambda head: ok_response(status["code"])) as srv:
            pool = make_pool(weights=(1,), ports=[srv.port], health_check={
                "interval": 0.05, "timeout": 0.05, "rise": 2, "fall": 2, "jitter": 0})
            b = pool.backends[0]
            loop = asyncio.get_running_loop()
            prober = health.Prober(loop, [make_pool(), pool], seed=3)
            assert prober.pools == [pool]  # pools without checks are not probed
            assert b.state == CHECKING
            prober.start()
            tasks = list(prober.tasks)
            try:
                deadline = loop.time() + 2.0
                while b.state != UP and loop.time() < deadline:
                    await asyncio.sleep(0.01)
                assert b.state == UP and pool.usable[0] == 1
                status["code"] = 500
                while b.state != DOWN and loop.time() < deadline + 2.0:
                    await asyncio.sleep(0.01)
                assert b.state == DOWN and pool.usable[0] == 0
            finally:
                prober.stop()
                await asyncio.gather(*tasks, return_exceptions=True)
            assert prober.tasks == [] and all(t.cancelled() for t in tasks)
            return pool, b, srv

    t0 = time.monotonic()
    pool, b, srv = run(go)
    assert time.monotonic() - t0 < 3.0
    assert [(h[1], h[2]) for h in b.history] == [(CHECKING, UP), (UP, DOWN)]
    assert b.state_reason == "2 checks failed in a row: status 500"
    assert b.checks_failed >= 2 and b.checks_passed >= 1
    assert srv.connections == b.checks_total or srv.connections == b.checks_total + 1  # one connection each


def test_prober_skips_disabled_backends():
    async def go():
        async with Backend(ok_response(200)) as srv:
            pool = make_pool(weights=(1,), ports=[srv.port], health_check={
                "interval": 0.05, "timeout": 0.05, "jitter": 0})
            b = pool.backends[0]
            transition(pool, b, "disable", 0.0, "admin")
            prober = health.Prober(asyncio.get_running_loop(), [pool], seed=1)
            prober.start()
            tasks = list(prober.tasks)
            await asyncio.sleep(0.3)
            prober.stop()
            await asyncio.gather(*tasks, return_exceptions=True)
            return b, srv

    b, srv = run(go)
    assert srv.connections == 0 and b.checks_total == 0 and b.state == DISABLED


def test_prober_delay_uses_down_interval_and_jitter():
    loop = asyncio.new_event_loop()
    try:
        pool = make_pool(health_check={"interval": "1s", "down_interval": "4s", "timeout": "1s",
                                       "jitter": 0.2})
        prober = health.Prober(loop, [pool], seed=5)
        b = pool.backends[0]
        sp = pool.health
        delays = [prober._delay(sp, b) for _ in range(200)]
        assert all(0.8 <= d <= 1.2 for d in delays) and len(set(delays)) > 100
        put(pool, b, DOWN)
        assert all(3.2 <= prober._delay(sp, b) <= 4.8 for _ in range(100))
        assert prober._delay(replace(sp, jitter=0.0), b) == 4.0
    finally:
        loop.close()


def test_ejections_are_counted_under_the_kind_of_the_failure_that_tipped_them():
    from fastlb.counters import EJECTION_REASONS

    pool = make_pool(weights=(1, 1, 1, 1), outlier_detection={"consecutive_failures": 2,
                                                               "base_ejection_time": "1s"})
    b = pool.backends[0]
    assert b.ejections_total == dict.fromkeys(EJECTION_REASONS, 0)  # every series from the start
    report_failure(pool, b, 1.0, "reset", "upstream_reset")
    report_failure(pool, b, 1.0, "status 503", "status")
    assert b.state == EJECTED and b.ejections_total["status"] == 1 and b.ejections_total["upstream_reset"] == 0
    tick(pool, 10.0)
    assert b.state == UP
    report_failure(pool, b, 11.0, "status 503", "status")
    report_failure(pool, b, 11.0, "reset", "upstream_reset")
    assert b.ejections_total["upstream_reset"] == 1 and b.ejections_total["status"] == 1
    report_failure(pool, b, 11.0, "reset", "upstream_reset")  # already ejected: not counted again
    assert sum(b.ejections_total.values()) == 2
