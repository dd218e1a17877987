"""Twin parity: the compiled selectors make exactly the pure twin's picks (hypothesis, bounded).

Random weights, seeds, usable masks, loads, latency samples and clocks are fed to both twins
in lockstep; every pick, every in-flight count and every EWMA reading must be identical
(EWMA arithmetic is the same IEEE double operations in the same order in both).
"""

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import load_twin

pytestmark = pytest.mark.skipif(bool(os.environ.get("FASTLB_NO_EXTENSIONS")),
                                reason="FASTLB_NO_EXTENSIONS is set: compiled twin not under test")

SELECTORS = ("RoundRobin", "LeastConnections", "WeightedRandom", "P2C", "PeakEWMA")


@st.composite
def scenarios(draw):
    n = draw(st.integers(1, 12))
    weights = draw(st.lists(st.integers(1, 20), min_size=n, max_size=n))
    seed = draw(st.integers(0, 2**64 - 1))
    # Each step: usable mask, then an optional release (slot, latency or -1, dt).
    steps = draw(st.lists(
        st.tuples(
            st.lists(st.booleans(), min_size=n, max_size=n),
            st.integers(0, n - 1),
            st.one_of(st.just(-1.0), st.floats(0.0, 5.0)),
            st.floats(0.0, 3.0),
            st.booleans(),
        ),
        min_size=1, max_size=60,
    ))
    decay = draw(st.floats(0.5, 30.0))
    return n, weights, seed, decay, steps


@pytest.mark.parametrize("name", SELECTORS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sc=scenarios())
def test_selector_twins_agree(name, sc):
    n, weights, seed, decay, steps = sc
    py = load_twin("selectors", "python")
    cy = load_twin("selectors", "cython")
    args = (weights,) if name in ("RoundRobin", "LeastConnections") else (weights, seed)
    a, b = getattr(py, name)(*args), getattr(cy, name)(*args)
    la, lb = py.LoadState(n, decay), cy.LoadState(n, decay)
    now = 0.0
    for mask, slot, latency, dt, release in steps:
        now += dt
        usable = bytes(mask)
        pa, pb = a.pick(usable, la, 0, now), b.pick(usable, lb, 0, now)
        assert pa == pb
        ea, eb = a.explain(usable, la, 0, now), b.explain(usable, lb, 0, now)
        assert ea == eb
        if pa >= 0:
            la.acquire(pa)
            lb.acquire(pb)
        if release:
            la.release(slot, latency, now)
            lb.release(slot, latency, now)
        assert la.total_in_flight == lb.total_in_flight
        assert [la.in_flight(i) for i in range(n)] == [lb.in_flight(i) for i in range(n)]
        assert [la.ewma(i, now) for i in range(n)] == [lb.ewma(i, now) for i in range(n)]


@settings(max_examples=40, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from(["acquire", "release", "resize", "reset"]),
                              st.integers(0, 15), st.floats(-1.0, 2.0)), max_size=80))
def test_load_state_twins_agree(ops):
    py = load_twin("selectors", "python")
    cy = load_twin("selectors", "cython")
    la, lb = py.LoadState(4, 2.0), cy.LoadState(4, 2.0)
    now = 0.0
    for op, i, x in ops:
        now += 0.25
        if op == "resize":
            la.resize(i)
            lb.resize(i)
            continue
        results = []
        for ls in (la, lb):
            try:
                if op == "acquire":
                    ls.acquire(i)
                elif op == "release":
                    ls.release(i, x, now)
                else:
                    ls.reset_slot(i)
                results.append(None)
            except IndexError:
                results.append("IndexError")
        assert results[0] == results[1]
        assert la.size == lb.size and la.total_in_flight == lb.total_in_flight
        assert [(la.in_flight(k), la.ewma(k, now)) for k in range(la.size)] == \
               [(lb.in_flight(k), lb.ewma(k, now)) for k in range(lb.size)]
