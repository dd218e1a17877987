"""The sans-IO HTTP/1.1 exchange above the scanner, and request-target helpers.

``Exchange`` is one request and its response as a proxy sees them (h11's
``Connection`` split into readers/writers, aiohttp's payload parser and stream
writer, HAProxy's mux_h1): scanner facts, body bytes and the backend's end of
stream go in; bytes to send up or down and verdicts come out (is the response
complete, may the backend connection be reused, may the client connection be
kept). It never touches a socket or a clock, so every order of events can be
tested without I/O (tests/unit/test_exchange.py, with hypothesis).

The two decisions RFC 9112 leaves to every implementation are tables here:
``response_body_mode`` (§6.3 message body length) and ``Exchange.keep_client``
(§9.3 persistence). How an exchange ends is one of ``OUTCOMES``, decided here,
not at the call site: complete, cut (the response started and cannot finish:
the client connection is closed with no terminator, so no truncated body passes
for complete) or refused (nothing of a response sent yet: fastlb answers with a
status of its own).

Helpers below it are functions of bytes the scanner already validated (RFC 9112
§3.2 target forms; RFC 6265 §4.2 Cookie syntax; RFC 3986 §3.4 query).
"""

import re
from random import getrandbits

from ._core import ChunkedDecoder, ScanError

__all__ = [
    "Exchange", "response_body_mode", "error_response", "upgrade_offer", "accepted_upgrade",
    "path_of", "split_host", "query_param", "cookie_value", "valid_traceparent", "new_traceparent",
    "M_NONE", "M_LENGTH", "M_CHUNKED", "M_CLOSE", "OPEN", "COMPLETE", "CUT", "REFUSED",
    "R_NONE", "R_HEAD", "R_BODY",
]

# Response body framing (RFC 9112 §6.3).
M_NONE = 0  # HEAD request, 1xx, 204, 304: no body whatever the headers say
M_LENGTH = 1  # Content-Length
M_CHUNKED = 2  # chunked transfer coding
M_CLOSE = 3  # delimited by the backend closing the connection

# Where the response is (Exchange.rstate).
R_NONE = 0  # no backend connection attached yet
R_HEAD = 1  # waiting for the (final) response head
R_BODY = 2  # streaming the response body

# How an exchange ends (Exchange.outcome).
OPEN = 0
COMPLETE = 1  # the response was relayed whole
CUT = 2  # the response started and cannot finish: close the client, no terminator
REFUSED = 3  # no response byte was sent: fastlb answers with its own status
OUTCOMES = {OPEN: "open", COMPLETE: "complete", CUT: "cut", REFUSED: "refused"}

IDEMPOTENT = frozenset((b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"))  # RFC 9110 §9.2.2
LAST_CHUNK = b"0\r\n\r\n"
CRLF = b"\r\n"


def response_body_mode(is_head, status, chunked, content_length):
    """RFC 9112 §6.3, rules in order: the framing of a response body.

    (1) a response to HEAD, and 1xx, 204, 304 responses, end at the head;
    (3) Transfer-Encoding ending in chunked frames it (the scanner already refused
        a response whose final coding is not chunked, and TE with CL);
    (5) a valid Content-Length gives its length;
    (8) otherwise the body runs until the backend closes the connection.
    """
    if is_head or status < 200 or status == 204 or status == 304:
        return M_NONE
    if chunked:
        return M_CHUNKED
    if content_length >= 0:
        return M_LENGTH
    return M_CLOSE


def upgrade_offer(value, allowed):
    """The protocols of an Upgrade field value (RFC 9110 §7.8: a list of
    protocol-name["/" version]) that ``allowed`` (lowercase names) permits, as one
    field value, or None when it offers none of them."""
    keep = []
    for token in value.split(b","):
        token = token.strip(b" \t")
        if token and token.partition(b"/")[0].lower() in allowed:
            keep.append(token)
    return b", ".join(keep) if keep else None


def accepted_upgrade(value, offered):
    """A 101 response's Upgrade value names protocols we offered (RFC 9110 §15.2.2)."""
    if not value:
        return False
    names = {t.strip(b" \t").partition(b"/")[0].lower() for t in offered.split(b",")}
    return all(t.strip(b" \t").partition(b"/")[0].lower() in names for t in value.split(b",") if t.strip())


def error_response(status, phrase, body, request_id, is_head, close, extra=b""):
    """fastlb's own response: JSON ``body`` framed by Content-Length; no body bytes
    for a HEAD request (RFC 9110 §9.3.2: the same head as GET, without content).
    ``extra``: more header lines (e.g. ``Retry-After: 5\r\n``)."""
    head = b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nX-Request-ID: %s\r\n%s%s\r\n" % (
        status, phrase, len(body), request_id, extra, b"Connection: close\r\n" if close else b"")
    return head if is_head else head + body


class Exchange:
    """One request/response exchange: framing both ways and how it ends."""

    __slots__ = (
        # request facts (from the scanner)
        "method", "target", "minor", "keep_alive", "is_head", "idempotent", "upgrade", "request_id",
        # request body
        "req_has_body", "req_remaining", "req_decoder", "req_done", "rest", "max_body", "req_body_len",
        # response
        "rstate", "resp_mode", "resp_remaining", "resp_decoder", "rechunk", "close_after",
        "up_reusable", "resp_started", "resp_seen", "leftover", "outcome", "status", "resp_extra",
    )

    def __init__(self, method, target, minor, keep_alive, upgrade, request_id, chunked, content_length):
        self.method = method
        self.target = target
        self.minor = minor
        self.keep_alive = keep_alive
        self.is_head = method == b"HEAD"
        self.idempotent = method in IDEMPOTENT
        self.upgrade = upgrade  # the Upgrade value forwarded (allowed protocols only), or None
        self.request_id = request_id
        if chunked:
            self.req_has_body = True
            self.req_decoder = ChunkedDecoder()
            self.req_remaining = -1
            self.req_done = False
        else:
            self.req_has_body = content_length > 0
            self.req_decoder = None
            self.req_remaining = content_length if content_length > 0 else 0
            self.req_done = not self.req_has_body
        self.rest = None  # bytes after the request body (a pipelined next request)
        self.max_body = -1  # decoded chunked body bytes allowed (limits.max_body); -1 = no limit
        self.req_body_len = 0  # decoded chunked body bytes so far (counted only with max_body)
        self.resp_extra = b""  # header lines added to the response head (RateLimit-*), ours included
        self.rstate = R_NONE
        self.resp_mode = M_NONE
        self.resp_remaining = 0
        self.resp_decoder = None
        self.rechunk = False
        self.close_after = False
        self.up_reusable = False
        self.resp_started = False  # bytes of a response (ours or the backend's) went to the client
        self.resp_seen = False  # the backend sent at least one byte
        self.leftover = False  # bytes followed the response on the backend connection
        self.outcome = OPEN
        self.status = 0

    # ------------------------------------------------------------ request body
    def request_body(self, data):
        """Body bytes from the client -> bytes to send upstream (re-framed).

        When the body completes, ``req_done`` is set and bytes after it are kept in
        ``rest``. Raises ScanError for an invalid chunked body."""
        dec = self.req_decoder
        if dec is None:
            remaining = self.req_remaining
            size = len(data)
            if size < remaining:
                self.req_remaining = remaining - size
                return data
            self.req_remaining = 0
            self.req_done = True
            if size == remaining:
                return data
            self.rest = data[remaining:]
            return data[:remaining]
        payload = dec.feed(data)
        if self.max_body >= 0 and payload:
            self.req_body_len += len(payload)
            if self.req_body_len > self.max_body:
                raise ScanError(413, "request body larger than %d bytes (limits.max_body)" % self.max_body)
        out = b"%x\r\n%s\r\n" % (len(payload), payload) if payload else b""
        if dec.done:
            self.req_done = True
            if dec.leftover:
                self.rest = data[len(data) - dec.leftover:]
            return out + LAST_CHUNK
        return out

    # --------------------------------------------------------------- response
    def response_head(self, rsc, rbuf, n, draining):
        """The final response head scanned (``n`` bytes of ``rbuf``): choose the
        client's framing (RFC 9112 §6.3; close-delimited and chunked bodies are
        re-chunked for HTTP/1.1 clients so their connection stays reusable) and
        return the bytes to write downstream: the rebuilt head and whatever of the
        body came with it (one write, one syscall, for the common REST case).
        ``rbuf`` is consumed."""
        self.status = status = rsc.status
        mode = response_body_mode(self.is_head, status, rsc.chunked, rsc.content_length)
        self.resp_mode = mode
        client11 = self.minor == 1
        close_after = not self.keep_alive or draining or not self.req_done
        extra = b""
        if mode == M_CHUNKED or mode == M_CLOSE:
            if client11:
                self.rechunk = True
                extra = b"Transfer-Encoding: chunked\r\n"
            else:
                close_after = True  # HTTP/1.0 client: the close delimits the body
        if close_after:
            extra += b"Connection: close\r\n"
        elif not client11:
            extra += b"Connection: keep-alive\r\n"
        self.close_after = close_after
        self.up_reusable = rsc.keep_alive and mode != M_CLOSE
        head = rsc.build_downstream_head(rbuf, extra + self.resp_extra if self.resp_extra else extra, False)
        self.resp_started = True
        self.rstate = R_BODY
        size = len(rbuf) - n
        if mode == M_CHUNKED:
            self.resp_decoder = ChunkedDecoder()
        elif mode == M_LENGTH:
            self.resp_remaining = rsc.content_length
        elif mode == M_NONE:
            self._complete(size > 0)
            rbuf.clear()
            return head
        if not size:
            rbuf.clear()
            if mode == M_LENGTH and not self.resp_remaining:
                self._complete(False)
            return head
        if mode == M_LENGTH:
            remaining = self.resp_remaining
            take = size if size < remaining else remaining
            out = head + rbuf[n:n + take]
            rbuf.clear()
            self.resp_remaining = remaining - take
            if take == remaining:
                self._complete(size > take)
            return out
        rest = bytes(rbuf[n:])
        rbuf.clear()
        return head + self.response_body(rest)

    def response_body(self, data):
        """Body bytes from the backend -> bytes for the client (b"" when none).
        Sets ``outcome`` to COMPLETE at the end of the body. Raises ScanError for
        an invalid chunked body (the caller cuts the exchange)."""
        mode = self.resp_mode
        if mode == M_LENGTH:
            remaining = self.resp_remaining
            size = len(data)
            if size < remaining:
                self.resp_remaining = remaining - size
                return data
            self.resp_remaining = 0
            self._complete(size > remaining)
            return data if size == remaining else data[:remaining]
        if mode == M_CHUNKED:
            dec = self.resp_decoder
            payload = dec.feed(data)
            if self.rechunk:
                out = b"%x\r\n%s\r\n" % (len(payload), payload) if payload else b""
            else:
                out = payload
            if dec.done:
                self._complete(dec.leftover > 0)
                if self.rechunk:
                    out += LAST_CHUNK
            return out
        if mode == M_CLOSE:
            return b"%x\r\n%s\r\n" % (len(data), data) if self.rechunk else data
        return b""  # M_NONE: bytes after a body-less response (leftover)

    def upstream_closed(self, clean):
        """The backend connection ended (``clean``: after a FIN, not a reset or an
        error). Returns the bytes that end the response for the client (the chunked
        terminator of a re-chunked close-delimited body) when that completes it;
        otherwise the exchange can no longer complete and ``outcome`` says how it
        ends: CUT if a response started, REFUSED if not (502)."""
        if self.rstate == R_BODY and self.resp_mode == M_CLOSE and clean:
            self._complete(False)
            return LAST_CHUNK if self.rechunk else b""
        self.fail(502)
        return b""

    def fail(self, status):
        """The exchange cannot complete: CUT when the client already has response
        bytes, else REFUSED with ``status``. Returns the outcome."""
        if self.outcome == OPEN:
            if self.resp_started:
                self.outcome = CUT
            else:
                self.outcome = REFUSED
                self.status = status
        return self.outcome

    def _complete(self, leftover):
        self.leftover = leftover
        self.outcome = COMPLETE
        self.rstate = R_NONE

    # --------------------------------------------------------------- verdicts
    def reuse_upstream(self):
        """RFC 9112 §9.3 for the backend connection: only after a complete exchange
        (whole request body sent, response framed by length or chunks, nothing after
        it) on a connection the backend did not ask to close."""
        return self.outcome == COMPLETE and self.up_reusable and not self.leftover and self.req_done

    def keep_client(self, draining):
        """RFC 9112 §9.3 for the client connection: persists after a complete
        response unless either side asked to close, the body was close-delimited for
        an HTTP/1.0 client, the request body was not read to its end, or fastlb is
        draining. After a refusal the same, on fastlb's own response."""
        if self.outcome == COMPLETE:
            return not self.close_after and self.req_done and not draining
        if self.outcome == REFUSED:
            return self.keep_alive and self.req_done and not draining
        return False




def path_of(target):
    """Request target -> its path with query (origin-form as is; absolute-form's path;
    asterisk-form as "/")."""
    if target[:1] == b"/":
        return target
    if target == b"*":
        return b"/"  # OPTIONS *: only routes for "/" match
    scheme_end = target.find(b"://")
    if scheme_end > 0:
        slash = target.find(b"/", scheme_end + 3)
        return target[slash:] if slash > 0 else b"/"
    return target


def split_host(host):
    """Host header value -> lowercase host without port (IPv6 literals keep their brackets)."""
    if host.startswith(b"["):
        end = host.find(b"]")
        return host[: end + 1].lower() if end > 0 else host.lower()
    i = host.rfind(b":")
    return (host[:i] if i >= 0 else host).lower()


def query_param(target, name):
    """First value of query parameter ``name`` (bytes, not percent-decoded), or None."""
    q = target.find(b"?")
    if q < 0:
        return None
    query = target[q + 1:]
    h = query.find(b"#")
    if h >= 0:
        query = query[:h]
    for part in query.split(b"&"):
        key, sep, value = part.partition(b"=")
        if key == name:
            return value
    return None


def cookie_value(cookie_header, name):
    """Value of cookie ``name`` in a Cookie header value (``a=1; b=2``), or None."""
    for part in cookie_header.split(b";"):
        key, sep, value = part.strip().partition(b"=")
        if sep and key == name:
            return value.strip(b'"') if len(value) >= 2 and value[:1] == value[-1:] == b'"' else value
    return None


# ------------------------------------------------------------ W3C Trace Context
# W3C Trace Context Level 1 §3.2: version-traceid-parentid-flags in lowercase hex;
# version not ff; trace-id and parent-id not all zeros; a later version than 00 may
# carry more fields after a "-" (§3.3: parse what 00 defines). One C-level match.
_TRACEPARENT = re.compile(rb"(?!ff)([0-9a-f]{2})-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}(-.*)?",
                          re.S)


def valid_traceparent(value):
    """Is ``value`` (one traceparent field value, OWS trimmed) valid? Version 00 is
    exactly 55 bytes."""
    m = _TRACEPARENT.fullmatch(value)
    return m is not None and not (m.group(2) is not None and m.group(1) == b"00")


def new_traceparent():
    """A new trace: version 00, random trace-id and parent-id (never all zeros),
    flags 01 (sampled: fastlb starts the trace and leaves recording to the backends,
    whose parent-based samplers then record it; docs/tracing.md)."""
    return b"00-%032x-%016x-01" % (getrandbits(128) or 1, getrandbits(64) or 1)
