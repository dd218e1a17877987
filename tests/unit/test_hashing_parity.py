"""Twin parity for the hash kernels (hypothesis, bounded): the compiled md5 is hashlib's, and
the compiled ring/table are built and walked exactly as the pure twin's."""

import hashlib
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import load_twin

pytestmark = pytest.mark.skipif(bool(os.environ.get("FASTLB_NO_EXTENSIONS")),
                                reason="FASTLB_NO_EXTENSIONS is set: compiled twin not under test")

PRIMES = [11, 101, 257, 1009, 4099]


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300))
def test_md5_matches_hashlib(data):
    cy = load_twin("hashing", "cython")
    py = load_twin("hashing", "python")
    assert cy.md5(data) == hashlib.md5(data).digest() == py.md5(data)
    assert cy.key_hash(data) == py.key_hash(data)


@st.composite
def scenarios(draw):
    n = draw(st.integers(1, 10))
    names = draw(st.lists(st.text(min_size=1, max_size=12), min_size=n, max_size=n))
    weights = draw(st.lists(st.integers(1, 4), min_size=n, max_size=n))
    factor = draw(st.sampled_from([0.0, 1.0, 1.25, 2.0]))
    size = draw(st.sampled_from([p for p in PRIMES if p >= 7 * n]))
    steps = draw(st.lists(
        st.tuples(st.lists(st.booleans(), min_size=n, max_size=n), st.integers(0, 2**32 - 1),
                  st.booleans(), st.integers(0, n - 1)),
        min_size=1, max_size=40,
    ))
    return names, weights, factor, size, steps


@pytest.mark.parametrize("kind", ["KetamaRing", "Maglev"])
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sc=scenarios())
def test_hash_selector_twins_agree(kind, sc):
    names, weights, factor, size, steps = sc
    cy, py = load_twin("hashing", "cython"), load_twin("hashing", "python")
    scy, spy = load_twin("selectors", "cython"), load_twin("selectors", "python")
    if kind == "KetamaRing":
        a, b = py.KetamaRing(names, weights, factor), cy.KetamaRing(names, weights, factor)
        assert a.points() == b.points()
    else:
        a, b = py.Maglev(names, weights, size, factor), cy.Maglev(names, weights, size, factor)
        assert a.table() == b.table()
    n = len(names)
    la, lb = spy.LoadState(n), scy.LoadState(n)
    for mask, key, release, slot in steps:
        usable = bytes(mask)
        pa, pb = a.pick(usable, la, key), b.pick(usable, lb, key)
        assert pa == pb
        assert a.pick(None, la, key) == b.pick(None, lb, key)
        assert a.explain(usable, la, key) == b.explain(usable, lb, key)
        if pa >= 0:
            la.acquire(pa)
            lb.acquire(pb)
        if release:
            la.release(slot, -1.0, 0.0)
            lb.release(slot, -1.0, 0.0)
