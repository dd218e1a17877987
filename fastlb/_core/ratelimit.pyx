# cython: language_level=3
"""Token buckets per key, compiled. Spec and commentary: ratelimit_py.py.

Layout: ``index`` (a dict, key -> slot) is the only Python object touched when a key is
already held; the bucket (tokens, stamp) and its LRU links (prv, nxt) are one C struct per
slot in one array (``Bucket`` in ratelimit.pxd), so moving a key to the most recently used
end is four int stores. ``keys`` (a list, slot -> key) is read only to evict or drop. The
array grows by doubling up to ``max_keys``; ``sweep`` compacts it (and rebuilds the dict)
when a quarter or less of it is in use.

Constructor checks are the twin's own (``ratelimit_py.check_config``): one set of messages.
"""

cimport cython
from cpython.long cimport PyLong_AsLong
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.object cimport PyObject
from libc.math cimport fabs

from .ratelimit_py import DEFAULT_MAX_KEYS, MAX_BURST, MAX_KEYS  # the twin's bounds, re-exported
from .ratelimit_py import bad_now, check_config, check_visits

cdef extern from "Python.h":
    # Borrowed reference, NULL when absent. Not PyDict_GetItem: that one saves and restores
    # the exception state around every lookup (~50 instructions a take, callgrind).
    PyObject *PyDict_GetItemWithError(object mp, object key) except? NULL

# See ratelimit_py._PAD (wait/reset are rounded up by this fraction of |stamp| + 2 * seconds).
cdef double PAD = 2.0 ** -48
cdef Py_ssize_t MIN_CAP = 64     # first allocation, and the floor sweep compacts down to


cdef inline double until(double gap, double rate, double stamp) noexcept:
    cdef double s = gap / rate
    return s + (fabs(stamp) + 2.0 * s) * PAD


cdef inline void unlink(TokenBuckets tb, int s) noexcept:
    cdef Bucket *b = tb.b
    cdef int p = b[s].prv, n = b[s].nxt
    if p >= 0:
        b[p].nxt = n
    else:
        tb.head = n
    if n >= 0:
        b[n].prv = p
    else:
        tb.tail = p


cdef inline void push_mru(TokenBuckets tb, int s) noexcept:
    cdef Bucket *b = tb.b
    b[s].prv = tb.tail
    b[s].nxt = -1
    if tb.tail >= 0:
        b[tb.tail].nxt = s
    else:
        tb.head = s
    tb.tail = s


@cython.final
cdef class TokenBuckets:
    """One token bucket per key (bytes), at most ``max_keys`` of them, LRU-evicted."""

    def __cinit__(self, rate, burst, max_keys=DEFAULT_MAX_KEYS):
        self.head = self.tail = self.free_slot = -1
        r, b, m = check_config(rate, burst, max_keys)
        self.rate = r
        self.burst = b
        self.burst_f = <double>self.burst
        self.max_keys = m
        self.index = {}
        self.keys = []
        self.c_realloc(MIN_CAP if MIN_CAP < m else m)

    def __dealloc__(self):
        PyMem_Free(self.b)

    def __len__(self):
        return self.count

    cdef int c_realloc(self, Py_ssize_t cap) except -1:
        """Grow the slot array to cap entries (slots keep their numbers)."""
        cdef void *p = PyMem_Realloc(self.b, cap * sizeof(Bucket))
        if p == NULL:
            raise MemoryError()
        self.b = <Bucket *>p
        self.keys.extend([None] * (cap - self.cap))
        self.cap = cap
        return 0

    cdef int c_compact(self, Py_ssize_t cap) except -1:
        """Renumber the held keys 0..count-1 in LRU order into a fresh array of cap slots and
        a fresh dict (CPython dicts never shrink on deletion): what sweep does when traffic stops."""
        cdef Bucket *b = <Bucket *>PyMem_Malloc(cap * sizeof(Bucket))
        cdef dict index = {}
        cdef list keys = [None] * cap
        cdef int s = self.head, i = 0
        if b == NULL:
            raise MemoryError()
        try:
            while s >= 0:
                key = self.keys[s]
                index[key] = i
                keys[i] = key
                b[i].tokens = self.b[s].tokens
                b[i].stamp = self.b[s].stamp
                b[i].prv = i - 1
                b[i].nxt = i + 1
                i += 1
                s = self.b[s].nxt
        except BaseException:
            PyMem_Free(b)
            raise
        if i > 0:
            b[i - 1].nxt = -1
        PyMem_Free(self.b)
        self.b = b
        self.index = index
        self.keys = keys
        self.cap = cap
        self.used = i
        self.head = 0 if i > 0 else -1
        self.tail = i - 1
        self.free_slot = -1
        return 0

    cdef int c_insert(self, bytes key, double now) except -1:
        """A slot for a key not held, full bucket stamped now, at the MRU end (evicts if full)."""
        cdef int s
        cdef Py_ssize_t cap
        if self.count >= self.max_keys:
            s = self.head                      # least recently used: forgotten
            unlink(self, s)
            del self.index[self.keys[s]]
            self.keys[s] = None
            self.count -= 1
        elif self.free_slot >= 0:
            s = self.free_slot
            self.free_slot = self.b[s].nxt
        else:
            if self.used == self.cap:
                cap = self.cap * 2
                self.c_realloc(cap if cap < self.max_keys else self.max_keys)
            s = <int>self.used
            self.used += 1
        try:
            self.index[key] = s
        except BaseException:
            self.b[s].nxt = self.free_slot
            self.free_slot = s
            raise
        self.keys[s] = key
        self.b[s].tokens = self.burst_f
        self.b[s].stamp = now
        push_mru(self, s)
        self.count += 1
        return s

    cdef long long c_take(self, bytes key, double now) except -2:
        cdef PyObject *p
        cdef int s
        cdef Bucket *b
        cdef double t, st, rate = self.rate, burst = self.burst_f
        if not (now - now == 0.0):   # NaN or infinite: would stop the bucket's clock for good
            raise bad_now(now)
        p = PyDict_GetItemWithError(self.index, key)
        if p != NULL:
            s = <int>PyLong_AsLong(<object>p)
            if s != self.tail:
                unlink(self, s)
                push_mru(self, s)
            b = &self.b[s]
            t = b.tokens
            st = b.stamp
            if now > st:
                t = t + (now - st) * rate
                if t > burst:
                    t = burst
                st = now
                b.stamp = st
        else:
            s = self.c_insert(key, now)
            b = &self.b[s]
            t = burst
            st = now
        if t >= 1.0:
            t -= 1.0
            b.tokens = t
            self.wait = 0.0 if t >= 1.0 else until(1.0 - t, rate, st)
            self.reset = until(burst - t, rate, st)
            return <long long>t
        b.tokens = t
        self.wait = until(1.0 - t, rate, st)
        self.reset = until(burst - t, rate, st)
        return -1

    def take(self, bytes key not None, double now):
        """Take one token from ``key``'s bucket at time ``now`` (seconds).

        Returns the whole tokens left (>= 0), or -1 when the bucket had less than
        one token (nothing taken). Sets ``wait`` and ``reset``."""
        return self.c_take(key, now)

    def sweep(self, double now, max_visits=1024):
        """Drop buckets that are full by ``now``, least recently used first; stop at the
        first one that is not, or after ``max_visits`` entries. Returns how many were dropped."""
        cdef Py_ssize_t visits, dropped = 0, cap
        cdef int s
        cdef double t, st, rate = self.rate, burst = self.burst_f
        if not (now - now == 0.0):
            raise bad_now(now)
        visits = check_visits(max_visits)
        while visits > 0 and self.head >= 0:
            visits -= 1
            s = self.head
            t = self.b[s].tokens
            st = self.b[s].stamp
            if now > st:
                t = t + (now - st) * rate
            if not t >= burst:
                break
            unlink(self, s)
            del self.index[self.keys[s]]
            self.keys[s] = None
            self.b[s].nxt = self.free_slot
            self.free_slot = s
            self.count -= 1
            dropped += 1
        if dropped and self.cap > MIN_CAP and self.count <= self.cap // 4:
            cap = 2 * self.count
            self.c_compact(cap if cap > MIN_CAP else MIN_CAP)
        return dropped
