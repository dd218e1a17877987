"""Backend selectors and live load — pure-Python twin of ``selectors.pyx``.

This module is the executable spec: ``selectors.pyx`` must make the same pick
for the same inputs (tests/unit/test_selectors*.py run both and compare).

Invariants (DESIGN.md §7, Pingora's build/update split):

* A selector is immutable in membership: indexes ``0..n-1`` into the pool's
  backend list, weights fixed (ints >= 1). On a membership or weight change the
  pool builds a new selector and swaps it whole. Only small cursors change per
  pick (smooth-WRR ``current``, a round-robin cursor, the RNG state).
* Live load (in-flight counts, peak-EWMA latency) lives in ``LoadState``, one
  slot per backend index, owned by the pool: it survives selector rebuilds.
* ``usable`` is ``None`` (all usable) or a bytes-like with one byte per
  backend, 0 = skip (down, draining, ejected, disabled).
* Deterministic: no ``hash()``, no ``random`` module, no clock. Randomised
  selectors draw from a splitmix64 generator seeded by ``seed``, identical in
  both twins, so the same inputs give the same picks across processes, restarts,
  machines and PYTHONHASHSEED values. Time is passed in as ``now`` (seconds).
* ``explain()`` computes the same pick ``pick()`` would make at the current
  state, without advancing any cursor, and says why.

Weights: ints in 1..1_000_000 and their sum below 2**32 (the weighted draw
maps a 32-bit random number onto [0, total) with one multiply and shift).
"""

import math

__all__ = [
    "LoadState", "RoundRobin", "SmoothWRR", "LeastConnections", "WeightedRandom",
    "P2C", "PeakEWMA", "MAX_WEIGHT",
]

MAX_WEIGHT = 1_000_000
_M64 = 0xFFFFFFFFFFFFFFFF


# --------------------------------------------------------------------------- #
# RNG: splitmix64 (Steele, Lea, Flood, "Fast splittable pseudorandom number
# generators", OOPSLA 2014; constants as in Vigna's reference splitmix64.c).
# One 64-bit add, two multiplies, three xor-shifts: trivially the same in C.
# --------------------------------------------------------------------------- #

def _splitmix64(state):
    """Return (new_state, output) — both uint64."""
    state = (state + 0x9E3779B97F4A7C15) & _M64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return state, z ^ (z >> 31)


def _check_weights(weights, what):
    weights = [int(w) for w in weights]
    if not weights:
        raise ValueError("%s needs at least one backend" % what)
    for w in weights:
        if w < 1 or w > MAX_WEIGHT:
            raise ValueError("weights must be in 1..%d, got %d" % (MAX_WEIGHT, w))
    if sum(weights) >= 1 << 32:
        raise ValueError("sum of weights must be below 2**32")
    return weights


def _check_usable(usable, n):
    if usable is not None and len(usable) < n:
        raise ValueError("usable has %d entries, selector has %d backends" % (len(usable), n))


def _check_load(load, n, what):
    if load is None:
        raise ValueError("%s needs a LoadState" % what)
    if load.size < n:
        raise ValueError("LoadState has %d slots, selector has %d backends" % (load.size, n))


def _unusable(usable, n):
    if usable is None:
        return []
    return [{"index": i, "reason": "unusable"} for i in range(n) if not usable[i]]


# --------------------------------------------------------------------------- #
# LoadState
# --------------------------------------------------------------------------- #

class LoadState:
    """Live load of one pool, one slot per backend index; survives selector rebuilds.

    Per slot: in-flight requests and a peak-EWMA latency (Finagle's PeakEwma,
    Linkerd/tower's ``PeakEwma``). On a sample ``rtt`` at ``now``::

        w = exp(-(now - stamp) / decay)
        ewma = rtt                       if rtt > ewma    (peak: jump up at once)
        ewma = ewma * w + rtt * (1 - w)  otherwise        (decay down, time-weighted)
        stamp = now

    Reading ``ewma(i, now)`` does not change the slot; it returns the stored
    value decayed toward 0 by the time since the last sample,
    ``ewma * exp(-(now - stamp) / decay)`` — Finagle and tower decay the
    estimate with a zero sample on every read so an idle slow backend is tried
    again eventually; decaying on read without storing gives that value without
    making it depend on how often it is read. The first sample sets ewma = rtt.
    """

    __slots__ = ("_n", "_decay", "_in_flight", "_ewma", "_stamp", "_sampled", "_total")

    def __init__(self, n, decay=10.0):
        n = int(n)
        decay = float(decay)
        if n < 0:
            raise ValueError("LoadState size must be >= 0")
        if not decay > 0.0:
            raise ValueError("decay must be > 0 seconds, got %r" % decay)
        self._n = n
        self._decay = decay
        self._in_flight = [0] * n
        self._ewma = [0.0] * n
        self._stamp = [0.0] * n
        self._sampled = [False] * n
        self._total = 0

    @property
    def size(self):
        return self._n

    @property
    def decay(self):
        return self._decay

    @property
    def total_in_flight(self):
        return self._total

    def _check(self, i):
        if not 0 <= i < self._n:
            raise IndexError("slot %d out of range 0..%d" % (i, self._n - 1))

    def resize(self, n):
        """Grow (new slots empty) or shrink, keeping slots < n."""
        n = int(n)
        if n < 0:
            raise ValueError("LoadState size must be >= 0")
        if n < self._n:
            self._total -= sum(self._in_flight[n:])
            del self._in_flight[n:], self._ewma[n:], self._stamp[n:], self._sampled[n:]
        else:
            extra = n - self._n
            self._in_flight += [0] * extra
            self._ewma += [0.0] * extra
            self._stamp += [0.0] * extra
            self._sampled += [False] * extra
        self._n = n

    def reset_slot(self, i):
        """A new backend took slot i: no request in flight, no latency sample."""
        self._check(i)
        self._total -= self._in_flight[i]
        self._in_flight[i] = 0
        self._ewma[i] = 0.0
        self._stamp[i] = 0.0
        self._sampled[i] = False

    def acquire(self, i):
        self._check(i)
        self._in_flight[i] += 1
        self._total += 1

    def release(self, i, latency, now):
        """The request sent to slot i finished; latency < 0 means no sample (failure)."""
        self._check(i)
        if self._in_flight[i] > 0:
            self._in_flight[i] -= 1
            self._total -= 1
        latency = float(latency)
        now = float(now)
        if not latency >= 0.0:  # negative (failure) or NaN: no sample
            return
        if not self._sampled[i]:
            self._ewma[i] = latency
            self._sampled[i] = True
        elif latency > self._ewma[i]:
            self._ewma[i] = latency
        else:
            w = math.exp(-(now - self._stamp[i]) / self._decay) if now > self._stamp[i] else 1.0
            self._ewma[i] = self._ewma[i] * w + latency * (1.0 - w)
        self._stamp[i] = now

    def in_flight(self, i):
        self._check(i)
        return self._in_flight[i]

    def has_sample(self, i):
        self._check(i)
        return self._sampled[i]

    def ewma(self, i, now):
        """Peak-EWMA latency in seconds as of ``now``; -1.0 when the slot has no sample yet."""
        self._check(i)
        return self._ewma_at(i, float(now))

    def _ewma_at(self, i, now):
        if not self._sampled[i]:
            return -1.0
        if now > self._stamp[i]:
            return self._ewma[i] * math.exp(-(now - self._stamp[i]) / self._decay)
        return self._ewma[i]


# --------------------------------------------------------------------------- #
# Round robin (nginx smooth WRR)
# --------------------------------------------------------------------------- #

class RoundRobin:
    """nginx's smooth weighted round robin (ngx_http_upstream_round_robin.c).

    On every pick each usable backend's ``current`` grows by its weight, the one
    with the largest ``current`` wins (the first on ties) and pays back the sum
    of the usable weights. Weights 5,1,1 give ``a a b a c a a`` — interleaved,
    never a burst — and over any ``sum(weights)`` picks each backend is chosen
    exactly ``weight`` times. An unusable backend's ``current`` is left alone,
    as nginx skips down peers.
    """

    __slots__ = ("_weights", "_current", "_n")
    algorithm = "round_robin"

    def __init__(self, weights):
        self._weights = _check_weights(weights, "RoundRobin")
        self._n = len(self._weights)
        self._current = [0] * self._n

    @property
    def size(self):
        return self._n

    def weights(self):
        return list(self._weights)

    def _state(self):
        return list(self._current)

    def _set_state(self, state):
        self._current = list(state)

    def _select(self, usable, current):
        weights = self._weights
        best = -1
        total = 0
        for i in range(self._n):
            if usable is not None and not usable[i]:
                continue
            w = weights[i]
            current[i] += w
            total += w
            if best < 0 or current[i] > current[best]:
                best = i
        if best >= 0:
            current[best] -= total
        return best

    def pick(self, usable=None, load=None, key=0, now=0.0):
        """Index of the chosen backend, or -1 when none is usable."""
        _check_usable(usable, self._n)
        return self._select(usable, self._current)

    def explain(self, usable=None, load=None, key=0, now=0.0):
        _check_usable(usable, self._n)
        before = list(self._current)
        chosen = self._select(usable, list(before))
        return {"chosen": chosen, "algorithm": self.algorithm, "weights": list(self._weights),
                "current": before, "skipped": _unusable(usable, self._n)}


SmoothWRR = RoundRobin


# --------------------------------------------------------------------------- #
# Least connections
# --------------------------------------------------------------------------- #

class LeastConnections:
    """Fewest in-flight requests relative to weight; ties broken round robin.

    Backend i beats j when ``in_flight(i) * w(j) < in_flight(j) * w(i)`` (integer
    cross-multiplication: exact, no division). The scan starts at a cursor one
    past the previous pick and keeps the first strictly-better backend, so ties
    rotate through the tied backends (nginx's least_conn breaks ties with its
    weighted round robin; a rotating start is the unweighted equivalent, and the
    weights already enter through the comparison).
    """

    __slots__ = ("_weights", "_n", "_cursor")
    algorithm = "least_connections"

    def __init__(self, weights):
        self._weights = _check_weights(weights, "LeastConnections")
        self._n = len(self._weights)
        self._cursor = 0

    @property
    def size(self):
        return self._n

    def weights(self):
        return list(self._weights)

    def _state(self):
        return self._cursor

    def _set_state(self, state):
        self._cursor = int(state)

    def _select(self, usable, load):
        n = self._n
        weights = self._weights
        inf = load._in_flight if type(load) is LoadState else [load.in_flight(i) for i in range(n)]
        best = -1
        i = self._cursor
        for _ in range(n):
            if usable is None or usable[i]:
                if best < 0 or inf[i] * weights[best] < inf[best] * weights[i]:
                    best = i
            i += 1
            if i == n:
                i = 0
        return best

    def pick(self, usable=None, load=None, key=0, now=0.0):
        _check_usable(usable, self._n)
        _check_load(load, self._n, "LeastConnections")
        best = self._select(usable, load)
        if best >= 0:
            self._cursor = best + 1 if best + 1 < self._n else 0
        return best

    def explain(self, usable=None, load=None, key=0, now=0.0):
        _check_usable(usable, self._n)
        _check_load(load, self._n, "LeastConnections")
        chosen = self._select(usable, load)
        cands = [{"index": i, "in_flight": load.in_flight(i), "weight": self._weights[i]}
                 for i in range(self._n) if usable is None or usable[i]]
        return {"chosen": chosen, "algorithm": self.algorithm, "start": self._cursor,
                "candidates": cands, "skipped": _unusable(usable, self._n)}


# --------------------------------------------------------------------------- #
# Weighted random, P2C, peak EWMA: a weighted draw shared by all three
# --------------------------------------------------------------------------- #

class _Drawing:
    """Weighted draws over usable backends from a splitmix64 stream.

    A draw maps the high 32 bits ``u`` of one RNG output onto [0, total) as
    ``(u * total) >> 32`` (Lemire's multiply-shift; bias below total / 2**32)
    and finds the backend by binary search over cumulative weights. When that
    backend is unusable or excluded, a second, exact draw is made over the
    eligible weights only (linear scan). The result has exactly the weighted
    distribution conditioned on eligibility: P(i) = w_i/T + (1 - U/T) * w_i/U
    = w_i/U, U the eligible total — and costs O(log n) when all are usable.
    """

    __slots__ = ("_weights", "_n", "_cum", "_total", "_seed", "_rng")

    def __init__(self, weights, seed, what):
        self._weights = _check_weights(weights, what)
        self._n = len(self._weights)
        cum = []
        t = 0
        for w in self._weights:
            t += w
            cum.append(t)
        self._cum = cum
        self._total = t
        self._seed = int(seed) & _M64
        self._rng = self._seed

    @property
    def size(self):
        return self._n

    @property
    def seed(self):
        return self._seed

    def weights(self):
        return list(self._weights)

    def _state(self):
        return self._rng

    def _set_state(self, state):
        self._rng = int(state) & _M64

    def _next32(self):
        self._rng, z = _splitmix64(self._rng)
        return z >> 32

    def _draw(self, usable, exclude):
        """A weighted-random eligible backend (usable and != exclude), or -1."""
        x = (self._next32() * self._total) >> 32
        cum = self._cum
        lo, hi = 0, self._n - 1
        while lo < hi:  # first i with cum[i] > x
            mid = (lo + hi) >> 1
            if cum[mid] > x:
                hi = mid
            else:
                lo = mid + 1
        if lo != exclude and (usable is None or usable[lo]):
            return lo
        weights = self._weights
        total = 0
        for i in range(self._n):
            if i != exclude and (usable is None or usable[i]):
                total += weights[i]
        if total == 0:
            return -1
        x = (self._next32() * total) >> 32
        for i in range(self._n):
            if i != exclude and (usable is None or usable[i]):
                x -= weights[i]
                if x < 0:
                    return i
        return -1  # not reached


class WeightedRandom(_Drawing):
    """Weighted random: backend i with probability w_i / (sum of usable weights)."""

    __slots__ = ()
    algorithm = "random"

    def __init__(self, weights, seed=0):
        _Drawing.__init__(self, weights, seed, "WeightedRandom")

    def pick(self, usable=None, load=None, key=0, now=0.0):
        _check_usable(usable, self._n)
        return self._draw(usable, -1)

    def explain(self, usable=None, load=None, key=0, now=0.0):
        _check_usable(usable, self._n)
        rng = self._rng
        try:
            chosen = self._draw(usable, -1)
        finally:
            self._rng = rng
        return {"chosen": chosen, "algorithm": self.algorithm, "weights": list(self._weights),
                "rng_state": rng, "skipped": _unusable(usable, self._n)}


class P2C(_Drawing):
    """Power of two choices (Mitzenmacher; Envoy LEAST_REQUEST).

    Two distinct weighted-random usable candidates a (drawn first) and b; the
    one with fewer in-flight requests relative to weight wins
    (``in_flight(b) * w(a) < in_flight(a) * w(b)`` -> b, else a: ties go to the
    first draw, itself random). With one usable backend it is chosen.
    """

    __slots__ = ()
    algorithm = "p2c"

    def __init__(self, weights, seed=0):
        _Drawing.__init__(self, weights, seed, "P2C")

    def _select(self, usable, load):
        a = self._draw(usable, -1)
        if a < 0:
            return -1, -1, -1
        b = self._draw(usable, a)
        if b < 0:
            return a, a, -1
        w = self._weights
        if load.in_flight(b) * w[a] < load.in_flight(a) * w[b]:
            return b, a, b
        return a, a, b

    def pick(self, usable=None, load=None, key=0, now=0.0):
        _check_usable(usable, self._n)
        _check_load(load, self._n, "P2C")
        return self._select(usable, load)[0]

    def explain(self, usable=None, load=None, key=0, now=0.0):
        _check_usable(usable, self._n)
        _check_load(load, self._n, "P2C")
        rng = self._rng
        try:
            chosen, a, b = self._select(usable, load)
        finally:
            self._rng = rng
        cands = [{"index": i, "in_flight": load.in_flight(i), "weight": self._weights[i]}
                 for i in (a, b) if i >= 0]
        return {"chosen": chosen, "algorithm": self.algorithm, "candidates": cands,
                "rng_state": rng, "skipped": _unusable(usable, self._n)}


def _median(values):
    """Median of a non-empty list of floats: middle value, or the mean of the two middles."""
    values = sorted(values)
    m = len(values)
    if m & 1:
        return values[m >> 1]
    return (values[(m >> 1) - 1] + values[m >> 1]) / 2.0


class PeakEWMA(_Drawing):
    """Latency-aware P2C over cost = ewma(i) * (in_flight(i) + 1) / weight(i).

    The scheme is Linkerd's (tower ``p2c::Balance`` over ``PeakEwma`` load):
    draw two distinct weighted-random usable candidates as P2C does and take the
    lower cost. P2C rather than a full scan: O(1), and many balancers with the
    same view do not all herd onto the single cheapest backend.

    A slot with no latency sample costs as if its ewma were the MEDIAN ewma
    (as of now) of the usable slots that have one, 0.0 when none has: a new
    backend is neither starved (an infinite default) nor flooded (a zero
    default). The median is computed only when a candidate lacks a sample.
    Equal costs (e.g. no samples anywhere) fall back to in-flight relative to
    weight as P2C, then to the first draw.
    """

    __slots__ = ()
    algorithm = "ewma"

    def __init__(self, weights, seed=0):
        _Drawing.__init__(self, weights, seed, "PeakEWMA")

    def _median_of(self, usable, load, now):
        vals = []
        for i in range(self._n):
            if (usable is None or usable[i]) and load.has_sample(i):
                vals.append(load.ewma(i, now))
        return _median(vals) if vals else 0.0

    def _select(self, usable, load, now):
        a = self._draw(usable, -1)
        if a < 0:
            return -1, -1, -1, None, None, None
        b = self._draw(usable, a)
        if b < 0:
            return a, a, -1, None, None, None
        w = self._weights
        ea = load.ewma(a, now)
        eb = load.ewma(b, now)
        median = None
        if ea < 0.0 or eb < 0.0:
            median = self._median_of(usable, load, now)
            if ea < 0.0:
                ea = median
            if eb < 0.0:
                eb = median
        fa, fb = load.in_flight(a), load.in_flight(b)
        ca = ea * (fa + 1) / w[a]
        cb = eb * (fb + 1) / w[b]
        if cb < ca or (cb == ca and fb * w[a] < fa * w[b]):
            chosen = b
        else:
            chosen = a
        return chosen, a, b, ca, cb, median

    def pick(self, usable=None, load=None, key=0, now=0.0):
        _check_usable(usable, self._n)
        _check_load(load, self._n, "PeakEWMA")
        return self._select(usable, load, float(now))[0]

    def explain(self, usable=None, load=None, key=0, now=0.0):
        _check_usable(usable, self._n)
        _check_load(load, self._n, "PeakEWMA")
        now = float(now)
        rng = self._rng
        try:
            chosen, a, b, ca, cb, median = self._select(usable, load, now)
        finally:
            self._rng = rng
        cands = []
        for i, c in ((a, ca), (b, cb)):
            if i >= 0:
                cands.append({"index": i, "ewma": load.ewma(i, now), "sampled": load.has_sample(i),
                              "in_flight": load.in_flight(i), "weight": self._weights[i], "cost": c})
        return {"chosen": chosen, "algorithm": self.algorithm, "candidates": cands,
                "median_ewma": median, "now": now, "rng_state": rng,
                "skipped": _unusable(usable, self._n)}
