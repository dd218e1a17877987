# cython: language_level=3
"""Backend selectors and live load, compiled. Spec and commentary: selectors_py.py.

Every ``pick`` is a ``def`` at the boundary that turns ``usable`` into a byte pointer
(get_usable in selectors.pxd) and calls a ``noexcept`` C core that reads LoadState's C
arrays directly; no Python object is touched inside the core.

``explain()`` need not be fast: it hands this selector's weights and cursor state to the
pure-Python twin (the spec) and returns its explanation, so the two cannot describe the
pick differently; the tests check that its ``chosen`` is this module's ``pick()``.
"""

cimport cython
from cpython.buffer cimport PyBuffer_Release
from libc.math cimport exp
from libc.stdint cimport uint64_t
from libc.stdlib cimport calloc, free, qsort
from libc.string cimport memcpy

# Same bounds as selectors_py (the weighted draw needs sum(weights) < 2**32).
cdef long long MAX_WEIGHT_C = 1000000
MAX_WEIGHT = MAX_WEIGHT_C


cdef list check_weights(weights, str what):
    """ints in 1..MAX_WEIGHT, at least one, sum < 2**32: the same checks and messages as the twin."""
    cdef list ws = [int(w) for w in weights]
    if not ws:
        raise ValueError("%s needs at least one backend" % what)
    for w in ws:
        if w < 1 or w > MAX_WEIGHT_C:
            raise ValueError("weights must be in 1..%d, got %d" % (MAX_WEIGHT_C, w))
    if sum(ws) >= (1 << 32):
        raise ValueError("sum of weights must be below 2**32")
    return ws


cdef long long *weights_array(list ws) except NULL:
    cdef Py_ssize_t i, n = len(ws)
    cdef long long *arr = <long long *>calloc(n, sizeof(long long))
    if arr == NULL:
        raise MemoryError()
    for i in range(n):
        arr[i] = ws[i]
    return arr


cdef inline list weights_list(long long *w, Py_ssize_t n):
    return [w[i] for i in range(n)]


# --------------------------------------------------------------------------- LoadState

@cython.final
cdef class LoadState:
    """Live load of one pool, one slot per backend index; survives selector rebuilds.

    Peak EWMA as selectors_py.LoadState: a sample above the estimate replaces it, a lower
    one is blended in with w = exp(-(now - stamp) / decay); reads decay it toward 0.
    """

    def __cinit__(self, n, decay=10.0):
        self.n = 0
        n = int(n)
        decay = float(decay)
        if n < 0:
            raise ValueError("LoadState size must be >= 0")
        if not decay > 0.0:
            raise ValueError("decay must be > 0 seconds, got %r" % decay)
        self.tau = decay
        self._alloc(n)

    def __dealloc__(self):
        free(self.inflight)
        free(self.ewma_v)
        free(self.stamp)
        free(self.sampled)

    cdef int _alloc(self, Py_ssize_t n) except -1:
        """(Re)allocate for n slots, keeping slots < min(n, old n); new slots are empty."""
        cdef Py_ssize_t i, keep = n if n < self.n else self.n
        cdef Py_ssize_t cap = n if n > 0 else 1
        cdef long long *inf = <long long *>calloc(cap, sizeof(long long))
        cdef double *ev = <double *>calloc(cap, sizeof(double))
        cdef double *st = <double *>calloc(cap, sizeof(double))
        cdef unsigned char *sa = <unsigned char *>calloc(cap, 1)
        if inf == NULL or ev == NULL or st == NULL or sa == NULL:
            free(inf); free(ev); free(st); free(sa)
            raise MemoryError()
        if keep > 0:
            memcpy(inf, self.inflight, keep * sizeof(long long))
            memcpy(ev, self.ewma_v, keep * sizeof(double))
            memcpy(st, self.stamp, keep * sizeof(double))
            memcpy(sa, self.sampled, keep)
        for i in range(keep, self.n):
            self.total -= self.inflight[i]
        free(self.inflight); free(self.ewma_v); free(self.stamp); free(self.sampled)
        self.inflight, self.ewma_v, self.stamp, self.sampled = inf, ev, st, sa
        self.n = n
        return 0

    cdef int c_check(self, Py_ssize_t i) except -1:
        if i < 0 or i >= self.n:
            raise IndexError("slot %d out of range 0..%d" % (i, self.n - 1))
        return 0

    cdef double c_ewma(self, Py_ssize_t i, double now) noexcept:
        if not self.sampled[i]:
            return -1.0
        if now > self.stamp[i]:
            return self.ewma_v[i] * exp(-(now - self.stamp[i]) / self.tau)
        return self.ewma_v[i]

    @property
    def size(self):
        return self.n

    @property
    def decay(self):
        return self.tau

    @property
    def total_in_flight(self):
        return self.total

    def resize(self, n):
        """Grow (new slots empty) or shrink, keeping slots < n."""
        n = int(n)
        if n < 0:
            raise ValueError("LoadState size must be >= 0")
        self._alloc(n)

    def reset_slot(self, Py_ssize_t i):
        """A new backend took slot i: no request in flight, no latency sample."""
        self.c_check(i)
        self.total -= self.inflight[i]
        self.inflight[i] = 0
        self.ewma_v[i] = 0.0
        self.stamp[i] = 0.0
        self.sampled[i] = 0

    def acquire(self, Py_ssize_t i):
        self.c_check(i)
        self.inflight[i] += 1
        self.total += 1

    def release(self, Py_ssize_t i, double latency, double now):
        """The request sent to slot i finished; latency < 0 means no sample (failure)."""
        cdef double w
        self.c_check(i)
        if self.inflight[i] > 0:
            self.inflight[i] -= 1
            self.total -= 1
        if not latency >= 0.0:  # negative (failure) or NaN: no sample
            return
        if not self.sampled[i]:
            self.ewma_v[i] = latency
            self.sampled[i] = 1
        elif latency > self.ewma_v[i]:
            self.ewma_v[i] = latency
        else:
            w = exp(-(now - self.stamp[i]) / self.tau) if now > self.stamp[i] else 1.0
            self.ewma_v[i] = self.ewma_v[i] * w + latency * (1.0 - w)
        self.stamp[i] = now

    def in_flight(self, Py_ssize_t i):
        self.c_check(i)
        return self.inflight[i]

    def has_sample(self, Py_ssize_t i):
        self.c_check(i)
        return bool(self.sampled[i])

    def ewma(self, Py_ssize_t i, double now):
        """Peak-EWMA latency in seconds as of ``now``; -1.0 when the slot has no sample yet."""
        self.c_check(i)
        return self.c_ewma(i, now)


# --------------------------------------------------------------------------- RoundRobin

@cython.final
cdef class RoundRobin:
    """nginx's smooth weighted round robin; weights 5,1,1 -> a a b a c a a."""

    algorithm = "round_robin"

    def __cinit__(self, weights):
        cdef list ws = check_weights(weights, "RoundRobin")
        self.n = len(ws)
        self.wts = weights_array(ws)
        self.current = <long long *>calloc(self.n, sizeof(long long))
        if self.current == NULL:
            raise MemoryError()

    def __dealloc__(self):
        free(self.wts)
        free(self.current)

    @property
    def size(self):
        return self.n

    def weights(self):
        return weights_list(self.wts, self.n)

    def _state(self):
        return weights_list(self.current, self.n)

    def _set_state(self, state):
        cdef Py_ssize_t i
        state = list(state)
        if len(state) != self.n:
            raise ValueError("state has %d entries, selector has %d backends" % (len(state), self.n))
        for i in range(self.n):
            self.current[i] = state[i]

    cdef Py_ssize_t c_pick(self, const unsigned char *usable, long long *current) noexcept:
        cdef Py_ssize_t i, best = -1
        cdef long long total = 0, c, best_c = 0
        cdef const long long *w = self.wts
        # best's current kept in a register: re-reading current[best] after each store
        # to current[i] cost ~1 ns per backend (the compiler must assume they alias).
        for i in range(self.n):
            if usable != NULL and not usable[i]:
                continue
            c = current[i] + w[i]
            current[i] = c
            total += w[i]
            if best < 0 or c > best_c:
                best = i
                best_c = c
        if best >= 0:
            current[best] = best_c - total
        return best

    def pick(self, usable=None, load=None, key=0, now=0.0):
        """Index of the chosen backend, or -1 when none is usable."""
        cdef Py_buffer view
        cdef const unsigned char *u
        cdef int rel = get_usable(usable, self.n, &view, &u)
        cdef Py_ssize_t r = self.c_pick(u, self.current)
        if rel:
            PyBuffer_Release(&view)
        return r

    def explain(self, usable=None, load=None, key=0, now=0.0):
        from . import selectors_py
        spec = selectors_py.RoundRobin(self.weights())
        spec._set_state(self._state())
        return spec.explain(usable, load, key, now)


SmoothWRR = RoundRobin


# --------------------------------------------------------------------------- LeastConnections

@cython.final
cdef class LeastConnections:
    """Fewest in-flight relative to weight (in_flight[i]*w[j] < in_flight[j]*w[i]); ties round robin."""

    algorithm = "least_connections"

    def __cinit__(self, weights):
        cdef list ws = check_weights(weights, "LeastConnections")
        self.n = len(ws)
        self.wts = weights_array(ws)
        self.cursor = 0

    def __dealloc__(self):
        free(self.wts)

    @property
    def size(self):
        return self.n

    def weights(self):
        return weights_list(self.wts, self.n)

    def _state(self):
        return self.cursor

    def _set_state(self, state):
        state = int(state)
        if not 0 <= state < self.n:
            raise ValueError("cursor out of range")
        self.cursor = state

    cdef Py_ssize_t c_pick(self, const unsigned char *usable, LoadState load) noexcept:
        cdef Py_ssize_t i, n = self.n, cursor = self.cursor, best = -1
        cdef const long long *w = self.wts
        cdef const long long *inf = load.inflight
        cdef long long bf = 0, bw = 1
        # cursor..n-1 then 0..cursor-1: the rotation without a wrap test per backend.
        for i in range(cursor, n):
            if (usable == NULL or usable[i]) and (best < 0 or inf[i] * bw < bf * w[i]):
                best = i
                bf = inf[i]
                bw = w[i]
        for i in range(cursor):
            if (usable == NULL or usable[i]) and (best < 0 or inf[i] * bw < bf * w[i]):
                best = i
                bf = inf[i]
                bw = w[i]
        if best >= 0:
            self.cursor = best + 1 if best + 1 < n else 0
        return best

    def pick(self, usable=None, LoadState load=None, key=0, now=0.0):
        cdef Py_buffer view
        cdef const unsigned char *u
        cdef int rel = get_usable(usable, self.n, &view, &u)
        if load is None or load.n < self.n:
            if rel:
                PyBuffer_Release(&view)
            check_load(load, self.n, "LeastConnections")
        cdef Py_ssize_t r = self.c_pick(u, load)
        if rel:
            PyBuffer_Release(&view)
        return r

    def explain(self, usable=None, load=None, key=0, now=0.0):
        from . import selectors_py
        spec = selectors_py.LeastConnections(self.weights())
        spec._set_state(self.cursor)
        return spec.explain(usable, load, key, now)


# --------------------------------------------------------------------------- weighted draws

cdef int drawing_init(Drawing *d, weights, seed, str what) except -1:
    cdef list ws = check_weights(weights, what)
    cdef Py_ssize_t i
    cdef uint64_t t = 0
    d.n = len(ws)
    d.wts = weights_array(ws)
    d.cum = <uint64_t *>calloc(d.n, sizeof(uint64_t))
    if d.cum == NULL:
        raise MemoryError()
    for i in range(d.n):
        t += <uint64_t>d.wts[i]
        d.cum[i] = t
    d.total = t
    d.seed = <uint64_t>(int(seed) & 0xFFFFFFFFFFFFFFFF)
    d.rng = d.seed
    return 0


cdef inline void drawing_free(Drawing *d) noexcept:
    free(d.wts)
    free(d.cum)
    d.wts = NULL
    d.cum = NULL


cdef inline Py_ssize_t draw(Drawing *d, const unsigned char *usable, Py_ssize_t exclude) noexcept:
    """selectors_py._Drawing._draw: multiply-shift onto [0, total), binary search; on an
    ineligible hit, one exact draw over the eligible weights."""
    cdef uint64_t x = ((splitmix64(&d.rng) >> 32) * d.total) >> 32
    cdef Py_ssize_t lo = 0, hi = d.n - 1, mid, i
    cdef uint64_t *cum = d.cum
    while lo < hi:  # first i with cum[i] > x
        mid = (lo + hi) >> 1
        if cum[mid] > x:
            hi = mid
        else:
            lo = mid + 1
    if lo != exclude and (usable == NULL or usable[lo]):
        return lo
    cdef uint64_t total = 0
    for i in range(d.n):
        if i != exclude and (usable == NULL or usable[i]):
            total += <uint64_t>d.wts[i]
    if total == 0:
        return -1
    cdef long long y = <long long>(((splitmix64(&d.rng) >> 32) * total) >> 32)
    for i in range(d.n):
        if i != exclude and (usable == NULL or usable[i]):
            y -= d.wts[i]
            if y < 0:
                return i
    return -1  # not reached


cdef inline dict drawing_spec_state(Drawing *d):
    return {"weights": weights_list(d.wts, d.n), "seed": d.seed, "rng": d.rng}


@cython.final
cdef class WeightedRandom:
    """Weighted random: backend i with probability w_i / (sum of usable weights)."""

    algorithm = "random"

    def __cinit__(self, weights, seed=0):
        drawing_init(&self.d, weights, seed, "WeightedRandom")

    def __dealloc__(self):
        drawing_free(&self.d)

    @property
    def size(self):
        return self.d.n

    @property
    def seed(self):
        return self.d.seed

    def weights(self):
        return weights_list(self.d.wts, self.d.n)

    def _state(self):
        return self.d.rng

    def _set_state(self, state):
        self.d.rng = <uint64_t>(int(state) & 0xFFFFFFFFFFFFFFFF)

    def pick(self, usable=None, load=None, key=0, now=0.0):
        cdef Py_buffer view
        cdef const unsigned char *u
        cdef int rel = get_usable(usable, self.d.n, &view, &u)
        cdef Py_ssize_t r = draw(&self.d, u, -1)
        if rel:
            PyBuffer_Release(&view)
        return r

    def explain(self, usable=None, load=None, key=0, now=0.0):
        from . import selectors_py
        spec = selectors_py.WeightedRandom(self.weights(), self.d.seed)
        spec._set_state(self.d.rng)
        return spec.explain(usable, load, key, now)


@cython.final
cdef class P2C:
    """Power of two choices: two distinct weighted-random usable candidates, fewer
    in-flight relative to weight wins, ties to the first draw."""

    algorithm = "p2c"

    def __cinit__(self, weights, seed=0):
        drawing_init(&self.d, weights, seed, "P2C")

    def __dealloc__(self):
        drawing_free(&self.d)

    @property
    def size(self):
        return self.d.n

    @property
    def seed(self):
        return self.d.seed

    def weights(self):
        return weights_list(self.d.wts, self.d.n)

    def _state(self):
        return self.d.rng

    def _set_state(self, state):
        self.d.rng = <uint64_t>(int(state) & 0xFFFFFFFFFFFFFFFF)

    cdef Py_ssize_t c_pick(self, const unsigned char *usable, LoadState load) noexcept:
        cdef Py_ssize_t a = draw(&self.d, usable, -1)
        if a < 0:
            return -1
        cdef Py_ssize_t b = draw(&self.d, usable, a)
        if b < 0:
            return a
        cdef long long *w = self.d.wts
        if load.inflight[b] * w[a] < load.inflight[a] * w[b]:
            return b
        return a

    def pick(self, usable=None, LoadState load=None, key=0, now=0.0):
        cdef Py_buffer view
        cdef const unsigned char *u
        cdef int rel = get_usable(usable, self.d.n, &view, &u)
        if load is None or load.n < self.d.n:
            if rel:
                PyBuffer_Release(&view)
            check_load(load, self.d.n, "P2C")
        cdef Py_ssize_t r = self.c_pick(u, load)
        if rel:
            PyBuffer_Release(&view)
        return r

    def explain(self, usable=None, load=None, key=0, now=0.0):
        from . import selectors_py
        spec = selectors_py.P2C(self.weights(), self.d.seed)
        spec._set_state(self.d.rng)
        return spec.explain(usable, load, key, now)


cdef int cmp_double(const void *pa, const void *pb) noexcept nogil:
    cdef double a = (<const double *>pa)[0]
    cdef double b = (<const double *>pb)[0]
    return (a > b) - (a < b)


@cython.final
cdef class PeakEWMA:
    """Latency-aware P2C (Linkerd's scheme) over cost = ewma * (in_flight + 1) / weight;
    an unsampled slot costs as the median ewma of the usable sampled slots (0 if none)."""

    algorithm = "ewma"

    def __cinit__(self, weights, seed=0):
        drawing_init(&self.d, weights, seed, "PeakEWMA")
        self.scratch = <double *>calloc(self.d.n, sizeof(double))
        if self.scratch == NULL:
            raise MemoryError()

    def __dealloc__(self):
        drawing_free(&self.d)
        free(self.scratch)

    @property
    def size(self):
        return self.d.n

    @property
    def seed(self):
        return self.d.seed

    def weights(self):
        return weights_list(self.d.wts, self.d.n)

    def _state(self):
        return self.d.rng

    def _set_state(self, state):
        self.d.rng = <uint64_t>(int(state) & 0xFFFFFFFFFFFFFFFF)

    cdef double median(self, const unsigned char *usable, LoadState load, double now) noexcept:
        cdef Py_ssize_t i, m = 0
        cdef double *v = self.scratch
        for i in range(self.d.n):
            if (usable == NULL or usable[i]) and load.sampled[i]:
                v[m] = load.c_ewma(i, now)
                m += 1
        if m == 0:
            return 0.0
        qsort(v, m, sizeof(double), cmp_double)
        if m & 1:
            return v[m >> 1]
        return (v[(m >> 1) - 1] + v[m >> 1]) / 2.0

    cdef Py_ssize_t c_pick(self, const unsigned char *usable, LoadState load, double now) noexcept:
        cdef Py_ssize_t a = draw(&self.d, usable, -1)
        if a < 0:
            return -1
        cdef Py_ssize_t b = draw(&self.d, usable, a)
        if b < 0:
            return a
        cdef long long *w = self.d.wts
        cdef double ea = load.c_ewma(a, now)
        cdef double eb = load.c_ewma(b, now)
        cdef double med
        if ea < 0.0 or eb < 0.0:
            med = self.median(usable, load, now)
            if ea < 0.0:
                ea = med
            if eb < 0.0:
                eb = med
        cdef long long fa = load.inflight[a], fb = load.inflight[b]
        cdef double ca = ea * <double>(fa + 1) / <double>w[a]
        cdef double cb = eb * <double>(fb + 1) / <double>w[b]
        if cb < ca or (cb == ca and fb * w[a] < fa * w[b]):
            return b
        return a

    def pick(self, usable=None, LoadState load=None, key=0, double now=0.0):
        cdef Py_buffer view
        cdef const unsigned char *u
        cdef int rel = get_usable(usable, self.d.n, &view, &u)
        if load is None or load.n < self.d.n:
            if rel:
                PyBuffer_Release(&view)
            check_load(load, self.d.n, "PeakEWMA")
        cdef Py_ssize_t r = self.c_pick(u, load, now)
        if rel:
            PyBuffer_Release(&view)
        return r

    def explain(self, usable=None, load=None, key=0, now=0.0):
        from . import selectors_py
        spec = selectors_py.PeakEWMA(self.weights(), self.d.seed)
        spec._set_state(self.d.rng)
        return spec.explain(usable, load, key, now)
