# Declarations for fastlb/_core/selectors.pyx (definitions live there; the pure-Python
# twin and executable spec is selectors_py.py, which this module must match exactly).
# hashing.pyx cimports LoadState and the usable-buffer helpers from here.

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdint cimport uint64_t


# Live load of one pool: C arrays indexed by backend slot, read directly by the selectors.
@cython.final
cdef class LoadState:
    cdef Py_ssize_t n
    cdef double tau            # EWMA time constant, seconds
    cdef long long total       # sum of inflight[0..n-1]
    cdef long long *inflight
    cdef double *ewma_v        # peak-EWMA latency (s) at stamp[i]
    cdef double *stamp         # time (s) of the last sample
    cdef unsigned char *sampled

    cdef int _alloc(self, Py_ssize_t n) except -1
    cdef int c_check(self, Py_ssize_t i) except -1
    cdef double c_ewma(self, Py_ssize_t i, double now) noexcept


# usable -> a byte pointer (NULL for None: all usable). bytes and bytearray are read in
# place through their AS_STRING macros (no buffer export: ~40 ns cheaper per pick); any
# other bytes-like goes through the buffer protocol. Returns 1 when view must be released.
# The pointer stays valid while no Python code runs, which the noexcept pick cores ensure.
cdef inline int get_usable(object usable, Py_ssize_t n, Py_buffer *view,
                           const unsigned char **out) except -1:
    cdef Py_ssize_t length
    cdef int rc
    if usable is None:
        out[0] = NULL
        return 0
    if type(usable) is bytes:
        length = PyBytes_GET_SIZE(usable)
        out[0] = <const unsigned char *>PyBytes_AS_STRING(usable)
        rc = 0
    elif type(usable) is bytearray:
        length = PyByteArray_GET_SIZE(usable)
        out[0] = <const unsigned char *>PyByteArray_AS_STRING(usable)
        rc = 0
    else:
        PyObject_GetBuffer(usable, view, PyBUF_SIMPLE)
        length = view.len
        out[0] = <const unsigned char *>view.buf
        rc = 1
    if length < n:
        if rc:
            PyBuffer_Release(view)
        raise ValueError("usable has %d entries, selector has %d backends" % (length, n))
    return rc


cdef inline int check_load(LoadState load, Py_ssize_t n, str what) except -1:
    if load is None:
        raise ValueError("%s needs a LoadState" % what)
    if load.n < n:
        raise ValueError("LoadState has %d slots, selector has %d backends" % (load.n, n))
    return 0


# splitmix64 (Steele, Lea, Flood, OOPSLA 2014; Vigna's splitmix64.c constants).
cdef inline uint64_t splitmix64(uint64_t *state) noexcept nogil:
    state[0] += 0x9E3779B97F4A7C15ULL
    cdef uint64_t z = state[0]
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL
    return z ^ (z >> 31)


@cython.final
cdef class RoundRobin:
    cdef long long *wts
    cdef long long *current
    cdef Py_ssize_t n

    cdef Py_ssize_t c_pick(self, const unsigned char *usable, long long *current) noexcept


@cython.final
cdef class LeastConnections:
    cdef long long *wts
    cdef Py_ssize_t n
    cdef Py_ssize_t cursor

    cdef Py_ssize_t c_pick(self, const unsigned char *usable, LoadState load) noexcept


# Weighted draws shared by WeightedRandom, P2C and PeakEWMA (see selectors_py._Drawing).
cdef struct Drawing:
    Py_ssize_t n
    long long *wts
    uint64_t *cum              # cumulative weights, cum[n-1] == total
    uint64_t total             # < 2**32
    uint64_t seed
    uint64_t rng               # splitmix64 state


@cython.final
cdef class WeightedRandom:
    cdef Drawing d


@cython.final
cdef class P2C:
    cdef Drawing d
    cdef Py_ssize_t c_pick(self, const unsigned char *usable, LoadState load) noexcept


@cython.final
cdef class PeakEWMA:
    cdef Drawing d
    cdef double *scratch       # n doubles for the median
    cdef double median(self, const unsigned char *usable, LoadState load, double now) noexcept
    cdef Py_ssize_t c_pick(self, const unsigned char *usable, LoadState load, double now) noexcept
