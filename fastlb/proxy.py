"""The request lifecycle, in named phases, driving one exchange per request.

One ``ProxyConnection`` per client connection (downstream.ClientConnection: flow
control, deadlines, closing). Requests on it are served one at a time, in order
(pipelined requests wait in ``buf``); each has one ``http1.Exchange`` (framing and
how it ends) and uses the connection's ``upstream.BackendSession`` (connect,
retries, pooling). The phases:

    head      scan the request head (fastlb._core RequestScanner); reject -> 4xx + close
    route     listener routes (host, path prefix) -> pool; none -> 404
    select    pool selector -> backend; none usable -> 503
    forward   the session connects (or reuses) and sends the rebuilt head (hop-by-hop
              removed, X-Forwarded-*, X-Request-ID, only allowed Upgrade protocols)
              then the body, streamed and re-framed by the exchange
    respond   response head(s): 1xx relayed, 101 -> tunnel, final -> the exchange
              frames the body for the client and says when it is complete
    finish    one exit per outcome (``_complete``, ``_refuse``, ``_cut``), all through
              ``_end_exchange``: the session ends (connection pooled, closed or reset),
              the exchange's read pauses are released, then the next pipelined
              request or the client connection closes

Invariants:
- Nothing is forwarded before the whole request head is validated.
- Bodies are never buffered whole: bytes are written as they arrive and reading
  pauses on the other side's write-buffer high-water mark.
- A response cut short (backend reset, invalid chunk, timeout after the head) ends
  with the client connection reset and no terminator: never framed as complete.
- After a client half-close, every complete request already received is answered,
  then the connection closes.
- Every failure a client can see before a response started is a JSON body with
  status 4xx/5xx and the request id (no body for HEAD), and one log line.
- Time is read from ``loop.time()`` at most once per event; deadlines live on the
  listener's timer wheel (timers.py), never in a timer per request.
"""

import json
import logging
from time import perf_counter

from ._core import RequestScanner, ResponseScanner, ScanError
from .balancer import KEY_COOKIE, KEY_HEADER, KEY_IP, KEY_NONE, KEY_PATH, KEY_QUERY
from .downstream import (
    CLOSED, EXCHANGE_PAUSES, OPEN, PAUSE_PENDING, PAUSE_PIPELINE, PAUSE_UPSTREAM, ClientConnection,
)
from .auth import Verdict, remove_query_param
from .clientaddr import client_address, normalize
from .counters import (
    F_AUTH, F_CLIENT_CLOSED, F_CLIENT_TIMEOUT, F_CONNECT_FAILED, F_CONNECT_TIMEOUT, F_DENIED, F_METHOD,
    F_NO_BACKEND, F_NO_ROUTE, F_NONE, F_PARSE_ERROR, F_QUEUE_FULL, F_QUEUE_TIMEOUT, F_SHUTDOWN,
    F_UPSTREAM_INVALID, F_UPSTREAM_RESET, F_UPSTREAM_TIMEOUT, FLAG_NAMES, parse_flag,
)
from .guard import ratelimit_headers
from .proxyproto import ProxyProtocolError, parse as parse_proxy_header
from .errors import REASONS
from .health import report_failure, report_success
from .http1 import (
    COMPLETE, CUT, R_BODY, R_HEAD, R_NONE, REFUSED, Exchange, accepted_upgrade, cookie_value, error_response,
    new_traceparent, path_of, query_param, split_host, upgrade_offer, valid_traceparent,
)
from .upstream import BackendSession, dispatch

log = logging.getLogger("fastlb.proxy")

# Request phases (self.state).
HEAD = 0  # reading a request head (or idle between requests)
BODY = 1  # request head forwarded; receiving the request body
WAIT = 2  # request fully received; response in progress
TUNNEL = 3  # upgraded: bytes relayed both ways
QUEUED = 4  # request head received; waiting in the pool's queue for a backend with capacity
AUTHWAIT = 5  # request head received; its authentication is being decided off the loop (auth.py)

# Client timer kinds (downstream.py has the closing ones, 10 and up).
T_IDLE = 1  # keep-alive idle, no byte of a new request yet
T_HEADER = 2  # head in progress (slowloris bound)
T_BODY = 3  # client inactivity while sending a request body
T_TUNNEL = 4  # upgraded connection inactivity
T_QUEUE = 5  # how long a request may wait in its pool's queue
T_AUTH = 6  # how long a request may wait for its authentication (a bcrypt check, a JWKS fetch)

AUTH_WAIT = 10.0  # seconds; then 503

CRLF = b"\r\n"
# Pipelined bytes buffered beyond a full request head pause reading.
PIPELINE_SLACK = 64 * 1024
# What follows the end of an exchange (_end_exchange).
NEXT = 0  # the next request on the same connection
CLOSE = 1  # close the client connection (lingering close unless the client sent FIN)
RESET = 2  # reset it: a response was cut short
# Tunnel half-closes seen (self.tunnel_eofs).
EOF_CLIENT = 1
EOF_BACKEND = 2


class ProxyConnection(ClientConnection):
    __slots__ = ("scanner", "rscanner", "buf", "rbuf", "state", "ex", "session", "in_heads", "tunnel_eofs",
                 "t_start", "flag", "sent0", "req_in", "trace", "route_pool",
                 "addr", "route", "head_len", "pending", "tight", "pp_done", "peer_trusted", "counted", "over_cap",
                 "auth_memo", "tls_extra", "pp_src")

    def __init__(self, listener):
        ClientConnection.__init__(self, listener)
        limits = listener.limits
        self.scanner = RequestScanner(limits.max_request_line, limits.max_header_bytes, limits.max_header_fields)
        self.rscanner = ResponseScanner(limits.max_request_line, limits.max_header_bytes, limits.max_header_fields)
        self.buf = bytearray()
        self.rbuf = bytearray()
        self.state = HEAD
        self.ex = None
        self.session = BackendSession(self, listener)
        self.in_heads = False
        self.tunnel_eofs = 0
        # the request in progress, for the access log and the metrics (_record)
        self.t_start = 0.0  # perf_counter() when its head was complete
        self.flag = F_NONE  # why it ended, when not with a complete response (counters.FLAGS)
        self.sent0 = 0  # self.sent when it started: bytes_out is the difference
        self.req_in = 0  # request bytes consumed: head + body
        self.trace = None  # the traceparent forwarded (tracing on), for the access log
        self.route_pool = None  # the pool the request was routed to, for the access log
        # the entry guard (guard.py, docs/security.md)
        self.addr = b""  # the client address of the request: the peer's, or from trusted proxies' headers
        self.route = None  # the guard.Route of the request
        self.head_len = 0  # bytes of its head at the front of buf (kept while its authentication waits)
        self.pending = None  # the auth Future it waits on (state AUTHWAIT)
        self.tight = None  # the tightest rate-limit state seen (guard.Route.take) for RateLimit-*
        self.pp_done = not listener.proxy_protocol  # the PROXY protocol header was read (or is not expected)
        self.peer_trusted = False  # the peer is one of the listener's trusted_proxies
        self.counted = False  # counted in listener.per_client (max_connections_per_client)
        self.over_cap = False  # opened beyond max_connections_per_client: its first request gets 429
        self.auth_memo = None  # (route, API key header value, passed verdict) of this connection's last request
        self.tls_extra = b""  # TLS listener with subject_header: the verified client subject's header line
        self.pp_src = None  # the PROXY header's source address, read before the TLS handshake (proxied)

    def proxied(self, src_ip):
        """A TLS listener with proxy_protocol: the header was read before the handshake
        (server.ProxyHeaderGate); ``src_ip`` is its source address, None for the
        socket's peer (v1 UNKNOWN, v2 LOCAL)."""
        self.pp_done = True
        self.pp_src = src_ip

    # ------------------------------------------------------------------ events
    def on_connect(self):
        listener = self.listener
        if self.pp_src is not None:
            self.client_ip = self.pp_src
        if listener.tls is not None and listener.tls.subject_header is not None:
            self.tls_extra = listener.tls.subject_line(self.transport.get_extra_info("ssl_object"))
        if self.pp_done:
            self._admit()
            listener.wheel.arm(self.timer, T_IDLE, listener.loop.time() + listener.timeouts.client_idle)
        else:  # the PROXY protocol header is due at once, within the header timeout
            listener.wheel.arm(self.timer, T_HEADER, listener.loop.time() + listener.timeouts.client_header)

    def _admit(self):
        """The connection's client address is known: trusted peer, per-client cap."""
        listener = self.listener
        ip = self.client_ip
        if ip[:7] == b"::ffff:" or ip[:7] == b"::FFFF:" or b"%" in ip:
            ip = self.client_ip = normalize(ip)  # one client, however its socket family shows it
        self.addr = ip
        if listener.trusted is not None:
            self.peer_trusted = ip in listener.trusted
        cap = listener.max_per_client
        if cap:
            per = listener.per_client
            n = per.get(ip, 0)
            if n >= cap:
                self.over_cap = True
            else:
                per[ip] = n + 1
                self.counted = True

    def _release_client_slot(self):
        if self.counted:
            self.counted = False
            per = self.listener.per_client
            n = per.get(self.client_ip, 1) - 1
            if n > 0:
                per[self.client_ip] = n
            else:
                per.pop(self.client_ip, None)

    def _proxy_header(self):
        """Read the PROXY protocol header at the front of buf; False while incomplete
        or when the connection was refused."""
        try:
            got = parse_proxy_header(self.buf)
        except ProxyProtocolError as exc:
            self.listener.deny("proxy_protocol")
            self.pp_done = True
            self.buf.clear()
            self._client_error(400, "PROXY protocol header required on this listener: %s" % exc.reason, F_DENIED)
            return False
        if got is None:
            return False
        consumed, src_ip = got[0], got[1]
        del self.buf[:consumed]
        if src_ip:
            self.client_ip = src_ip
        self.pp_done = True
        self._admit()
        return True

    def data_received(self, data):
        self.received += len(data)
        if self.phase != OPEN:
            return  # lingering close: read and discard
        state = self.state
        if state == BODY:
            self._request_body(data)
            return
        if state == TUNNEL:
            conn = self.session.conn
            if conn is not None:
                conn.transport.write(data)
            self.req_in += len(data)
            listener = self.listener
            listener.wheel.extend(self.timer, listener.loop.time() + listener.timeouts.tunnel)
            return
        buf = self.buf
        buf += data
        if state == HEAD:
            if not self.pp_done:
                if not self._proxy_header():
                    return
                if not buf:  # the PROXY header alone: the request is due within client_idle
                    listener = self.listener
                    listener.wheel.arm(self.timer, T_IDLE, listener.loop.time() + listener.timeouts.client_idle)
                    return
            if self.timer.kind != T_HEADER:
                listener = self.listener
                listener.wheel.arm(self.timer, T_HEADER, listener.loop.time() + listener.timeouts.client_header)
            self._read_heads()
        elif len(buf) > PIPELINE_SLACK:  # WAIT: a pipelined request waits its turn
            self.flow.pause(PAUSE_PIPELINE)

    def eof_received(self):
        keep = self._client_eof()
        # over TLS the close_notify ends the connection whatever is returned (uvloop
        # warns about True): what is already written is flushed, then it closes
        return keep and self.listener.tls is None

    def _client_eof(self):
        self.client_eof = True
        if self.phase != OPEN:
            return False  # the lingering close is over
        state = self.state
        if state == TUNNEL:
            # Relay the half-close; the backend may still answer (RFC 9110 §7.8 tunnels
            # carry TCP semantics). The tunnel ends when both directions have.
            self.tunnel_eofs |= EOF_CLIENT
            conn = self.session.conn
            if conn is not None and not conn.closed and conn.transport.can_write_eof():
                conn.transport.write_eof()
            if self.tunnel_eofs == EOF_CLIENT | EOF_BACKEND:
                self._end_tunnel()
                return False
            return True
        if state == HEAD:
            # Every complete request was handled as it arrived; what is left is at
            # most a partial head, which can never complete now.
            return self.ex is not None
        if state == QUEUED or state == AUTHWAIT:
            # A client gone (or half-closed) while its request waits for capacity or
            # for its authentication: the request is dropped, never forwarded
            # (HAProxy's abortonclose for queues).
            if state == QUEUED:
                pool = self.session.pool
                self._leave_queue()
                log.info("client %s closed while its request waited in pool %s's queue: dropped",
                         self.addr.decode("latin-1"), pool.name)
            else:
                self.pending = None
                self.state = HEAD
            self.flag = F_CLIENT_CLOSED
            if self.listener.observe:
                self._record()
            self.ex = None
            self.session.finish(self.listener.loop.time())
            self.close_client()
            return False
        if state == BODY:
            # The request body can never complete.
            self._fail(400, "client closed the connection before the end of the request body", F_CLIENT_CLOSED)
            return True
        return True  # WAIT: answer the request in progress (and pipelined ones), then close

    def on_disconnect(self):
        self._leave_queue()
        self._release_client_slot()
        self.pending = None
        self.state = HEAD
        ex = self.ex
        if ex is not None:
            # gone in the middle of an exchange: a client that left, a reset we sent
            # after a cut (its flag is set), or the drain's end
            if not self.flag:
                self.flag = F_CLIENT_CLOSED
            if self.listener.observe:
                self._record()
        self.ex = None
        self.session.finish(self.listener.loop.time(), abort=ex is not None and ex.outcome != COMPLETE)

    def on_client_pause(self):
        conn = self.session.conn
        if conn is not None:
            conn.pause_reading()
        self.session.suspend_response()

    def on_client_resume(self):
        conn = self.session.conn
        if conn is not None:
            conn.resume_reading()
        ex = self.ex
        if ex is not None and conn is not None and ex.req_done and ex.rstate != R_NONE and self.state != TUNNEL:
            self.session.arm_response(self.listener.loop.time(), ex.rstate == R_HEAD)

    def on_upstream_pause(self):
        self.flow.pause(PAUSE_UPSTREAM)

    def on_upstream_resume(self):
        self.flow.resume(PAUSE_UPSTREAM)

    # ------------------------------------------------------------------- timers
    def rearm(self):
        """The client deadline for the current state (after a send pause ends)."""
        listener = self.listener
        state = self.state
        now = listener.loop.time()
        if state == HEAD:
            if self.buf:
                listener.wheel.arm(self.timer, T_HEADER, now + listener.timeouts.client_header)
            else:
                listener.wheel.arm(self.timer, T_IDLE, now + listener.timeouts.client_idle)
        elif state == BODY:
            listener.wheel.arm(self.timer, T_BODY, now + listener.timeouts.client_idle)
        elif state == TUNNEL:
            listener.wheel.arm(self.timer, T_TUNNEL, now + listener.timeouts.tunnel)
        elif state == QUEUED or state == AUTHWAIT:
            pass  # the queue's (or the authentication's) deadline runs on
        else:
            listener.wheel.cancel(self.timer)  # WAIT: the session's response deadline runs

    def on_client_timer(self, kind, now):
        timeouts = self.listener.timeouts
        if kind == T_IDLE:
            if self.state == HEAD and self.ex is None:
                self.close_client(linger=False)
        elif kind == T_HEADER:
            if self.state == HEAD and self.ex is None:
                if self.buf:
                    self._client_error(408, "request head not received within %gs" % timeouts.client_header,
                                       F_CLIENT_TIMEOUT)
                else:
                    self.close_client(linger=False)
        elif kind == T_BODY:
            if self.state == BODY:
                self._fail(408, "request body stalled for %gs" % timeouts.client_idle, F_CLIENT_TIMEOUT)
        elif kind == T_TUNNEL:
            if self.state == TUNNEL:
                self._end_tunnel()
        elif kind == T_AUTH:
            if self.state == AUTHWAIT:
                self.pending = None
                self.state = HEAD
                route = self.route
                route.auth_rejected["busy"] = route.auth_rejected.get("busy", 0) + 1
                del self.buf[:self.head_len]
                self._refuse_early(503, "authentication did not complete within %gs" % AUTH_WAIT, F_AUTH,
                                   b"Retry-After: 1\r\n")
        elif kind == T_QUEUE:
            if self.state == QUEUED:
                pool = self.session.pool
                self._leave_queue()
                pool.queue_timeouts_total += 1
                self._refuse_early(503, "pool %s: no backend had capacity within the queue timeout (%gs)" % (
                    pool.name, pool.queue_timeout), F_QUEUE_TIMEOUT, self._retry_after(pool))

    def on_send_timeout(self):
        reason = "client stopped reading the response for %gs" % self.listener.timeouts.send
        if self.ex is not None:
            self.ex.fail(0)
            self._cut(reason, F_CLIENT_TIMEOUT)
        else:
            log.info("client %s: %s", self.client_ip.decode("latin-1"), reason)
            self.abort_client()

    def on_response_timeout(self):
        ex = self.ex
        if ex is None or self.state == TUNNEL:
            return
        if ex.resp_started:
            ex.fail(0)
            self._cut("backend stalled in the response body for %gs" % self.listener.timeouts.response,
                      F_UPSTREAM_TIMEOUT)
            return
        session = self.session
        per_try = session.pool.per_try_timeout
        if per_try is not None and not ex.resp_seen:
            reason = "backend did not respond within %gs (per_try_timeout)" % per_try
            self._count_failure(reason, F_UPSTREAM_TIMEOUT)
            if self._retry("per_try_timeout"):
                return
        else:
            reason = "backend did not respond within %gs" % self.listener.timeouts.response
            self._count_failure(reason, F_UPSTREAM_TIMEOUT)
        self._fail(504, reason, F_UPSTREAM_TIMEOUT)

    def _retry(self, why):
        """Send the request again on another backend (session.retry); False when not
        allowed. The exchange is reset to "no try attached" first: the new try may
        attach at once (an idle pooled connection), and its attach sets the state
        the response needs. The dead connection's write pause goes with it."""
        ex = self.ex
        rstate = ex.rstate
        ex.rstate = R_NONE
        self.flow.resume(PAUSE_UPSTREAM)
        if self.session.retry(why, self.listener.loop.time()):
            return True
        ex.rstate = rstate
        return False

    # ---------------------------------------------------------------- phase: head
    def _read_heads(self):
        # A loop, not recursion: requests answered at once (404, 503, ...) return
        # here through _next_request, which only resets state while we loop.
        if self.in_heads:
            return
        self.in_heads = True
        try:
            while self.state == HEAD and self.ex is None and self.phase == OPEN and self.buf:
                try:
                    n = self.scanner.scan(self.buf)
                except ScanError as exc:
                    self._client_error(exc.status, exc.reason, parse_flag(exc.status))
                    return
                if not n:
                    break
                self._start_request(n)
        finally:
            self.in_heads = False
        if self.client_eof and self.state == HEAD and self.ex is None:
            self.close_client()  # half-closed: nothing complete is left to answer

    def _start_request(self, n):
        self.t_start = perf_counter()
        self.flag = F_NONE
        self.sent0 = self.sent
        self.req_in = n
        self.head_len = n
        self.tight = None
        sc = self.scanner
        listener = self.listener
        method = sc.method
        target = sc.target
        rid = sc.request_id
        if rid is None:
            rid = listener.next_request_id()
        upgrade = None
        if sc.upgrade:
            upgrade = upgrade_offer(sc.header_value(self.buf, b"upgrade") or b"", listener.upgrade_protocols)
        ex = self.ex = Exchange(method, target, sc.http_minor, sc.keep_alive, upgrade, rid, sc.chunked,
                                sc.content_length)
        if listener.hsts:
            ex.resp_extra = listener.hsts  # every response of a TLS listener with tls.hsts, fastlb's own too
        self.addr = self.client_ip
        if self.peer_trusted:
            self.addr = self._forwarded_client()

        # phase: route
        if method == b"CONNECT":
            self.route = self.route_pool = None
            del self.buf[:n]
            self._refuse_early(405, "CONNECT is not supported by a reverse proxy", F_METHOD)
            return
        if listener.redirect is not None:
            self.route = self.route_pool = None
            del self.buf[:n]
            self._redirect_https(sc.host, target)
            return
        route = listener.route(sc.host, target)
        self.route = route
        if route is None:
            self.route_pool = None
            del self.buf[:n]
            self._refuse_early(404, "no route for this host and path", F_NO_ROUTE)
            return
        self.route_pool = route.pool
        if self.over_cap:
            listener.deny("connections")
            del self.buf[:n]
            self._refuse_early(429, "too many connections from %s (max_connections_per_client %d)" % (
                self.addr.decode("latin-1"), listener.max_per_client), F_DENIED, b"Retry-After: 1\r\n")
            return
        if route.guarded:
            self._guard(route)
        else:
            self._dispatch(route, b"")

    def _forwarded_client(self):
        """The client address behind a trusted proxy (clientaddr.client_address)."""
        sc = self.scanner
        xff = []
        fwd = []
        for name, value in sc.headers(self.buf):
            lname = name.lower()
            if lname == b"x-forwarded-for":
                xff.append(value)
            elif lname == b"forwarded":
                fwd.append(value)
        if not xff and not fwd:
            return self.client_ip
        return client_address(self.client_ip, xff, fwd, self.listener.trusted)

    def _header(self, name):
        """A field of the request head in progress (its head is still at the front of buf)."""
        return self.scanner.header_value(self.buf, name)

    # ---------------------------------------------------------------- phase: guard
    def _guard(self, route):
        """The route's entry guard (guard.py): limits, access, rate limits keyed on the
        request, then authentication (maybe off the loop: AUTHWAIT)."""
        ex = self.ex
        sc = self.scanner
        refusal = route.check(ex.method, ex.target, sc.content_length, self.addr)
        if refusal is None and route.pre:
            refusal, self.tight = route.take(route.pre, self.addr, self._header, None, None, self.listener.loop.time())
        if refusal is not None:
            self._refuse_guard(refusal)
            return
        if route.max_body >= 0 and sc.chunked:
            ex.max_body = route.max_body
        authenticator = route.auth
        if authenticator is None:
            self._dispatch(route, b"")
            return
        name = authenticator.memo_header
        if name is not None:
            # the same API key again on this connection: its verdict stands (no hash)
            value = self.scanner.header_value(self.buf, name)
            memo = self.auth_memo
            if memo is not None and value is not None and memo[0] is route and memo[1] == value:
                self._authenticated(route, memo[2])
                return
            verdict = authenticator.check(self._header, ex.target)
            if value is not None and verdict.__class__ is Verdict and not verdict.status:
                self.auth_memo = (route, value, verdict)
        else:
            verdict = authenticator.check(self._header, ex.target)
        if verdict.__class__ is Verdict:
            self._authenticated(route, verdict)
            return
        # decided off the loop (a bcrypt check, a JWKS refresh): the head stays in buf,
        # bytes that follow are buffered (reading pauses past PIPELINE_SLACK)
        self.state = AUTHWAIT
        self.pending = verdict
        listener = self.listener
        listener.wheel.arm(self.timer, T_AUTH, listener.loop.time() + AUTH_WAIT)
        verdict.add_done_callback(self._auth_done)

    def _auth_done(self, fut):
        if fut is not self.pending or self.state != AUTHWAIT or self.phase != OPEN:
            return  # gone, timed out or closed meanwhile
        self.pending = None
        self.state = HEAD
        try:
            verdict = fut.result()
        except Exception as exc:  # auth.py resolves with a Verdict; never leave the request hanging
            log.exception("authentication failed unexpectedly: %s", exc)
            verdict = Verdict(503, "busy", b"", None, "authentication failed unexpectedly")
        self._authenticated(self.route, verdict)
        if self.state == HEAD and self.ex is None and self.phase == OPEN:
            self._read_heads()  # pipelined requests that waited behind this one

    def _authenticated(self, route, verdict):
        if verdict.status:
            self._refuse_guard(route.auth_refusal(verdict))
            return
        if route.post:
            refusal, tight = route.take(route.post, self.addr, self._header, verdict.identity, verdict.claims,
                                        self.listener.loop.time())
            if refusal is not None:
                self._refuse_guard(refusal)
                return
            if tight is not None and (self.tight is None or tight[0] < self.tight[0]):
                self.tight = tight
        authenticator = route.auth
        self._dispatch(route, authenticator.claim_header_lines(verdict) if authenticator.claim_headers else b"")

    def _refuse_guard(self, refusal):
        """The guard answers: the head is consumed, nothing is forwarded."""
        del self.buf[:self.head_len]
        extra = refusal.extra
        if refusal.status != 429 and self.tight is not None:
            extra += ratelimit_headers(self.tight)
        log.info("%d %s %s from %s: %s", refusal.status, self.ex.method.decode("latin-1"),
                 self.ex.target.decode("latin-1"), self.addr.decode("latin-1"), refusal.message)
        self._refuse_early(refusal.status, refusal.message, refusal.flag, extra)

    # ---------------------------------------------------------------- phase: dispatch
    def _dispatch(self, route, claim_lines):
        """Build the upstream head and select a backend."""
        n = self.head_len
        sc = self.scanner
        ex = self.ex
        listener = self.listener
        pool = route.pool
        rid = ex.request_id
        upgrade = ex.upgrade
        key = self._request_key(pool) if pool.key_kind != KEY_NONE else None
        if self.tight is not None:
            ex.resp_extra += ratelimit_headers(self.tight)

        # the rebuilt head, kept by the session until the first backend write (retries resend it)
        trusted = self.peer_trusted
        if trusted and sc.header_value(self.buf, b"x-forwarded-proto") is not None:
            extra = self.tls_extra  # the trusted proxy's X-Forwarded-Proto goes on
        elif self.tls_extra:
            extra = listener.extra_proto + self.tls_extra
        else:
            extra = listener.extra_proto
        if sc.request_id is None:
            extra += b"X-Request-ID: " + rid + CRLF
        if sc.chunked:
            extra += b"Transfer-Encoding: chunked\r\n"
        if upgrade is not None:
            extra += b"Connection: upgrade\r\nUpgrade: " + upgrade + CRLF
        if ex.minor == 0 and sc.header_value(self.buf, b"host") is None:
            # HTTP/1.0 without Host: the upstream request is HTTP/1.1, which requires one
            # (RFC 9112 §3.2): an absolute-form target's authority (the scanner's host),
            # else the pool's first backend.
            extra += b"Host: " + (sc.host or pool.host_header) + CRLF
        if claim_lines:
            extra += claim_lines
        drop_trace = False
        mode = listener.trace_mode
        if mode:
            # W3C Trace Context: a valid traceparent goes on as sent (fastlb records no
            # span of its own); an invalid one never goes on: removed with its
            # tracestate, and replaced when fastlb starts traces (mode 2)
            tp = sc.traceparent
            if tp is not None and not valid_traceparent(tp):
                drop_trace = True
                tp = None
            if tp is None and mode == 2:
                tp = new_traceparent()
                extra += b"traceparent: " + tp + CRLF
            self.trace = tp
        head = sc.build_upstream_head(self.buf, self.client_ip, extra, False, drop_trace, trusted, route.drop_names)
        if route.auth is not None and route.auth.strip_query is not None:
            # an API key sent as a query parameter is removed from the forwarded target
            target = ex.target
            stripped = remove_query_param(target, route.auth.strip_query)
            if stripped != target:
                cut = len(ex.method) + 1 + len(target)
                head = ex.method + b" " + stripped + head[cut:]
        del self.buf[:n]

        # phase: select (a pool with waiting requests serves them first: FIFO)
        backend = None
        if not pool.queue:
            if pool.measure_latency:
                backend = pool.pick(key, listener.loop.time())
            else:
                backend = pool.pick(key)
        if backend is None:
            if pool.limited and pool.healthy():
                self._enqueue(pool, key, head)  # every usable backend is at its capacity
            else:
                pool.unavailable_total += 1
                self._refuse_early(503, "no backend available in pool %s" % pool.name, F_NO_BACKEND)
            return
        self._forward(pool, backend, key, head)

    def _forward(self, pool, backend, key, head):
        ex = self.ex
        listener = self.listener
        if ex.req_done:
            self.state = WAIT
            listener.wheel.cancel(self.timer)
        else:
            self.state = BODY
            listener.wheel.arm(self.timer, T_BODY, listener.loop.time() + listener.timeouts.client_idle)
        self.session.start(pool, backend, key, head, ex.idempotent or pool.retry_non_idempotent)
        # body bytes that arrived with the head (or while the request waited in the queue)
        if self.state == BODY and self.buf and self.ex is ex:
            data = bytes(self.buf)
            self.buf.clear()
            self.flow.resume(PAUSE_PIPELINE)
            self._request_body(data)
        if self.state == BODY and self.client_eof and self.ex is ex:
            # A pipelined request whose body was still incomplete when the client
            # half-closed: no more bytes can come (eof_received ran before it started).
            self._fail(400, "client closed the connection before the end of the request body", F_CLIENT_CLOSED)

    # ---------------------------------------------------------------- the queue
    def _enqueue(self, pool, key, head):
        """Wait for a backend with capacity, up to ``queue_timeout`` (HAProxy's
        server queues). A full queue is a 503 at once. While waiting, bytes the
        client sends are buffered (reading pauses past PIPELINE_SLACK)."""
        if len(pool.queue) >= pool.queue_size:
            pool.queue_full_total += 1
            self._refuse_early(503, "pool %s: every backend is at its capacity and the queue is full (%d)" % (
                pool.name, pool.queue_size), F_QUEUE_FULL, self._retry_after(pool))
            return
        self.session.wait(pool, key, head)
        pool.queue.append(self)
        pool.queued_total += 1
        self.state = QUEUED
        listener = self.listener
        now = listener.loop.time()
        self.session.t_queued = now
        listener.wheel.arm(self.timer, T_QUEUE, now + pool.queue_timeout)

    def on_dequeued(self):
        """A backend of the pool has capacity (upstream.dispatch): pick it, or wait on."""
        session = self.session
        pool = session.pool
        if self.state != QUEUED or self.phase != OPEN:
            dispatch(pool, self.listener.loop)  # gone meanwhile: the slot goes to the next one
            return
        backend = pool.pick(session.key, self.listener.loop.time())
        if backend is None:
            if pool.healthy():
                pool.queue.appendleft(self)  # taken by another request meanwhile: first in line still
                return
            self._leave_queue()
            pool.unavailable_total += 1
            self._refuse_early(503, "no backend available in pool %s" % pool.name, F_NO_BACKEND)
            return
        self._leave_queue()
        self._forward(pool, backend, session.key, session.head)

    def _leave_queue(self):
        if self.state == QUEUED:
            session = self.session
            pool = session.pool
            queue = pool.queue
            if self in queue:
                queue.remove(self)
            waited = self.listener.loop.time() - session.t_queued
            pool.queue_wait_seconds_total += waited
            pool.queue_wait.observe(waited)
            self.state = HEAD

    @staticmethod
    def _retry_after(pool):
        return b"Retry-After: %d\r\n" % max(1, int(pool.queue_timeout + 0.999))

    def _request_key(self, pool):
        """The request's hash key (bytes) for ``pool``, or None when it has none."""
        kind = pool.key_kind
        if kind == KEY_IP:
            return self.addr
        if kind == KEY_HEADER:
            return self.scanner.header_value(self.buf, pool.key_name)
        if kind == KEY_COOKIE:
            cookie = self.scanner.header_value(self.buf, b"cookie")
            return cookie_value(cookie, pool.key_name) if cookie is not None else None
        if kind == KEY_PATH:
            return path_of(self.scanner.target).partition(b"?")[0]
        if kind == KEY_QUERY:
            return query_param(self.scanner.target, pool.key_name)
        return None

    # -------------------------------------------------------------- phase: forward
    def on_session_attached(self, conn):
        ex = self.ex
        self.flow.resume(PAUSE_PENDING)
        if self.write_paused:
            conn.pause_reading()
        ex.rstate = R_HEAD
        if ex.req_done:
            self.session.arm_response(self.listener.loop.time(), True)

    def on_session_failed(self, status, reason):
        self._fail(status, reason, F_CONNECT_TIMEOUT if status == 504 else F_CONNECT_FAILED)

    def _request_body(self, data):
        ex = self.ex
        self.req_in += len(data)
        try:
            out = ex.request_body(data)
        except ScanError as exc:
            if ex.resp_started:
                ex.fail(0)
                self._cut("invalid chunked request body: %s" % exc.reason, F_PARSE_ERROR)
            else:
                self._client_error(exc.status, exc.reason, parse_flag(exc.status))
            return
        if out and self.session.send(out):
            self.flow.pause(PAUSE_PENDING)
        listener = self.listener
        if not ex.req_done:
            listener.wheel.extend(self.timer, listener.loop.time() + listener.timeouts.client_idle)
            return
        # request body complete
        rest = ex.rest
        if rest:
            ex.rest = None
            self.req_in -= len(rest)
            self.buf += rest
        if self.state == BODY:
            self.state = WAIT
            listener.wheel.cancel(self.timer)
            if ex.rstate == R_HEAD:
                self.session.arm_response(listener.loop.time(), True)

    # -------------------------------------------------------------- phase: respond
    def on_upstream_data(self, data):
        if self.state == TUNNEL:
            self.transport.write(data)
            self.sent += len(data)
            listener = self.listener
            listener.wheel.extend(self.timer, listener.loop.time() + listener.timeouts.tunnel)
            return
        ex = self.ex
        if ex is None:
            return
        rstate = ex.rstate
        if rstate == R_BODY:
            try:
                out = ex.response_body(data)
            except ScanError as exc:
                ex.fail(0)
                self._cut("invalid chunked response from backend: %s" % exc.reason, F_UPSTREAM_INVALID)
                return
            if out:
                self.transport.write(out)
                self.sent += len(out)
            if ex.outcome == COMPLETE:
                self._complete()
            else:
                self.session.touch_response(self.listener.loop.time())
        elif rstate == R_HEAD:
            ex.resp_seen = True
            self.rbuf += data
            self._read_response_heads()

    def _read_response_heads(self):
        rsc = self.rscanner
        rbuf = self.rbuf
        ex = self.ex
        while True:
            try:
                n = rsc.scan(rbuf)
            except ScanError as exc:
                self._backend_failed(502, "invalid response from backend: %s" % exc.reason, F_UPSTREAM_INVALID)
                return
            if not n:
                return
            status = rsc.status
            if status >= 200:
                break
            if status == 101:
                self._switch_protocols(n)
                return
            # 1xx interim (100 Continue, 103 Early Hints): relayed to HTTP/1.1 clients
            # (RFC 9110 §15.2: a proxy MUST forward 1xx unless the client is HTTP/1.0).
            if ex.minor == 1:
                interim = rsc.build_downstream_head(rbuf, b"", False)
                self.transport.write(interim)
                self.sent += len(interim)
            del rbuf[:n]
        listener = self.listener
        session = self.session
        backend = session.backend
        session.response_head_seen(backend)
        backend.responses[status // 100 - 1] += 1
        if status in session.pool.fail_statuses:
            self._count_failure("status %d" % status, "status")
        elif backend.consecutive_failures:
            report_success(backend)  # a good answer ends a run of failures
        out = ex.response_head(rsc, rbuf, n, listener.draining)
        self.transport.write(out)
        self.sent += len(out)
        if ex.outcome == COMPLETE:
            self._complete()
        elif ex.req_done:  # the response body is in progress: its inactivity bound
            self.session.arm_response(listener.loop.time())

    def _switch_protocols(self, n):
        ex = self.ex
        rsc = self.rscanner
        rbuf = self.rbuf
        if ex.upgrade is None:
            self._backend_failed(502, "backend answered 101 to a request that did not ask to upgrade",
                                 F_UPSTREAM_INVALID)
            return
        if not accepted_upgrade(rsc.header_value(rbuf, b"upgrade"), ex.upgrade):
            self._backend_failed(502, "backend switched to a protocol the client did not offer", F_UPSTREAM_INVALID)
            return
        head = rsc.build_downstream_head(rbuf, b"Connection: upgrade\r\n", True)
        rest = bytes(rbuf[n:])
        rbuf.clear()
        self.transport.write(head + rest if rest else head)
        self.sent += len(head) + len(rest)
        session = self.session
        session.response_head_seen(session.backend)
        session.backend.responses[0] += 1
        self.state = TUNNEL
        ex.status = 101
        ex.resp_started = True
        ex.rstate = R_NONE
        self.tunnel_eofs = 0
        listener = self.listener
        listener.wheel.cancel(self.session.timer)
        self.flow.resume(PAUSE_PIPELINE)
        if self.buf:  # bytes the client sent after its upgrade request
            self.session.conn.transport.write(bytes(self.buf))
            self.buf.clear()
        listener.wheel.arm(self.timer, T_TUNNEL, listener.loop.time() + listener.timeouts.tunnel)

    def on_upstream_eof(self):
        """The backend's FIN. In a tunnel it is relayed as a half-close; otherwise our
        side closes too and ``on_upstream_lost`` decides what the end means."""
        if self.state != TUNNEL:
            return False
        self.tunnel_eofs |= EOF_BACKEND
        if self.phase == OPEN and self.transport.can_write_eof():
            self.transport.write_eof()
        if self.tunnel_eofs == EOF_CLIENT | EOF_BACKEND:
            self._end_tunnel()
            return False
        return True

    def on_upstream_lost(self, conn, exc):
        session = self.session
        if conn is not session.conn:
            return
        session.conn = None
        if self.state == TUNNEL:
            if conn.eof and self.tunnel_eofs & EOF_CLIENT:
                self._end_tunnel()
            else:
                self._end_tunnel(abort=True)  # reset, or closed with the client still sending
            return
        ex = self.ex
        if ex is None:
            return
        if ex.rstate == R_BODY:
            out = ex.upstream_closed(conn.eof and exc is None)
            if ex.outcome == COMPLETE:
                if out:
                    self.transport.write(out)
                    self.sent += len(out)
                self._complete()
            else:
                reason = "backend closed the connection in the middle of the response body"
                self._count_failure(reason, F_UPSTREAM_RESET)
                self._cut(reason, F_UPSTREAM_RESET)
            return
        if ex.rstate == R_HEAD and not ex.resp_seen and conn.reused and not ex.req_has_body \
                and ex.idempotent and not session.fresh_only:
            # The keep-alive race: the backend closed an idle connection just as we
            # reused it. Nothing was answered; resent on a new connection, once
            # (the state is reset first, as in _retry).
            ex.rstate = R_NONE
            if session.retry_race():
                return
            ex.rstate = R_HEAD
        reason = "backend %s the connection %s" % (
            "reset" if exc is not None else "closed", "in the middle of the response head" if self.rbuf
            else "before responding")
        self._count_failure(reason, F_UPSTREAM_RESET)
        if ex.rstate == R_HEAD and not ex.resp_seen and self._retry("reset" if exc is not None else "closed"):
            # Nothing of a response came: an idempotent request (or any, with
            # retry_non_idempotent) whose body is still held goes to another backend.
            log.info("%s %s: %s, sent again to another backend (request_id=%s)", ex.method.decode("latin-1"),
                     ex.target.decode("latin-1"), reason, ex.request_id.decode("latin-1"))
            return
        self._fail(502, reason, F_UPSTREAM_RESET)

    # --------------------------------------------------------------- phase: finish
    def _complete(self):
        """Outcome COMPLETE: the response was relayed whole. (A response that ends
        before the request body did closes the client connection: keep_client says
        so, and the lingering close discards the rest of the body.)"""
        ex = self.ex
        self._end_exchange(NEXT if ex.keep_client(self.listener.draining) else CLOSE, reuse=ex.reuse_upstream())

    def _fail(self, status, reason, flag):
        """The exchange cannot complete: a JSON error if nothing was answered yet,
        else the client connection is reset (the response was cut)."""
        outcome = self.ex.fail(status)
        if outcome == CUT:
            self._cut(reason, flag)
        elif outcome == REFUSED:
            self._refuse(reason, flag)

    def _backend_failed(self, status, reason, flag):
        self._count_failure(reason, flag)
        self._fail(status, reason, flag)

    def _count_failure(self, reason, kind):
        """A failure that counts against the backend (passive outlier detection);
        ``kind``: a flag, or "status" (a configured failure status)."""
        session = self.session
        backend = session.backend
        if backend is not None:
            report_failure(session.pool, backend, self.listener.loop.time(), reason,
                           FLAG_NAMES[kind] if kind.__class__ is int else kind)

    def _refuse(self, reason, flag, extra=b""):
        """Outcome REFUSED: answer with fastlb's own status, then keep or close."""
        ex = self.ex
        self.flag = flag
        status = ex.status
        backend = self.session.backend
        log.warning("%d %s %s: %s (backend=%s request_id=%s)", status, ex.method.decode("latin-1"),
                    ex.target.decode("latin-1"), reason, backend.address if backend is not None else "-",
                    ex.request_id.decode("latin-1"))
        keep = ex.keep_client(self.listener.draining)
        self._write_error(status, reason, not keep, flag, extra)
        self._end_exchange(NEXT if keep else CLOSE, abort=True)

    def _redirect_https(self, host, target):
        """A ``redirect_https`` listener: 308 to the same host and target over https
        (308 keeps the method and body, unlike 301)."""
        if not host:
            self._refuse_early(400, "a request to an https redirect listener needs a Host header", F_PARSE_ERROR)
            return
        name = split_host(host)
        port = self.listener.redirect
        location = b"https://" + name + (b"" if port == 443 else b":%d" % port) + path_of(target)
        self.ex.fail(308)
        self.flag = F_NONE
        keep = self.ex.keep_client(self.listener.draining)
        self._write_error(308, "this service is served over https: " + location.decode("latin-1"), not keep,
                          F_NONE, b"Location: " + location + CRLF)
        self._end_exchange(NEXT if keep else CLOSE, abort=True)

    def _refuse_early(self, status, reason, flag, extra=b""):
        """A request answered before any backend is involved (404, 405, 503). Its
        body is never read, so keep_client closes the connection if it has one."""
        self.ex.fail(status)
        self._refuse(reason, flag, extra)

    def _cut(self, reason, flag):
        """Outcome CUT: the client has part of a response; only a reset is honest."""
        ex = self.ex
        self.flag = flag
        log.warning("%s %s: %s (request_id=%s)", ex.method.decode("latin-1"), ex.target.decode("latin-1"),
                    reason, ex.request_id.decode("latin-1"))
        self._end_exchange(RESET, abort=True)

    def _end_exchange(self, then, reuse=False, abort=False):
        """The one place an exchange ends: the session (connection pooled, closed or
        reset; load given back), the exchange's read pauses, then ``then``: NEXT
        request, CLOSE the client connection (lingering), or RESET it."""
        if self.listener.observe:
            self._record()
        self.session.finish(self.listener.loop.time(), reuse=reuse, abort=abort)
        self.flow.resume(EXCHANGE_PAUSES)
        self.ex = None
        self.rbuf.clear()
        self.state = HEAD
        if then == RESET:
            self.abort_client()
        elif self.phase != OPEN:
            return
        elif then == CLOSE:
            self.close_client()
        else:
            self._next_request()

    def _next_request(self):
        self.state = HEAD
        self.flow.resume(PAUSE_PIPELINE)
        if self.buf:
            listener = self.listener
            listener.wheel.arm(self.timer, T_HEADER, listener.loop.time() + listener.timeouts.client_header)
            self._read_heads()
        elif self.client_eof or self.listener.draining:
            self.close_client()
        else:
            listener = self.listener
            listener.wheel.arm(self.timer, T_IDLE, listener.loop.time() + listener.timeouts.client_idle)

    def shutdown_abort(self):
        """The drain time is over: reset the connection, the request in progress
        logged as ended by the shutdown."""
        if self.ex is not None:
            self.flag = F_SHUTDOWN
        self.abort_client()

    def _end_tunnel(self, abort=False):
        """Both directions of a tunnel ended (or its deadline passed): close both
        sides; ``abort`` (a reset on one side) resets the other."""
        ex = self.ex
        if ex is not None:
            ex.outcome = CUT if abort else COMPLETE
            if abort:
                self.flag = F_UPSTREAM_RESET
        self._end_exchange(RESET if abort else CLOSE, abort=abort)

    # ---------------------------------------------------------------- failures
    def _client_error(self, status, reason, flag):
        """Reject the client's request: status + JSON, connection closed, nothing forwarded."""
        if self.phase != OPEN:
            return
        log.info("%d from client %s: %s", status, self.client_ip.decode("latin-1"), reason)
        ex = self.ex
        self.flag = flag
        if ex is not None:
            if ex.resp_started:
                ex.fail(0)
                self._cut(reason, flag)
                return
            ex.fail(status)
            self._write_error(status, reason, True, flag)
            self._end_exchange(CLOSE, abort=True)
        else:
            # no request could be read: the log line has no method or path
            self.t_start = perf_counter()
            self.sent0 = self.sent
            self.req_in = len(self.buf)
            rid = self._write_error(status, reason, True, flag)
            if self.listener.observe:
                self._record(status, rid)
            self.close_client()

    def _write_error(self, status, reason, close, flag, extra=b""):
        ex = self.ex
        rid = ex.request_id if ex is not None else self.listener.next_request_id()
        body = json.dumps({"error": reason, "request_id": rid.decode("latin-1")}).encode() + b"\n"
        if ex is not None:
            if ex.resp_extra:
                extra += ex.resp_extra
        elif self.listener.hsts:
            extra += self.listener.hsts  # a request too malformed for an exchange: HSTS all the same
        out = error_response(status, REASONS.get(status, "Error").encode(), body, rid,
                             ex is not None and ex.is_head, close, extra)
        self.transport.write(out)
        self.sent += len(out)
        generated = self.listener.generated
        key = (status, flag)
        generated[key] = generated.get(key, 0) + 1
        if ex is not None:
            ex.resp_started = True
        return rid

    # ------------------------------------------------------------- phase: log
    def _record(self, status=0, rid=None):
        """The request is over: its duration into the backend's histogram, one
        access-log row (when on). Called once per request, before the session
        lets go of the backend; ``status``/``rid`` only for a request rejected
        before it had an exchange. Never raises: a bug here must not leave the
        exchange half-ended (the try costs nothing until it catches)."""
        try:
            ex = self.ex
            session = self.session
            backend = session.backend
            listener = self.listener
            listener.requests_total += 1
            duration = perf_counter() - self.t_start
            if backend is not None:
                if listener.metrics:
                    backend.duration.observe(duration)
                if F_CONNECT_FAILED <= self.flag <= F_UPSTREAM_INVALID:
                    backend.errors += 1  # the backend's fault (the dashboard's error rate)
            access = listener.access_log
            if access is not None:
                if ex is not None:
                    status = ex.status if ex.resp_started else 0
                    access.request(self, ex, status, duration, backend, session, self.route_pool)
                else:
                    access.rejected(self, status, duration, rid)
        except Exception:
            log.exception("recording request %s failed", self.ex.request_id if self.ex is not None else rid)
