# Declarations for fastlb/_core/hashing.pyx (definitions live there; the pure-Python
# twin and executable spec is hashing_py.py, which this module must match exactly).

cimport cython
from libc.stdint cimport int32_t, uint32_t

from .selectors cimport LoadState


# RFC 1321 MD5 over a byte range; out receives the 16-byte digest.
cdef void md5_digest(const unsigned char *data, Py_ssize_t n, unsigned char *out) noexcept nogil
# libketama key point: little-endian uint32 of MD5(data)[0:4].
cdef uint32_t c_key_hash(const unsigned char *data, Py_ssize_t n) noexcept nogil


# Both selectors are a sequence of backend indexes (ring order / table order) walked
# from a start position; see hashing_py._Walker.
@cython.final
cdef class KetamaRing:
    cdef Py_ssize_t n
    cdef Py_ssize_t length     # ring points
    cdef uint32_t *pts        # sorted
    cdef int32_t *seq          # backend index of each point
    cdef unsigned char *seen   # n bytes of walk scratch
    cdef double factor         # bounded loads; 0 = off
    cdef list _names           # bytes
    cdef list _weights
    cdef object _spec          # pure twin over the same ring, built on first explain()

    cdef Py_ssize_t c_start(self, uint32_t key) noexcept


@cython.final
cdef class Maglev:
    cdef Py_ssize_t n
    cdef Py_ssize_t m          # table size, prime
    cdef int32_t *seq          # the lookup table
    cdef unsigned char *seen
    cdef double factor
    cdef list _names
    cdef list _weights
    cdef object _spec
