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

groups "pool-<algorithm>" (every algorithm, ip_hash included), 30 backends: one request's
selection exactly as the proxy makes it, through ``balancer.Pool``: ``pool.pick(key, now)``
(the ewma pool passes the clock, as proxy.py does), ``pool.started(backend)``, and the
oldest of 16 requests in flight ``pool.finished(backend, latency, now)`` with a varied
latency, so the load the selectors read changes on every call. Hash pools get a different
key each call (4,096 client addresses for ip_hash, session ids for consistent_hash and
maglev). ``Pool`` uses the core the process loaded (``fastlb._core``, all or nothing): the
``core`` column says which; run with ``FASTLB_NO_EXTENSIONS=1`` for the pure-twin rows.

Targets (DESIGN brief): compiled pick <= 150 ns for round_robin, p2c, least_connections at
30 backends; hash-lookup <= 400 ns; every compiled row >= 10x its pure twin.

    python -m pytest benchmarks/bench_algorithms.py --benchmark-only -q
    FASTLB_NO_EXTENSIONS=1 python -m pytest benchmarks/bench_algorithms.py --benchmark-only -q -k pool
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


# -------------------------------------------------------------------- through balancer.Pool
POOL_ALGORITHMS = ("round_robin", "least_connections", "random", "p2c", "ewma", "ip_hash",
                   "consistent_hash", "maglev")
IN_FLIGHT = 16


def _pool(algorithm, size=30):
    from fastlb.balancer import Pool
    from fastlb.model import Address, BackendSpec, PoolSpec

    rng = random.Random(size)
    backends = tuple(
        BackendSpec(Address("10.0.%d.%d" % (i // 256, i % 256), 8080), rng.choice((1, 1, 1, 2, 5)))
        for i in range(size))
    hash_key = {"ip_hash": ("ip", ""), "consistent_hash": ("header", "x-session-id"),
                "maglev": ("cookie", "sid")}.get(algorithm)
    return Pool(PoolSpec(name="bench", backends=backends, algorithm=algorithm, hash_key=hash_key), seed=1)


@pytest.mark.parametrize("algorithm", POOL_ALGORITHMS)
def test_pool_request(benchmark, algorithm):
    from fastlb import _core

    benchmark.group = "pool-" + algorithm
    benchmark.extra_info["core"] = _core.IMPLEMENTATION
    pool = _pool(algorithm)
    rng = random.Random(7)
    if algorithm == "ip_hash":
        keys = [("198.51.%d.%d" % (i // 256, i % 256)).encode() for i in range(4096)]
    elif pool.key_kind:
        keys = [b"sess-%032x" % rng.getrandbits(128) for _ in range(4096)]
    else:
        keys = [None] * 4096
    latencies = [0.002 + rng.random() * 0.08 for _ in range(4096)]
    ring = [None] * IN_FLIGHT  # the requests in flight, oldest finished first
    state = [0, NOW]  # request number, clock
    clocked = pool.measure_latency
    pick, started, finished = pool.pick, pool.started, pool.finished

    def one_request():
        n = state[0]
        now = state[1] = state[1] + 0.0005
        slot = n % IN_FLIGHT
        old = ring[slot]
        if old is not None:
            finished(old, latencies[n & 4095], now)
        backend = pick(keys[n & 4095], now) if clocked else pick(keys[n & 4095])
        started(backend)
        ring[slot] = backend
        state[0] = n + 1

    for _ in range(IN_FLIGHT * 4):  # fill the window: live load from the first timed call
        one_request()
    benchmark(one_request)
    # every backend took part (the keys and the load really vary)
    assert sum(1 for b in pool.backends if b.requests_total) >= len(pool.backends) // 2
