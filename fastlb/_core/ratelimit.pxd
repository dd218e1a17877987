# Declarations for fastlb/_core/ratelimit.pyx (definitions live there; the pure-Python
# twin and executable spec is ratelimit_py.py, which this module must match exactly).
# A compiled caller cimports TokenBuckets and calls c_take directly (no Python call).

cimport cython


# One slot: the bucket and its LRU links together, so a take touches one 24-byte record
# (plus its two neighbours' links) instead of four arrays.
cdef struct Bucket:
    double tokens
    double stamp                       # seconds (the caller's clock) of the last refill
    int prv                            # toward the least recently used end, -1 at head
    int nxt                            # toward the most recently used end, -1 at tail;
                                       # for a free slot, the next free slot


@cython.final
cdef class TokenBuckets:
    cdef readonly double rate          # tokens per second, > 0
    cdef readonly long long burst      # capacity, tokens, 1..2**53
    cdef readonly Py_ssize_t max_keys  # 1..2**31-1
    cdef readonly double wait          # after a take: seconds until one token is there
    cdef readonly double reset         # after a take: seconds until the bucket is full
    cdef double burst_f                # burst as a double
    cdef dict index                    # key (bytes) -> slot (int)
    cdef list keys                     # slot -> key, None when the slot is free; len == cap
    cdef Bucket *b                     # cap buckets (PyMem_Malloc: tracemalloc counts them)
    cdef Py_ssize_t count              # keys held
    cdef Py_ssize_t used               # slots ever handed out (0..used-1 are live or free)
    cdef Py_ssize_t cap                # slots allocated, <= max_keys
    cdef int head                      # least recently used slot, -1 when empty
    cdef int tail                      # most recently used slot, -1 when empty
    cdef int free_slot                 # first free slot, -1 when none

    cdef long long c_take(self, bytes key, double now) except -2
    cdef int c_insert(self, bytes key, double now) except -1
    cdef int c_realloc(self, Py_ssize_t cap) except -1
    cdef int c_compact(self, Py_ssize_t cap) except -1
