# cython: language_level=3
"""Smooth weighted round robin, compiled. Spec and commentary: wrr_py.py.

nginx's smooth WRR: every usable peer's ``current`` += weight, the largest wins
(first on ties) and pays back the sum of usable weights. Weights 5,1,1 give
``a a b a c a a``.
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from libc.stdlib cimport calloc, free


@cython.final
cdef class SmoothWRR:

    def __cinit__(self, weights):
        cdef Py_ssize_t i
        cdef long long w
        weights = [int(x) for x in weights]
        if not weights:
            raise ValueError("SmoothWRR needs at least one peer")
        self._n = len(weights)
        self._weights = <long long *>calloc(self._n, sizeof(long long))
        self._current = <long long *>calloc(self._n, sizeof(long long))
        if self._weights == NULL or self._current == NULL:
            raise MemoryError()
        for i in range(self._n):
            w = weights[i]
            if w < 1:
                raise ValueError("weights must be >= 1, got %d" % w)
            self._weights[i] = w

    def __dealloc__(self):
        free(self._weights)
        free(self._current)

    @property
    def size(self):
        return self._n

    def weights(self):
        return [self._weights[i] for i in range(self._n)]

    cdef Py_ssize_t c_pick(self, const unsigned char *usable) noexcept:
        cdef Py_ssize_t i, best = -1
        cdef long long total = 0
        cdef long long *cur = self._current
        for i in range(self._n):
            if usable != NULL and not usable[i]:
                continue
            cur[i] += self._weights[i]
            total += self._weights[i]
            if best < 0 or cur[i] > cur[best]:
                best = i
        if best >= 0:
            cur[best] -= total
        return best

    def pick(self, usable=None):
        """Index of the chosen peer, or -1 when no peer is usable."""
        cdef Py_buffer view
        cdef Py_ssize_t r
        if usable is None:
            return self.c_pick(NULL)
        PyObject_GetBuffer(usable, &view, PyBUF_SIMPLE)
        try:
            if view.len < self._n:
                raise ValueError("usable has %d entries, selector has %d peers" % (view.len, self._n))
            r = self.c_pick(<const unsigned char *>view.buf)
        finally:
            PyBuffer_Release(&view)
        return r
