"""``fastlb simulate``: every balancing algorithm on the same simulated pool.

A deterministic discrete-event simulation (simulated time only: no asyncio, no
wall clock) of one pool in front of N backends. The workload is drawn once from
seeded streams and replayed for every algorithm, so the differences in the
report come from the algorithm, not from the dice:

- arrivals: a Poisson process (exponential inter-arrival times) at ``rate``;
- request keys and client addresses: K of each, uniform or Zipf(s) popular,
  one independent draw per request (keys feed consistent_hash and maglev,
  addresses feed ip_hash);
- service times: one unit draw per request (mean 1) from the chosen
  distribution, scaled by the backend that ends up serving it
  (``latency × slow factor``), so request i is equally "big" whichever
  algorithm sends it where.

Each backend is a FIFO queue in front of ``concurrency × weight`` servers
(weights describe capacity, as the algorithms guide says: "a backend with twice
the cores gets weight: 2"; a ``--slow`` factor is the degradation the weights do
not know about). A request that finds every server busy waits; its latency is
queueing + service. The balancer's view is the one fastlb has: in-flight
requests per backend (``LoadState.acquire`` on dispatch, ``release`` on the
response, queued requests included, as a proxy cannot see a backend's queue)
and the EWMA fed with each observed latency at its completion time.

Membership changes mid-run follow what the pool does: a removal clears the
backend's ``usable`` byte (its queued requests still complete); an addition
rebuilds the selector over N+1 names and weights (live load state is kept and
resized, Pingora's build/update split). For hash algorithms the report gives
the fraction of distinct keys (client addresses for ip_hash) whose backend
changed at each event, measured over all K keys with the selector's own
``pick`` before and after, and whether every moved key moved from the removed
(or to the added) backend, the minimal-disruption property of consistent
hashing (Karger et al. 1997) and Maglev (Eisenbud et al., NSDI 2016 §3.4).

Invariants: same ``Scenario`` -> same ``Report`` and byte-identical text and
JSON (no set/dict iteration order, no hash(), no clock reaches the output);
all randomness comes from ``random.Random`` instances seeded with strings
derived from ``Scenario.seed`` (string seeds are hashed with SHA-512 by
``random``, independent of PYTHONHASHSEED). Compiled and pure cores give the
same report (the kernels' parity is tested).
"""

import bisect
import heapq
import json
import math
import sys
from collections import deque
from dataclasses import asdict, dataclass, field
from itertools import accumulate
from random import Random

from . import _core
from .model import ALGORITHMS as ALGORITHM_TABLE

__all__ = [
    "ALGORITHMS",
    "HASH_ALGORITHMS",
    "DISTRIBUTIONS",
    "Scenario",
    "Workload",
    "AlgorithmResult",
    "Report",
    "simulate",
    "format_report",
    "report_json",
    "add_arguments",
    "run_command",
]

# The config names (model.ALGORITHMS), in the order the report prints them:
# oblivious, load-aware, then hash-based.
ALGORITHMS = (
    "round_robin",
    "least_connections",
    "random",
    "p2c",
    "ewma",
    "ip_hash",
    "consistent_hash",
    "maglev",
)
HASH_ALGORITHMS = ("ip_hash", "consistent_hash", "maglev")
# --hash-balance-factor applies where the pool's hash_balance_factor does: the
# algorithm table's "bounded" capability (model.ALGORITHMS, read as data).
BOUNDED_LOAD_ALGORITHMS = tuple(a for a in ALGORITHMS if ALGORITHM_TABLE.get(a, {}).get("bounded"))

# Unit service-time distributions, each with mean 1 (multiplied by --latency-ms).
#   exp        exponential: the M/M/c textbook case; p99 = 4.6 x mean.
#   lognormal  sigma = 1.0, mu = -sigma^2/2 so the mean is 1; p99 = 6.2 x, p999 = 13 x mean.
#   pareto     shape alpha = 2.0 (variance infinite: the heavy tail), scale (alpha-1)/alpha = 0.5
#              so the mean is 1; p99 = 5 x, p999 = 16 x mean.
#   const      every request costs exactly the mean (isolates queueing from service variance).
DISTRIBUTIONS = ("exp", "lognormal", "pareto", "const")
LOGNORMAL_SIGMA = 1.0
PARETO_ALPHA = 2.0

# Default offered load when --rate is not given: 70% of the pool's capacity
# (slow factors included), busy enough for queueing to show, stable for a
# balancer that routes by load.
DEFAULT_UTILISATION = 0.70

# Weight of a backend added mid-run (--add-at): a fresh instance of the default size.
ADDED_WEIGHT = 1

# Finagle's default decay time for peak-EWMA is 10 s (LoadState's default too).
EWMA_DECAY_S = 10.0

_INF = float("inf")


def backend_name(i):
    """Address-like name of simulated backend i: the string the hash rings hash (as a pool's addresses)."""
    return "10.0.%d.%d:8080" % divmod(i + 1, 256)


def client_address(i):
    """Address of simulated client i (ip_hash keys on it): 10.x.y.z from i + 1."""
    i += 1
    return "10.%d.%d.%d" % ((i >> 16) & 255, (i >> 8) & 255, i & 255)


def request_key(i):
    """The request key of simulated key i (e.g. a user or tenant id a consistent_hash pool keys on)."""
    return "key-%d" % i


@dataclass(frozen=True)
class Scenario:
    """Everything that determines a simulation run (and hence its report)."""

    backends: int = 5
    weights: tuple = ()  # one per backend; empty = all 1
    slow: tuple = ()  # ((index, factor), ...): backend index serves `factor` times slower
    latency_ms: float = 20.0  # mean service time of a normal backend
    latency_dist: str = "exp"
    concurrency: int = 8  # servers per weight unit of a backend
    rate: float = None  # requests per second; None = DEFAULT_UTILISATION x capacity
    requests: int = 200_000
    keys: int = 10_000  # distinct request keys, and distinct client addresses
    zipf: float = 1.1  # Zipf exponent s of key/client popularity; 0 = uniform
    remove_at: float = None  # fraction of the run at which backend N-1 is removed
    add_at: float = None  # fraction of the run at which backend N is added
    algorithms: tuple = ALGORITHMS
    hash_balance_factor: float = None  # bounded loads (c) for consistent_hash and maglev
    seed: int = 1

    def validate(self):
        """Raise ValueError naming the flag when the scenario makes no sense."""
        if self.backends < 1:
            raise ValueError("--backends must be >= 1, got %d" % self.backends)
        if self.backends > 1000:
            raise ValueError("--backends must be <= 1000, got %d" % self.backends)
        if self.weights:
            if len(self.weights) != self.backends:
                raise ValueError("--weights gives %d weights for %d backends (--backends)"
                                 % (len(self.weights), self.backends))
            for w in self.weights:
                if w < 1:
                    raise ValueError("--weights must all be >= 1, got %d" % w)
        seen = set()
        for index, factor in self.slow:
            if not 0 <= index < self.backends:
                raise ValueError("--slow %d:%g: backend index out of range 0..%d"
                                 % (index, factor, self.backends - 1))
            if index in seen:
                raise ValueError("--slow %d given twice" % index)
            seen.add(index)
            if not factor > 0 or math.isinf(factor):
                raise ValueError("--slow %d:%g: factor must be a positive number" % (index, factor))
        if not (self.latency_ms > 0 and math.isfinite(self.latency_ms)):
            raise ValueError("--latency-ms must be a positive number, got %g" % self.latency_ms)
        if self.latency_dist not in DISTRIBUTIONS:
            raise ValueError("--latency-dist must be one of %s, got %r"
                             % (", ".join(DISTRIBUTIONS), self.latency_dist))
        if self.concurrency < 1:
            raise ValueError("--concurrency must be >= 1, got %d" % self.concurrency)
        if self.rate is not None and not (self.rate > 0 and math.isfinite(self.rate)):
            raise ValueError("--rate must be a positive number of requests per second, got %g" % self.rate)
        if self.requests < 1:
            raise ValueError("--requests must be >= 1, got %d" % self.requests)
        if not 1 <= self.keys <= 1_000_000:
            raise ValueError("--keys must be in 1..1000000, got %d" % self.keys)
        if not (self.zipf >= 0 and math.isfinite(self.zipf)):
            raise ValueError("--zipf must be >= 0 (0 = uniform), got %g" % self.zipf)
        for flag, value in (("--remove-at", self.remove_at), ("--add-at", self.add_at)):
            if value is not None and not 0 < value < 1:
                raise ValueError("%s must be a fraction of the run strictly between 0 and 1, got %g"
                                 % (flag, value))
        if self.remove_at is not None and self.backends < 2:
            raise ValueError("--remove-at needs at least 2 backends (one must remain)")
        if not self.algorithms:
            raise ValueError("--algorithms: give at least one algorithm")
        for name in self.algorithms:
            if name not in ALGORITHMS:
                raise ValueError("--algorithms: unknown algorithm %r (choose from %s)"
                                 % (name, ", ".join(ALGORITHMS)))
        if len(set(self.algorithms)) != len(self.algorithms):
            raise ValueError("--algorithms: an algorithm is listed twice")
        if self.hash_balance_factor is not None and not (
            self.hash_balance_factor > 1 and math.isfinite(self.hash_balance_factor)
        ):
            raise ValueError("--hash-balance-factor must be > 1 (e.g. 1.25: no backend above 125%% of "
                             "the mean load), got %g" % self.hash_balance_factor)

    # Derived values -----------------------------------------------------------

    def weight_list(self):
        return list(self.weights) if self.weights else [1] * self.backends

    def factor_list(self):
        factors = [1.0] * self.backends
        for index, factor in self.slow:
            factors[index] = float(factor)
        return factors

    def capacity(self):
        """Requests per second the initial pool serves at 100% busy servers."""
        mean_s = self.latency_ms / 1000.0
        return sum(self.concurrency * w / (mean_s * f) for w, f in zip(self.weight_list(), self.factor_list()))

    def offered_rate(self):
        return self.rate if self.rate is not None else DEFAULT_UTILISATION * self.capacity()

    def event_index(self, fraction):
        """Index of the first request that sees a membership change at `fraction` of the run."""
        return None if fraction is None else min(self.requests - 1, int(fraction * self.requests))


def _stream(seed, name):
    # One independent, reproducible stream per purpose: changing --zipf does not
    # change arrivals, and the selectors' seeds do not depend on the workload.
    return Random("fastlb-simulate:%d:%s" % (seed, name))


def _popular_draws(rng, values, s, n):
    """n draws from ``values``: uniform (s = 0) or Zipf, P(values[i]) proportional to 1/(i+1)^s.

    Inverse-CDF sampling over the cumulative weights (bisect): exact for any s >= 0,
    O(log K) a draw, and the most popular item is values[0].
    """
    rnd = rng.random
    k = len(values)
    if s == 0:
        return [values[int(rnd() * k)] for _ in range(n)]
    cum = []
    total = 0.0
    for i in range(1, k + 1):
        total += i ** -s
        cum.append(total)
    cum[-1] = _INF  # a draw of exactly `total` (rounding) lands on the last item
    br = bisect.bisect_right
    return [values[br(cum, rnd() * total)] for _ in range(n)]


def _unit_draws(rng, dist, n):
    """n service times in units of the mean (mean 1), by inversion where there is a closed form.

    The formulas are random.expovariate's and random.paretovariate's, inlined: a list
    comprehension over rng.random is several times faster than a method call per draw.
    """
    rnd = rng.random
    if dist == "exp":
        log = math.log
        return [-log(1.0 - rnd()) for _ in range(n)]
    if dist == "lognormal":
        mu = -LOGNORMAL_SIGMA * LOGNORMAL_SIGMA / 2.0
        exp = math.exp
        normal = rng.normalvariate
        return [exp(normal(mu, LOGNORMAL_SIGMA)) for _ in range(n)]
    if dist == "pareto":
        scale = (PARETO_ALPHA - 1.0) / PARETO_ALPHA
        inv_alpha = 1.0 / PARETO_ALPHA
        return [scale / (1.0 - rnd()) ** inv_alpha for _ in range(n)]
    if dist == "const":
        return [1.0] * n
    raise ValueError(dist)


class Workload:
    """The per-request draws shared by every algorithm (lists: indexing them is the fastest access)."""

    __slots__ = ("arrival", "service", "key", "client", "key_hashes", "client_hashes", "rate")

    def __init__(self, sc):
        n = sc.requests
        self.rate = rate = sc.offered_rate()
        # Poisson arrivals: exponential gaps of mean 1/rate, accumulated.
        rnd = _stream(sc.seed, "arrivals").random
        log = math.log
        arrival = list(accumulate([-log(1.0 - rnd()) / rate for _ in range(n)]))
        arrival.append(_INF)  # sentinel: the event loop drains completions after the last arrival
        self.arrival = arrival

        mean_s = sc.latency_ms / 1000.0
        self.service = [u * mean_s for u in _unit_draws(_stream(sc.seed, "service"), sc.latency_dist, n)]

        # libketama points (uint32 from MD5) of every distinct key and client address.
        key_hash = _core.key_hash
        self.key_hashes = [key_hash(request_key(i).encode("ascii")) for i in range(sc.keys)]
        self.client_hashes = [key_hash(client_address(i).encode("ascii")) for i in range(sc.keys)]
        self.key = _popular_draws(_stream(sc.seed, "keys"), self.key_hashes, sc.zipf, n)
        self.client = _popular_draws(_stream(sc.seed, "clients"), self.client_hashes, sc.zipf, n)


def _selector_seed(sc, algorithm, generation):
    return _stream(sc.seed, "selector:%s:%d" % (algorithm, generation)).getrandbits(32)


def build_selector(sc, algorithm, names, weights, generation=0):
    """The selector the pool would build for `algorithm` (generation: rebuild count, for the seed)."""
    if algorithm == "round_robin":
        return _core.RoundRobin(weights)
    if algorithm == "least_connections":
        return _core.LeastConnections(weights)
    if algorithm == "random":
        return _core.WeightedRandom(weights, seed=_selector_seed(sc, algorithm, generation))
    if algorithm == "p2c":
        return _core.P2C(weights, seed=_selector_seed(sc, algorithm, generation))
    if algorithm == "ewma":
        return _core.PeakEWMA(weights, seed=_selector_seed(sc, algorithm, generation))
    bf = 0.0
    if sc.hash_balance_factor is not None and algorithm in BOUNDED_LOAD_ALGORITHMS:
        bf = sc.hash_balance_factor
    if algorithm in ("ip_hash", "consistent_hash"):
        # The same libketama ring; they differ in the key (client address vs request key).
        return _core.KetamaRing(names, weights, balance_factor=bf)
    if algorithm == "maglev":
        return _core.Maglev(names, weights, balance_factor=bf)
    raise ValueError("unknown algorithm %r" % algorithm)


def _key_map(selector, usable, hashes):
    # The key's home backend. An idle LoadState makes a bounded-load selector
    # answer without the bound (nothing is over it), which depends on the
    # moment's load, not on membership.
    idle = _core.LoadState(selector.size)
    pick = selector.pick
    return [pick(usable, idle, h, 0.0) for h in hashes]


def _remap(before, after, changed, direction):
    """Compare two key->backend maps around a change of backend `changed`."""
    moved = 0
    minimal = True
    for a, b in zip(before, after):
        if a != b:
            moved += 1
            if (a if direction == "from" else b) != changed:
                minimal = False
    # Keys that had to move: those on the removed backend / those the added one now owns.
    needed = sum(1 for x in (before if direction == "from" else after) if x == changed)
    return {
        "backend": changed,
        "keys": len(before),
        "moved": moved,
        "fraction": moved / len(before),
        "needed": needed,
        "only_changed_backend": minimal,
    }


@dataclass
class AlgorithmResult:
    algorithm: str
    served: int
    rejected: int  # no usable backend (503); 0 unless every backend is gone
    requests: list  # per backend
    share: list  # per backend, fraction of served
    peak_in_flight: list  # per backend
    max_over_fair: float  # max over backends of requests / fair share (weight x time in pool)
    latency_ms: dict  # p50, p99, p999, mean, max
    remap_removal: dict = None
    remap_addition: dict = None


@dataclass
class Report:
    scenario: Scenario
    capacity_rps: float
    rate_rps: float
    backends_total: int
    weights: list  # of every backend that ever existed
    factors: list
    results: list = field(default_factory=list)


def _percentile(sorted_values, q):
    # Nearest rank: the smallest value with at least q of the sample at or below it.
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


class _Pool:
    """The simulated pool around one selector: backend queues and the balancer's live state."""

    __slots__ = ("sc", "algorithm", "names", "weights", "selector", "load", "usable", "servers", "scale",
                 "busy", "queues", "inflight", "peak", "count", "generation")

    def __init__(self, sc, algorithm):
        self.sc = sc
        self.algorithm = algorithm
        self.weights = sc.weight_list()
        nb = len(self.weights)
        self.names = [backend_name(i) for i in range(nb)]
        self.generation = 0
        self.selector = build_selector(sc, algorithm, self.names, self.weights)
        self.load = _core.LoadState(nb, decay=EWMA_DECAY_S)
        self.usable = bytearray(b"\x01" * nb)
        self.servers = [sc.concurrency * w for w in self.weights]  # weights describe capacity
        self.scale = sc.factor_list()  # service time multiplier (--slow)
        self.busy = [0] * nb  # servers busy
        self.queues = [deque() for _ in range(nb)]  # requests waiting for a server (FIFO)
        self.inflight = [0] * nb  # dispatched, not yet completed (= LoadState's in-flight)
        self.peak = [0] * nb
        self.count = [0] * nb

    def remove(self, hashes):
        """Backend N-1 leaves: its usable byte is cleared (what the pool does for a down or
        disabled backend); its queued requests still complete. Returns the remap, or None."""
        gone = self.sc.backends - 1
        after = bytearray(self.usable)
        after[gone] = 0
        remap = None
        if hashes is not None:
            remap = _remap(_key_map(self.selector, self.usable, hashes),
                           _key_map(self.selector, after, hashes), gone, "from")
        self.usable = after
        return remap

    def add(self, hashes):
        """A new backend joins: the selector is rebuilt over N+1 names and weights (the pool's
        build-and-swap); LoadState keeps its slots and grows. Returns the remap, or None."""
        new = len(self.names)
        self.names.append(backend_name(new))
        self.weights.append(ADDED_WEIGHT)
        self.generation += 1
        selector = build_selector(self.sc, self.algorithm, self.names, self.weights, self.generation)
        usable = self.usable + b"\x01"
        remap = None
        if hashes is not None:
            remap = _remap(_key_map(self.selector, self.usable, hashes),
                           _key_map(selector, usable, hashes), new, "to")
        self.selector, self.usable = selector, usable
        self.load.resize(new + 1)
        self.servers.append(self.sc.concurrency * ADDED_WEIGHT)
        self.scale.append(1.0)
        for lst in (self.busy, self.inflight, self.peak, self.count):
            lst.append(0)
        self.queues.append(deque())
        return remap


def run_algorithm(sc, wl, algorithm):
    """Replay the workload through one algorithm; return its AlgorithmResult."""
    n = sc.requests
    pool = _Pool(sc, algorithm)
    is_hash = algorithm in HASH_ALGORITHMS
    hashes = (wl.client_hashes if algorithm == "ip_hash" else wl.key_hashes) if is_hash else None
    keys = wl.client if algorithm == "ip_hash" else wl.key

    # Membership events by request index (a removal first when both fall on one index).
    remove_idx = sc.event_index(sc.remove_at)
    add_idx = sc.event_index(sc.add_at)
    events = sorted([(remove_idx, 0, "remove")] * (remove_idx is not None)
                    + [(add_idx, 1, "add")] * (add_idx is not None))
    remap = {"remove": None, "add": None}
    next_event = events[0][0] if events else -1
    ev = 0

    # The event loop: arrivals come from the precomputed list, completions from a heap of
    # (time, request index) -- the index is unique, so ties order deterministically. A
    # completion at the same instant as an arrival is processed first (the server is free).
    arrival = wl.arrival
    service = wl.service
    chosen = [0] * n
    latency = [0.0] * n
    rejected = 0
    heap = []
    heappush = heapq.heappush
    heappop = heapq.heappop
    heapreplace = heapq.heapreplace
    load = pool.load
    acquire = load.acquire
    release = load.release
    pick = pool.selector.pick
    usable = pool.usable
    servers, scale, busy, queues = pool.servers, pool.scale, pool.busy, pool.queues
    inflight, peak, count = pool.inflight, pool.peak, pool.count
    i = 0
    t = arrival[0]  # the next arrival (arrival[n] is +inf)
    while True:
        if heap and heap[0][0] <= t:
            # Completion: the response leaves backend b; its server takes the next queued request.
            done, j = heap[0]
            b = chosen[j]
            lat = done - arrival[j]
            latency[j] = lat
            release(b, lat, done)
            inflight[b] -= 1
            q = queues[b]
            if q:
                k = q.popleft()
                heapreplace(heap, (done + service[k] * scale[b], k))
            else:
                heappop(heap)
                busy[b] -= 1
        elif i < n:
            # Arrival of request i at time t.
            while i == next_event:
                kind = events[ev][2]
                remap[kind] = pool.remove(hashes) if kind == "remove" else pool.add(hashes)
                pick = pool.selector.pick
                usable = pool.usable
                ev += 1
                next_event = events[ev][0] if ev < len(events) else -1
            b = pick(usable, load, keys[i], t)
            if b < 0:
                rejected += 1
                chosen[i] = -1
                latency[i] = -1.0
            else:
                acquire(b)
                chosen[i] = b
                count[b] += 1
                f = inflight[b] + 1
                inflight[b] = f
                if f > peak[b]:
                    peak[b] = f
                if busy[b] < servers[b]:
                    busy[b] += 1
                    heappush(heap, (t + service[i] * scale[b], i))
                else:
                    queues[b].append(i)
            i += 1
            t = arrival[i]
        else:
            break

    nb = len(pool.weights)
    weights = pool.weights
    remap_removal, remap_addition = remap["remove"], remap["add"]
    served = n - rejected
    if rejected:
        latency = [x for x in latency if x >= 0.0]
    mean = sum(latency) / served if served else 0.0
    latency.sort()
    lat_ms = {
        "p50": _percentile(latency, 0.50) * 1000.0,
        "p99": _percentile(latency, 0.99) * 1000.0,
        "p999": _percentile(latency, 0.999) * 1000.0,
        "mean": mean * 1000.0,
        "max": (latency[-1] if latency else 0.0) * 1000.0,
    }
    # Fair share of backend b: weight x number of arrivals it was in the pool for.
    present = []
    for b in range(nb):
        start = add_idx if b >= sc.backends else 0
        end = remove_idx if (remove_idx is not None and b == sc.backends - 1) else n
        present.append(weights[b] * max(0, end - start))
    total_present = sum(present)
    max_over_fair = 0.0
    for b in range(nb):
        if present[b]:
            fair = served * present[b] / total_present
            max_over_fair = max(max_over_fair, count[b] / fair)
    return AlgorithmResult(
        algorithm=algorithm,
        served=served,
        rejected=rejected,
        requests=count,
        share=[c / served if served else 0.0 for c in count],
        peak_in_flight=peak,
        max_over_fair=max_over_fair,
        latency_ms=lat_ms,
        remap_removal=remap_removal,
        remap_addition=remap_addition,
    )


def simulate(sc, progress=None):
    """Run every algorithm of the scenario on one shared workload; return the Report.

    progress: optional callable(algorithm) called before each algorithm runs.
    """
    sc.validate()
    wl = Workload(sc)
    weights = sc.weight_list()
    factors = sc.factor_list()
    if sc.add_at is not None:
        weights.append(ADDED_WEIGHT)
        factors.append(1.0)
    report = Report(
        scenario=sc,
        capacity_rps=sc.capacity(),
        rate_rps=wl.rate,
        backends_total=len(weights),
        weights=weights,
        factors=factors,
    )
    for algorithm in sc.algorithms:
        if progress is not None:
            progress(algorithm)
        report.results.append(run_algorithm(sc, wl, algorithm))
    return report


# Formatting ------------------------------------------------------------------


def _fmt_ms(x):
    # Milliseconds, with 3-4 significant digits; from 10 s on, seconds with an "s".
    if x >= 100_000:
        return "%.0fs" % (x / 1000.0)
    if x >= 10_000:
        return "%.1fs" % (x / 1000.0)
    if x >= 100:
        return "%.0f" % x
    if x >= 10:
        return "%.1f" % x
    return "%.2f" % x


def _fmt_remap(r):
    if r is None:
        return "-"
    # "*": some keys moved between backends that did not change (not minimal).
    return "%.1f%%%s" % (100.0 * r["fraction"], "" if r["only_changed_backend"] else "*")


def _table(header, rows, left=1):
    widths = [max(len(str(r[c])) for r in [header] + rows) for c in range(len(header))]
    out = []
    for r in [header] + rows:
        cells = []
        for c, cell in enumerate(r):
            cells.append(str(cell).ljust(widths[c]) if c < left else str(cell).rjust(widths[c]))
        out.append("  ".join(cells).rstrip())
    return out


def describe(sc, rate, capacity):
    weights = sc.weight_list()
    slow = ", ".join("backend %d is %gx slower" % (i, f) for i, f in sorted(sc.slow))
    lines = [
        "fastlb simulate: %d backends (weights %s%s), %d servers per weight unit"
        % (sc.backends, ",".join(str(w) for w in weights), "; " + slow if slow else "", sc.concurrency),
        "service time %s, mean %g ms; Poisson arrivals %.0f req/s (%.0f%% of capacity %.0f req/s)"
        % (sc.latency_dist, sc.latency_ms, rate, 100.0 * rate / capacity, capacity),
        "%d requests; %d keys and %d client addresses, %s; seed %d"
        % (sc.requests, sc.keys, sc.keys, "Zipf s=%g" % sc.zipf if sc.zipf else "uniform", sc.seed),
    ]
    events = []
    if sc.remove_at is not None:
        events.append("backend %d removed at %g%% of the run" % (sc.backends - 1, 100 * sc.remove_at))
    if sc.add_at is not None:
        events.append("backend %d (weight %d) added at %g%% of the run"
                      % (sc.backends, ADDED_WEIGHT, 100 * sc.add_at))
    if sc.hash_balance_factor is not None:
        events.append("%s with bounded loads c=%g" % (", ".join(BOUNDED_LOAD_ALGORITHMS), sc.hash_balance_factor))
    if events:
        lines.append("; ".join(events))
    return lines


def format_report(report):
    """The text report: a summary row per algorithm, then per-backend share and peak in-flight."""
    sc = report.scenario
    lines = describe(sc, report.rate_rps, report.capacity_rps)
    lines.append("")
    header = ["algorithm", "p50 ms", "p99 ms", "p999 ms", "mean ms", "max/fair", "peak in-flight"]
    if sc.remove_at is not None:
        header.append("remap -b%d" % (sc.backends - 1))
    if sc.add_at is not None:
        header.append("remap +b%d" % sc.backends)
    rows = []
    for r in report.results:
        row = [
            r.algorithm,
            _fmt_ms(r.latency_ms["p50"]),
            _fmt_ms(r.latency_ms["p99"]),
            _fmt_ms(r.latency_ms["p999"]),
            _fmt_ms(r.latency_ms["mean"]),
            "%.2f" % r.max_over_fair,
            str(max(r.peak_in_flight)),
        ]
        if sc.remove_at is not None:
            row.append(_fmt_remap(r.remap_removal))
        if sc.add_at is not None:
            row.append(_fmt_remap(r.remap_addition))
        rows.append(row)
    lines.extend(_table(header, rows))
    if any(r.rejected for r in report.results):
        for r in report.results:
            if r.rejected:
                lines.append("%s: %d requests found no usable backend (503)" % (r.algorithm, r.rejected))

    nb = report.backends_total
    bheader = ["share %"] + ["b%d" % b for b in range(nb)]
    lines.append("")
    lines.extend(_table(bheader, [[r.algorithm] + ["%.1f" % (100.0 * s) for s in r.share]
                                  for r in report.results]))
    lines.append("")
    pheader = ["peak in-flight"] + ["b%d" % b for b in range(nb)]
    lines.extend(_table(pheader, [[r.algorithm] + [str(p) for p in r.peak_in_flight]
                                  for r in report.results]))
    lines.append("")
    lines.append("max/fair: most loaded backend's requests over its fair share (weight x time in the pool); "
                 "1.00 = proportional.")
    if sc.remove_at is not None or sc.add_at is not None:
        lines.append("remap: distinct keys (client addresses for ip_hash) whose backend changed at the event; "
                     "* = some moved between unchanged backends.")
    return "\n".join(lines) + "\n"


def report_dict(report):
    sc = report.scenario
    scenario = asdict(sc)
    scenario["weights"] = list(sc.weights)
    scenario["slow"] = [list(x) for x in sc.slow]
    scenario["algorithms"] = list(sc.algorithms)

    def r6(x):
        return round(x, 6)

    return {
        "scenario": scenario,
        "capacity_rps": r6(report.capacity_rps),
        "rate_rps": r6(report.rate_rps),
        "backends": [
            {"index": b, "name": backend_name(b), "weight": w, "slow_factor": f}
            for b, (w, f) in enumerate(zip(report.weights, report.factors))
        ],
        "results": [
            {
                "algorithm": r.algorithm,
                "served": r.served,
                "rejected": r.rejected,
                "requests": r.requests,
                "share": [r6(s) for s in r.share],
                "peak_in_flight": r.peak_in_flight,
                "max_over_fair": r6(r.max_over_fair),
                "latency_ms": {k: r6(v) for k, v in r.latency_ms.items()},
                "remap_removal": r.remap_removal and {k: (r6(v) if isinstance(v, float) else v)
                                                      for k, v in r.remap_removal.items()},
                "remap_addition": r.remap_addition and {k: (r6(v) if isinstance(v, float) else v)
                                                        for k, v in r.remap_addition.items()},
            }
            for r in report.results
        ],
    }


def report_json(report):
    return json.dumps(report_dict(report), indent=2) + "\n"


def plot_report(report, path):
    """Write a PNG: latency percentiles per algorithm (log scale) and share per backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report.results
    names = [r.algorithm for r in results]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    width = 0.27
    xs = list(range(len(results)))
    for k, (q, label) in enumerate((("p50", "p50"), ("p99", "p99"), ("p999", "p99.9"))):
        ax1.bar([x + (k - 1) * width for x in xs], [r.latency_ms[q] for r in results], width, label=label)
    ax1.set_yscale("log")
    ax1.set_ylabel("latency (ms)")
    ax1.set_xticks(xs)
    ax1.set_xticklabels(names, rotation=30, ha="right")
    ax1.legend()
    ax1.set_title("latency per algorithm")
    bottoms = [0.0] * len(results)
    for b in range(report.backends_total):
        vals = [100.0 * r.share[b] for r in results]
        ax2.bar(xs, vals, 0.6, bottom=bottoms, label="b%d" % b)
        bottoms = [x + v for x, v in zip(bottoms, vals)]
    ax2.set_ylabel("share of requests (%)")
    ax2.set_xticks(xs)
    ax2.set_xticklabels(names, rotation=30, ha="right")
    ax2.set_title("share per backend")
    if report.backends_total <= 24:
        ax2.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle("\n".join(describe(report.scenario, report.rate_rps, report.capacity_rps)[:2]), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)


# Command line ----------------------------------------------------------------


def _int_list(text):
    import argparse

    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("expected integers separated by commas, e.g. 1,1,2; got %r" % text)
    if not values:
        raise argparse.ArgumentTypeError("expected at least one weight")
    return tuple(values)


def _slow(text):
    import argparse

    index, sep, factor = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return int(index), float(factor)
    except ValueError:
        raise argparse.ArgumentTypeError("expected INDEX:FACTOR, e.g. 0:10 (backend 0 ten times slower); got %r"
                                         % text)


def _algorithms(text):
    import argparse

    names = tuple(x.strip() for x in text.split(",") if x.strip())
    for name in names:
        if name not in ALGORITHMS:
            raise argparse.ArgumentTypeError("unknown algorithm %r (choose from %s)" % (name, ", ".join(ALGORITHMS)))
    if not names:
        raise argparse.ArgumentTypeError("give at least one algorithm")
    return names


def _fraction(text):
    import argparse

    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError("expected a fraction of the run strictly between 0 and 1, got %r" % text)
    return value


def add_arguments(p):
    """Define the ``fastlb simulate`` flags on an argparse (sub)parser."""
    p.description = (
        "Deterministic discrete-event simulation of one pool: every balancing algorithm "
        "on the same seeded workload (arrivals, keys, per-request service times). Each backend "
        "is a FIFO queue in front of CONCURRENCY x weight servers; the report gives latency "
        "percentiles, share and peak in-flight per backend, and keys remapped on membership changes."
    )
    p.add_argument("--backends", type=int, default=5, metavar="N", help="number of backends (default 5)")
    p.add_argument("--weights", type=_int_list, default=(), metavar="W,W,...",
                   help="one weight per backend (default all 1); a weight also scales the backend's servers")
    p.add_argument("--slow", type=_slow, action="append", default=[], metavar="INDEX:FACTOR",
                   help="backend INDEX serves FACTOR times slower, unknown to the weights (repeatable; e.g. 0:10)")
    p.add_argument("--latency-ms", type=float, default=20.0, metavar="MS",
                   help="mean service time of a normal backend (default 20)")
    p.add_argument("--latency-dist", choices=DISTRIBUTIONS, default="exp",
                   help="service time distribution: exp, lognormal (sigma 1), pareto (alpha 2), const (default exp)")
    p.add_argument("--concurrency", type=int, default=8, metavar="C",
                   help="servers per backend per weight unit: requests queue when all are busy (default 8)")
    p.add_argument("--rate", type=float, default=None, metavar="RPS",
                   help="Poisson arrival rate in requests/s (default: %d%%%% of the pool's capacity)"
                   % round(100 * DEFAULT_UTILISATION))
    p.add_argument("--requests", type=int, default=200_000, metavar="N", help="requests to simulate (default 200000)")
    p.add_argument("--keys", type=int, default=10_000, metavar="K",
                   help="distinct request keys, and distinct client addresses for ip_hash (default 10000)")
    p.add_argument("--zipf", type=float, default=1.1, metavar="S",
                   help="Zipf exponent of key and client popularity; 0 = uniform (default 1.1)")
    p.add_argument("--remove-at", type=_fraction, default=None, metavar="FRACTION",
                   help="remove the last backend (N-1) at this fraction of the run, e.g. 0.5")
    p.add_argument("--add-at", type=_fraction, default=None, metavar="FRACTION",
                   help="add a new backend (index N, weight 1) at this fraction of the run")
    p.add_argument("--algorithms", type=_algorithms, default=ALGORITHMS, metavar="A,B,...",
                   help="algorithms to compare, comma-separated (default: all eight, in this order: %s)"
                   % ", ".join(ALGORITHMS))
    p.add_argument("--hash-balance-factor", type=float, default=None, metavar="C",
                   help="bounded loads for the hash algorithms (%s): no backend above C x mean "
                   "in-flight (e.g. 1.25)" % ", ".join(BOUNDED_LOAD_ALGORITHMS))
    p.add_argument("--seed", type=int, default=1, help="seed of every random draw (default 1)")
    p.add_argument("--json", metavar="FILE", default=None, help="also write the results as JSON to FILE ('-': JSON on stdout instead of the table)")
    p.add_argument("--plot", metavar="FILE.png", default=None,
                   help="also draw latency and share charts (needs matplotlib: pip install 'fastlb[plot]')")
    return p


def scenario_from_args(args):
    return Scenario(
        backends=args.backends,
        weights=tuple(args.weights),
        slow=tuple(args.slow),
        latency_ms=args.latency_ms,
        latency_dist=args.latency_dist,
        concurrency=args.concurrency,
        rate=args.rate,
        requests=args.requests,
        keys=args.keys,
        zipf=args.zipf,
        remove_at=args.remove_at,
        add_at=args.add_at,
        algorithms=tuple(args.algorithms),
        hash_balance_factor=args.hash_balance_factor,
        seed=args.seed,
    )


def run_command(args, out=None, err=None):
    """``fastlb simulate``: exit status 0, or 2 for a bad command line / missing plot extra."""
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    sc = scenario_from_args(args)
    try:
        sc.validate()
    except ValueError as exc:
        print("fastlb simulate: error: %s" % exc, file=err)
        return 2
    if args.plot:
        try:
            import matplotlib  # noqa: F401  (fail before the run, not after it)
        except ImportError:
            print("fastlb simulate: error: --plot needs matplotlib, which is not installed: "
                  "pip install 'fastlb[plot]'", file=err)
            return 2
    report = simulate(sc)
    if args.json == "-":
        out.write(report_json(report))
    else:
        out.write(format_report(report))
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                f.write(report_json(report))
    if args.plot:
        plot_report(report, args.plot)
    return 0
