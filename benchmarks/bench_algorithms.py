"""Backend selection: one pick per algorithm, compiled vs pure twin, 3/30/300 backends.

groups "pick-<algorithm>" (round_robin, least_connections, random, p2c, ewma,
consistent_hash, maglev), parametrized twin x pool size: one ``pick()`` exactly as
balancer.Pool calls it — positional (usable bytearray, LoadState, key, now), every backend
usable, a LoadState with 0..3 requests in flight per backend and a latency sample on each
(so least_connections/p2c/ewma compare real numbers and ewma pays its exp()).
The hash selectors get a precomputed 32-bit key here.

group "hash-lookup": ring and Maglev lookups INCLUDING MD5 of a 32-byte key, i.e.
``pick(usable, load, key_hash(key), now)`` — what a consistent_hash/maglev pool does per
request. The wrapper function costs one Python frame (~30 ns) and is included.

group "build": constructing a ring / Maglev table for 30 backends (what a membership
change costs).

Targets (DESIGN brief): compiled pick <= 150 ns for round_robin, p2c, least_connections at
30 backends; hash-lookup <= 400 ns; every compiled row >= 10x its pure twin.

    python -m pytest benchmarks/bench_algorithms.py --benchmark-only -q
"""

import random

import pytest

pytest.importorskip("pytest_benchmark")

from fastlb._core import hashing_py, selectors_py  # noqa: E402

try:
    from fastlb._core import hashing as hashing_c
    from fastlb._core import selectors as selectors_c
except ImportError:  # not built: the compiled rows are skipped, not silently replaced
    hashing_c = selectors_c = None

# Each timed round runs the pick at least 200 us worth of times: a sub-microsecond call
# timed one per round would mostly measure the timer (rows came out quantized to 10 ns).
pytestmark = pytest.mark.benchmark(min_time=0.0002, warmup=True, disable_gc=True)

SIZES = (3, 30, 300)
TWINS = ("cython", "python")
ALGORITHMS = ("round_robin", "least_connections", "random", "p2c", "ewma", "consistent_hash", "maglev")
NOW = 1000.0


def modules(twin):
    if twin == "python":
        return selectors_py, hashing_py
    if selectors_c is None:
        pytest.skip("compiled core not built")
    return selectors_c, hashing_c


def names(size):
    return ["10.%d.%d.%d:8080" % (i // 65536, (i // 256) % 256, i % 256) for i in range(size)]


def build(algorithm, twin, size):
    sel, hsh = modules(twin)
    rng = random.Random(size)
    weights = [rng.choice((1, 1, 1, 2, 5)) for _ in range(size)]
    load = sel.LoadState(size, 10.0)
    for i in range(size):
        load.release(i, 0.005 + rng.random() * 0.05, NOW - rng.random() * 5)
        for _ in range(rng.randint(0, 3)):
            load.acquire(i)
    if algorithm == "round_robin":
        s = sel.RoundRobin(weights)
    elif algorithm == "least_connections":
        s = sel.LeastConnections(weights)
    elif algorithm == "random":
        s = sel.WeightedRandom(weights, seed=1)
    elif algorithm == "p2c":
        s = sel.P2C(weights, seed=1)
    elif algorithm == "ewma":
        s = sel.PeakEWMA(weights, seed=1)
    elif algorithm == "consistent_hash":
        s = hsh.KetamaRing(names(size), weights)
    else:
        s = hsh.Maglev(names(size), weights, 65537 if size * 7 <= 65537 else 655373)
    usable = bytearray(b"\x01" * size)
    return s, usable, load, hsh


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("twin", TWINS)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_pick(benchmark, algorithm, twin, size):
    benchmark.group = "pick-" + algorithm
    s, usable, load, _ = build(algorithm, twin, size)
    key = 0x9E3779B9  # a fixed 32-bit key hash for the hash selectors
    benchmark(s.pick, usable, load, key, NOW)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("twin", TWINS)
@pytest.mark.parametrize("algorithm", ("consistent_hash", "maglev"))
def test_hash_lookup(benchmark, algorithm, twin, size):
    benchmark.group = "hash-lookup"
    s, usable, load, hsh = build(algorithm, twin, size)
    key = b"sess-0123456789abcdef0123456789a"  # 32 bytes: a session id / API key
    assert len(key) == 32
    pick = s.pick
    key_hash = hsh.key_hash

    def lookup():
        return pick(usable, load, key_hash(key), NOW)

    benchmark(lookup)


@pytest.mark.parametrize("twin", TWINS)
@pytest.mark.parametrize("algorithm", ("consistent_hash", "maglev"))
def test_build(benchmark, algorithm, twin):
    benchmark.group = "build"
    _, hsh = modules(twin)
    ns, ws = names(30), [1] * 30
    if algorithm == "consistent_hash":
        benchmark.pedantic(hsh.KetamaRing, (ns, ws), rounds=5, iterations=1)
    else:
        benchmark.pedantic(hsh.Maglev, (ns, ws), rounds=5, iterations=1)
