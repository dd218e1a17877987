"""Smooth weighted round robin: both twins, against nginx's reference sequence."""

import random

import pytest

from tests.conftest import load_twin


@pytest.fixture
def wrr(twin):
    return load_twin("wrr", twin)


def picks(sel, n, usable=None):
    return [sel.pick(usable) for _ in range(n)]


def test_nginx_reference_sequence(wrr):
    # nginx documents weights 5,1,1 -> a a b a c a a (ngx_http_upstream_round_robin.c).
    sel = wrr.SmoothWRR([5, 1, 1])
    assert "".join("abc"[i] for i in picks(sel, 7)) == "aabacaa"


@pytest.mark.parametrize("weights", [[1], [1, 1, 1], [3, 2, 1], [10, 1], [7, 7, 2, 1, 5]])
def test_exact_shares_over_each_cycle(wrr, weights):
    sel = wrr.SmoothWRR(weights)
    cycle = sum(weights)
    for _ in range(5):
        got = picks(sel, cycle)
        assert [got.count(i) for i in range(len(weights))] == weights


def test_unusable_peers_are_skipped_and_shares_stay_exact(wrr):
    sel = wrr.SmoothWRR([2, 1, 1])
    usable = bytearray([1, 0, 1])
    got = picks(sel, 30, usable)
    assert 1 not in got
    assert got.count(0) == 20 and got.count(2) == 10


def test_no_usable_peer_returns_minus_one(wrr):
    sel = wrr.SmoothWRR([1, 1])
    assert sel.pick(bytearray(2)) == -1


def test_invalid_weights_rejected(wrr):
    with pytest.raises(ValueError):
        wrr.SmoothWRR([])
    with pytest.raises(ValueError):
        wrr.SmoothWRR([1, 0])


def test_twins_agree_on_random_sequences():
    py = load_twin("wrr", "python")
    cy = load_twin("wrr", "cython")
    rng = random.Random(7)
    for _ in range(50):
        weights = [rng.randint(1, 9) for _ in range(rng.randint(1, 12))]
        a, b = py.SmoothWRR(weights), cy.SmoothWRR(weights)
        for _ in range(200):
            usable = bytearray(rng.random() < 0.8 for _ in weights)
            assert a.pick(usable) == b.pick(usable)
