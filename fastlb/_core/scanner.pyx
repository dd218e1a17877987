# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""HTTP/1.1 head scanner and chunked decoder, compiled.

The pure-Python twin ``scanner_py.py`` is the executable spec; this module must agree
with it on every input and every split of it (return value, facts, ScanError status and
reason). Its module docstring states the invariants; docs/http-parsing.md lists every
strictness decision with its RFC section.

How it is fast: the caller's buffer is read in place (bytes and bytearray through their
macros, anything else through the buffer protocol); a line is found with memchr, then
validated with one 256-entry class table in loops that need no bounds check (the CR that
ends a complete line belongs to no class, so it stops every loop); fields are recorded
as offsets in a C array; names are classified by length, then a lowered compare. No
Python object is created per field while scanning.
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_CheckExact, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.object cimport PyObject
from libc.string cimport memchr, memcmp, memcpy

from ._scanerror import ScanError

cdef extern from "Python.h":
    # Unmanaged variants for the one place that grows a bytes object in place.
    PyObject *_bytes_new "PyBytes_FromStringAndSize"(const char *v, Py_ssize_t n)
    char *_bytes_ptr "PyBytes_AS_STRING"(PyObject *o)
    int _PyBytes_Resize(PyObject **o, Py_ssize_t n) except -1
    void _decref "Py_DECREF"(PyObject *o)

__all__ = ["RequestScanner", "ResponseScanner", "ChunkedDecoder", "ScanError"]

cdef enum:
    CR = 13
    LF = 10
    SP = 32
    HTAB = 9
    MAX_SIZE_DIGITS = 16   # chunk-size: at most 16 hex digits (and below 2**63)

# ---------------------------------------------------------------------------
# Byte classes, one bit each in CLS (same classes as the twin's regexes)
# ---------------------------------------------------------------------------
cdef enum:
    C_TCHAR = 1     # RFC 9110 §5.6.2 tchar
    C_VCHAR = 2     # %x21-7E: request-target octets
    C_FIELD = 4     # RFC 9110 §5.5: HTAB / SP / VCHAR / obs-text
    C_OWS = 8       # RFC 9110 §5.6.3: SP / HTAB
    C_HOST = 16     # RFC 3986 reg-name octets: unreserved / "%" / sub-delims
    C_QDTEXT = 32   # RFC 9110 §5.6.4 qdtext
    C_DIGIT = 64
    C_SCHEME = 128  # RFC 3986 §3.1: ALPHA / DIGIT / "+" / "-" / "."

cdef unsigned char CLS[256]
cdef unsigned char LOWER[256]
cdef signed char HEXVAL[256]   # -1 when not a HEXDIG


cdef void _init_tables() noexcept:
    cdef int c
    cdef bytes tchar = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    cdef bytes host = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~%!$&'()*+,;="
    cdef bytes scheme = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+-."
    for c in range(256):
        CLS[c] = 0
        LOWER[c] = c + 32 if 65 <= c <= 90 else c
        HEXVAL[c] = -1
        if 0x21 <= c <= 0x7E:
            CLS[c] |= C_VCHAR
        if c == HTAB or 0x20 <= c <= 0x7E or c >= 0x80:
            CLS[c] |= C_FIELD
            if c != 0x22 and c != 0x5C:
                CLS[c] |= C_QDTEXT
        if c == SP or c == HTAB:
            CLS[c] |= C_OWS
        if 0x30 <= c <= 0x39:
            CLS[c] |= C_DIGIT
    for c in tchar:
        CLS[c] |= C_TCHAR
    for c in host:
        CLS[c] |= C_HOST
    for c in scheme:
        CLS[c] |= C_SCHEME
    for c in range(10):
        HEXVAL[0x30 + c] = c
    for c in range(6):
        HEXVAL[0x41 + c] = 10 + c
        HEXVAL[0x61 + c] = 10 + c


_init_tables()

# Field kinds (same numbering as the twin's K_* constants).
cdef enum:
    K_OTHER = 0
    K_HOST = 1
    K_CONTENT_LENGTH = 2
    K_TRANSFER_ENCODING = 3
    K_CONNECTION = 4
    K_EXPECT = 5
    K_UPGRADE = 6
    K_REQUEST_ID = 7
    K_KEEP_ALIVE = 8
    K_PROXY_CONNECTION = 9
    K_TE = 10
    K_TRAILER = 11
    K_XFF = 12
    K_XFP = 13
    K_HTTP2_SETTINGS = 14
    K_TRACEPARENT = 15
    K_TRACESTATE = 16
    K_FORWARDED = 17
    K_X_REAL_IP = 18
    K_XF_OTHER = 19   # any other X-Forwarded-* (Host, Port, Prefix, Server, ...)

# Fields that carry a client's identity as a proxy saw it: from a peer that is not a
# trusted proxy they are removed, never forwarded as sent (X-Forwarded-For is rebuilt).
cdef enum:
    IDENTITY_MASK = ((1 << K_XFF) | (1 << K_XFP) | (1 << K_FORWARDED) | (1 << K_X_REAL_IP)
                     | (1 << K_XF_OTHER))

# Hop-by-hop fields never forwarded (RFC 9110 §7.6.1; RFC 9112 §6.1, §7.4), as a bit set.
cdef enum:
    # HTTP2-Settings is connection-specific by definition (RFC 9113 §3.1, RFC 7540 §3.2.1):
    # forwarded without its Upgrade it could only serve an h2c smuggling attempt.
    HOP_MASK = ((1 << K_CONNECTION) | (1 << K_KEEP_ALIVE) | (1 << K_PROXY_CONNECTION)
                | (1 << K_TE) | (1 << K_TRAILER) | (1 << K_TRANSFER_ENCODING)
                | (1 << K_HTTP2_SETTINGS))
    # A client cannot have these dropped by naming them in Connection: Host and
    # Content-Length steer routing and framing (smuggling), X-Request-ID tracing.
    REQUEST_PROTECTED = (1 << K_HOST) | (1 << K_CONTENT_LENGTH) | (1 << K_REQUEST_ID)
    RESPONSE_PROTECTED = 1 << K_CONTENT_LENGTH

cdef enum:
    ST_START = 0     # before the start-line (requests: skipping empty lines)
    ST_FIELDS = 1    # after the start-line

# Content-Length and chunk sizes must fit a signed 64-bit integer.
cdef long long MAX_SIZE = 0x7FFFFFFFFFFFFFFF


# ---------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------
cdef inline bint _ieq(const unsigned char *s, const char *lit, Py_ssize_t n) noexcept nogil:
    """s[0:n] equals the lowercase literal lit, ASCII case-insensitively."""
    cdef Py_ssize_t i
    for i in range(n):
        if LOWER[s[i]] != <unsigned char>lit[i]:
            return False
    return True


cdef inline bint _ieq2(const unsigned char *a, const unsigned char *b, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        if LOWER[a[i]] != LOWER[b[i]]:
            return False
    return True


cdef inline int _classify(const unsigned char *s, Py_ssize_t n) noexcept nogil:
    """Field kind from the name (RFC 9110 §5.1: names are case-insensitive)."""
    cdef unsigned char c0 = LOWER[s[0]]
    if n == 4:
        if c0 == b'h' and _ieq(s, b"host", 4):
            return K_HOST
    elif n == 14:
        if c0 == b'c' and _ieq(s, b"content-length", 14):
            return K_CONTENT_LENGTH
        if c0 == b'h' and _ieq(s, b"http2-settings", 14):
            return K_HTTP2_SETTINGS
    elif n == 17:
        if c0 == b't' and _ieq(s, b"transfer-encoding", 17):
            return K_TRANSFER_ENCODING
        if c0 == b'x' and _ieq(s, b"x-forwarded-proto", 17):
            return K_XFP
    elif n == 10:
        if c0 == b'c' and _ieq(s, b"connection", 10):
            return K_CONNECTION
        if c0 == b'k' and _ieq(s, b"keep-alive", 10):
            return K_KEEP_ALIVE
        if c0 == b't' and _ieq(s, b"tracestate", 10):
            return K_TRACESTATE
    elif n == 11:
        if c0 == b't' and _ieq(s, b"traceparent", 11):
            return K_TRACEPARENT
    elif n == 6:
        if c0 == b'e' and _ieq(s, b"expect", 6):
            return K_EXPECT
    elif n == 7:
        if c0 == b'u' and _ieq(s, b"upgrade", 7):
            return K_UPGRADE
        if c0 == b't' and _ieq(s, b"trailer", 7):
            return K_TRAILER
    elif n == 12:
        if c0 == b'x' and _ieq(s, b"x-request-id", 12):
            return K_REQUEST_ID
    elif n == 16:
        if c0 == b'p' and _ieq(s, b"proxy-connection", 16):
            return K_PROXY_CONNECTION
    elif n == 2:
        if c0 == b't' and _ieq(s, b"te", 2):
            return K_TE
    elif n == 15:
        if c0 == b'x' and _ieq(s, b"x-forwarded-for", 15):
            return K_XFF
    elif n == 9:
        if c0 == b'f' and _ieq(s, b"forwarded", 9):
            return K_FORWARDED
        if c0 == b'x' and _ieq(s, b"x-real-ip", 9):
            return K_X_REAL_IP
    if n > 12 and c0 == b'x' and _ieq(s, b"x-forwarded-", 12):
        return K_XF_OTHER
    return K_OTHER


# SWAR (8 bytes per step) pre-scan for the two long runs of a head: field values and
# the request-target. Each test is exact as a yes/no "some byte is outside the class"
# (borrows/carries only create false positives, which just hand over to the byte loop
# that follows and decides precisely).
cdef extern from *:
    """
    #define FASTLB_ONES 0x0101010101010101ULL
    #define FASTLB_HIGHS 0x8080808080808080ULL
    """
    const unsigned long long _ONES "FASTLB_ONES"
    const unsigned long long _HIGHS "FASTLB_HIGHS"


cdef inline unsigned long long _load8(const unsigned char *s) noexcept nogil:
    cdef unsigned long long x = 0
    memcpy(&x, s, 8)
    return x


cdef inline Py_ssize_t _field_run8(const unsigned char *p, Py_ssize_t i, Py_ssize_t end) noexcept nogil:
    # field-content bytes: any byte >= 0x20 except DEL (HTAB goes to the byte loop)
    cdef unsigned long long x, y
    while i + 8 <= end:
        x = _load8(p + i)
        y = x ^ (0x7FULL * _ONES)
        if (((x - 0x20ULL * _ONES) & ~x)
                | ((y - _ONES) & ~y)) & _HIGHS:
            break
        i += 8
    return i


cdef inline Py_ssize_t _target_run8(const unsigned char *p, Py_ssize_t i, Py_ssize_t end) noexcept nogil:
    # request-target bytes: 0x21..0x7E
    cdef unsigned long long x
    while i + 8 <= end:
        x = _load8(p + i)
        if (((x - 0x21ULL * _ONES) & ~x)
                | (x + _ONES) | x) & _HIGHS:
            break
        i += 8
    return i


cdef inline Py_ssize_t _next_comma(const unsigned char *p, Py_ssize_t i, Py_ssize_t b) noexcept nogil:
    while i < b and p[i] != b',':
        i += 1
    return i


cdef inline void _trim(const unsigned char *p, Py_ssize_t *a, Py_ssize_t *b) noexcept nogil:
    while a[0] < b[0] and (CLS[p[a[0]]] & C_OWS):
        a[0] += 1
    while b[0] > a[0] and (CLS[p[b[0] - 1]] & C_OWS):
        b[0] -= 1


cdef int _fail(Head *h, int status, str reason) except -1:
    # Every response error is the backend's fault: 502 for the client.
    raise ScanError(status if h.is_request else 502, reason)


cdef inline int _get_buffer(object buf, Py_buffer *view, const unsigned char **p, Py_ssize_t *n) except -1:
    """Borrow buf's bytes: bytes/bytearray directly (returns 0), else via the buffer
    protocol (returns 1: the caller must PyBuffer_Release(view))."""
    if PyBytes_CheckExact(buf):
        p[0] = <const unsigned char *>PyBytes_AS_STRING(buf)
        n[0] = PyBytes_GET_SIZE(buf)
        return 0
    if PyByteArray_CheckExact(buf):
        p[0] = <const unsigned char *>PyByteArray_AS_STRING(buf)
        n[0] = PyByteArray_GET_SIZE(buf)
        return 0
    PyObject_GetBuffer(buf, view, PyBUF_SIMPLE)
    p[0] = <const unsigned char *>view.buf
    n[0] = view.len
    return 1


# ---------------------------------------------------------------------------
# the head scan, shared by both directions
# ---------------------------------------------------------------------------
cdef inline void _reset(Head *h) noexcept nogil:
    h.pos = 0
    h.search = 0
    h.state = ST_START
    h.complete = False


cdef inline void _begin(Head *h) noexcept nogil:
    h.nfields = 0
    h.cl = -1
    h.te_seen = False
    h.te_chunked = 0
    h.te_other = 0
    h.te_last_chunked = False
    h.conn_close = False
    h.conn_keep_alive = False
    h.conn_upgrade = False
    h.conn_other = False
    h.upgrade_field = False
    h.m0 = h.m1 = h.t0 = h.t1 = 0
    h.absolute_form = False
    h.a0 = h.a1 = 0
    h.hosts = 0
    h.h0 = h.h1 = 0
    h.expect_continue = False
    h.rid0 = -1
    h.rid1 = -1
    h.ntp = 0
    h.tp0 = h.tp1 = 0
    h.status = 0
    h.r0 = h.r1 = 0


cdef inline int _check_start_limit(Head *h, Py_ssize_t ce) except -1:
    # RFC 9112 §3: a request-line longer than any URI the server parses is 414; counted
    # from offset 0 so skipped empty lines share the budget.
    if ce > h.max_line:
        if h.is_request:
            _fail(h, 414, "request-line too long")
        _fail(h, 502, "status-line too long")
    return 0


cdef inline int _check_field_limits(Head *h, Py_ssize_t pos, Py_ssize_t ce, Py_ssize_t lf) except -1:
    # RFC 6585 §5 (431): a field line above max_line, or the head above max_head.
    if ce - pos > h.max_line or lf + 1 > h.max_head:
        _fail(h, 431, "header section too large")
    return 0


cdef int _check_line_start(Head *h, const unsigned char *p, Py_ssize_t pos, Py_ssize_t end) except -1:
    # What the first byte(s) of a line decide, checked first so that garbage is refused
    # without waiting for an LF that may never come (e.g. a TLS ClientHello).
    cdef unsigned char c = p[pos]
    if c == CR:
        if pos + 1 < end and p[pos + 1] != LF:
            _fail(h, 400, "bare CR line ending")  # RFC 9112 §2.2
        return 0
    if c == LF:
        return 0  # a bare LF: the line-ending check names it
    if h.state == ST_START:
        if h.is_request:
            if not (CLS[c] & C_TCHAR):
                _fail(h, 400, "invalid method")  # RFC 9112 §3: method = token
        elif c != b'H':
            _fail(h, 502, "invalid or unsupported HTTP version in status-line")  # §4
    elif CLS[c] & C_OWS:
        # RFC 9112 §5.2: obs-fold is rejected with 400; also whitespace between the
        # start-line and the first field (§2.2).
        _fail(h, 400, "obs-fold or line starting with whitespace")
    elif not (CLS[c] & C_TCHAR):
        _fail(h, 400, "invalid field name")  # RFC 9112 §5: field-name = token
    return 0


cdef Py_ssize_t _scan_head(Head *h, const unsigned char *p, Py_ssize_t end) except -1:
    cdef const unsigned char *q
    cdef Py_ssize_t pos, lf, ce, lb
    while True:
        pos = h.pos
        q = <const unsigned char *>memchr(p + h.search, LF, <size_t>(end - h.search))
        if q == NULL:
            # Partial line: only limits the complete line is certain to fail (the content
            # ends at or after lb, the LF comes at or after end).
            h.search = end
            # (a lone CR is undecided: the end of an empty line, or a bare CR)
            if end > pos and not (end - pos == 1 and p[pos] == CR):
                _check_line_start(h, p, pos, end)
                lb = end - 1 if p[end - 1] == CR else end
                if h.state == ST_START:
                    _check_start_limit(h, lb)
                else:
                    _check_field_limits(h, pos, lb, end)
            return 0
        lf = q - p
        ce = lf - 1 if (lf > pos and p[lf - 1] == CR) else lf
        _check_line_start(h, p, pos, lf + 1)
        if h.state == ST_START:
            _check_start_limit(h, ce)
            if ce == lf:
                # RFC 9112 §2.2 lets a recipient accept a bare LF (MAY); fastlb refuses
                # it, like llhttp strict: it is a smuggling ingredient, and ambiguity is
                # rejected, never guessed (docs/http-parsing.md §4).
                _fail(h, 400, "bare LF line ending")
            if ce == pos and h.is_request:
                # RFC 9112 §2.2: ignore empty lines before the request-line.
                h.pos = h.search = lf + 1
                continue
            _begin(h)
            if h.is_request:
                _request_line(h, p, pos, ce)
            else:
                _status_line(h, p, pos, ce)
            h.state = ST_FIELDS
        else:
            _check_field_limits(h, pos, ce, lf)
            if ce == lf:
                _fail(h, 400, "bare LF line ending")  # RFC 9112 §2.2, as above
            if ce == pos:
                # RFC 9112 §2.1: the empty line ends the header section.
                if h.is_request:
                    _request_end(h)
                else:
                    _response_end(h)
                h.state = ST_START
                h.pos = h.search = 0
                h.n = lf + 1
                h.complete = True
                return lf + 1
            _field_line(h, p, pos, ce)
        h.pos = h.search = lf + 1


cdef inline int _field_line(Head *h, const unsigned char *p, Py_ssize_t pos, Py_ssize_t ce) except -1:
    # p[ce] is the line's CR: it belongs to no class, so the loops below stop there.
    cdef Py_ssize_t i, name_end, vstart, vend
    cdef int kind
    cdef Field *f
    if h.nfields >= h.max_fields:
        _fail(h, 431, "too many header fields")  # RFC 6585 §5
    # (a first byte that is not a tchar was refused by _check_line_start)
    # RFC 9112 §5: field-line = field-name ":" OWS field-value OWS; name = token
    i = pos
    while CLS[p[i]] & C_TCHAR:
        i += 1
    if i == pos:
        _fail(h, 400, "invalid field name")
    if p[i] != b':':
        if i < ce and (CLS[p[i]] & C_OWS):
            # RFC 9112 §5.1: no whitespace between field name and colon.
            _fail(h, 400, "whitespace between field name and colon")
        _fail(h, 400, "invalid field name")
    name_end = i
    i += 1
    while CLS[p[i]] & C_OWS:
        i += 1
    vstart = i
    i = _field_run8(p, i, ce)
    while CLS[p[i]] & C_FIELD:
        i += 1
    if i != ce:
        # RFC 9110 §5.5: NUL, bare CR, other CTLs and DEL are invalid in a value.
        _fail(h, 400, "invalid character in field value")
    vend = ce
    while vend > vstart and (CLS[p[vend - 1]] & C_OWS):
        vend -= 1
    kind = _classify(p + pos, name_end - pos)
    f = &h.fields[h.nfields]
    h.nfields += 1
    f.name0 = pos
    f.name1 = name_end
    f.value0 = vstart
    f.value1 = vend
    f.kind = kind
    if kind != K_OTHER:
        if h.is_request:
            _request_field(h, p, kind, vstart, vend)
        else:
            _response_field(h, p, kind, vstart, vend)
    return 0


cdef int _content_length(Head *h, const unsigned char *p, Py_ssize_t a, Py_ssize_t b) except -1:
    # RFC 9110 §8.6: Content-Length = 1*DIGIT; RFC 9112 §6.3 (5): reject invalid or
    # repeated values (even identical ones: no list merging at a proxy).
    cdef long long value = 0
    cdef int d
    cdef Py_ssize_t i
    if h.cl >= 0:
        _fail(h, 400, "duplicate Content-Length")
    if a == b:
        _fail(h, 400, "empty Content-Length")
    for i in range(a, b):
        d = <int>p[i] - 0x30
        if d < 0 or d > 9:
            _fail(h, 400, "invalid Content-Length")
        if value > (MAX_SIZE - d) // 10:
            _fail(h, 400, "Content-Length too large")
        value = value * 10 + d
    h.cl = value
    return 0


cdef int _transfer_encoding(Head *h, const unsigned char *p, Py_ssize_t a, Py_ssize_t b) except -1:
    # RFC 9112 §6.1: one list across every Transfer-Encoding field; empty elements refused.
    cdef Py_ssize_t i = a, j, s, e
    h.te_seen = True
    while True:
        j = _next_comma(p, i, b)
        s = i
        e = j
        _trim(p, &s, &e)
        if s == e:
            _fail(h, 400, "empty transfer-coding")
        if e - s == 7 and _ieq(p + s, b"chunked", 7):
            h.te_chunked += 1
            h.te_last_chunked = True
        else:
            h.te_other += 1
            h.te_last_chunked = False
        if j >= b:
            return 0
        i = j + 1


cdef int _connection(Head *h, const unsigned char *p, Py_ssize_t a, Py_ssize_t b) except -1:
    # RFC 9110 §7.6.1: Connection = #connection-option (case-insensitive tokens)
    cdef Py_ssize_t i = a, j, s, e
    while True:
        j = _next_comma(p, i, b)
        s = i
        e = j
        _trim(p, &s, &e)
        if s == e:
            pass
        elif e - s == 5 and _ieq(p + s, b"close", 5):
            h.conn_close = True
            h.conn_other = True  # a field named "Close" would be dropped too
        elif e - s == 10 and _ieq(p + s, b"keep-alive", 10):
            h.conn_keep_alive = True
        elif e - s == 7 and _ieq(p + s, b"upgrade", 7):
            h.conn_upgrade = True
        else:
            h.conn_other = True
        if j >= b:
            return 0
        i = j + 1


cdef inline bint _keep_alive(Head *h) noexcept nogil:
    # RFC 9112 §9.3: HTTP/1.1 persists unless "close"; HTTP/1.0 needs "keep-alive".
    if h.conn_close:
        return False
    return h.minor == 1 or h.conn_keep_alive


# ---------------------------------------------------------------------------
# requests
# ---------------------------------------------------------------------------
cdef int _request_line(Head *h, const unsigned char *p, Py_ssize_t pos, Py_ssize_t ce) except -1:
    # RFC 9112 §3: request-line = method SP request-target SP HTTP-version
    cdef Py_ssize_t i = pos, t0
    while CLS[p[i]] & C_TCHAR:  # RFC 9110 §9.1: method = token
        i += 1
    if i == pos or p[i] != SP:
        _fail(h, 400, "invalid method")
    h.m0 = pos
    h.m1 = i
    i += 1
    t0 = i
    i = _target_run8(p, i, ce)
    while CLS[p[i]] & C_VCHAR:
        i += 1
    if i == t0:
        _fail(h, 400, "missing request-target")
    if i == ce:
        _fail(h, 400, "missing HTTP version")  # HTTP/0.9 (RFC 9112 §2.3)
    if p[i] != SP:
        _fail(h, 400, "invalid character in request-target")
    h.t0 = t0
    h.t1 = i
    _request_version(h, p, i + 1, ce)
    _target_form(h, p)
    return 0


cdef inline int _request_version(Head *h, const unsigned char *p, Py_ssize_t a, Py_ssize_t b) except -1:
    # RFC 9112 §2.3: HTTP-version = "HTTP" "/" DIGIT "." DIGIT (case-sensitive)
    if (b - a == 8 and memcmp(p + a, b"HTTP/", 5) == 0 and (CLS[p[a + 5]] & C_DIGIT)
            and p[a + 6] == b'.' and (CLS[p[a + 7]] & C_DIGIT)):
        if p[a + 5] == b'1' and (p[a + 7] == b'0' or p[a + 7] == b'1'):
            h.minor = p[a + 7] - 0x30
            return 0
        _fail(h, 505, "HTTP version not supported")  # RFC 9110 §15.6.6
    _fail(h, 400, "invalid HTTP version")
    return 0


cdef int _valid_host(const unsigned char *p, Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    # RFC 9110 §7.2: Host = uri-host [ ":" port ]; uri-host is an IP-literal in brackets
    # or a non-empty reg-name (RFC 3986 §3.2.2; http URIs have a host, RFC 9110 §4.2.1).
    cdef Py_ssize_t i = a, j
    if p[i] == b'[':
        i += 1
        j = i
        while i < b and ((CLS[p[i]] & C_HOST) or p[i] == b':'):
            i += 1
        if i == j or i >= b or p[i] != b']':
            return False
        i += 1
    else:
        j = i
        while i < b and (CLS[p[i]] & C_HOST):
            i += 1
        if i == j:
            return False
    if i < b:
        if p[i] != b':':
            return False
        i += 1
        while i < b and (CLS[p[i]] & C_DIGIT):
            i += 1
        if i != b:
            return False
    return True


cdef inline int _target_form(Head *h, const unsigned char *p) except -1:
    # RFC 9112 §3.2: origin-form / absolute-form / authority-form / asterisk-form
    cdef Py_ssize_t mlen = h.m1 - h.m0, t0 = h.t0, t1 = h.t1, i, a0, a1, at
    if mlen == 7 and memcmp(p + h.m0, b"CONNECT", 7) == 0:
        return 0  # authority-form; the proxy answers 405, not the scanner
    if t1 - t0 == 1 and p[t0] == b'*':
        if not (mlen == 7 and memcmp(p + h.m0, b"OPTIONS", 7) == 0):
            _fail(h, 400, "asterisk-form request-target without OPTIONS")  # §3.2.4
        return 0
    if p[t0] == b'/':
        return 0
    # RFC 3986 §3.1: scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ) then ":"
    i = t0
    if b'a' <= LOWER[p[t0]] <= b'z':
        i = t0 + 1
        while i < t1 and (CLS[p[i]] & C_SCHEME):
            i += 1
    if i == t0 or i >= t1 or p[i] != b':':
        _fail(h, 400, "invalid request-target form")
    # absolute-form (RFC 9112 §3.2.2) with a "//" authority as in http(s) URIs (RFC 9110
    # §4.2.1), ending at "/", "?" or "#" (RFC 3986 §3.2)
    a0 = i + 1
    if not (t1 - a0 >= 2 and p[a0] == b'/' and p[a0 + 1] == b'/'):
        _fail(h, 400, "absolute-form request-target without authority")
    a0 += 2
    a1 = a0
    while a1 < t1 and p[a1] != b'/' and p[a1] != b'?' and p[a1] != b'#':
        a1 += 1
    at = a0
    while at < a1 and p[at] != b'@':
        at += 1
    if at < a1:
        # RFC 9110 §4.2.4: userinfo is deprecated and "likely being used to obscure the
        # authority"; a recipient SHOULD treat it as an error. Routing by it would let
        # "http://a.example:x@b.internal/" reach a pool by a name Host could never carry.
        _fail(h, 400, "userinfo in request-target authority")
    if a0 == a1:
        _fail(h, 400, "empty authority in request-target")
    if not _valid_host(p, a0, a1):
        # the authority stands in for Host (RFC 9112 §3.2.2): the same grammar applies
        _fail(h, 400, "invalid authority in request-target")
    h.absolute_form = True
    h.a0 = a0
    h.a1 = a1
    return 0


cdef int _request_field(Head *h, const unsigned char *p, int kind, Py_ssize_t a, Py_ssize_t b) except -1:
    if kind == K_HOST:
        h.hosts += 1
        if h.hosts > 1:
            _fail(h, 400, "multiple Host fields")  # RFC 9112 §3.2
        if a == b:
            # RFC 9112 §3.2: an empty Host is only for a target URI without authority,
            # and an http(s) URI always has one (RFC 9110 §4.2.1, §4.2.2).
            _fail(h, 400, "empty Host")
        if not _valid_host(p, a, b):
            _fail(h, 400, "invalid Host")
        if h.absolute_form and not (b - a == h.a1 - h.a0 and _ieq2(p + a, p + h.a0, b - a)):
            # RFC 9112 §3.2: Host MUST equal the target's authority. An origin uses the
            # target (§3.2.2), the proxy routes on Host: they must not differ.
            _fail(h, 400, "Host differs from the request-target authority")
        h.h0 = a
        h.h1 = b
    elif kind == K_CONTENT_LENGTH:
        _content_length(h, p, a, b)
    elif kind == K_TRANSFER_ENCODING:
        _transfer_encoding(h, p, a, b)
    elif kind == K_CONNECTION:
        _connection(h, p, a, b)
    elif kind == K_EXPECT:
        # RFC 9110 §10.1.1: 100-continue is the only expectation; others get 417.
        if not (b - a == 12 and _ieq(p + a, b"100-continue", 12)):
            _fail(h, 417, "unsupported expectation")
        h.expect_continue = True
    elif kind == K_UPGRADE:
        h.upgrade_field = True
    elif kind == K_REQUEST_ID:
        if h.rid0 < 0:  # the first one wins
            h.rid0 = a
            h.rid1 = b
    elif kind == K_TRACEPARENT:
        # W3C Trace Context §3.2: exactly one traceparent, or it is invalid
        h.ntp += 1
        h.tp0 = a
        h.tp1 = b
    return 0


cdef int _request_end(Head *h) except -1:
    if h.minor == 1 and h.hosts == 0:
        _fail(h, 400, "missing Host")  # RFC 9112 §3.2
    if h.te_seen:
        if h.minor == 0:
            _fail(h, 400, "Transfer-Encoding in an HTTP/1.0 request")  # RFC 9112 §6.1
        if h.cl >= 0:
            _fail(h, 400, "both Transfer-Encoding and Content-Length")  # §6.1, §6.3 (3)
        if not h.te_last_chunked:
            _fail(h, 400, "chunked is not the final transfer coding")  # §6.3 (4)
        if h.te_chunked > 1:
            _fail(h, 400, "chunked applied more than once")  # §7.1
        if h.te_other:
            _fail(h, 501, "unsupported transfer coding")  # §6.1
    return 0


# ---------------------------------------------------------------------------
# responses
# ---------------------------------------------------------------------------
cdef int _status_line(Head *h, const unsigned char *p, Py_ssize_t pos, Py_ssize_t ce) except -1:
    # RFC 9112 §4: status-line = HTTP-version SP status-code SP [ reason-phrase ]
    cdef Py_ssize_t i, j
    cdef int code = 0, d
    if ce - pos < 8 or memcmp(p + pos, b"HTTP/1.", 7) != 0 or (p[pos + 7] != b'0' and p[pos + 7] != b'1'):
        _fail(h, 502, "invalid or unsupported HTTP version in status-line")
    h.minor = p[pos + 7] - 0x30
    i = pos + 8
    if ce - i < 4 or p[i] != SP:
        _fail(h, 502, "invalid status-line")
    for j in range(i + 1, i + 4):
        d = <int>p[j] - 0x30
        if d < 0 or d > 9:
            _fail(h, 502, "invalid status code")
        code = code * 10 + d
    if code < 100 or code > 599:
        _fail(h, 502, "invalid status code")  # RFC 9110 §15
    i += 4
    if i < ce:
        if p[i] != SP:
            _fail(h, 502, "invalid status-line")
        i += 1
        j = i
        while CLS[p[j]] & C_FIELD:  # reason-phrase = 1*( HTAB / SP / VCHAR / obs-text )
            j += 1
        if j != ce:
            _fail(h, 502, "invalid character in reason-phrase")
    # else "HTTP/1.1 200" without SP and reason: accepted, rebuilt with an empty reason.
    h.status = code
    h.r0 = i
    h.r1 = ce
    return 0


cdef int _response_field(Head *h, const unsigned char *p, int kind, Py_ssize_t a, Py_ssize_t b) except -1:
    if kind == K_CONTENT_LENGTH:
        _content_length(h, p, a, b)
    elif kind == K_TRANSFER_ENCODING:
        _transfer_encoding(h, p, a, b)
    elif kind == K_CONNECTION:
        _connection(h, p, a, b)
    elif kind == K_UPGRADE:
        h.upgrade_field = True
    return 0


cdef int _response_end(Head *h) except -1:
    if h.te_seen:
        if h.minor == 0:
            _fail(h, 502, "Transfer-Encoding in an HTTP/1.0 response")  # RFC 9112 §6.1
        if h.cl >= 0:
            _fail(h, 502, "both Transfer-Encoding and Content-Length")  # §6.3 (3)
        if h.te_chunked != 1 or h.te_other:
            # §6.3 (4) would read until close; fastlb refuses (docs/http-parsing.md)
            _fail(h, 502, "Transfer-Encoding other than chunked")
    return 0


# ---------------------------------------------------------------------------
# output: headers() and the rebuilt heads
# ---------------------------------------------------------------------------
cdef bint _connection_listed(Head *h, const unsigned char *p, Field *f) noexcept nogil:
    """Is f's name one of the Connection options (RFC 9110 §7.6.1)?"""
    cdef Py_ssize_t k, i, j, s, e, b
    cdef Py_ssize_t nlen = f.name1 - f.name0
    cdef Field *c
    for k in range(h.nfields):
        c = &h.fields[k]
        if c.kind != K_CONNECTION:
            continue
        i = c.value0
        b = c.value1
        while True:
            j = _next_comma(p, i, b)
            s = i
            e = j
            _trim(p, &s, &e)
            if e - s == nlen and _ieq2(p + s, p + f.name0, nlen):
                return True
            if j >= b:
                break
            i = j + 1
    return False


cdef Py_ssize_t _mark_kept(Head *h, const unsigned char *p, int drop, int protected) noexcept nogil:
    """Set Field.keep; return the bytes the kept "name: value\\r\\n" lines take."""
    cdef Py_ssize_t k, size = 0
    cdef Field *f
    for k in range(h.nfields):
        f = &h.fields[k]
        f.keep = False
        if (drop >> f.kind) & 1:
            continue
        if h.conn_other and not ((protected >> f.kind) & 1) and _connection_listed(h, p, f):
            continue
        f.keep = True
        size += (f.name1 - f.name0) + (f.value1 - f.value0) + 4
    return size


cdef Py_ssize_t _unkeep_named(Head *h, const unsigned char *p, tuple names) except -1:
    """Clear Field.keep of kept ordinary (or X-Forwarded-*) fields whose name is in ``names`` (lowercase
    bytes); return the bytes their lines would have taken."""
    cdef Py_ssize_t k, n, size = 0
    cdef Field *f
    cdef bytes name
    for k in range(h.nfields):
        f = &h.fields[k]
        if not f.keep or (f.kind != K_OTHER and f.kind != K_XF_OTHER):
            continue
        n = f.name1 - f.name0
        for name in names:
            if PyBytes_GET_SIZE(name) == n and _ieq2(p + f.name0, <const unsigned char *>PyBytes_AS_STRING(name), n):
                f.keep = False
                size += n + (f.value1 - f.value0) + 4
                break
    return size


cdef inline char *_put(char *o, const void *src, Py_ssize_t n) noexcept nogil:
    memcpy(o, src, <size_t>n)
    return o + n


cdef char *_put_kept(Head *h, const unsigned char *p, char *o) noexcept nogil:
    cdef Py_ssize_t k
    cdef Field *f
    for k in range(h.nfields):
        f = &h.fields[k]
        if f.keep:
            o = _put(o, p + f.name0, f.name1 - f.name0)
            o = _put(o, b": ", 2)
            o = _put(o, p + f.value0, f.value1 - f.value0)
            o = _put(o, b"\r\n", 2)
    return o


cdef list _headers(Head *h, object buf):
    cdef Py_buffer view
    cdef const unsigned char *p = NULL
    cdef Py_ssize_t size = 0, k
    cdef Field *f
    cdef int release
    cdef list out
    if not h.complete:
        raise RuntimeError("no complete head: scan() has not returned n > 0")
    release = _get_buffer(buf, &view, &p, &size)
    try:
        if size < h.n:
            raise ValueError("buffer no longer holds the scanned head")
        out = []
        for k in range(h.nfields):
            f = &h.fields[k]
            out.append((PyBytes_FromStringAndSize(<const char *>p + f.name0, f.name1 - f.name0),
                        PyBytes_FromStringAndSize(<const char *>p + f.value0, f.value1 - f.value0)))
        return out
    finally:
        if release:
            PyBuffer_Release(&view)


cdef object _header_value(Head *h, object buf, object name):
    """First field named ``name`` (case-insensitive), value OWS-trimmed, or None."""
    cdef Py_buffer view
    cdef const unsigned char *p = NULL
    cdef Py_ssize_t size = 0, k, nlen
    cdef Field *f
    cdef int release
    cdef bytes name_b
    if not h.complete:
        raise RuntimeError("no complete head: scan() has not returned n > 0")
    name_b = name if PyBytes_CheckExact(name) else bytes(name)
    nlen = PyBytes_GET_SIZE(name_b)
    release = _get_buffer(buf, &view, &p, &size)
    try:
        if size < h.n:
            raise ValueError("buffer no longer holds the scanned head")
        for k in range(h.nfields):
            f = &h.fields[k]
            if f.name1 - f.name0 == nlen and _ieq2(p + f.name0, <const unsigned char *>PyBytes_AS_STRING(name_b), nlen):
                return PyBytes_FromStringAndSize(<const char *>p + f.value0, f.value1 - f.value0)
        return None
    finally:
        if release:
            PyBuffer_Release(&view)


cdef Head *_new_head(Py_ssize_t max_line, Py_ssize_t max_head, Py_ssize_t max_fields, bint is_request, Head *h) except NULL:
    if max_line < 1 or max_head < 1 or max_fields < 0:
        raise ValueError("limits must be positive")
    h.max_line = max_line
    h.max_head = max_head
    h.max_fields = max_fields
    h.is_request = is_request
    h.fields = <Field *>PyMem_Malloc(sizeof(Field) * (max_fields if max_fields > 0 else 1))
    if h.fields == NULL:
        raise MemoryError()
    h.nfields = 0
    h.minor = 1
    _reset(h)
    _begin(h)
    return h


# ---------------------------------------------------------------------------
# public classes
# ---------------------------------------------------------------------------
# A method name forwarded on every request is shared, not rebuilt.
cdef bytes _GET = b"GET"
cdef bytes _POST = b"POST"
cdef bytes _PUT = b"PUT"
cdef bytes _DELETE = b"DELETE"
cdef bytes _HEAD = b"HEAD"
cdef bytes _PATCH = b"PATCH"
cdef bytes _OPTIONS = b"OPTIONS"
cdef bytes _EMPTY = b""


cdef inline bytes _method_bytes(const unsigned char *m, Py_ssize_t n):
    if n == 3:
        if memcmp(m, b"GET", 3) == 0:
            return _GET
        if memcmp(m, b"PUT", 3) == 0:
            return _PUT
    elif n == 4:
        if memcmp(m, b"POST", 4) == 0:
            return _POST
        if memcmp(m, b"HEAD", 4) == 0:
            return _HEAD
    elif n == 6:
        if memcmp(m, b"DELETE", 6) == 0:
            return _DELETE
    elif n == 5:
        if memcmp(m, b"PATCH", 5) == 0:
            return _PATCH
    elif n == 7:
        if memcmp(m, b"OPTIONS", 7) == 0:
            return _OPTIONS
    return PyBytes_FromStringAndSize(<const char *>m, n)


cdef inline bytes _same_or_new(bytes previous, const unsigned char *s, Py_ssize_t n):
    # The requests of one connection nearly always carry the same Host: reuse the bytes
    # object of the previous head when the value is unchanged.
    if n == 0:
        return _EMPTY
    if PyBytes_GET_SIZE(previous) == n and memcmp(PyBytes_AS_STRING(previous), s, <size_t>n) == 0:
        return previous
    return PyBytes_FromStringAndSize(<const char *>s, n)


cdef class _HeadScanner:
    """Shared by RequestScanner and ResponseScanner (see scanner.pxd)."""

    def __dealloc__(self):
        PyMem_Free(self.h.fields)
        self.h.fields = NULL

    @property
    def max_line(self):
        return self.h.max_line

    @property
    def max_head(self):
        return self.h.max_head

    @property
    def max_fields(self):
        return self.h.max_fields

    def reset(self):
        """Forget any partially scanned head."""
        _reset(&self.h)

    def scan(self, buf):
        """Look for a complete head at buf[0:]; 0 = need more bytes, n = head length."""
        cdef Py_buffer view
        cdef const unsigned char *p = NULL
        cdef Py_ssize_t size = 0
        if _get_buffer(buf, &view, &p, &size) == 0:
            return self._scan(p, size)
        try:
            return self._scan(p, size)
        finally:
            PyBuffer_Release(&view)

    cdef Py_ssize_t _scan(self, const unsigned char *p, Py_ssize_t end) except -1:
        cdef Head *h = &self.h
        cdef Py_ssize_t n
        h.complete = False
        if end < h.search:
            _reset(h)  # the buffer shrank: the caller did not just append; start over
        try:
            n = _scan_head(h, p, end)
        except ScanError:
            _reset(h)
            raise
        if n:
            self.http_minor = h.minor
            self.content_length = h.cl
            self.chunked = h.te_seen
            self.keep_alive = _keep_alive(h)
            self.header_count = h.nfields
            self._facts(p)
        return n

    cdef int _facts(self, const unsigned char *p) except -1:
        return 0

    def headers(self, buf):
        """[(name as sent, value OWS-trimmed)] of the last scanned head."""
        return _headers(&self.h, buf)

    def header_value(self, buf, name):
        """Value of the first field called ``name`` (any case), OWS-trimmed, or None."""
        return _header_value(&self.h, buf, name)


@cython.final
cdef class RequestScanner(_HeadScanner):
    """Scanner for request heads (RFC 9112 §3); errors carry the status to answer."""

    def __cinit__(self, Py_ssize_t max_line=8192, Py_ssize_t max_head=65536, Py_ssize_t max_fields=100):
        self.h.fields = NULL
        _new_head(max_line, max_head, max_fields, True, &self.h)
        self.method = _EMPTY
        self.target = _EMPTY
        self.host = _EMPTY
        self.http_minor = 1
        self.content_length = -1
        self.request_id = None
        self.traceparent = None

    cdef int _facts(self, const unsigned char *p) except -1:
        cdef Head *h = &self.h
        cdef int minor = h.minor
        self.method = _method_bytes(p + h.m0, h.m1 - h.m0)
        self.target = PyBytes_FromStringAndSize(<const char *>p + h.t0, h.t1 - h.t0)
        if h.hosts == 0 and h.absolute_form:
            # HTTP/1.0 absolute-form without Host: the target's authority names the host
            # (RFC 9112 §3.2.2), validated by _target_form with Host's grammar.
            self.host = PyBytes_FromStringAndSize(<const char *>p + h.a0, h.a1 - h.a0)
        else:
            self.host = _same_or_new(self.host, p + h.h0, h.h1 - h.h0)
        # RFC 9110 §7.8: Upgrade is ignored in HTTP/1.0, and needs the "upgrade" option.
        self.upgrade = minor == 1 and h.conn_upgrade and h.upgrade_field
        # RFC 9110 §10.1.1: 100-continue in an HTTP/1.0 request MUST be ignored.
        self.expect_continue = minor == 1 and h.expect_continue
        if h.rid0 < 0:
            self.request_id = None
        else:
            self.request_id = PyBytes_FromStringAndSize(<const char *>p + h.rid0, h.rid1 - h.rid0)
        if h.ntp == 0:
            self.traceparent = None
        elif h.ntp > 1:
            self.traceparent = _EMPTY  # repeated: invalid, like an empty one
        else:
            self.traceparent = PyBytes_FromStringAndSize(<const char *>p + h.tp0, h.tp1 - h.tp0)
        return 0

    def build_upstream_head(self, buf, client_ip, extra, bint keep_upgrade, bint drop_trace=False,
                            bint trusted=False, tuple drop_names=None):
        """The head to send upstream: hop-by-hop removed, X-Forwarded-For rebuilt;
        ``drop_trace``: traceparent and tracestate removed too (an invalid one is
        replaced, never forwarded). From a peer that is not ``trusted``, every
        identity field (X-Forwarded-*, Forwarded, X-Real-IP) is removed and
        X-Forwarded-For is ``client_ip`` alone; from a trusted one they are kept and
        ``client_ip`` is appended to its X-Forwarded-For. ``drop_names``: lowercase
        names of other fields to remove (credentials, headers fastlb sets itself)."""
        cdef Head *h = &self.h
        cdef Py_buffer view
        cdef const unsigned char *p = NULL
        cdef Py_ssize_t size = 0, total, k, nxff = 0, xff_bytes = 0, ip_len, extra_len
        cdef int release, drop, protected
        cdef Field *f
        cdef bytes ip_b, extra_b, out
        cdef char *o
        if not h.complete:
            raise RuntimeError("no complete head: scan() has not returned n > 0")
        if client_ip is None:
            ip_b = _EMPTY
        else:
            ip_b = client_ip if PyBytes_CheckExact(client_ip) else bytes(client_ip)
        extra_b = extra if PyBytes_CheckExact(extra) else bytes(extra)
        ip_len = PyBytes_GET_SIZE(ip_b)
        extra_len = PyBytes_GET_SIZE(extra_b)
        drop = HOP_MASK | ((1 << K_XFF) if trusted else IDENTITY_MASK)
        if drop_trace:
            drop |= (1 << K_TRACEPARENT) | (1 << K_TRACESTATE)
        protected = REQUEST_PROTECTED
        if keep_upgrade:
            protected |= 1 << K_UPGRADE
        else:
            drop |= 1 << K_UPGRADE
        release = _get_buffer(buf, &view, &p, &size)
        try:
            if size < h.n:
                raise ValueError("buffer no longer holds the scanned head")
            # pass 1: sizes
            total = (h.m1 - h.m0) + 1 + (h.t1 - h.t0) + 11  # "M T HTTP/1.1\r\n"
            total += _mark_kept(h, p, drop, protected)
            if drop_names:
                total -= _unkeep_named(h, p, drop_names)
            if ip_len:
                for k in range(h.nfields if trusted else 0):
                    f = &h.fields[k]
                    if f.kind == K_XFF and f.value1 > f.value0:
                        nxff += 1
                        xff_bytes += f.value1 - f.value0
                total += 17 + xff_bytes + 2 * nxff + ip_len + 2  # "X-Forwarded-For: " ... CRLF
            total += extra_len + 2
            # pass 2: copy
            out = PyBytes_FromStringAndSize(NULL, total)
            o = PyBytes_AS_STRING(out)
            o = _put(o, p + h.m0, h.m1 - h.m0)
            o = _put(o, b" ", 1)
            o = _put(o, p + h.t0, h.t1 - h.t0)
            o = _put(o, b" HTTP/1.1\r\n", 11)
            o = _put_kept(h, p, o)
            if ip_len:
                o = _put(o, b"X-Forwarded-For: ", 17)
                for k in range(h.nfields if trusted else 0):
                    f = &h.fields[k]
                    if f.kind == K_XFF and f.value1 > f.value0:
                        o = _put(o, p + f.value0, f.value1 - f.value0)
                        o = _put(o, b", ", 2)
                o = _put(o, PyBytes_AS_STRING(ip_b), ip_len)
                o = _put(o, b"\r\n", 2)
            o = _put(o, PyBytes_AS_STRING(extra_b), extra_len)
            _put(o, b"\r\n", 2)
            return out
        finally:
            if release:
                PyBuffer_Release(&view)


@cython.final
cdef class ResponseScanner(_HeadScanner):
    """Scanner for response heads (RFC 9112 §4); every error is 502 for the client."""

    def __cinit__(self, Py_ssize_t max_line=8192, Py_ssize_t max_head=65536, Py_ssize_t max_fields=100):
        self.h.fields = NULL
        _new_head(max_line, max_head, max_fields, False, &self.h)
        self.http_minor = 1
        self.content_length = -1

    cdef int _facts(self, const unsigned char *p) except -1:
        self.status = self.h.status
        self.upgrade = self.h.upgrade_field
        return 0

    def build_downstream_head(self, buf, extra, bint keep_upgrade):
        """The head to send to the client: hop-by-hop removed, X-Forwarded-* untouched."""
        cdef Head *h = &self.h
        cdef Py_buffer view
        cdef const unsigned char *p = NULL
        cdef Py_ssize_t size = 0, total, extra_len
        cdef int release, drop, protected, code
        cdef bytes extra_b, out
        cdef char *o
        cdef char digits[3]
        if not h.complete:
            raise RuntimeError("no complete head: scan() has not returned n > 0")
        extra_b = extra if PyBytes_CheckExact(extra) else bytes(extra)
        extra_len = PyBytes_GET_SIZE(extra_b)
        drop = HOP_MASK
        protected = RESPONSE_PROTECTED
        if keep_upgrade:
            protected |= 1 << K_UPGRADE
        else:
            drop |= 1 << K_UPGRADE
        code = h.status
        digits[0] = <char>(0x30 + code // 100)
        digits[1] = <char>(0x30 + (code // 10) % 10)
        digits[2] = <char>(0x30 + code % 10)
        release = _get_buffer(buf, &view, &p, &size)
        try:
            if size < h.n:
                raise ValueError("buffer no longer holds the scanned head")
            total = 9 + 3 + 1 + (h.r1 - h.r0) + 2  # "HTTP/1.1 " code " " reason CRLF
            total += _mark_kept(h, p, drop, protected)
            total += extra_len + 2
            out = PyBytes_FromStringAndSize(NULL, total)
            o = PyBytes_AS_STRING(out)
            o = _put(o, b"HTTP/1.1 ", 9)
            o = _put(o, digits, 3)
            o = _put(o, b" ", 1)
            o = _put(o, p + h.r0, h.r1 - h.r0)
            o = _put(o, b"\r\n", 2)
            o = _put_kept(h, p, o)
            o = _put(o, PyBytes_AS_STRING(extra_b), extra_len)
            _put(o, b"\r\n", 2)
            return out
        finally:
            if release:
                PyBuffer_Release(&view)


# ---------------------------------------------------------------------------
# Chunked transfer coding (RFC 9112 §7.1)
# ---------------------------------------------------------------------------
cdef enum:
    CH_SIZE_START = 0
    CH_SIZE
    CH_EXT_WS
    CH_EXT_NAME_START
    CH_EXT_NAME
    CH_EXT_NAME_WS
    CH_EXT_VALUE_START
    CH_EXT_VALUE
    CH_EXT_QUOTED
    CH_EXT_QUOTED_ESC
    CH_EXT_QUOTE_END
    CH_SIZE_LF
    CH_DATA
    CH_DATA_CR
    CH_DATA_LF
    CH_TRAILER_START
    CH_TRAILER_NAME
    CH_TRAILER_VALUE
    CH_TRAILER_LF
    CH_END_LF
    CH_DONE
    CH_FAILED


@cython.final
cdef class ChunkedDecoder:
    """Streaming decoder for the chunked coding; resumable at every byte boundary.
    Trailer fields are validated like field lines and discarded (RFC 9112 §7.1.2)."""

    def __cinit__(self, Py_ssize_t max_line=4096, Py_ssize_t max_trailer=65536):
        if max_line < 1 or max_trailer < 1:
            raise ValueError("limits must be positive")
        self.max_line = max_line
        self.max_trailer = max_trailer
        self.reset()

    def reset(self):
        self._state = CH_SIZE_START
        self._size = 0
        self._digits = 0
        self._line = 0
        self._trailer = 0
        self._remaining = 0
        self._error = None
        self.done = False
        self.leftover = 0

    cdef int _fail(self, str reason) except -1:
        self._state = CH_FAILED
        self._error = reason
        raise ScanError(400, reason)

    def feed(self, data):
        """Decode what ``data`` holds; return the payload bytes found in it."""
        cdef Py_buffer view
        cdef const unsigned char *p = NULL
        cdef Py_ssize_t n = 0
        if _get_buffer(data, &view, &p, &n) == 0:
            return self._feed(data, p, n)
        try:
            return self._feed(None, p, n)
        finally:
            PyBuffer_Release(&view)

    cdef object _feed(self, object data, const unsigned char *p, Py_ssize_t n):
        cdef Py_ssize_t i = 0, take, run0 = -1, run_len = 0, out_len = 0
        cdef PyObject *out = NULL   # owned; only when the payload is in more than one run
        cdef char *o = NULL
        cdef int st
        cdef unsigned char c
        cdef object result
        if self._state == CH_FAILED:
            raise ScanError(400, self._error)
        if self._state == CH_DONE:
            self.leftover = n  # everything belongs to the next message
            return _EMPTY
        try:
            while i < n:
                st = self._state
                if st == CH_DATA:
                    take = n - i
                    if self._remaining < take:
                        take = <Py_ssize_t>self._remaining
                    # One copy at most: a single run is sliced once at the end (or the
                    # input returned as is); a second run moves both into one buffer.
                    if run0 < 0:
                        run0 = i
                        run_len = take
                    else:
                        if out == NULL:
                            out = _bytes_new(NULL, n - run0)
                            if out == NULL:
                                raise MemoryError()
                            o = _bytes_ptr(out)
                            memcpy(o, p + run0, <size_t>run_len)
                            out_len = run_len
                        memcpy(o + out_len, p + i, <size_t>take)
                        out_len += take
                    i += take
                    self._remaining -= take
                    if self._remaining == 0:
                        self._state = CH_DATA_CR
                    continue
                c = p[i]
                i += 1
                # Limits first, then syntax (the twin checks in the same order).
                if st < CH_SIZE_LF:
                    if c != CR:
                        self._line += 1
                        if self._line > self.max_line:
                            self._fail("chunk-size line too long")
                elif CH_TRAILER_START <= st <= CH_END_LF:
                    self._trailer += 1
                    if self._trailer > self.max_trailer:
                        self._fail("trailer section too large")
                self._step(st, c)
                if self._state == CH_DONE:
                    self.done = True
                    self.leftover = n - i
                    break
            if out != NULL:
                _PyBytes_Resize(&out, out_len)
                result = <object>out
                _decref(out)
                out = NULL
                return result
        except BaseException:
            if out != NULL:
                _decref(out)
            raise
        if run0 < 0:
            return _EMPTY
        if run0 == 0 and run_len == n and PyBytes_CheckExact(data):
            return data  # the whole input was payload: no copy at all
        return PyBytes_FromStringAndSize(<const char *>p + run0, run_len)

    cdef int _step(self, int st, unsigned char c) except -1:
        cdef int hv
        if st == CH_SIZE_START:
            # RFC 9112 §7.1: chunk-size = 1*HEXDIG (no sign, no "0x", no whitespace)
            hv = HEXVAL[c]
            if hv < 0:
                self._fail("invalid chunk size")
            self._size = hv
            self._digits = 1
            self._state = CH_SIZE
        elif st == CH_SIZE:
            hv = HEXVAL[c]
            if hv >= 0:
                # at most 16 hex digits and below 2**63, so it fits an int64
                self._digits += 1
                if self._digits > MAX_SIZE_DIGITS:
                    self._fail("chunk size has too many digits")
                if self._size > (MAX_SIZE >> 4):
                    self._fail("chunk size too large")
                self._size = (self._size << 4) | hv
            else:
                self._after_token(c)
        elif st == CH_EXT_WS:
            # BWS is only allowed before ";" (RFC 9112 §7.1.1): "5 \r\n" is invalid
            if c == b';':
                self._state = CH_EXT_NAME_START
            elif not (CLS[c] & C_OWS):
                self._fail("invalid chunk-size line")
        elif st == CH_EXT_NAME_START:
            if CLS[c] & C_TCHAR:
                self._state = CH_EXT_NAME
            elif not (CLS[c] & C_OWS):
                self._fail("invalid chunk extension")
        elif st == CH_EXT_NAME:
            if CLS[c] & C_TCHAR:
                pass
            elif c == b'=':
                self._state = CH_EXT_VALUE_START
            elif CLS[c] & C_OWS:
                self._state = CH_EXT_NAME_WS
            else:
                self._after_token(c)
        elif st == CH_EXT_NAME_WS:
            if c == b'=':
                self._state = CH_EXT_VALUE_START
            elif c == b';':
                self._state = CH_EXT_NAME_START
            elif not (CLS[c] & C_OWS):
                self._fail("invalid chunk extension")
        elif st == CH_EXT_VALUE_START:
            if c == b'"':
                self._state = CH_EXT_QUOTED
            elif CLS[c] & C_TCHAR:
                self._state = CH_EXT_VALUE
            elif not (CLS[c] & C_OWS):
                self._fail("invalid chunk extension value")
        elif st == CH_EXT_VALUE:
            if not (CLS[c] & C_TCHAR):
                self._after_token(c)
        elif st == CH_EXT_QUOTED:
            if c == b'"':
                self._state = CH_EXT_QUOTE_END
            elif c == b'\\':
                self._state = CH_EXT_QUOTED_ESC
            elif not (CLS[c] & C_QDTEXT):
                self._fail("invalid character in chunk extension quoted-string")
        elif st == CH_EXT_QUOTED_ESC:
            # RFC 9110 §5.6.4: quoted-pair = "\" ( HTAB / SP / VCHAR / obs-text )
            if not (CLS[c] & C_FIELD):
                self._fail("invalid quoted-pair in chunk extension")
            self._state = CH_EXT_QUOTED
        elif st == CH_EXT_QUOTE_END:
            self._after_token(c)
        elif st == CH_SIZE_LF:
            if c != LF:
                self._fail("bare CR in chunk-size line")  # RFC 9112 §2.2 / §7.1
            self._line = 0
            if self._size == 0:
                self._state = CH_TRAILER_START  # last-chunk
            else:
                self._remaining = self._size
                self._state = CH_DATA
        elif st == CH_DATA_CR:
            # RFC 9112 §7.1: chunk-data is followed by exactly CRLF
            if c != CR:
                self._fail("chunk data not followed by CRLF")
            self._state = CH_DATA_LF
        elif st == CH_DATA_LF:
            if c != LF:
                self._fail("chunk data not followed by CRLF")
            self._size = 0
            self._digits = 0
            self._state = CH_SIZE_START
        elif st == CH_TRAILER_START:
            # RFC 9112 §7.1.2: trailer-section = *( field-line CRLF ), same field rules
            if c == CR:
                self._state = CH_END_LF
            elif CLS[c] & C_TCHAR:
                self._state = CH_TRAILER_NAME
            elif CLS[c] & C_OWS:
                self._fail("obs-fold in trailer section")  # RFC 9112 §5.2
            else:
                self._fail("invalid trailer field name")
        elif st == CH_TRAILER_NAME:
            if c == b':':
                self._state = CH_TRAILER_VALUE
            elif not (CLS[c] & C_TCHAR):
                self._fail("invalid trailer field name")  # incl. SP before ":" (§5.1)
        elif st == CH_TRAILER_VALUE:
            if c == CR:
                self._state = CH_TRAILER_LF
            elif not (CLS[c] & C_FIELD):
                self._fail("invalid character in trailer field value")  # RFC 9110 §5.5
        elif st == CH_TRAILER_LF:
            if c != LF:
                self._fail("bare CR in trailer section")
            self._state = CH_TRAILER_START
        elif st == CH_END_LF:
            if c != LF:
                self._fail("bare CR in trailer section")
            self._state = CH_DONE
        return 0

    cdef int _after_token(self, unsigned char c) except -1:
        """What may follow the size digits, an ext-name, or an ext-value."""
        if c == CR:
            self._state = CH_SIZE_LF
        elif c == b';':
            self._state = CH_EXT_NAME_START
        elif CLS[c] & C_OWS:
            self._state = CH_EXT_WS
        elif c == LF:
            self._fail("bare LF in chunk-size line")  # RFC 9112 §2.2
        else:
            self._fail("invalid chunk-size line")
        return 0
