# Declarations for fastlb/_core/logline.pyx (definitions live there; the pure-Python
# twin and executable spec is logline_py.py, which this module must match byte for byte).

cdef char *_put_chars(char *o, const unsigned char *s, Py_ssize_t n) noexcept nogil
cdef char *_put_str(char *o, object value) except NULL
cdef char *_put_sec(char *o, double value) except NULL
cdef char *_put_time(char *o, double t) noexcept
