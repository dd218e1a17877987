# Declarations for fastlb/_core/scanner.pyx (definitions live there; the pure-Python
# twin and executable spec is scanner_py.py, which this module must match exactly).

cimport cython


# One header field, as offsets into the caller's buffer (never copied while scanning).
cdef struct Field:
    Py_ssize_t name0
    Py_ssize_t name1
    Py_ssize_t value0      # OWS-trimmed value
    Py_ssize_t value1
    int kind               # K_* (case-insensitive name class), see scanner.pyx
    bint keep              # scratch for build_*_head


# Everything a head scan accumulates. Requests and responses share the line loop and the
# field rules; is_request selects the start-line grammar and the head-level rules.
cdef struct Head:
    # limits (constructor arguments)
    Py_ssize_t max_line
    Py_ssize_t max_head
    Py_ssize_t max_fields
    bint is_request
    # resumable search state: the next line starts at pos, its LF search resumes at search
    Py_ssize_t pos
    Py_ssize_t search
    int state
    bint complete          # facts describe a head of length n in the caller's buffer
    Py_ssize_t n
    # fields: a C array of max_fields entries (malloc in __cinit__)
    Field *fields
    Py_ssize_t nfields
    # framing facts being accumulated
    long long cl           # -1 while no Content-Length was seen
    bint te_seen
    bint te_last_chunked
    Py_ssize_t te_chunked
    Py_ssize_t te_other
    bint conn_close
    bint conn_keep_alive
    bint conn_upgrade
    bint conn_other        # a Connection option that may name a field to drop
    bint upgrade_field
    int minor
    # request-line
    Py_ssize_t m0
    Py_ssize_t m1
    Py_ssize_t t0
    Py_ssize_t t1
    bint absolute_form
    Py_ssize_t a0          # absolute-form: the target's authority (host[:port])
    Py_ssize_t a1
    Py_ssize_t hosts
    Py_ssize_t h0
    Py_ssize_t h1
    bint expect_continue
    Py_ssize_t rid0        # -1 while no X-Request-ID was seen
    Py_ssize_t rid1
    Py_ssize_t ntp         # traceparent fields seen (W3C Trace Context: exactly one is valid)
    Py_ssize_t tp0
    Py_ssize_t tp1
    # status-line
    int status
    Py_ssize_t r0
    Py_ssize_t r1


# What request and response scanning share: the Head, the limits, resumable scan(),
# headers(), header_value() and the framing facts common to both. Subclasses fill in
# their own facts in _facts(), called once per complete head.
cdef class _HeadScanner:
    cdef Head h
    cdef readonly int http_minor
    cdef readonly long long content_length
    cdef readonly bint chunked
    cdef readonly bint keep_alive
    cdef readonly bint upgrade
    cdef readonly Py_ssize_t header_count

    cdef Py_ssize_t _scan(self, const unsigned char *p, Py_ssize_t end) except -1
    cdef int _facts(self, const unsigned char *p) except -1


@cython.final
cdef class RequestScanner(_HeadScanner):
    cdef readonly bytes method
    cdef readonly bytes target
    cdef readonly bytes host
    cdef readonly bint expect_continue
    cdef readonly object request_id
    cdef readonly object traceparent


@cython.final
cdef class ResponseScanner(_HeadScanner):
    cdef readonly int status


@cython.final
cdef class ChunkedDecoder:
    cdef readonly Py_ssize_t max_line
    cdef readonly Py_ssize_t max_trailer
    cdef int _state
    cdef long long _size
    cdef int _digits
    cdef Py_ssize_t _line       # bytes of the current chunk-size line (CRLF excluded)
    cdef Py_ssize_t _trailer    # bytes of the trailer section (CRLFs included)
    cdef long long _remaining   # chunk-data bytes still expected
    cdef object _error          # reason of the failure that made the decoder unusable
    cdef readonly bint done
    cdef readonly Py_ssize_t leftover

    cdef object _feed(self, object data, const unsigned char *p, Py_ssize_t n)
    cdef int _fail(self, str reason) except -1
    cdef int _step(self, int st, unsigned char c) except -1
    cdef int _after_token(self, unsigned char c) except -1
