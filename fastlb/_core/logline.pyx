# cython: language_level=3, boundscheck=False, wraparound=False
"""Access-log JSON lines, a batch at a time in one C buffer (the twin: logline_py.py).

The access log keeps one tuple of plain values per request and formats the batch
when it hands it to its writer: one call per batch, one buffer sized for the worst
case (every request byte escaped as ``\\u00XX``: 6 bytes), one bytes object out.
Seconds use CPython's own float formatting (PyOS_double_to_string, 'f', 6), so the
digits are exactly the twin's ``b"%.6f"``; the date is the twin's integer
arithmetic (no time module in _core).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free
from libc.stdio cimport snprintf
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, strlen

cdef extern from "Python.h":
    char *PyOS_double_to_string(double val, char format_code, int precision, int flags, int *ptype) except NULL

__all__ = ["json_lines", "json_chars", "rfc3339"]

cdef const char *HEX = b"0123456789abcdef"
DEF ROW = 16  # fields per row
DEF FIXED = 400  # field names, punctuation and numbers of one line, with room to spare


cdef inline char *_lit(char *o, const char *s) noexcept:
    cdef Py_ssize_t n = strlen(s)
    memcpy(o, s, n)
    return o + n


cdef char *_put_chars(char *o, const unsigned char *s, Py_ssize_t n) noexcept nogil:
    """JSON string contents: printable ASCII copied, '"' and '\\' escaped, other bytes \\u00XX."""
    cdef Py_ssize_t i
    cdef unsigned char c
    for i in range(n):
        c = s[i]
        if c == 0x22 or c == 0x5C:
            o[0] = 0x5C
            o[1] = c
            o += 2
        elif 0x20 <= c <= 0x7E:
            o[0] = c
            o += 1
        else:
            o[0] = 0x5C
            o[1] = 0x75  # u
            o[2] = 0x30
            o[3] = 0x30
            o[4] = HEX[c >> 4]
            o[5] = HEX[c & 15]
            o += 6
    return o


cdef char *_put_str(char *o, object value) except NULL:
    if value is None:
        return _lit(o, b"null")
    if type(value) is not bytes:
        raise TypeError("expected bytes or None, got %s" % type(value).__name__)
    o[0] = 0x22
    o = _put_chars(o + 1, <const unsigned char *>PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value))
    o[0] = 0x22
    return o + 1


cdef char *_put_sec(char *o, double value) except NULL:
    cdef char *s
    cdef Py_ssize_t n
    if value < 0:
        return _lit(o, b"null")
    s = PyOS_double_to_string(value, b'f', 6, 0, NULL)
    n = strlen(s)
    memcpy(o, s, n)
    PyMem_Free(s)
    return o + n


cdef inline long long _fdiv(long long a, long long b) noexcept:
    """Floor division, as Python's //."""
    cdef long long q = a // b
    if (a % b != 0) and ((a < 0) != (b < 0)):
        q -= 1
    return q


cdef char *_put_time(char *o, double t) noexcept:
    cdef long long ms_total = <long long>(t * 1000.0)
    cdef long long secs = _fdiv(ms_total, 1000)
    cdef long long ms = ms_total - secs * 1000
    cdef long long days = _fdiv(secs, 86400)
    cdef long long rem = secs - days * 86400
    cdef long long hh = rem // 3600, mm = (rem % 3600) // 60, ss = rem % 60
    cdef long long z = days + 719468
    cdef long long era = _fdiv(z, 146097)
    cdef long long doe = z - era * 146097
    cdef long long yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    cdef long long y = yoe + era * 400
    cdef long long doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    cdef long long mp = (5 * doy + 2) // 153
    cdef long long d = doy - (153 * mp + 2) // 5 + 1
    cdef long long m = mp + 3 if mp < 10 else mp - 9
    if m <= 2:
        y += 1
    return o + snprintf(o, 40, b"%04lld-%02lld-%02lldT%02lld:%02lld:%02lld.%03lldZ", y, m, d, hh, mm, ss, ms)


cdef inline Py_ssize_t _len(object value):
    return PyBytes_GET_SIZE(value) if type(value) is bytes else 0


def rfc3339(double t):
    """Unix seconds -> b"YYYY-MM-DDTHH:MM:SS.mmmZ" (UTC, milliseconds truncated)."""
    cdef char buf[64]
    cdef char *o = _put_time(buf, t)
    return PyBytes_FromStringAndSize(buf, o - buf)


def json_lines(list rows):
    """Same rows and bytes as logline_py.json_lines."""
    cdef Py_ssize_t cap = 0, k
    cdef tuple row
    cdef char *buf
    cdef char *o
    cdef char num[48]
    for row in rows:
        if len(row) != ROW:
            raise ValueError("a row has %d fields" % ROW)
        cap += FIXED + _len(row[14]) + 6 * (_len(row[1]) + _len(row[2]) + _len(row[3]) + _len(row[8])
                                            + _len(row[9]) + _len(row[13]) + _len(row[15]))
    buf = <char *>malloc(cap + 1)
    if buf == NULL:
        raise MemoryError()
    try:
        o = buf
        for row in rows:
            o = _lit(o, b'{"time":"')
            o = _put_time(o, <double>row[0])
            o = _lit(o, b'","client":')
            o = _put_str(o, row[1])
            o = _lit(o, b',"method":')
            o = _put_str(o, row[2])
            o = _lit(o, b',"path":')
            o = _put_str(o, row[3])
            o += snprintf(o, 48, b',"status":%lld', <long long>row[4])
            o += snprintf(o, 48, b',"bytes_in":%lld', <long long>row[5])
            o += snprintf(o, 48, b',"bytes_out":%lld', <long long>row[6])
            o = _lit(o, b',"duration":')
            o = _put_sec(o, <double>row[7])
            o = _lit(o, b',"pool":')
            o = _put_str(o, row[8])
            o = _lit(o, b',"backend":')
            o = _put_str(o, row[9])
            o = _lit(o, b',"connect_time":')
            o = _put_sec(o, <double>row[10])
            o = _lit(o, b',"response_time":')
            o = _put_sec(o, <double>row[11])
            o += snprintf(o, 48, b',"retries":%lld', <long long>row[12])
            o = _lit(o, b',"request_id":')
            o = _put_str(o, row[13])
            o = _lit(o, b',"flags":')
            if type(row[14]) is not bytes:
                raise TypeError("flags must be bytes")
            memcpy(o, PyBytes_AS_STRING(row[14]), PyBytes_GET_SIZE(row[14]))
            o += PyBytes_GET_SIZE(row[14])
            o = _lit(o, b',"trace_id":')
            o = _put_str(o, row[15])
            o = _lit(o, b'}\n')
        return PyBytes_FromStringAndSize(buf, o - buf)
    finally:
        free(buf)


def json_chars(bytes value):
    """The inside of a JSON string literal for request bytes."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(value)
    cdef char *buf = <char *>malloc(6 * n + 1)
    cdef char *o
    if buf == NULL:
        raise MemoryError()
    try:
        o = _put_chars(buf, <const unsigned char *>PyBytes_AS_STRING(value), n)
        return PyBytes_FromStringAndSize(buf, o - buf)
    finally:
        free(buf)
