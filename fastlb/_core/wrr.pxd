# Declarations for wrr.pyx (smooth weighted round robin); see wrr_py.py for the spec.

cdef class SmoothWRR:
    cdef long long *_weights
    cdef long long *_current
    cdef Py_ssize_t _n

    cdef Py_ssize_t c_pick(self, const unsigned char *usable) noexcept
