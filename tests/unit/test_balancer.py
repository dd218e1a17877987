"""Pools: selection through the usable flags, keys and fallback, rebuilds that keep live load."""

import pytest

from fastlb import config, health
from fastlb.balancer import Pool


def make_pool(algorithm="round_robin", weights=(1, 1, 1), **extra):
    body = {"algorithm": algorithm,
            "backends": [{"address": "127.0.0.1:%d" % (9001 + i), "weight": w} for i, w in enumerate(weights)]}
    body.update(extra)
    cfg = config.from_dict({"listeners": [{"bind": "127.0.0.1:0", "pool": "p"}], "pools": {"p": body}})
    return Pool(cfg.pool("p"), seed=7)


def names(pool, n, key=None):
    return [pool.pick(key).address[-4:] for _ in range(n)]


def test_weight_change_rebuilds_and_keeps_in_flight():
    pool = make_pool("least_connections")
    b0, b1, b2 = pool.backends
    for _ in range(3):
        pool.started(b0)
    pool.set_weight(b1, 5)
    assert pool.load.in_flight(0) == 3  # live load survived the rebuild
    assert pool.backend_dict(b1)["weight"] == 5
    # least connections relative to weight: b0 busy, b1 weighs 5 -> b1 and b2 share the new work
    picks = []
    for _ in range(12):
        b = pool.pick()
        pool.started(b)
        picks.append(b.index)
    assert 0 not in picks[:2]
    assert picks.count(1) > picks.count(2)


def test_round_robin_weight_change():
    pool = make_pool()
    assert sorted(names(pool, 30)) == sorted(["9001"] * 10 + ["9002"] * 10 + ["9003"] * 10)
    pool.set_weight(pool.backends[0], 4)
    got = names(pool, 60)
    assert got.count("9001") == 40 and got.count("9002") == 10
    with pytest.raises(ValueError):
        pool.set_weight(pool.backends[0], 0)


def test_disabled_backend_is_never_picked_and_none_left_means_none():
    pool = make_pool()
    assert health.transition(pool, pool.backends[1], "disable", 1.0, "test") == "disabled"
    assert pool.usable[1] == 0
    assert "9002" not in names(pool, 20)
    for b in pool.backends:
        health.transition(pool, b, "disable", 2.0, "test")
    assert pool.pick() is None


def test_hash_pool_key_and_fallback():
    pool = make_pool("consistent_hash", hash_key="header:X-User")
    assert len({pool.pick(b"alice").index for _ in range(10)}) == 1
    assert sorted(names(pool, 9)) == sorted(["9001", "9002", "9003"] * 3)  # no key: round robin
    first = pool.pick(b"alice")
    retry = pool.pick_excluding({first.index}, b"alice")
    assert retry is not None and retry.index != first.index
    decision = pool.explain(b"alice")
    assert decision["backend"] == first.address and decision["key"] == "alice"
    assert "round robin fallback" in pool.explain(None)["note"]


def test_ewma_pool_measures_latency():
    pool = make_pool("ewma")
    b = pool.pick(None, 1.0)
    pool.started(b)
    pool.finished(b, 0.25, 1.0)
    assert pool.backend_dict(b, 1.0)["ewma_seconds"] == pytest.approx(0.25)
    assert pool.backend_dict(pool.backends[(b.index + 1) % 3], 1.0)["ewma_seconds"] is None
