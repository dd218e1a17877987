"""The request lifecycle, in named phases.

One ``ProxyConnection`` per client connection; requests on it are served one at
a time, in order (pipelined requests wait in ``buf``). The phases:

    head      scan the request head (fastlb._core RequestScanner); reject -> 4xx + close
    route     listener routes (host, path prefix) -> pool; none -> 404
    select    pool selector -> backend; none usable -> 503
    forward   pooled or new backend connection; rebuilt head (hop-by-hop removed,
              X-Forwarded-*, X-Request-ID) then the body, streamed and re-framed
    respond   scan the response head(s): 1xx relayed, 101 -> tunnel, final ->
              framing chosen for the client, body streamed and re-framed
    finish    backend connection back to its pool only after a complete exchange
              with no leftover bytes; next pipelined request

Invariants:
- Nothing is forwarded before the whole request head is validated.
- Bodies are never buffered whole: bytes are written as they arrive and reading
  pauses on the other side's write-buffer high-water mark.
- A backend connection is reused only if the request body was fully sent, the
  response was complete (length or chunked framing), no byte followed it, and the
  backend did not ask to close.
- Retries happen only before any request byte reached a backend (connect
  failure, connect timeout), or for a body-less idempotent request whose reused
  keep-alive connection died before any response byte (the keep-alive race).
- Every failure a client can see is a JSON body with status 4xx/5xx, the request
  id, and one log line; after a response has started, a failure can only close
  the client connection.
- Time is read from ``loop.time()`` at most once per event; deadlines are checked
  by the listener's timer tick (server.py), never by a timer per request.
"""

import asyncio
import json
import logging

from ._core import ChunkedDecoder, RequestScanner, ResponseScanner, ScanError
from .downstream import BLOCK_PENDING, BLOCK_PIPELINE, BLOCK_UPSTREAM, DownstreamProtocol
from .errors import REASONS
from .balancer import KEY_COOKIE, KEY_HEADER, KEY_IP, KEY_NONE, KEY_PATH, KEY_QUERY
from .http1 import authority_of, cookie_value, path_of, query_param
from .upstream import WRITE_HIGH_WATER, UpstreamConnection, acquire, release

log = logging.getLogger("fastlb.proxy")

# Connection phases (self.state).
HEAD = 0  # reading a request head (or idle between requests)
BODY = 1  # request head forwarded; receiving the request body
WAIT = 2  # request fully received; response in progress
TUNNEL = 3  # upgraded: bytes relayed both ways
CLOSED = 4

# Response phases (self.rstate).
R_NONE = 0
R_HEAD = 1  # waiting for the (final) response head
R_BODY = 2  # streaming the response body

# Response body framing (RFC 9112 §6.3).
M_NONE = 0  # HEAD request, 204, 304: no body whatever the headers say
M_LENGTH = 1  # Content-Length
M_CHUNKED = 2  # chunked transfer coding
M_CLOSE = 3  # delimited by the backend closing the connection

# Deadline kinds (self.deadline_kind).
T_NONE = 0
T_IDLE = 1  # keep-alive idle, no byte of a new request yet
T_HEADER = 2  # head in progress (slowloris bound)
T_BODY = 3  # client inactivity while sending a request body
T_RESPONSE = 4  # backend: time to response head, then inactivity in the body
T_TUNNEL = 5  # upgraded connection inactivity

IDEMPOTENT = frozenset((b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"))
LAST_CHUNK = b"0\r\n\r\n"
CRLF = b"\r\n"
# Pipelined bytes buffered beyond a full request head pause reading.
PIPELINE_SLACK = 64 * 1024


def chunk_prefix(n):
    return b"%x\r\n" % n


class ProxyConnection(DownstreamProtocol):
    __slots__ = (
        "scanner", "rscanner", "buf", "rbuf", "state", "rstate",
        "deadline", "deadline_kind", "up_deadline",
        # request
        "pool", "backend", "upstream", "connect_task", "tried", "attempts",
        "req_head", "req_method", "req_target", "req_minor", "req_keep_alive", "req_is_head",
        "req_upgrade", "req_idempotent", "req_has_body", "req_remaining", "req_decoder", "req_done",
        "request_id", "pending", "pending_bytes", "fresh_only", "req_key",
        "t_sent", "latency",
        # response
        "r_mode", "r_remaining", "r_decoder", "rechunk", "close_after", "up_reusable",
        "resp_started", "resp_seen", "client_eof", "draining", "in_heads",
    )

    def __init__(self, listener):
        DownstreamProtocol.__init__(self, listener)
        limits = listener.limits
        self.scanner = RequestScanner(limits.max_request_line, limits.max_header_bytes, limits.max_header_fields)
        self.rscanner = ResponseScanner(limits.max_request_line, limits.max_header_bytes, limits.max_header_fields)
        self.buf = bytearray()
        self.rbuf = bytearray()
        self.state = HEAD
        self.rstate = R_NONE
        self.deadline = 0.0
        self.deadline_kind = T_NONE
        self.up_deadline = 0.0
        self.upstream = None
        self.connect_task = None
        self.backend = None
        self.pool = None
        self.pending = None
        self.client_eof = False
        self.draining = listener.draining
        self.in_heads = False
        self._reset_request()

    def _reset_request(self):
        self.pool = None
        self.tried = None
        self.attempts = 0
        self.req_head = None
        self.req_method = b""
        self.req_target = b""
        self.req_minor = 1
        self.req_keep_alive = True
        self.req_is_head = False
        self.req_upgrade = False
        self.req_idempotent = False
        self.req_has_body = False
        self.req_remaining = 0
        self.req_decoder = None
        self.req_done = False
        self.request_id = b""
        self.pending = None
        self.pending_bytes = 0
        self.fresh_only = False
        self.req_key = None
        self.t_sent = 0.0
        self.latency = -1.0
        self.r_mode = M_NONE
        self.r_remaining = 0
        self.r_decoder = None
        self.rechunk = False
        self.close_after = False
        self.up_reusable = False
        self.resp_started = False
        self.resp_seen = False

    # ------------------------------------------------------------------ events
    def on_connect(self):
        self._set_deadline(T_HEADER, self.listener.timeouts.client_header)

    def data_received(self, data):
        state = self.state
        if state == TUNNEL:
            up = self.upstream
            if up is not None:
                up.transport.write(data)
            self.deadline = self.listener.loop.time() + self.listener.timeouts.tunnel
            return
        if state == BODY:
            self._request_body(data)
            return
        if state == CLOSED:
            return
        buf = self.buf
        buf += data
        if state == HEAD:
            if self.deadline_kind != T_HEADER:
                self._set_deadline(T_HEADER, self.listener.timeouts.client_header)
            self._read_heads()
        elif len(buf) > PIPELINE_SLACK:  # WAIT: a pipelined request waits its turn
            self.block_reading(BLOCK_PIPELINE)

    def eof_received(self):
        self.client_eof = True
        if self.state == HEAD:
            return False  # no request in progress (a partial head is abandoned): close
        return self.state != TUNNEL  # finish the response in progress, then close

    def close(self):
        self.state = CLOSED
        self.deadline = 0.0
        DownstreamProtocol.close(self)

    def abort(self):
        self.state = CLOSED
        self.deadline = 0.0
        DownstreamProtocol.abort(self)

    def on_disconnect(self):
        self.state = CLOSED
        task = self.connect_task
        if task is not None:
            self.connect_task = None
            task.cancel()
        up = self.upstream
        if up is not None:
            self.upstream = None
            up.abort()
        self._clear_backend()

    def on_client_pause(self):
        up = self.upstream
        if up is not None and not up.closed:
            up.transport.pause_reading()

    def on_client_resume(self):
        up = self.upstream
        if up is not None and not up.closed:
            up.transport.resume_reading()

    def on_upstream_pause(self):
        self.block_reading(BLOCK_UPSTREAM)

    def on_upstream_resume(self):
        self.unblock_reading(BLOCK_UPSTREAM)

    # ------------------------------------------------------------------- timers
    def _set_deadline(self, kind, seconds):
        self.deadline_kind = kind
        self.deadline = self.listener.loop.time() + seconds

    def on_tick(self, now):
        """Called by the listener's timer tick with the loop time."""
        if self.state == CLOSED:
            return
        if self.up_deadline and now >= self.up_deadline:
            self.up_deadline = 0.0
            task = self.connect_task
            if task is not None:
                task.cancel()  # _on_connected sees the cancellation: connect timeout
        if self.deadline and now >= self.deadline:
            self.deadline = 0.0
            self._on_timeout(self.deadline_kind)

    def _on_timeout(self, kind):
        if self.state == CLOSED:
            return
        if kind == T_IDLE:
            self.close()
        elif kind == T_HEADER:
            if self.buf:
                self._client_error(408, "request head not received within %gs" % self.listener.timeouts.client_header)
            else:
                self.close()
        elif kind == T_BODY:
            if self.resp_started:
                self._abort_exchange("client stopped sending the request body")
            else:
                self._drop_upstream()
                self._client_error(408, "request body stalled for %gs" % self.listener.timeouts.client_idle)
        elif kind == T_RESPONSE:
            if self.resp_started:
                self._abort_exchange("backend stalled in the response body")
            else:
                if self.backend is not None:
                    self.backend.failures_total += 1
                self._drop_upstream()
                self._fail(504, "backend did not respond within %gs" % self.listener.timeouts.response)
        elif kind == T_TUNNEL:
            self._drop_upstream()
            self.close()

    # ---------------------------------------------------------------- phase: head
    def _read_heads(self):
        # A loop, not recursion: requests answered at once (404, 503, ...) return
        # here through _next_request, which only resets state while we loop.
        if self.in_heads:
            return
        self.in_heads = True
        try:
            while self.state == HEAD and self.buf:
                try:
                    n = self.scanner.scan(self.buf)
                except ScanError as exc:
                    self._client_error(exc.status, exc.reason)
                    return
                if not n:
                    return
                self._start_request(n)
        finally:
            self.in_heads = False

    def _start_request(self, n):
        sc = self.scanner
        listener = self.listener
        self.req_method = method = sc.method
        self.req_target = sc.target
        self.req_minor = sc.http_minor
        self.req_keep_alive = sc.keep_alive
        self.req_is_head = method == b"HEAD"
        self.req_upgrade = sc.upgrade
        self.req_idempotent = method in IDEMPOTENT
        rid = sc.request_id
        if rid is None:
            rid = listener.next_request_id()
        self.request_id = rid
        chunked = sc.chunked
        clen = sc.content_length

        # phase: route
        if method == b"CONNECT":
            self._client_error(405, "CONNECT is not supported by a reverse proxy")
            return
        pool = listener.route(sc.host, self.req_target)
        if pool is not None and pool.key_kind != KEY_NONE:
            self.req_key = self._request_key(pool)

        # the rebuilt head, kept until the first backend write (retries resend it)
        extra = listener.extra_proto
        if sc.request_id is None:
            extra += b"X-Request-ID: " + rid + CRLF
        if chunked:
            extra += b"Transfer-Encoding: chunked\r\n"
        if self.req_upgrade:
            extra += b"Connection: upgrade\r\n"
        if not sc.host:
            # HTTP/1.0 without Host: the upstream request is HTTP/1.1, which requires one
            # (RFC 9112 §3.2): the absolute-form target's authority, else the pool's first backend.
            extra += b"Host: " + (authority_of(self.req_target) or
                                  (pool.host_header if pool is not None else b"localhost")) + CRLF
        self.req_head = sc.build_upstream_head(self.buf, self.client_ip, extra, self.req_upgrade)
        del self.buf[:n]

        if chunked:
            self.req_has_body = True
            self.req_decoder = ChunkedDecoder()
            self.req_remaining = -1
        elif clen > 0:
            self.req_has_body = True
            self.req_remaining = clen
        else:
            self.req_done = True

        if pool is None:
            self._fail(404, "no route for this host and path")
            return
        self.pool = pool

        # phase: select
        if pool.measure_latency:
            backend = pool.pick(self.req_key, listener.loop.time())
        else:
            backend = pool.pick(self.req_key)
        if backend is None:
            self._fail(503, "no backend available in pool %s" % pool.name)
            return
        self._set_backend(backend)
        if self.req_done:
            self.state = WAIT
        else:
            self.state = BODY
            self._set_deadline(T_BODY, listener.timeouts.client_idle)
        self._connect(backend)

        # body bytes that arrived with the head
        if not self.req_done and self.buf and self.state == BODY:
            data = bytes(self.buf)
            self.buf.clear()
            self._request_body(data)

    # -------------------------------------------------------------- phase: forward
    def _request_key(self, pool):
        """The request's hash key (bytes) for ``pool``, or None when it has none."""
        kind = pool.key_kind
        if kind == KEY_IP:
            return self.client_ip
        if kind == KEY_HEADER:
            return self.scanner.header_value(self.buf, pool.key_name)
        if kind == KEY_COOKIE:
            cookie = self.scanner.header_value(self.buf, b"cookie")
            return cookie_value(cookie, pool.key_name) if cookie is not None else None
        if kind == KEY_PATH:
            return path_of(self.req_target).partition(b"?")[0]
        if kind == KEY_QUERY:
            return query_param(self.req_target, pool.key_name)
        return None

    def _set_backend(self, backend):
        self.backend = backend
        self.pool.started(backend)

    def _clear_backend(self):
        backend = self.backend
        if backend is not None:
            self.backend = None
            pool = self.pool
            if self.latency >= 0:
                pool.finished(backend, self.latency, self.listener.loop.time())
            else:
                pool.finished(backend)

    def _connect(self, backend):
        conn = None if self.fresh_only else acquire(backend)
        if conn is not None:
            self._attach(conn)
            return
        listener = self.listener
        self.up_deadline = listener.loop.time() + listener.timeouts.connect
        task = asyncio.ensure_future(
            listener.loop.create_connection(lambda: UpstreamConnection(backend), backend.host, backend.port)
        )
        self.connect_task = task
        task.add_done_callback(self._on_connected)

    def _on_connected(self, task):
        if task is not self.connect_task:
            # Superseded (client gone, or request already answered): discard.
            if not task.cancelled() and task.exception() is None:
                task.result()[0].close()
            return
        self.connect_task = None
        self.up_deadline = 0.0
        if task.cancelled():
            self._connect_failed(504, "connect to %s timed out after %gs" % (self.backend.address, self.listener.timeouts.connect))
            return
        exc = task.exception()
        if exc is not None:
            self._connect_failed(502, "connect to %s failed: %s" % (self.backend.address, exc.strerror or exc))
            return
        self._attach(task.result()[1])

    def _connect_failed(self, status, reason):
        backend = self.backend
        backend.failures_total += 1
        log.warning("backend %s: %s (request_id=%s)", backend.address, reason, self.request_id.decode("latin-1"))
        pool = self.pool
        if self.attempts < pool.retries:
            # Nothing reached the backend: safe to try another one, body included
            # (it is still queued in self.pending, reading paused at the mark).
            self.attempts += 1
            if self.tried is None:
                self.tried = set()
            self.tried.add(backend.index)
            nxt = pool.pick_excluding(self.tried, self.req_key)
            if nxt is not None:
                self._clear_backend()
                self._set_backend(nxt)
                self._connect(nxt)
                return
        self._fail(status, reason)

    def _attach(self, conn):
        self.upstream = conn
        conn.peer = self
        transport = conn.transport
        transport.write(self.req_head)
        if self.pool.measure_latency:
            self.t_sent = self.listener.loop.time()
        if self.pending is not None:
            transport.writelines(self.pending)
            self.pending = None
            self.pending_bytes = 0
            self.unblock_reading(BLOCK_PENDING)
        if self.write_paused:
            transport.pause_reading()
        self.rstate = R_HEAD
        if self.req_done:
            self._set_deadline(T_RESPONSE, self.listener.timeouts.response)

    def _send_up(self, data):
        up = self.upstream
        if up is not None:
            up.transport.write(data)
        else:
            if self.pending is None:
                self.pending = []
            self.pending.append(data)
            self.pending_bytes += len(data)
            if self.pending_bytes > WRITE_HIGH_WATER:
                self.block_reading(BLOCK_PENDING)

    def _request_body(self, data):
        listener = self.listener
        if self.req_decoder is None:
            remaining = self.req_remaining
            size = len(data)
            if size <= remaining:
                self.req_remaining = remaining - size
                self._send_up(data)
                rest = None
            else:
                self.req_remaining = 0
                self._send_up(data[:remaining])
                rest = data[remaining:]
            if self.req_remaining:
                self.deadline = listener.loop.time() + listener.timeouts.client_idle
                return
        else:
            dec = self.req_decoder
            try:
                payload = dec.feed(data)
            except ScanError as exc:
                if self.resp_started:
                    self._abort_exchange("invalid chunked request body: %s" % exc.reason)
                else:
                    self._drop_upstream()
                    self._client_error(exc.status, exc.reason)
                return
            if payload:
                self._send_up(chunk_prefix(len(payload)) + payload + CRLF)
            if not dec.done:
                self.deadline = listener.loop.time() + listener.timeouts.client_idle
                return
            self._send_up(LAST_CHUNK)
            rest = data[len(data) - dec.leftover:] if dec.leftover else None
        # request body complete
        self.req_done = True
        if rest:
            self.buf += rest
        if self.state == BODY:
            self.state = WAIT
            if self.rstate == R_HEAD:
                self._set_deadline(T_RESPONSE, listener.timeouts.response)
            elif self.rstate == R_BODY:
                self.deadline_kind = T_RESPONSE

    # -------------------------------------------------------------- phase: respond
    def on_upstream_data(self, data):
        rstate = self.rstate
        if self.state == TUNNEL:
            self.transport.write(data)
            self.deadline = self.listener.loop.time() + self.listener.timeouts.tunnel
        elif rstate == R_BODY:
            self._response_body(data)
        elif rstate == R_HEAD:
            self.resp_seen = True
            self.rbuf += data
            self._read_response_heads()
        else:
            self._drop_upstream()

    def _read_response_heads(self):
        rsc = self.rscanner
        rbuf = self.rbuf
        while True:
            try:
                n = rsc.scan(rbuf)
            except ScanError as exc:
                self._backend_failed(502, "invalid response from backend: %s" % exc.reason)
                return
            if not n:
                return
            status = rsc.status
            if status >= 200:
                self._response_head(n)
                return
            if status == 101:
                self._switch_protocols(n)
                return
            # 1xx interim (100 Continue, 103 Early Hints): relayed to HTTP/1.1 clients
            # (RFC 9110 §15.2: a proxy MUST forward 1xx unless the client is HTTP/1.0).
            if self.req_minor == 1:
                self.transport.write(rsc.build_downstream_head(rbuf, b"", False))
            del rbuf[:n]

    def _switch_protocols(self, n):
        if not self.req_upgrade:
            self._backend_failed(502, "backend answered 101 to a request that did not ask to upgrade")
            return
        rbuf = self.rbuf
        head = self.rscanner.build_downstream_head(rbuf, b"Connection: upgrade\r\n", True)
        rest = bytes(rbuf[n:])
        rbuf.clear()
        self.transport.write(head)
        if rest:
            self.transport.write(rest)
        self.state = TUNNEL
        self.rstate = R_NONE
        self.resp_started = True
        self.unblock_reading(BLOCK_PIPELINE)
        if self.buf:  # bytes the client sent after its upgrade request
            self.upstream.transport.write(bytes(self.buf))
            self.buf.clear()
        self._set_deadline(T_TUNNEL, self.listener.timeouts.tunnel)

    def _response_head(self, n):
        rsc = self.rscanner
        status = rsc.status
        if self.pool.measure_latency:  # peak-EWMA sample: request sent -> response head
            self.latency = self.listener.loop.time() - self.t_sent
        if self.req_is_head or status == 204 or status == 304:
            mode = M_NONE
        elif rsc.chunked:
            mode = M_CHUNKED
            self.r_decoder = ChunkedDecoder()
        elif rsc.content_length >= 0:
            mode = M_LENGTH
            self.r_remaining = rsc.content_length
        else:
            mode = M_CLOSE
        self.r_mode = mode
        client11 = self.req_minor == 1
        close_after = not self.req_keep_alive or self.draining or self.client_eof or not self.req_done
        extra = b""
        if mode == M_CHUNKED or mode == M_CLOSE:
            if client11:
                # Re-framed as chunked so the client connection stays reusable.
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
        rbuf = self.rbuf
        head = rsc.build_downstream_head(rbuf, extra, False)
        self.resp_started = True
        self.rstate = R_BODY
        size = len(rbuf) - n
        if mode == M_LENGTH and size:
            # The common REST case: head and (part of) the body arrived together;
            # they leave in one write, one syscall.
            remaining = self.r_remaining
            take = size if size < remaining else remaining
            self.transport.write(head + rbuf[n:n + take])
            self.r_remaining = remaining - take
            rbuf.clear()
            if take == remaining:
                self._response_done(size > take)
                return
        else:
            self.transport.write(head)
            rest = bytes(rbuf[n:]) if size else None
            rbuf.clear()
            if mode == M_NONE or (mode == M_LENGTH and self.r_remaining == 0):
                self._response_done(rest is not None)
                return
            if rest is not None:
                self._response_body(rest)
                if self.rstate != R_BODY:
                    return
        if self.req_done:  # the response body is in progress: its inactivity bound
            self._set_deadline(T_RESPONSE, self.listener.timeouts.response)

    def _response_body(self, data):
        mode = self.r_mode
        write = self.transport.write
        if mode == M_LENGTH:
            remaining = self.r_remaining
            size = len(data)
            if size < remaining:
                self.r_remaining = remaining - size
                write(data)
            else:
                self.r_remaining = 0
                write(data if size == remaining else data[:remaining])
                self._response_done(size > remaining)
                return
        elif mode == M_CHUNKED:
            dec = self.r_decoder
            try:
                payload = dec.feed(data)
            except ScanError as exc:
                self._abort_exchange("invalid chunked response from backend: %s" % exc.reason)
                return
            if payload:
                if self.rechunk:
                    self.transport.writelines((chunk_prefix(len(payload)), payload, CRLF))
                else:
                    write(payload)
            if dec.done:
                if self.rechunk:
                    write(LAST_CHUNK)
                self._response_done(dec.leftover > 0)
                return
        else:  # M_CLOSE: everything until the backend closes
            if self.rechunk:
                self.transport.writelines((chunk_prefix(len(data)), data, CRLF))
            else:
                write(data)
        if self.deadline_kind == T_RESPONSE:
            self.deadline = self.listener.loop.time() + self.listener.timeouts.response

    # --------------------------------------------------------------- phase: finish
    def _response_done(self, leftover):
        conn = self.upstream
        self.upstream = None
        if conn is not None:
            if self.up_reusable and not leftover and self.req_done:
                release(conn, self.listener.loop.time(), self.listener.limits.max_idle_per_backend)
            else:
                conn.peer = None
                conn.close()
        self._clear_backend()
        self.rstate = R_NONE
        if self.close_after or self.client_eof:
            self.close()
            return
        self._next_request()

    def _next_request(self):
        self._reset_request()
        self.state = HEAD
        self.unblock_reading(BLOCK_PIPELINE)
        if self.draining and not self.buf:
            self.close()
            return
        if self.buf:
            self._set_deadline(T_HEADER, self.listener.timeouts.client_header)
            self._read_heads()
        else:
            self._set_deadline(T_IDLE, self.listener.timeouts.client_idle)

    def on_upstream_lost(self, conn, exc):
        if conn is not self.upstream:
            return
        self.upstream = None
        if self.state == TUNNEL:
            self._clear_backend()
            self.close()
            return
        if self.rstate == R_BODY:
            if self.r_mode == M_CLOSE:
                if self.rechunk:
                    self.transport.write(LAST_CHUNK)
                self._response_done(False)
            else:
                self._abort_exchange("backend closed the connection in the middle of the response body")
            return
        if self.rstate == R_HEAD and not self.resp_seen and conn.reused and not self.req_has_body \
                and self.req_idempotent and not self.fresh_only:
            # The keep-alive race: the backend closed an idle connection just as we
            # reused it. Nothing was answered; resend on a new connection once.
            self.fresh_only = True
            self._connect(self.backend)
            return
        if self.backend is not None:
            self.backend.failures_total += 1
        if self.rbuf:
            self._fail(502, "backend closed the connection in the middle of the response head")
        else:
            self._fail(502, "backend closed the connection before responding")

    # ---------------------------------------------------------------- failures
    def _drop_upstream(self):
        conn = self.upstream
        if conn is not None:
            self.upstream = None
            conn.abort()
        task = self.connect_task
        if task is not None:
            self.connect_task = None
            task.cancel()
        self.up_deadline = 0.0
        self.rbuf.clear()

    def _backend_failed(self, status, reason):
        if self.backend is not None:
            self.backend.failures_total += 1
        self._drop_upstream()
        self._fail(status, reason)

    def _abort_exchange(self, reason):
        """A failure after the response started: the client can only see a close."""
        log.warning("%s %s: %s (request_id=%s)", self.req_method.decode("latin-1"),
                    self.req_target.decode("latin-1"), reason, self.request_id.decode("latin-1"))
        self._drop_upstream()
        self._clear_backend()
        self.abort()

    def _fail(self, status, reason):
        """Answer the current request with a JSON error (502/503/504/404...)."""
        if self.resp_started:
            self._abort_exchange(reason)
            return
        backend = self.backend.address if self.backend is not None else "-"
        self._drop_upstream()
        self._clear_backend()
        log.warning("%d %s %s: %s (backend=%s request_id=%s)", status, self.req_method.decode("latin-1"),
                    self.req_target.decode("latin-1"), reason, backend, self.request_id.decode("latin-1"))
        close = not self.req_done or not self.req_keep_alive or self.draining or self.client_eof
        self._write_error(status, reason, close)
        if close:
            self.close()
        else:
            self._next_request()

    def _client_error(self, status, reason):
        """Reject the client's request: status + JSON, connection closed, nothing forwarded."""
        if self.state == CLOSED:
            return
        log.info("%d from client %s: %s", status, self.client_ip.decode("latin-1"), reason)
        if not self.resp_started:
            self._write_error(status, reason, True)
        self.close()

    def _write_error(self, status, reason, close):
        rid = self.request_id.decode("latin-1") if self.request_id else self.listener.next_request_id().decode()
        body = json.dumps({"error": reason, "request_id": rid}).encode() + b"\n"
        head = (
            "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            "X-Request-ID: %s\r\n%s\r\n" % (status, REASONS.get(status, "Error"), len(body), rid,
                                             "Connection: close\r\n" if close else "")
        ).encode("latin-1")
        self.transport.write(head + body)
        self.resp_started = True
