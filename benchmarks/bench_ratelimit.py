"""Token buckets: ``TokenBuckets.take`` compiled vs pure twin (group "ratelimit").

Cases (parametrized twin x case):
  existing  — take on a key already held, rotating through 1,000 prebuilt keys (16-byte,
              like a client address or an API key id) in a 100,000-key table, so the cost
              is a real dict lookup and LRU move, not one hot entry. The clock advances
              0.1 ms a call and the rate (50/s, burst 100) keeps most calls allowed.
  new-key   — take on a key not held, in a full table (max_keys 100,000): the LRU key is
              evicted first. Keys come from a prebuilt list of 200,000 distinct keys.
  rejected  — take on an empty bucket (every call answers -1 with wait/reset set).

Each timed call runs N = 1,000 takes in a loop, so the per-take cost is the row's mean / 1,000
(it includes the loop's own ~10 ns per iteration); ``extra_info["ns_per_take"]`` has it.

Target (the rate-limiting issue): compiled ``take`` on an existing key <= 100 ns.

    python -m pytest benchmarks/bench_ratelimit.py --benchmark-only -q
"""

import pytest

pytest.importorskip("pytest_benchmark")

from fastlb._core import ratelimit_py  # noqa: E402

try:
    from fastlb._core import ratelimit as ratelimit_c
except ImportError:  # not built: the compiled rows are skipped, not silently replaced
    ratelimit_c = None

pytestmark = pytest.mark.benchmark(min_time=0.0002, warmup=True, disable_gc=True)

TWINS = ("cython", "python")
CASES = ("existing", "new-key", "rejected")
N = 1000
MAX_KEYS = 100_000


def module(twin):
    if twin == "python":
        return ratelimit_py
    if ratelimit_c is None:
        pytest.skip("compiled core not built")
    return ratelimit_c


def key(i):
    return b"%016x" % (i * 0x9E3779B1 & 0xFFFFFFFFFFFFFFFF)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("twin", TWINS)
def test_take(benchmark, twin, case):
    benchmark.group = "ratelimit"
    mod = module(twin)
    now = [1000.0]
    tb = mod.TokenBuckets(50.0, 100, MAX_KEYS)
    for i in range(MAX_KEYS):            # a full table
        tb.take(key(i), now[0])
    take = tb.take

    if case == "existing":
        keys = [key(i * 97) for i in range(N)]   # spread over the table
        assert all(tb.take(k, now[0]) >= -1 for k in keys) and len(tb) == MAX_KEYS

        def run():
            t = now[0] = now[0] + 0.1    # each key refills between rounds
            for k in keys:
                take(k, t)
    elif case == "new-key":
        fresh = [key(MAX_KEYS + i) for i in range(200_000)]
        pos = [0]

        def run():
            i = pos[0]
            if i + N > len(fresh):
                i = 0                    # wrapped: these keys were evicted long ago
            t = now[0]
            for k in fresh[i:i + N]:
                take(k, t)
            pos[0] = i + N
    else:
        tb = mod.TokenBuckets(1e-9, 1)
        take = tb.take
        keys = [key(i) for i in range(N)]
        for k in keys:
            take(k, 0.0)

        def run():
            for k in keys:
                take(k, 1.0)

    benchmark(run)
    benchmark.extra_info["ns_per_take"] = round(benchmark.stats.stats.mean / N * 1e9, 1)
    if case != "rejected":
        assert len(tb) == MAX_KEYS
