"""Selectors and LoadState (fastlb._core.selectors): both twins, against references and bounds.

Round robin against nginx's reference sequence; random/p2c shares against their expected
weights (statistical bounds at fixed seeds, so the tests are deterministic); least
connections, p2c and peak EWMA against constructed loads; determinism across processes and
PYTHONHASHSEED values. Twin parity under random inputs: test_selectors_parity.py.
"""

import math
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, load_twin


@pytest.fixture
def sel(twin):
    return load_twin("selectors", twin)


def picks(s, n, usable=None, load=None, now=0.0):
    return [s.pick(usable, load, 0, now) for _ in range(n)]


def counts(got, n):
    return [got.count(i) for i in range(n)]


# --------------------------------------------------------------------------- round robin

def test_nginx_reference_sequence(sel):
    # nginx documents weights 5,1,1 -> a a b a c a a (ngx_http_upstream_round_robin.c).
    s = sel.RoundRobin([5, 1, 1])
    assert "".join("abc"[i] for i in picks(s, 7)) == "aabacaa"


def test_smooth_wrr_is_an_alias_of_round_robin(sel):
    assert sel.SmoothWRR is sel.RoundRobin
    assert sel.RoundRobin.algorithm == "round_robin"


@pytest.mark.parametrize("weights", [[1], [1, 1, 1], [3, 2, 1], [10, 1], [7, 7, 2, 1, 5]])
def test_exact_shares_over_each_cycle(sel, weights):
    s = sel.RoundRobin(weights)
    cycle = sum(weights)
    for _ in range(5):
        assert counts(picks(s, cycle), len(weights)) == weights


def test_unusable_backends_are_skipped_and_shares_stay_exact(sel):
    s = sel.RoundRobin([2, 1, 1])
    for usable in (bytearray([1, 0, 1]), bytes([1, 0, 1]), memoryview(bytes([1, 0, 1]))):
        got = picks(s, 30, usable)
        assert 1 not in got
        assert got.count(0) == 20 and got.count(2) == 10


def test_no_usable_backend_returns_minus_one(sel):
    for cls in (sel.RoundRobin, sel.LeastConnections, sel.WeightedRandom, sel.P2C, sel.PeakEWMA):
        s = cls([1, 1])
        assert s.pick(bytearray(2), sel.LoadState(2)) == -1, cls


def test_invalid_weights_rejected(sel):
    for cls in (sel.RoundRobin, sel.LeastConnections, sel.WeightedRandom, sel.P2C, sel.PeakEWMA):
        with pytest.raises(ValueError):
            cls([])
        with pytest.raises(ValueError):
            cls([1, 0])
        with pytest.raises(ValueError):
            cls([1, 2_000_000])


def test_short_usable_and_missing_load_rejected(sel):
    load = sel.LoadState(3)
    for cls in (sel.RoundRobin, sel.LeastConnections, sel.WeightedRandom, sel.P2C, sel.PeakEWMA):
        s = cls([1, 1, 1])
        with pytest.raises(ValueError):
            s.pick(b"\x01\x01", load)
    for cls in (sel.LeastConnections, sel.P2C, sel.PeakEWMA):
        with pytest.raises(ValueError):
            cls([1, 1, 1]).pick(None, None)
        with pytest.raises(ValueError):
            cls([1, 1, 1]).pick(None, sel.LoadState(2))


# --------------------------------------------------------------------------- LoadState

def test_load_state_counts(sel):
    ls = sel.LoadState(3)
    assert ls.size == 3 and ls.total_in_flight == 0
    ls.acquire(0), ls.acquire(0), ls.acquire(2)
    assert [ls.in_flight(i) for i in range(3)] == [2, 0, 1] and ls.total_in_flight == 3
    ls.release(0, 0.1, 1.0)
    ls.release(1, 0.1, 1.0)  # nothing in flight: stays at 0, still a latency sample
    assert [ls.in_flight(i) for i in range(3)] == [1, 0, 1] and ls.total_in_flight == 2
    assert ls.ewma(1, 1.0) == pytest.approx(0.1)
    ls.resize(5)
    assert ls.size == 5 and [ls.in_flight(i) for i in range(5)] == [1, 0, 1, 0, 0]
    assert ls.ewma(0, 1.0) == pytest.approx(0.1) and ls.ewma(4, 1.0) == -1.0
    ls.resize(1)
    assert ls.size == 1 and ls.total_in_flight == 1
    ls.reset_slot(0)
    assert ls.in_flight(0) == 0 and ls.total_in_flight == 0 and ls.ewma(0, 5.0) == -1.0
    with pytest.raises(IndexError):
        ls.acquire(1)
    with pytest.raises(IndexError):
        ls.in_flight(-1)
    with pytest.raises(ValueError):
        sel.LoadState(2, decay=0)


def test_peak_ewma_jumps_up_and_decays_down(sel):
    ls = sel.LoadState(1, decay=10.0)
    assert ls.ewma(0, 0.0) == -1.0
    ls.release(0, -1.0, 0.0)          # a failure is no sample
    ls.release(0, float("nan"), 0.0)  # nor is NaN
    assert ls.ewma(0, 0.0) == -1.0 and not ls.has_sample(0)
    ls.release(0, 0.1, 0.0)
    assert ls.ewma(0, 0.0) == 0.1
    ls.release(0, 1.0, 0.0)           # peak: a higher sample replaces the estimate at once
    assert ls.ewma(0, 0.0) == 1.0
    # Lower samples pull it down with w = exp(-dt/decay) per sample: after many decay
    # constants of 0.1 s samples it has converged on 0.1, monotonically.
    prev = 1.0
    for t in range(1, 61):
        ls.release(0, 0.1, float(t))
        cur = ls.ewma(0, float(t))
        expect_w = math.exp(-1.0 / 10.0)
        assert cur < prev
        if t == 1:
            assert cur == pytest.approx(1.0 * expect_w + 0.1 * (1 - expect_w))
        prev = cur
    assert prev == pytest.approx(0.1, abs=0.01)
    # Reading decays toward 0 without storing: an idle slow backend is tried again.
    ls2 = sel.LoadState(1, decay=10.0)
    ls2.release(0, 2.0, 100.0)
    assert ls2.ewma(0, 120.0) == pytest.approx(2.0 * math.exp(-2.0))
    # that read stored nothing: an earlier "now" still decays from the sample, not from 120 s
    assert ls2.ewma(0, 110.0) == pytest.approx(2.0 * math.exp(-1.0))
    assert ls2.ewma(0, 90.0) == 2.0  # a "now" before the sample: no decay


# --------------------------------------------------------------------------- least connections

def test_least_connections_relative_to_weight(sel):
    ls = sel.LoadState(3)
    s = sel.LeastConnections([1, 2, 4])
    for i, k in ((0, 2), (1, 3), (2, 7)):
        for _ in range(k):
            ls.acquire(i)
    # in_flight / weight: 2, 1.5, 1.75 -> backend 1
    assert s.pick(None, ls) == 1
    ls.acquire(1), ls.acquire(1)  # 2, 2.5, 1.75 -> backend 2
    assert s.pick(None, ls) == 2
    assert s.pick(bytes([1, 1, 0]), ls) == 0  # 2 vs 2.5


def test_least_connections_follows_load_and_ties_rotate(sel):
    n = 4
    ls = sel.LoadState(n)
    s = sel.LeastConnections([1] * n)
    assert picks(s, 8, None, ls) == [0, 1, 2, 3, 0, 1, 2, 3]  # all idle: round robin
    ls.acquire(1)
    assert picks(s, 6, None, ls) == [0, 2, 3, 0, 2, 3]
    # Driven by its own picks (each pick stays in flight), loads stay level.
    ls2 = sel.LoadState(n)
    s2 = sel.LeastConnections([1, 1, 2, 4])
    for _ in range(80):
        ls2.acquire(s2.pick(None, ls2))
    assert [ls2.in_flight(i) for i in range(n)] == [10, 10, 20, 40]


# --------------------------------------------------------------------------- weighted random, p2c

def _share_ok(got, weights, n_picks, usable=None):
    """Each count within 5 standard deviations of its binomial expectation."""
    eligible = [w if usable is None or usable[i] else 0 for i, w in enumerate(weights)]
    total = sum(eligible)
    for i, w in enumerate(eligible):
        p = w / total
        mean = n_picks * p
        sd = math.sqrt(n_picks * p * (1 - p)) or 1.0
        assert abs(got[i] - mean) <= 5 * sd, (i, got, eligible)


@pytest.mark.parametrize("seed", [0, 42])
def test_weighted_random_shares(sel, seed):
    weights = [1, 2, 3, 4, 10]
    s = sel.WeightedRandom(weights, seed=seed)
    n_picks = 100_000
    _share_ok(counts(picks(s, n_picks), 5), weights, n_picks)
    usable = bytes([1, 0, 1, 1, 0])
    got = counts(picks(s, 40_000, usable), 5)
    assert got[1] == got[4] == 0
    _share_ok(got, weights, 40_000, usable)


def test_p2c_shares_when_idle_and_distinct_candidates(sel):
    weights = [1, 2, 3, 4]
    s = sel.P2C(weights, seed=7)
    ls = sel.LoadState(4)
    # Idle: every comparison ties and the first (weighted) draw wins.
    n_picks = 100_000
    _share_ok(counts(picks(s, n_picks, None, ls), 4), weights, n_picks)
    # With a loaded backend, it only wins when both candidates... cannot be itself: never.
    for _ in range(5):
        ls.acquire(3)
    got = picks(s, 10_000, None, ls)
    assert 3 not in got
    # The candidates are distinct: with two usable backends, the idle one always wins.
    ls.acquire(0)
    assert set(picks(s, 1000, bytes([1, 0, 0, 1]), ls)) == {0}


def test_p2c_keeps_in_flight_proportional_to_weight(sel):
    weights = [1, 1, 2, 4]
    s = sel.P2C(weights, seed=3)
    ls = sel.LoadState(4)
    # Requests stay in flight for 40 picks each: a steady state of 40 in flight.
    window = []
    for _ in range(20_000):
        i = s.pick(None, ls)
        ls.acquire(i)
        window.append(i)
        if len(window) > 40:
            ls.release(window.pop(0), -1.0, 0.0)
    loads = [ls.in_flight(i) / w for i, w in enumerate(weights)]
    assert max(loads) - min(loads) <= 2.5, loads


# --------------------------------------------------------------------------- peak EWMA

def _simulate_ewma(sel, latencies, n_picks, seed=1, decay=10.0, step=0.01):
    """Each pick completes after its backend's latency; returns pick counts."""
    n = len(latencies)
    s = sel.PeakEWMA([1] * n, seed=seed)
    ls = sel.LoadState(n, decay)
    pending = []  # (finish time, backend)
    got = [0] * n
    now = 0.0
    for _ in range(n_picks):
        now += step
        still = []
        for t, b in pending:
            if t <= now:
                ls.release(b, latencies[b], t)
            else:
                still.append((t, b))
        pending = still
        i = s.pick(None, ls, 0, now)
        ls.acquire(i)
        got[i] += 1
        pending.append((now + latencies[i], i))
    return got


def test_ewma_slow_backend_gets_clearly_fewer_picks(sel):
    got = _simulate_ewma(sel, [0.5, 0.05, 0.05, 0.05], 6000)
    others = sum(got[1:]) / 3
    assert got[0] < others / 4, got


def test_ewma_unsampled_slot_costs_the_median(sel):
    n = 5
    s = sel.PeakEWMA([1] * n, seed=11)
    ls = sel.LoadState(n)
    for i, lat in enumerate((0.1, 0.3, 0.2, 0.9)):
        ls.release(i, lat, 0.0)
    # Slot 4 is new. Usable sampled ewmas 0.1, 0.2, 0.3, 0.9 -> median (0.2 + 0.3) / 2.
    seen_new = 0
    for _ in range(200):
        e = s.explain(None, ls, 0, 0.0)
        assert e["chosen"] == s.pick(None, ls, 0, 0.0)
        for c in e["candidates"]:
            if c["index"] == 4:
                seen_new += 1
                assert not c["sampled"] and c["ewma"] == -1.0
                assert e["median_ewma"] == pytest.approx(0.25)
                assert c["cost"] == pytest.approx(0.25)
    assert seen_new > 20
    # The median is over usable slots only: without slot 3 (0.9) it is 0.2.
    e = None
    for _ in range(200):
        e = s.explain(bytes([1, 1, 1, 0, 1]), ls, 0, 0.0)
        s.pick(bytes([1, 1, 1, 0, 1]), ls, 0, 0.0)
        if e["median_ewma"] is not None:
            break
    assert e["median_ewma"] == pytest.approx(0.2)


def test_ewma_new_backend_neither_starved_nor_flooded(sel):
    # A new slot with no samples, among backends with samples 0.05..0.2: it competes at
    # the median and, once it has samples, at its own (fast) latency.
    n = 4
    s = sel.PeakEWMA([1] * n, seed=5)
    ls = sel.LoadState(n)
    for i, lat in enumerate((0.05, 0.1, 0.2)):
        ls.release(i, lat, 0.0)
    first = [s.pick(None, ls, 0, 0.0) for _ in range(400)]
    share = first.count(3) / len(first)
    assert 0.1 < share < 0.6, share


def test_ewma_without_samples_balances_by_in_flight(sel):
    s = sel.PeakEWMA([1, 1, 1], seed=2)
    ls = sel.LoadState(3)
    for _ in range(30):
        ls.acquire(s.pick(None, ls, 0, 0.0))
    assert max(ls.in_flight(i) for i in range(3)) <= 12


# --------------------------------------------------------------------------- explain()

def test_explain_matches_pick_and_does_not_advance(sel):
    ls = sel.LoadState(4)
    ls.acquire(1), ls.release(2, 0.3, 1.0), ls.release(0, 0.1, 1.0)
    usable = bytes([1, 1, 0, 1])
    for s in (sel.RoundRobin([3, 1, 1, 2]), sel.LeastConnections([1, 1, 2, 1]),
              sel.WeightedRandom([1, 2, 3, 4], seed=9), sel.P2C([1, 2, 3, 4], seed=9),
              sel.PeakEWMA([1, 2, 3, 4], seed=9)):
        for _ in range(30):
            e = s.explain(usable, ls, 0, 2.0)
            assert e == s.explain(usable, ls, 0, 2.0)  # explaining advances nothing
            assert e["algorithm"] == s.algorithm
            assert e["chosen"] == s.pick(usable, ls, 0, 2.0)
            assert {"index": 2, "reason": "unusable"} in e["skipped"]


def test_explain_names_p2c_candidates_and_loads(sel):
    ls = sel.LoadState(3)
    for _ in range(4):
        ls.acquire(0)
    s = sel.P2C([1, 1, 1], seed=1)
    e = s.explain(None, ls)
    assert len(e["candidates"]) == 2
    assert len({c["index"] for c in e["candidates"]}) == 2
    assert e["chosen"] in {c["index"] for c in e["candidates"]}
    assert all(c["in_flight"] == ls.in_flight(c["index"]) for c in e["candidates"])
    assert e["chosen"] != 0


# --------------------------------------------------------------------------- determinism

_DETERMINISM = r"""
import importlib, json, sys
sel = importlib.import_module("fastlb._core.selectors" + sys.argv[1])
out = []
for cls in ("RoundRobin", "LeastConnections", "WeightedRandom", "P2C", "PeakEWMA"):
    C = getattr(sel, cls)
    s = C([3, 1, 2, 5, 1]) if cls in ("RoundRobin", "LeastConnections") else C([3, 1, 2, 5, 1], seed=1234)
    ls = sel.LoadState(5)
    row = []
    for k in range(300):
        usable = bytes((k * 7 + i) % 5 != 0 for i in range(5))
        i = s.pick(usable, ls, 0, k * 0.01)
        row.append(i)
        if i >= 0:
            ls.acquire(i)
        if k % 3 == 0:
            ls.release(k % 5, 0.01 * (k % 7), k * 0.01)
    out.append(row)
print(json.dumps(out))
"""


def test_picks_identical_across_processes_and_hash_seeds():
    results = {}
    suffixes = ["_py"] if os.environ.get("FASTLB_NO_EXTENSIONS") else ["_py", ""]
    for suffix in suffixes:
        for seed in ("0", "12345"):
            env = dict(os.environ, PYTHONHASHSEED=seed)
            out = subprocess.run([sys.executable, "-c", _DETERMINISM, suffix], cwd=str(ROOT), env=env,
                                 capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out.stderr
            results[(suffix, seed)] = out.stdout
    assert len(set(results.values())) == 1, "picks differ between processes, hash seeds or twins"
