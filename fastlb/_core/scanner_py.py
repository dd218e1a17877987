"""HTTP/1.1 head scanner and chunked decoder: the pure-Python twin and executable spec.

``fastlb._core.scanner`` (Cython) must behave exactly like this module: same return
values, same facts, same ``ScanError`` status *and* reason, for every input and every
way of splitting it. ``tests/unit/test_scanner_parity.py`` checks that with hypothesis.
Every strictness decision is listed, with its RFC section, in ``docs/http-parsing.md``.

Invariants
----------
* Zero copy while scanning: a head is validated line by line and recorded as offsets
  into the caller's buffer; the only objects built by ``scan`` are the few facts a
  proxy reads on every request (method, target, host, request id).
* Resumable and linear: the caller appends bytes to the *same* buffer and calls
  ``scan`` again. Complete lines are validated once; the search for the next LF resumes
  where it stopped, so feeding a head byte by byte costs O(length), not O(length^2).
* Split-invariant: ``scan`` over any split of the same bytes ends in the same result
  (head length and facts, or the same error). Therefore a line is fully validated only
  once its LF has arrived; before that, only checks whose verdict the rest of the line
  cannot change run: the line-start rule and the limits (see ``_check_partial``).
* Checks run in a fixed order, per line: line start (first byte, CR not followed by
  LF), limits, line ending (bare LF), syntax, then field semantics; then head-level
  checks once the empty line arrives. The first failing check names the error, in
  both twins.
* A ``ScanError`` resets the search state (the connection is going to be closed). The
  chunked decoder instead stays failed: every later ``feed`` raises again.
* Facts, ``headers()`` and ``build_*_head()`` describe the head that the last ``scan``
  returned (n > 0) and stay valid until the next ``scan``/``reset`` call; the buffer
  must still hold that head at ``[0:n]`` when ``headers``/``build_*`` are called.
* Request errors carry the status a proxy answers with (400, 414, 417, 431, 501, 505);
  every response error is 502 (the backend is at fault); chunked errors are 400.
"""

import re

from ._scanerror import ScanError

__all__ = ["RequestScanner", "ResponseScanner", "ChunkedDecoder", "ScanError"]

CR = 0x0D
LF = 0x0A
SP = 0x20
HTAB = 0x09

# ---------------------------------------------------------------------------
# Byte classes. Each regex matches a (possibly empty) run of one class; the
# compiled twin uses the same classes as bits in one 256-entry table.
# ---------------------------------------------------------------------------

# RFC 9110 §5.6.2: tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." /
#                          "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA
_TCHAR = rb"!#$%&'*+\-.^_`|~0-9A-Za-z"
_TCHAR_RUN = re.compile(rb"[" + _TCHAR + rb"]*")
# request-target: visible ASCII only (RFC 9112 §3.2 / RFC 3986 allow no CTL, SP, DEL or
# non-ASCII octet; fastlb does not check the finer URI grammar, see the docs).
_TARGET_RUN = re.compile(rb"[\x21-\x7e]*")
# RFC 9110 §5.5: field-value = *field-content; field-vchar = VCHAR / obs-text, plus the
# SP / HTAB allowed inside. Excludes NUL, CR, LF, every other CTL and DEL.
_FIELD_RUN = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")
_OWS = b" \t"  # RFC 9110 §5.6.3: OWS = *( SP / HTAB )

# RFC 9110 §7.2: Host = uri-host [ ":" port ]; uri-host (RFC 3986 §3.2.2) is an
# IP-literal in brackets or a reg-name (unreserved / pct-encoded / sub-delims). An
# http(s) URI must not have an empty host (RFC 9110 §4.2.1, §4.2.2), so neither may Host.
# (The bracket form takes the same octets plus ":"; "%" covers RFC 6874 zone ids.)
_HOST = re.compile(
    rb"(?:\[[A-Za-z0-9\-._~%!$&'()*+,;=:]+\]|[A-Za-z0-9\-._~%!$&'()*+,;=]+)(?::[0-9]*)?\Z"
)
# RFC 3986 §3.1: scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ), then ":" (absolute-form)
_SCHEME = re.compile(rb"[A-Za-z][A-Za-z0-9+\-.]*:")

# Field kinds, found once per field by case-insensitive name (RFC 9110 §5.1).
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
K_XF_OTHER = 19  # any other X-Forwarded-* (Host, Port, Prefix, Server, ...)

_KINDS = {
    b"host": K_HOST,
    b"content-length": K_CONTENT_LENGTH,
    b"transfer-encoding": K_TRANSFER_ENCODING,
    b"connection": K_CONNECTION,
    b"expect": K_EXPECT,
    b"upgrade": K_UPGRADE,
    b"x-request-id": K_REQUEST_ID,
    b"keep-alive": K_KEEP_ALIVE,
    b"proxy-connection": K_PROXY_CONNECTION,
    b"te": K_TE,
    b"trailer": K_TRAILER,
    b"x-forwarded-for": K_XFF,
    b"x-forwarded-proto": K_XFP,
    b"http2-settings": K_HTTP2_SETTINGS,
    b"traceparent": K_TRACEPARENT,
    b"tracestate": K_TRACESTATE,
    b"forwarded": K_FORWARDED,
    b"x-real-ip": K_X_REAL_IP,
}

# Fields that carry a client's identity as a proxy saw it: from a peer that is not a
# trusted proxy they are removed, never forwarded as sent (X-Forwarded-For is rebuilt).
_IDENTITY = frozenset((K_XFF, K_XFP, K_FORWARDED, K_X_REAL_IP, K_XF_OTHER))

# Hop-by-hop fields never forwarded (RFC 9110 §7.6.1: Connection and the fields it
# names; Keep-Alive, Proxy-Connection, TE, Trailer, Transfer-Encoding, Upgrade are the
# usual hop-by-hop set, RFC 9110 §7.6.1 and RFC 9112 §6.1 / §7.4).
# HTTP2-Settings is connection-specific by definition (RFC 9113 §3.1, RFC 7540 §3.2.1):
# forwarded without its Upgrade it could only serve an h2c smuggling attempt.
_HOP = frozenset(
    (K_CONNECTION, K_KEEP_ALIVE, K_PROXY_CONNECTION, K_TE, K_TRAILER, K_TRANSFER_ENCODING,
     K_HTTP2_SETTINGS)
)
# A client cannot make fastlb drop these by listing them in Connection: removing Host
# or Content-Length would change routing or framing (smuggling), X-Request-ID tracing.
_REQUEST_PROTECTED = frozenset((K_HOST, K_CONTENT_LENGTH, K_REQUEST_ID))
_RESPONSE_PROTECTED = frozenset((K_CONTENT_LENGTH,))

# Content-Length and chunk sizes must fit a signed 64-bit integer.
_MAX_SIZE = (1 << 63) - 1

# Scanner states (line-level).
_ST_START = 0  # before the start-line (requests: skipping empty lines)
_ST_FIELDS = 1  # after the start-line, reading field lines


def _run_end(pattern, buf, i, end):
    """Index of the first byte in buf[i:end] outside the class matched by pattern."""
    return pattern.match(buf, i, end).end()


def _trim_ows(buf, a, b):
    """Shrink [a, b) so it neither starts nor ends with OWS."""
    while a < b and buf[a] in _OWS:
        a += 1
    while b > a and buf[b - 1] in _OWS:
        b -= 1
    return a, b


def _list_elements(buf, a, b):
    """Yield (start, end) of each element of a comma-separated list, OWS-trimmed
    (RFC 9110 §5.6.1; empty elements are yielded as empty ranges)."""
    i = a
    while True:
        j = buf.find(b",", i, b)
        if j < 0:
            j = b
        yield _trim_ows(buf, i, j)
        if j >= b:
            return
        i = j + 1


def _lower(buf, a, b):
    return bytes(buf[a:b]).lower()


def _as_buffer(buf):
    """bytes and bytearray are used as they are; any other buffer is copied once."""
    if isinstance(buf, (bytes, bytearray)):
        return buf
    return bytes(memoryview(buf))


class _HeadScanner:
    """What requests and responses share: line splitting, limits, field lines."""

    _status_bad = 400  # overridden by ResponseScanner (every response error is 502)

    def __init__(self, max_line=8192, max_head=65536, max_fields=100):
        if max_line < 1 or max_head < 1 or max_fields < 0:
            raise ValueError("limits must be positive")
        self.max_line = max_line
        self.max_head = max_head
        self.max_fields = max_fields
        self._names = []  # (start, end) per field
        self._values = []  # (start, end) per field, OWS-trimmed
        self._kinds = []
        self._complete = False
        self._n = 0
        self.http_minor = 1
        self.content_length = -1
        self.chunked = False
        self.keep_alive = False
        self.upgrade = False
        self.header_count = 0
        self.reset()

    # -- state ---------------------------------------------------------------
    def reset(self):
        """Forget any partially scanned head."""
        self._pos = 0  # start of the next line to validate
        self._search = 0  # where the search for that line's LF resumes
        self._state = _ST_START
        self._complete = False

    def _begin(self):
        """Start accumulating a new message (first complete line seen)."""
        self._names.clear()
        self._values.clear()
        self._kinds.clear()
        self._cl = -1
        self._te_seen = False
        self._te_chunked = 0  # how many "chunked" codings, across all TE fields
        self._te_other = 0  # how many other codings
        self._te_last_chunked = False
        self._conn_close = False
        self._conn_keep_alive = False
        self._conn_upgrade = False
        self._conn_other = False  # another token: the fields it names are dropped
        self._upgrade_field = False
        self._begin_message()

    def _fail(self, reason, status=None):
        raise ScanError(self._status_bad if status is None else status, reason)

    # -- the loop --------------------------------------------------------------
    def scan(self, buf):
        """Look for a complete head at buf[0:]; 0 = need more bytes, n = head length."""
        self._complete = False
        buf = _as_buffer(buf)
        end = len(buf)
        if end < self._search:
            # The buffer shrank: the caller did not just append. Start over.
            self.reset()
        try:
            while True:
                pos = self._pos
                lf = buf.find(b"\n", self._search)
                if lf < 0:
                    self._search = end
                    self._check_partial(buf, pos, end)
                    return 0
                # The line is buf[pos:ce]; ce is its CR, or lf when the CR is missing.
                ce = lf - 1 if lf > pos and buf[lf - 1] == CR else lf
                n = self._line(buf, pos, ce, lf)
                self._pos = self._search = lf + 1
                if n:
                    self._state = _ST_START
                    self._pos = self._search = 0
                    self._n = n
                    self._complete = True
                    return n
        except ScanError:
            self.reset()
            raise

    def _check_partial(self, buf, pos, end):
        """Checks on an incomplete line (no LF yet in buf[pos:end]).

        Only errors that the complete line is certain to raise are raised here, so that
        splitting never changes the outcome: the line-start rule (decided by the first
        two bytes), then the limits, knowing that the line's content ends at or after
        ``lb`` (the last byte may be the CR of the coming CRLF) and the LF lies at or
        after end. A lone CR is undecided (line end or bare CR): nothing is checked.
        """
        if end == pos or (end - pos == 1 and buf[pos] == CR):
            return
        self._check_line_start(buf, pos, end)
        lb = end - 1 if buf[end - 1] == CR else end
        if self._state == _ST_START:
            self._check_start_line_limit(lb)
        else:
            self._check_field_limits(pos, lb, end)

    def _check_line_start(self, buf, pos, end):
        """What the first byte(s) of a line decide, checked first so that garbage is
        refused without waiting for an LF that may never come (a TLS ClientHello sent
        to a plaintext port, binary noise)."""
        c = buf[pos]
        if c == CR:
            # RFC 9112 §2.2: a CR is only valid as part of CRLF
            if pos + 1 < end and buf[pos + 1] != LF:
                self._fail("bare CR line ending")
            return
        if c == LF:
            return  # a bare LF: the line-ending check names it
        if self._state == _ST_START:
            self._check_start_line_start(c)
        elif c in _OWS:
            # RFC 9112 §5.2: obs-fold (a line starting with SP/HTAB) is rejected with
            # 400 by a server (and by a proxy, which may otherwise replace it); the same
            # test catches whitespace between the start-line and the first field (§2.2).
            self._fail("obs-fold or line starting with whitespace")
        elif _run_end(_TCHAR_RUN, buf, pos, pos + 1) == pos:
            self._fail("invalid field name")  # RFC 9112 §5: field-name = token

    def _check_field_limits(self, pos, ce, lf):
        # RFC 6585 §5 (431): one field line longer than max_line, or the whole head
        # (counted from buffer offset 0, so including the start-line) above max_head.
        if ce - pos > self.max_line or lf + 1 > self.max_head:
            self._fail("header section too large", self._status_too_large)

    def _line(self, buf, pos, ce, lf):
        self._check_line_start(buf, pos, lf + 1)
        if self._state == _ST_START:
            self._check_start_line_limit(ce)
            if ce == lf:
                # RFC 9112 §2.2 lets a recipient accept a bare LF (MAY); fastlb refuses
                # it, like llhttp strict: it is a smuggling ingredient, and ambiguity is
                # rejected, never guessed (docs/http-parsing.md §4).
                self._fail("bare LF line ending")
            if ce == pos and self._skip_empty_line():
                return 0
            self._begin()
            self._start_line(buf, pos, ce)
            self._state = _ST_FIELDS
            return 0
        self._check_field_limits(pos, ce, lf)
        if ce == lf:
            self._fail("bare LF line ending")  # RFC 9112 §2.2, as above
        if ce == pos:
            # RFC 9112 §2.1: the empty line ends the header section.
            self._end_of_head(buf)
            return lf + 1
        self._field_line(buf, pos, ce)
        return 0

    def _field_line(self, buf, pos, ce):
        # RFC 6585 §5: too many fields is 431 (checked first: cheapest DoS cut).
        if len(self._names) >= self.max_fields:
            self._fail("too many header fields", self._status_too_large)
        # (a first byte that is not a tchar was refused by _check_line_start)
        # RFC 9112 §5: field-line = field-name ":" OWS field-value OWS; name = token.
        i = _run_end(_TCHAR_RUN, buf, pos, ce)
        if i == pos:
            self._fail("invalid field name")
        if i == ce or buf[i] != 0x3A:  # ":"
            if i < ce and buf[i] in _OWS:
                # RFC 9112 §5.1: no whitespace between field name and colon; a server
                # MUST reject with 400, a proxy MUST remove it before forwarding.
                self._fail("whitespace between field name and colon")
            self._fail("invalid field name")
        name_end = i
        i += 1
        while i < ce and buf[i] in _OWS:
            i += 1
        vstart = i
        i = _run_end(_FIELD_RUN, buf, i, ce)
        if i != ce:
            # RFC 9110 §5.5: NUL, CR, LF and other CTLs are invalid in field values
            # (a bare CR lands here: every line must end in CRLF, RFC 9112 §2.2).
            self._fail("invalid character in field value")
        vend = ce
        while vend > vstart and buf[vend - 1] in _OWS:
            vend -= 1
        lname = _lower(buf, pos, name_end)
        kind = _KINDS.get(lname, K_OTHER)
        if kind == K_OTHER and len(lname) > 12 and lname.startswith(b"x-forwarded-"):
            kind = K_XF_OTHER
        self._names.append((pos, name_end))
        self._values.append((vstart, vend))
        self._kinds.append(kind)
        self._field_semantics(buf, kind, vstart, vend)

    # -- field semantics shared by both directions -----------------------------
    def _content_length(self, buf, a, b):
        # RFC 9110 §8.6: Content-Length = 1*DIGIT. RFC 9112 §6.3 (5): several values
        # or an invalid one make the length unrecoverable: reject. fastlb rejects even a
        # repeated identical value (the RFC allows merging those): smuggling surface.
        if self._cl >= 0:
            self._fail("duplicate Content-Length")
        if a == b:
            self._fail("empty Content-Length")
        value = 0
        for i in range(a, b):
            d = buf[i] - 0x30
            if d < 0 or d > 9:
                self._fail("invalid Content-Length")
            if value > (_MAX_SIZE - d) // 10:
                self._fail("Content-Length too large")
            value = value * 10 + d
        self._cl = value

    def _transfer_encoding(self, buf, a, b):
        # RFC 9112 §6.1: Transfer-Encoding = #transfer-coding, combined in order across
        # every Transfer-Encoding field. Empty elements are refused (the list rule of
        # RFC 9110 §5.6.1 tolerates them; for framing fields fastlb does not).
        self._te_seen = True
        for s, e in _list_elements(buf, a, b):
            if s == e:
                self._fail("empty transfer-coding")
            if _lower(buf, s, e) == b"chunked":
                self._te_chunked += 1
                self._te_last_chunked = True
            else:
                self._te_other += 1
                self._te_last_chunked = False

    def _connection(self, buf, a, b):
        # RFC 9110 §7.6.1: Connection = #connection-option, case-insensitive tokens.
        for s, e in _list_elements(buf, a, b):
            if s == e:
                continue
            token = _lower(buf, s, e)
            if token == b"close":
                self._conn_close = True
                self._conn_other = True  # a field named "Close" would be dropped too
            elif token == b"keep-alive":
                self._conn_keep_alive = True
            elif token == b"upgrade":
                self._conn_upgrade = True
            else:
                self._conn_other = True

    def _keep_alive(self):
        # RFC 9112 §9.3: HTTP/1.1 persists unless "close"; HTTP/1.0 only with
        # "keep-alive" (and no "close").
        if self._conn_close:
            return False
        return self.http_minor == 1 or self._conn_keep_alive

    # -- output ------------------------------------------------------------------
    def _require_head(self, buf):
        if not self._complete:
            raise RuntimeError("no complete head: scan() has not returned n > 0")
        buf = _as_buffer(buf)
        if len(buf) < self._n:
            raise ValueError("buffer no longer holds the scanned head")
        return buf

    def headers(self, buf):
        """[(name as sent, value OWS-trimmed)] of the last scanned head."""
        buf = self._require_head(buf)
        return [
            (bytes(buf[n0:n1]), bytes(buf[v0:v1]))
            for (n0, n1), (v0, v1) in zip(self._names, self._values)
        ]

    def header_value(self, buf, name):
        """Value of the first field called ``name`` (any case), OWS-trimmed, or None."""
        buf = self._require_head(buf)
        lname = bytes(name).lower()
        for (n0, n1), (v0, v1) in zip(self._names, self._values):
            if n1 - n0 == len(lname) and _lower(buf, n0, n1) == lname:
                return bytes(buf[v0:v1])
        return None

    def _connection_listed(self, buf, name):
        """Is this field name one of the Connection options (RFC 9110 §7.6.1)?"""
        lname = bytes(name).lower()
        for kind, (v0, v1) in zip(self._kinds, self._values):
            if kind != K_CONNECTION:
                continue
            for s, e in _list_elements(buf, v0, v1):
                if _lower(buf, s, e) == lname:
                    return True
        return False

    def _kept_fields(self, buf, drop, protected, out, drop_names=None):
        """Append the forwarded field lines; return the X-Forwarded-For values seen."""
        xff = []
        for kind, (n0, n1), (v0, v1) in zip(self._kinds, self._names, self._values):
            if kind == K_XFF and K_XFF in drop:
                if v1 > v0:
                    xff.append(bytes(buf[v0:v1]))
                continue
            if kind in drop:
                continue
            if drop_names and (kind == K_OTHER or kind == K_XF_OTHER) and _lower(buf, n0, n1) in drop_names:
                continue
            if (
                self._conn_other
                and kind not in protected
                and self._connection_listed(buf, buf[n0:n1])
            ):
                continue
            out += buf[n0:n1]
            out += b": "
            out += buf[v0:v1]
            out += b"\r\n"
        return xff


class RequestScanner(_HeadScanner):
    """Scanner for request heads (RFC 9112 §3); errors carry the status to answer."""

    _status_too_large = 431

    def __init__(self, max_line=8192, max_head=65536, max_fields=100):
        self.method = b""
        self.target = b""
        self.host = b""
        self.expect_continue = False
        self.request_id = None
        self.traceparent = None
        _HeadScanner.__init__(self, max_line, max_head, max_fields)

    def _begin_message(self):
        self._method = (0, 0)
        self._target = (0, 0)
        self._absolute_form = False
        self._authority = (0, 0)  # absolute-form: the target's host[:port]
        self._hosts = 0
        self._host = (0, 0)
        self._expect_continue = False
        self._request_id = None
        self._traceparent = None
        self._traceparents = 0

    def _skip_empty_line(self):
        # RFC 9112 §2.2: a server SHOULD ignore at least one empty line received before
        # the request-line. They count in the returned length and in max_line.
        return True

    def _check_start_line_start(self, c):
        # RFC 9112 §3: the request-line starts with the method, a token
        if not _TCHAR_RUN.match(bytes((c,))).end():
            self._fail("invalid method")

    def _check_start_line_limit(self, ce):
        # RFC 9112 §3: a request-line longer than any URI the server will parse is 414.
        # Counted from offset 0, so skipped empty lines use the same budget (a peer
        # cannot stream CRLFs forever).
        if ce > self.max_line:
            self._fail("request-line too long", 414)

    def _start_line(self, buf, pos, ce):
        # RFC 9112 §3: request-line = method SP request-target SP HTTP-version
        i = _run_end(_TCHAR_RUN, buf, pos, ce)  # RFC 9110 §9.1: method = token
        if i == pos or i == ce or buf[i] != SP:
            self._fail("invalid method")
        self._method = (pos, i)
        i += 1
        t0 = i
        i = _run_end(_TARGET_RUN, buf, i, ce)
        if i == t0:
            self._fail("missing request-target")  # also: more than one SP
        if i == ce:
            # RFC 9112 §2.3 / §3: no HTTP-version is HTTP/0.9, which fastlb never speaks.
            self._fail("missing HTTP version")
        if buf[i] != SP:
            self._fail("invalid character in request-target")
        self._target = (t0, i)
        self.http_minor = self._version(buf, i + 1, ce)
        self._target_form(buf, pos, t0, i)

    def _version(self, buf, a, b):
        # RFC 9112 §2.3: HTTP-version = "HTTP" "/" DIGIT "." DIGIT, case-sensitive.
        v = buf[a:b]
        if (
            len(v) == 8
            and v[:5] == b"HTTP/"
            and 0x30 <= v[5] <= 0x39
            and v[6] == 0x2E
            and 0x30 <= v[7] <= 0x39
        ):
            if v[5] == 0x31 and v[7] in (0x30, 0x31):
                return v[7] - 0x30
            # RFC 9110 §15.6.6: 505 for a major version (or minor) not supported.
            self._fail("HTTP version not supported", 505)
        self._fail("invalid HTTP version")

    def _target_form(self, buf, m0, t0, t1):
        # RFC 9112 §3.2: origin-form / absolute-form / authority-form / asterisk-form.
        method = buf[m0 : t0 - 1]
        if method == b"CONNECT":
            return  # authority-form; the proxy answers 405, not the scanner
        if t1 - t0 == 1 and buf[t0] == 0x2A:  # "*"
            if method != b"OPTIONS":
                # RFC 9112 §3.2.4: asterisk-form is only used with OPTIONS.
                self._fail("asterisk-form request-target without OPTIONS")
            return
        if buf[t0] == 0x2F:  # "/": origin-form
            return
        m = _SCHEME.match(buf, t0, t1)
        if not m:
            self._fail("invalid request-target form")
        # absolute-form (RFC 9112 §3.2.2): fastlb needs its authority, "//" authority as
        # in http(s) URIs (RFC 9110 §4.2.1); it ends at "/", "?", "#" (RFC 3986 §3.2).
        a0 = m.end()
        if buf[a0 : min(a0 + 2, t1)] != b"//":
            self._fail("absolute-form request-target without authority")
        a0 += 2
        a1 = a0
        while a1 < t1 and buf[a1] not in b"/?#":
            a1 += 1
        if buf.find(b"@", a0, a1) >= 0:
            # RFC 9110 §4.2.4: userinfo is deprecated and "likely being used to obscure
            # the authority"; a recipient SHOULD treat it as an error.
            self._fail("userinfo in request-target authority")
        if a0 == a1:
            self._fail("empty authority in request-target")
        if not _HOST.match(buf, a0, a1):
            # the authority stands in for Host (RFC 9112 §3.2.2): the same grammar applies
            self._fail("invalid authority in request-target")
        self._absolute_form = True
        self._authority = (a0, a1)

    def _field_semantics(self, buf, kind, a, b):
        if kind == K_HOST:
            # RFC 9112 §3.2: a server MUST respond 400 to more than one Host field.
            self._hosts += 1
            if self._hosts > 1:
                self._fail("multiple Host fields")
            if a == b:
                # RFC 9112 §3.2: an empty Host is only for a target URI without
                # authority, and an http(s) URI always has one (RFC 9110 §4.2.1, §4.2.2).
                self._fail("empty Host")
            if not _HOST.match(buf, a, b):
                self._fail("invalid Host")  # RFC 9110 §7.2: uri-host [ ":" port ]
            if self._absolute_form and _lower(buf, a, b) != _lower(buf, *self._authority):
                # RFC 9112 §3.2: Host MUST equal the target's authority. An origin uses
                # the target (§3.2.2), the proxy routes on Host: they must not differ.
                self._fail("Host differs from the request-target authority")
            self._host = (a, b)
        elif kind == K_CONTENT_LENGTH:
            self._content_length(buf, a, b)
        elif kind == K_TRANSFER_ENCODING:
            self._transfer_encoding(buf, a, b)
        elif kind == K_CONNECTION:
            self._connection(buf, a, b)
        elif kind == K_EXPECT:
            # RFC 9110 §10.1.1: 100-continue is the only expectation; others get 417.
            if _lower(buf, a, b) != b"100-continue":
                self._fail("unsupported expectation", 417)
            self._expect_continue = True
        elif kind == K_UPGRADE:
            self._upgrade_field = True
        elif kind == K_REQUEST_ID:
            if self._request_id is None:  # the first one wins
                self._request_id = (a, b)
        elif kind == K_TRACEPARENT:
            # W3C Trace Context §3.2: exactly one traceparent, or it is invalid
            self._traceparents += 1
            self._traceparent = (a, b)

    def _end_of_head(self, buf):
        minor = self.http_minor
        # RFC 9112 §3.2: a server MUST respond 400 to an HTTP/1.1 request without Host.
        if minor == 1 and self._hosts == 0:
            self._fail("missing Host")
        if self._te_seen:
            # RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 means faulty framing.
            if minor == 0:
                self._fail("Transfer-Encoding in an HTTP/1.0 request")
            # RFC 9112 §6.1 / §6.3 (3): TE with CL is a smuggling attempt: reject.
            if self._cl >= 0:
                self._fail("both Transfer-Encoding and Content-Length")
            # RFC 9112 §6.3 (4): chunked not final -> 400 and close.
            if not self._te_last_chunked:
                self._fail("chunked is not the final transfer coding")
            # RFC 9112 §7.1: chunked MUST NOT be applied more than once.
            if self._te_chunked > 1:
                self._fail("chunked applied more than once")
            # RFC 9112 §6.1: a coding the server does not understand -> 501.
            if self._te_other:
                self._fail("unsupported transfer coding", 501)
        m0, m1 = self._method
        t0, t1 = self._target
        self.method = bytes(buf[m0:m1])
        self.target = bytes(buf[t0:t1])
        if self._hosts == 0 and self._absolute_form:
            # HTTP/1.0 absolute-form without Host: the target's authority names the host
            # (RFC 9112 §3.2.2), validated by _target_form with Host's grammar.
            h0, h1 = self._authority
        else:
            h0, h1 = self._host
        self.host = bytes(buf[h0:h1])
        self.content_length = self._cl
        self.chunked = self._te_seen
        self.keep_alive = self._keep_alive()
        # RFC 9110 §7.8: Upgrade is ignored in HTTP/1.0 requests; it needs the
        # "upgrade" connection option to apply to this hop.
        self.upgrade = minor == 1 and self._conn_upgrade and self._upgrade_field
        # RFC 9110 §10.1.1: a 100-continue expectation in HTTP/1.0 MUST be ignored.
        self.expect_continue = minor == 1 and self._expect_continue
        if self._request_id is None:
            self.request_id = None
        else:
            r0, r1 = self._request_id
            self.request_id = bytes(buf[r0:r1])
        if self._traceparents == 0:
            self.traceparent = None
        elif self._traceparents > 1:
            self.traceparent = b""  # repeated: invalid, like an empty one
        else:
            p0, p1 = self._traceparent
            self.traceparent = bytes(buf[p0:p1])
        self.header_count = len(self._names)

    def build_upstream_head(self, buf, client_ip, extra, keep_upgrade, drop_trace=False, trusted=False,
                            drop_names=None):
        """The head to send upstream: hop-by-hop removed, X-Forwarded-For rebuilt;
        ``drop_trace``: traceparent and tracestate removed too (an invalid one is
        replaced, never forwarded). From a peer that is not ``trusted``, every
        identity field (X-Forwarded-*, Forwarded, X-Real-IP) is removed and
        X-Forwarded-For is ``client_ip`` alone; from a trusted one they are kept and
        ``client_ip`` is appended to its X-Forwarded-For. ``drop_names``: lowercase
        names of other fields to remove (credentials, headers fastlb sets itself)."""
        buf = self._require_head(buf)
        if drop_names is not None and not isinstance(drop_names, tuple):
            raise TypeError("drop_names must be a tuple of bytes or None")
        drop = set(_HOP)
        drop.add(K_XFF)
        if not trusted:
            drop |= _IDENTITY
        if drop_trace:
            drop.add(K_TRACEPARENT)
            drop.add(K_TRACESTATE)
        protected = set(_REQUEST_PROTECTED)
        if keep_upgrade:
            protected.add(K_UPGRADE)
        else:
            drop.add(K_UPGRADE)
        out = bytearray()
        out += self.method
        out += b" "
        out += self.target
        out += b" HTTP/1.1\r\n"
        xff = self._kept_fields(buf, drop, protected, out, drop_names)
        if not trusted:
            xff = []
        if client_ip:
            xff.append(bytes(client_ip))
            out += b"X-Forwarded-For: "
            out += b", ".join(xff)
            out += b"\r\n"
        out += extra
        out += b"\r\n"
        return bytes(out)


class ResponseScanner(_HeadScanner):
    """Scanner for response heads (RFC 9112 §4); every error is 502 for the client."""

    _status_bad = 502
    _status_too_large = 502

    def __init__(self, max_line=8192, max_head=65536, max_fields=100):
        self.status = 0
        _HeadScanner.__init__(self, max_line, max_head, max_fields)

    def _begin_message(self):
        self._status_code = 0
        self._reason = (0, 0)

    def _skip_empty_line(self):
        # RFC 9112 §2.2 only lets servers skip empty lines before a request-line; a
        # response must start with its status-line.
        return False

    def _check_start_line_start(self, c):
        # RFC 9112 §4: the status-line starts with HTTP-version
        if c != 0x48:  # "H"
            self._fail("invalid or unsupported HTTP version in status-line")

    def _check_start_line_limit(self, ce):
        if ce > self.max_line:
            self._fail("status-line too long")

    def _start_line(self, buf, pos, ce):
        # RFC 9112 §4: status-line = HTTP-version SP status-code SP [ reason-phrase ]
        v = buf[pos : min(pos + 8, ce)]
        if not (len(v) == 8 and v[:7] == b"HTTP/1." and v[7] in (0x30, 0x31)):
            self._fail("invalid or unsupported HTTP version in status-line")
        self.http_minor = v[7] - 0x30
        i = pos + 8
        if ce - i < 4 or buf[i] != SP:
            self._fail("invalid status-line")
        code = 0
        for j in range(i + 1, i + 4):
            d = buf[j] - 0x30
            if d < 0 or d > 9:
                self._fail("invalid status code")
            code = code * 10 + d
        # RFC 9110 §15: status codes are three digits, 100..599 in use.
        if code < 100 or code > 599:
            self._fail("invalid status code")
        i += 4
        if i < ce:
            if buf[i] != SP:
                self._fail("invalid status-line")
            i += 1
            # reason-phrase = 1*( HTAB / SP / VCHAR / obs-text )
            if _run_end(_FIELD_RUN, buf, i, ce) != ce:
                self._fail("invalid character in reason-phrase")
        # else "HTTP/1.1 200" with neither SP nor reason: accepted (seen in the wild and
        # by llhttp); the reason is rebuilt empty.
        self._status_code = code
        self._reason = (i, ce)

    def _field_semantics(self, buf, kind, a, b):
        if kind == K_CONTENT_LENGTH:
            self._content_length(buf, a, b)
        elif kind == K_TRANSFER_ENCODING:
            self._transfer_encoding(buf, a, b)
        elif kind == K_CONNECTION:
            self._connection(buf, a, b)
        elif kind == K_UPGRADE:
            self._upgrade_field = True

    def _end_of_head(self, buf):
        if self._te_seen:
            if self.http_minor == 0:
                self._fail("Transfer-Encoding in an HTTP/1.0 response")  # RFC 9112 §6.1
            if self._cl >= 0:
                # RFC 9112 §6.3 (3): TE overrides CL, but a proxy must not pass both on;
                # the backend is broken or compromised.
                self._fail("both Transfer-Encoding and Content-Length")
            # RFC 9112 §6.3 (4) reads a response whose final coding is not chunked until
            # close; fastlb refuses anything but exactly "chunked" (decision: docs).
            if self._te_chunked != 1 or self._te_other:
                self._fail("Transfer-Encoding other than chunked")
        self.status = self._status_code
        self.content_length = self._cl
        self.chunked = self._te_seen
        self.keep_alive = self._keep_alive()
        self.upgrade = self._upgrade_field
        self.header_count = len(self._names)

    def build_downstream_head(self, buf, extra, keep_upgrade):
        """The head to send to the client: hop-by-hop removed, X-Forwarded-* untouched."""
        buf = self._require_head(buf)
        drop = set(_HOP)
        protected = set(_RESPONSE_PROTECTED)
        if keep_upgrade:
            protected.add(K_UPGRADE)
        else:
            drop.add(K_UPGRADE)
        r0, r1 = self._reason
        out = bytearray(b"HTTP/1.1 %d " % self.status)
        out += buf[r0:r1]
        out += b"\r\n"
        self._kept_fields(buf, drop, protected, out)
        out += extra
        out += b"\r\n"
        return bytes(out)


# ---------------------------------------------------------------------------
# Chunked transfer coding (RFC 9112 §7.1)
# ---------------------------------------------------------------------------

_HEX = b"0123456789abcdefABCDEF"
_TCHAR_SET = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_FIELD_SET = frozenset([HTAB] + list(range(0x20, 0x7F)) + list(range(0x80, 0x100)))
# RFC 9110 §5.6.4: qdtext = HTAB / SP / %x21 / %x23-5B / %x5D-7E / obs-text
_QDTEXT_SET = _FIELD_SET - {0x22, 0x5C}
_MAX_SIZE_DIGITS = 16

# decoder states
(
    _C_SIZE_START,  # first hex digit of chunk-size
    _C_SIZE,  # more hex digits, or what follows them
    _C_EXT_WS,  # BWS after the size or after a whole extension: only ";" may follow
    _C_EXT_NAME_START,  # BWS then the first tchar of a chunk-ext-name
    _C_EXT_NAME,
    _C_EXT_NAME_WS,  # BWS after a name: "=" or ";"
    _C_EXT_VALUE_START,  # BWS then token or quoted-string
    _C_EXT_VALUE,  # token value
    _C_EXT_QUOTED,  # inside quoted-string
    _C_EXT_QUOTED_ESC,  # after backslash (quoted-pair)
    _C_EXT_QUOTE_END,  # after the closing DQUOTE: CR, ";" or BWS
    _C_SIZE_LF,  # CR seen, LF must follow
    _C_DATA,
    _C_DATA_CR,
    _C_DATA_LF,
    _C_TRAILER_START,  # start of a trailer line or of the final empty line
    _C_TRAILER_NAME,
    _C_TRAILER_VALUE,
    _C_TRAILER_LF,
    _C_END_LF,  # CR of the final empty line seen
    _C_DONE,
    _C_FAILED,
) = range(22)

# states whose bytes belong to the chunk-size line (counted against max_line)
_SIZE_LINE_STATES = frozenset(range(_C_SIZE_START, _C_SIZE_LF))
_TRAILER_STATES = frozenset(range(_C_TRAILER_START, _C_END_LF + 1))


class ChunkedDecoder:
    """Streaming decoder for the chunked coding; resumable at every byte boundary.

    chunked-body = *chunk last-chunk trailer-section CRLF
    chunk        = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
    chunk-ext    = *( BWS ";" BWS ext-name [ BWS "=" BWS ext-val ] )   (RFC 9112 §7.1.1)
    Trailer fields are validated like header field lines and discarded (RFC 9112 §7.1.2
    lets a recipient that removes the chunked coding discard them).
    """

    def __init__(self, max_line=4096, max_trailer=65536):
        if max_line < 1 or max_trailer < 1:
            raise ValueError("limits must be positive")
        self.max_line = max_line
        self.max_trailer = max_trailer
        self.reset()

    def reset(self):
        self._state = _C_SIZE_START
        self._size = 0
        self._digits = 0
        self._line = 0  # bytes of the current chunk-size line so far (CRLF excluded)
        self._trailer = 0  # bytes of the trailer section so far (CRLFs included)
        self._remaining = 0
        self._error = None
        self.done = False
        self.leftover = 0

    def _fail(self, reason):
        self._state = _C_FAILED
        self._error = reason
        raise ScanError(400, reason)

    def feed(self, data):
        """Decode what ``data`` holds; return the payload bytes found in it."""
        if self._state == _C_FAILED:
            raise ScanError(400, self._error)
        if not isinstance(data, (bytes, bytearray)):
            data = bytes(memoryview(data))
        n = len(data)
        if self._state == _C_DONE:
            self.leftover = n  # everything belongs to the next message
            return b""
        out = []
        i = 0
        while i < n:
            st = self._state
            if st == _C_DATA:
                take = min(self._remaining, n - i)
                out.append(bytes(data[i : i + take]))
                i += take
                self._remaining -= take
                if self._remaining == 0:
                    self._state = _C_DATA_CR
                continue
            c = data[i]
            i += 1
            # Limits first, then syntax (the compiled twin checks in the same order).
            if st in _SIZE_LINE_STATES:
                if c != CR:
                    self._line += 1
                    if self._line > self.max_line:
                        self._fail("chunk-size line too long")
            elif st in _TRAILER_STATES:
                self._trailer += 1
                if self._trailer > self.max_trailer:
                    self._fail("trailer section too large")
            self._step(st, c)
            if self._state == _C_DONE:
                self.done = True
                self.leftover = n - i
                break
        return b"".join(out)

    def _step(self, st, c):
        if st == _C_SIZE_START:
            # RFC 9112 §7.1: chunk-size = 1*HEXDIG (no sign, no "0x", no whitespace)
            if c not in _HEX:
                self._fail("invalid chunk size")
            self._size = int(chr(c), 16)
            self._digits = 1
            self._state = _C_SIZE
        elif st == _C_SIZE:
            if c in _HEX:
                # at most 16 hex digits and below 2**63, so it fits an int64
                self._digits += 1
                if self._digits > _MAX_SIZE_DIGITS:
                    self._fail("chunk size has too many digits")
                if self._size > (_MAX_SIZE >> 4):
                    self._fail("chunk size too large")
                self._size = (self._size << 4) | int(chr(c), 16)
            else:
                self._after_token(c)
        elif st == _C_EXT_WS:
            # BWS is only allowed before ";" (RFC 9112 §7.1.1): "5 \r\n" is invalid
            if c == 0x3B:  # ";"
                self._state = _C_EXT_NAME_START
            elif c not in _OWS:
                self._fail("invalid chunk-size line")
        elif st == _C_EXT_NAME_START:
            if c in _TCHAR_SET:
                self._state = _C_EXT_NAME
            elif c not in _OWS:
                self._fail("invalid chunk extension")  # e.g. "5;" with no name
        elif st == _C_EXT_NAME:
            if c in _TCHAR_SET:
                pass
            elif c == 0x3D:  # "="
                self._state = _C_EXT_VALUE_START
            elif c in _OWS:
                self._state = _C_EXT_NAME_WS
            else:
                self._after_token(c)
        elif st == _C_EXT_NAME_WS:
            if c == 0x3D:
                self._state = _C_EXT_VALUE_START
            elif c == 0x3B:
                self._state = _C_EXT_NAME_START
            elif c not in _OWS:
                self._fail("invalid chunk extension")
        elif st == _C_EXT_VALUE_START:
            if c == 0x22:  # DQUOTE
                self._state = _C_EXT_QUOTED
            elif c in _TCHAR_SET:
                self._state = _C_EXT_VALUE
            elif c not in _OWS:
                self._fail("invalid chunk extension value")
        elif st == _C_EXT_VALUE:
            if c not in _TCHAR_SET:
                self._after_token(c)
        elif st == _C_EXT_QUOTED:
            if c == 0x22:
                self._state = _C_EXT_QUOTE_END
            elif c == 0x5C:  # backslash
                self._state = _C_EXT_QUOTED_ESC
            elif c not in _QDTEXT_SET:
                self._fail("invalid character in chunk extension quoted-string")
        elif st == _C_EXT_QUOTED_ESC:
            # RFC 9110 §5.6.4: quoted-pair = "\" ( HTAB / SP / VCHAR / obs-text )
            if c not in _FIELD_SET:
                self._fail("invalid quoted-pair in chunk extension")
            self._state = _C_EXT_QUOTED
        elif st == _C_EXT_QUOTE_END:
            self._after_token(c)
        elif st == _C_SIZE_LF:
            if c != LF:
                self._fail("bare CR in chunk-size line")  # RFC 9112 §2.2 / §7.1
            self._line = 0
            if self._size == 0:
                self._state = _C_TRAILER_START  # last-chunk (RFC 9112 §7.1)
            else:
                self._remaining = self._size
                self._state = _C_DATA
        elif st == _C_DATA_CR:
            # RFC 9112 §7.1: chunk-data is followed by exactly CRLF
            if c != CR:
                self._fail("chunk data not followed by CRLF")
            self._state = _C_DATA_LF
        elif st == _C_DATA_LF:
            if c != LF:
                self._fail("chunk data not followed by CRLF")
            self._size = 0
            self._digits = 0
            self._state = _C_SIZE_START
        elif st == _C_TRAILER_START:
            # RFC 9112 §7.1.2: trailer-section = *( field-line CRLF ); same field rules
            if c == CR:
                self._state = _C_END_LF
            elif c in _TCHAR_SET:
                self._state = _C_TRAILER_NAME
            elif c in _OWS:
                self._fail("obs-fold in trailer section")  # RFC 9112 §5.2
            else:
                self._fail("invalid trailer field name")
        elif st == _C_TRAILER_NAME:
            if c == 0x3A:  # ":"
                self._state = _C_TRAILER_VALUE
            elif c not in _TCHAR_SET:
                self._fail("invalid trailer field name")  # incl. SP before ":" (§5.1)
        elif st == _C_TRAILER_VALUE:
            if c == CR:
                self._state = _C_TRAILER_LF
            elif c not in _FIELD_SET:
                self._fail("invalid character in trailer field value")  # RFC 9110 §5.5
        elif st == _C_TRAILER_LF:
            if c != LF:
                self._fail("bare CR in trailer section")
            self._state = _C_TRAILER_START
        elif st == _C_END_LF:
            if c != LF:
                self._fail("bare CR in trailer section")
            self._state = _C_DONE

    def _after_token(self, c):
        """What may follow the size digits, an ext-name, or an ext-value."""
        if c == CR:
            self._state = _C_SIZE_LF
        elif c == 0x3B:  # ";"
            self._state = _C_EXT_NAME_START
        elif c in _OWS:
            self._state = _C_EXT_WS
        elif c == LF:
            self._fail("bare LF in chunk-size line")  # RFC 9112 §2.2
        else:
            self._fail("invalid chunk-size line")
