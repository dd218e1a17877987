"""The backend side: connections, keep-alive pools, the backend session, name resolution.

``UpstreamConnection`` is a thin asyncio protocol: it owns a transport and hands
every event to its current ``peer`` (the client connection being served,
proxy.ProxyConnection) through fixed method names: ``on_upstream_data``,
``on_upstream_eof``, ``on_upstream_lost``, ``on_upstream_pause``,
``on_upstream_resume``. It does no parsing. ``eof`` records a clean end of stream
(a FIN), which is what tells a complete close-delimited body from one cut by a
reset.

``BackendSession`` is one request's way to a backend (HAProxy's
connect_server/redispatch): take an idle pooled connection or connect (the connect
deadline on its own timer), queue body bytes while connecting, retry a failed
connect on another backend (never the same one twice while another is usable),
resend once on a fresh connection when a reused one dies before any response byte
(the keep-alive race), bound the wait for the response (``timeouts.response``:
to the head, then inactivity in the body) and, when the exchange ends, give the
connection back to its pool or close it, and the backend's load back to the pool
counters. Its owner (the client connection) is told ``on_session_attached`` and
``on_session_failed(status, reason)``; ``on_response_timeout`` when the response
deadline passes.

Pooling (per backend, ``Backend.idle``, most recently used last): a connection is
released only after a complete exchange with no leftover bytes (http1.Exchange
decides). An idle connection that receives bytes or is closed by the backend is
dropped at once. At most ``max_idle`` per backend are kept; ``sweep_idle`` closes
those idle longer than the idle timeout (from the server's tick).

Backend host names are resolved when the configuration is loaded and again every
``timeouts.dns_refresh`` seconds (``resolve_backends``), never per connection:
``Backend.addr`` is what a connect uses.

TLS to backends (an https pool: ``PoolSpec.tls``, docs/tls.md#tls-to-backends):
``prepare_tls`` builds each such pool's client context once (``Pool.tls_context``,
tls.client_context) and every new connection of the pool is a TLS one: SNI and
the certificate check use ``tls.server_name``, else the backend's configured host.
The handshake is part of the connect: the same deadline (``timeouts.connect``)
covers both, and a failed handshake is a failed connect (logged with its cause,
counted in ``Backend.tls_failures`` by TLS_FAILURE_REASONS, answered 502, or 504
for a handshake that timed out, and retried on another backend: nothing reached
this one). Pooled connections are TLS transports already, so keep-alive reuse
is unchanged. SIGHUP rebuilds the contexts from the files (``reload_pool_tls``,
the running one stays when the new files are bad); each connection remembers the
context it was made with, and one made with a replaced context is closed instead
of going back to the pool, so every request after a reload runs on a connection
verified with the new files. On TLS, only the backend's close_notify is a clean end of stream
(``eof``): a TCP FIN without it does not complete a close-delimited body.
"""

import asyncio
import functools
import ipaddress
import logging
import socket
import ssl
from time import perf_counter

from .errors import ConfigError
from .health import USABLE_STATES, report_failure
from .model import CertificateSpec
from .timers import Timer
from .tls import CertError, client_context, describe_tls_error, file_stamp, load_ca_bundle, load_certificate

__all__ = ["UpstreamConnection", "BackendSession", "acquire", "release", "dispatch", "sweep_idle", "resolve_backends",
           "reload_pool_tls",
           "is_ip", "prepare_tls", "WRITE_HIGH_WATER", "RETRY_BODY_LIMIT", "TLS_FAILURE_REASONS"]

log = logging.getLogger("fastlb.upstream")

# Transport write-buffer high-water mark (bytes) for both sides: above it the
# other side stops reading (backpressure); the low mark is a quarter of it.
WRITE_HIGH_WATER = 256 * 1024

# Body bytes held per request so that it can be resent on another backend after a
# failed try (never re-read from the client): a larger body makes it not resendable.
RETRY_BODY_LIMIT = 64 * 1024

# Session timer kinds.
T_CONNECT = 1  # TCP connect to the backend (and the TLS handshake, for an https pool)
T_RESPONSE = 2  # request sent -> response head; then inactivity in the response body

# Why a TLS connection to a backend failed (Backend.tls_failures keys; docs/tls.md):
# its certificate (unknown CA, expired, name mismatch), any other TLS error (no
# shared protocol or cipher, not TLS at all, a close during the handshake, the
# backend refusing fastlb's client certificate), the handshake not done in time.
TLS_FAILURE_REASONS = ("verify_failed", "handshake_failed", "timeout")


def prepare_tls(pools):
    """Build the client TLS context of every pool whose spec has ``tls`` (called once
    at start, before anything connects). A file that cannot be used any more (it was
    checked when the configuration was read) is a ConfigError naming the key."""
    for pool in pools:
        spec = pool._spec.tls
        if spec is None:
            pool.tls_context = None
            pool.tls_server_name = None
            continue
        try:
            pool.tls_context = client_context(spec)
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise ConfigError(("pools.%s.tls" % pool.name, "cannot build the TLS context: %s" % (
                getattr(exc, "strerror", None) or exc))) from None
        pool.tls_server_name = spec.server_name
        pool.tls_stamps = _tls_stamps(spec)
        if not spec.verify:
            log.warning("pool %s: tls.verify is false: the backends' certificates and names are not checked "
                        "(traffic is encrypted, the backends are not authenticated)", pool.name)


def _tls_stamps(spec):
    return tuple(file_stamp(p) for p in (spec.ca, spec.cert, spec.key) if p)


def reload_pool_tls(pool, why="SIGHUP"):
    """Read an https pool's ``ca``, ``cert`` and ``key`` again, checked as at load,
    and build a new client context; the pool's idle connections (made with the old
    one) are closed. Files unchanged since (inode, size, mtime): nothing is done,
    and the pooled connections stay. On any problem the running context stays.
    True when a new context is in use."""
    spec = pool._spec.tls
    path = "pools.%s.tls" % pool.name
    stamps = _tls_stamps(spec)
    if stamps == pool.tls_stamps:
        log.info("%s: %s: CA and client certificate files unchanged", path, why)
        return False
    try:
        if spec.ca:
            load_ca_bundle(spec.ca, "ca")
        if spec.cert:
            load_certificate(CertificateSpec(spec.cert, spec.key))
        ctx = client_context(spec)
    except CertError as exc:
        log.error("%s: %s: not reloaded, the running TLS context stays: %s.%s: %s", path, why, path, exc.which, exc)
        return False
    except (ssl.SSLError, OSError, ValueError) as exc:
        log.error("%s: %s: not reloaded, the running TLS context stays: %s", path, why,
                  getattr(exc, "strerror", None) or exc)
        return False
    pool.tls_context = ctx
    pool.tls_stamps = stamps
    closed = 0
    for backend in pool.backends:
        idle = backend.idle
        while idle:
            idle.pop().close()
            closed += 1
    log.info("%s: %s: CA and client certificate files reloaded (%d idle connection%s closed)", path, why,
             closed, "" if closed == 1 else "s")
    return True


def _tls_alert(exc):
    """A TLS alert from the backend (an ssl.SSLError whose reason names one), or None."""
    if isinstance(exc, ssl.SSLError):
        reason = getattr(exc, "reason", None)
        if reason and "ALERT" in reason:
            return reason
    return None


class UpstreamConnection(asyncio.Protocol):
    __slots__ = ("transport", "backend", "peer", "idle_since", "closed", "reused", "eof", "read_paused", "error",
                 "tls_context")

    def __init__(self, backend, tls_context=None):
        self.backend = backend
        self.tls_context = tls_context  # the pool's context when this connection was made (None: plain)
        self.transport = None
        self.peer = None
        self.idle_since = 0.0
        self.closed = False
        self.reused = False
        self.eof = False
        self.read_paused = False
        self.error = None  # what connection_lost was given

    def connection_made(self, transport):
        self.transport = transport
        self.backend.conns_open += 1
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)

    def data_received(self, data):
        peer = self.peer
        if peer is not None:
            peer.on_upstream_data(data)
        else:
            # Bytes on an idle connection: the backend broke framing. Never reuse.
            self.close()

    def eof_received(self):
        self.eof = True
        peer = self.peer
        if peer is not None:
            # True keeps our side open (a tunnel's half-close). Over TLS the backend's
            # close_notify ends the connection whatever is returned (uvloop warns
            # about True), and a TLS transport cannot half-close: False there.
            return peer.on_upstream_eof() and self.transport.can_write_eof()
        return False

    def connection_lost(self, exc):
        self.closed = True
        self.backend.conns_open -= 1
        peer = self.peer
        if exc is not None:
            self.error = exc
            if peer is not None and not self.reused and _tls_alert(exc) is not None:
                # A TLS alert in a new connection's first exchange: with TLS 1.3 the
                # backend checks fastlb's client certificate after our side of the
                # handshake is done, and refuses it with an alert. (Lost before the
                # request was sent: BackendSession._on_connected counts it.)
                backend = self.backend
                backend.tls_failures["handshake_failed"] = backend.tls_failures.get("handshake_failed", 0) + 1
                log.warning("backend %s: TLS handshake refused by the backend: %s", backend.address,
                            describe_tls_error(exc)[1])
        if peer is not None:
            self.peer = None
            peer.on_upstream_lost(self, exc)
        else:
            idle = self.backend.idle
            if self in idle:
                idle.remove(self)

    def pause_writing(self):
        if self.peer is not None:
            self.peer.on_upstream_pause()

    def resume_writing(self):
        if self.peer is not None:
            self.peer.on_upstream_resume()

    def pause_reading(self):
        if not self.read_paused and not self.closed:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self):
        if self.read_paused and not self.closed:
            self.read_paused = False
            self.transport.resume_reading()

    def close(self):
        self.closed = True
        self.peer = None
        if self.transport is not None:
            self.transport.close()

    def abort(self):
        self.closed = True
        self.peer = None
        if self.transport is not None:
            self.transport.abort()


def acquire(backend):
    """An idle pooled connection to ``backend``, or None."""
    idle = backend.idle
    while idle:
        conn = idle.pop()
        if not conn.closed and not conn.transport.is_closing():
            conn.reused = True
            return conn
    return None


def release(conn, now, max_idle):
    """Return a connection after a clean exchange; closes it when the pool is full."""
    conn.peer = None
    if conn.closed or max_idle <= 0:
        conn.close()
        return
    backend = conn.backend
    idle = backend.idle
    if len(idle) >= max_idle or (backend.max_connections and backend.conns_open > backend.max_connections) \
            or backend.state not in USABLE_STATES:  # a drained (down, ejected...) backend keeps no idle connection
        conn.close()
        return
    conn.idle_since = now
    conn.resume_reading()  # an idle connection must see the backend's FIN at once
    idle.append(conn)


def dispatch(pool, loop):
    """A backend of ``pool`` may have capacity: the first waiting request tries it
    (on the next loop turn, outside the caller's callback)."""
    if pool.queue and pool.has_capacity():
        loop.call_soon(pool.queue.popleft().on_dequeued)


def sweep_idle(backends, now, idle_timeout):
    """Close pooled connections idle for longer than ``idle_timeout`` seconds."""
    limit = now - idle_timeout
    for backend in backends:
        idle = backend.idle
        # Oldest first: the list is ordered by release time.
        while idle and idle[0].idle_since <= limit:
            idle.pop(0).close()


class BackendSession:
    """One request's way to a backend; reused for every request of a client connection."""

    __slots__ = ("owner", "listener", "timer", "pool", "backend", "key", "conn", "task", "head",
                 "attempts", "tried", "fresh_only", "pending", "pending_bytes", "t_sent", "latency",
                 "hold", "hold_bytes", "retrying", "t_queued", "t_connect", "connect_time", "response_time")

    def __init__(self, owner, listener):
        self.owner = owner
        self.listener = listener
        self.timer = Timer(self)
        self.pool = None
        self.backend = None
        self.conn = None
        self.task = None
        self.retrying = False
        self.t_queued = 0.0
        self._reset()

    def _reset(self):
        self.key = None
        self.head = None
        self.attempts = 0
        self.tried = None
        self.fresh_only = False
        self.pending = None
        self.pending_bytes = 0
        self.t_sent = 0.0
        self.latency = -1.0
        self.t_connect = 0.0
        self.connect_time = -1.0  # the last try's connect, seconds; 0 on a reused connection, -1 none
        self.response_time = -1.0  # request head sent -> response head, seconds; -1 none
        self.hold = None  # body bytes sent so far, kept to resend on a retry (None: not resendable)
        self.hold_bytes = 0
        if self.retrying:
            self.retrying = False
            self.pool.retries_in_flight -= 1

    # ------------------------------------------------------------------ start
    def start(self, pool, backend, key, head, resendable):
        """Send ``head`` (then the body given to ``send``) to ``backend`` of ``pool``.
        ``resendable``: the request may be sent again after a try fails before any
        response byte (idempotent, or the pool allows it): its body is held, up to
        RETRY_BODY_LIMIT bytes, to resend."""
        self.pool = pool
        self.key = key
        self.head = head
        if resendable and pool.retries:
            self.hold = []
        self._use(backend)
        self._connect()

    def wait(self, pool, key, head):
        """The request waits in ``pool``'s queue: keep what ``start`` will need."""
        self.pool = pool
        self.key = key
        self.head = head

    def _use(self, backend):
        self.backend = backend
        self.pool.started(backend)

    def _unuse(self, now):
        backend = self.backend
        if backend is not None:
            self.backend = None
            pool = self.pool
            if self.latency >= 0:
                pool.finished(backend, self.latency, now)
            else:
                pool.finished(backend)
            if pool.queue:
                dispatch(pool, self.listener.loop)

    def _connect(self):
        backend = self.backend
        conn = None if self.fresh_only else acquire(backend)
        if conn is not None:
            self.connect_time = 0.0
            self._attach(conn)
            return
        self.t_connect = perf_counter()
        listener = self.listener
        timeout = listener.timeouts.connect
        listener.wheel.arm(self.timer, T_CONNECT, listener.loop.time() + timeout)
        pool = self.pool
        ctx = pool.tls_context
        if ctx is None:
            coro = listener.loop.create_connection(
                functools.partial(UpstreamConnection, backend), backend.addr, backend.port)
        else:
            # The task ends after the handshake: the connect deadline covers it too.
            coro = listener.loop.create_connection(
                functools.partial(UpstreamConnection, backend, ctx), backend.addr, backend.port,
                ssl=ctx, server_hostname=pool.tls_server_name or backend.host, ssl_handshake_timeout=timeout)
        task = asyncio.ensure_future(coro)
        self.task = task
        task.add_done_callback(self._on_connected)

    def _on_connected(self, task):
        if task is not self.task:
            # Superseded (client gone, or the request already answered): discard.
            if not task.cancelled() and task.exception() is None:
                task.result()[0].close()
            return
        self.task = None
        self.listener.wheel.cancel(self.timer)
        backend = self.backend
        pool = self.pool
        if task.cancelled():
            self._connect_failed(504, "connect to %s timed out after %gs%s" % (
                backend.address, self.listener.timeouts.connect,
                "" if pool.tls_context is None else " (TCP connect and TLS handshake)"))
            return
        exc = task.exception()
        if exc is not None:
            if pool.tls_context is not None:
                kind, detail = describe_tls_error(exc)
                if kind is not None:
                    self._tls_failed(kind, detail)
                    return
            self._connect_failed(502, "connect to %s failed: %s" % (
                backend.address, getattr(exc, "strerror", None) or exc))
            return
        conn = task.result()[1]
        if conn.closed or conn.transport is None:
            # Lost before it could be used: with TLS 1.3 the backend checks fastlb's
            # client certificate after our side of the handshake is done, and a
            # backend refusing it may just close. Nothing was sent: a connect failure.
            if pool.tls_context is not None:
                if _tls_alert(conn.error) is not None:
                    detail = "refused by the backend: %s" % describe_tls_error(conn.error)[1]
                else:
                    detail = ("the backend closed the connection right after the handshake "
                              "(does it require a client certificate? see tls.cert)")
                self._tls_failed("handshake_failed", detail)
            else:
                self._connect_failed(502, "connect to %s failed: the backend closed the connection at once"
                                     % backend.address)
            return
        self.connect_time = elapsed = perf_counter() - self.t_connect
        if self.listener.metrics:
            backend.connect_time.observe(elapsed)
        self._attach(conn)

    def _tls_failed(self, kind, detail):
        """A TLS connect to the backend failed (``kind``: TLS_FAILURE_REASONS): counted,
        then handled as a failed (502) or timed-out (504) connect."""
        backend = self.backend
        failures = backend.tls_failures
        failures[kind] = failures.get(kind, 0) + 1
        name = self.pool.tls_server_name or backend.host
        if kind == "timeout":
            self._connect_failed(504, "TLS handshake timed out after %gs (server_name %s)" % (
                self.listener.timeouts.connect, name))
        else:
            self._connect_failed(502, "TLS handshake failed: %s (server_name %s)" % (detail, name))

    def _connect_failed(self, status, reason):
        backend = self.backend
        now = self.listener.loop.time()
        log.warning("backend %s: %s", backend.address, reason)
        report_failure(self.pool, backend, now, reason,
                       "upstream_connect_timeout" if status == 504 else "upstream_connect_failed")
        # Nothing reached the backend: safe to try another one whatever the method,
        # body included (still queued in self.pending, the client's reading paused at the mark).
        if self._next_backend("connect_timeout" if status == 504 else "connect_failed", now):
            self._connect()
            return
        self.owner.on_session_failed(status, reason)

    def _next_backend(self, why, now):
        """Move this request to another usable backend it has not tried, within
        ``retries`` and the pool's retry budget; False when none may be used."""
        pool = self.pool
        if self.attempts >= pool.retries:
            return False
        if not self.retrying and not pool.retry_allowed():
            pool.retry_budget_refused += 1
            return False
        if self.tried is None:
            self.tried = set()
        self.tried.add(self.backend.index)
        nxt = pool.pick_excluding(self.tried, self.key, now)
        if nxt is None:
            return False
        self.attempts += 1
        pool.retries_total[why] += 1
        if not self.retrying:
            self.retrying = True
            pool.retries_in_flight += 1
        self._unuse(now)
        self._use(nxt)
        self.fresh_only = False
        return True

    def retry(self, why, now):
        """A try failed before any response byte (reset, close, per-try timeout): send
        the request again on another backend, head and held body. False when not
        allowed (not resendable, its body no longer held, retries or budget used up,
        no other backend): the caller answers 502/504."""
        if self.hold is None or self.backend is None:
            return False
        conn = self.conn
        if not self._next_backend(why, now):
            return False
        if conn is not None:  # a per-try timeout: that try's connection is abandoned
            self.conn = None
            conn.abort()
        self.listener.wheel.cancel(self.timer)
        if self.hold:
            self.pending = list(self.hold)
            self.pending_bytes = self.hold_bytes
        self._connect()
        return True

    def _attach(self, conn):
        self.conn = conn
        owner = self.owner
        conn.peer = owner
        transport = conn.transport
        transport.write(self.head)
        self.t_sent = perf_counter()  # loop.time() has 1 ms steps: too coarse for fast backends
        if self.pending is not None:
            transport.writelines(self.pending)
            self.pending = None
            self.pending_bytes = 0
        owner.on_session_attached(conn)

    def retry_race(self):
        """The keep-alive race: the backend closed a reused idle connection just as
        we sent on it. Resend on a new connection, once. False when not allowed."""
        if self.fresh_only or self.backend is None:
            return False
        self.fresh_only = True
        self.conn = None
        self._connect()
        return True

    # --------------------------------------------------------------- request
    def send(self, data):
        """Body bytes toward the backend; True when bytes queue beyond the mark
        (still connecting) and the client's reading should pause."""
        hold = self.hold
        if hold is not None:
            if self.hold_bytes + len(data) <= RETRY_BODY_LIMIT:
                hold.append(data)
                self.hold_bytes += len(data)
            else:
                self.hold = None  # too large to keep: this request is no longer resendable
        conn = self.conn
        if conn is not None:
            conn.transport.write(data)
            return False
        if self.pending is None:
            self.pending = []
        self.pending.append(data)
        self.pending_bytes += len(data)
        return self.pending_bytes > WRITE_HIGH_WATER

    # -------------------------------------------------------------- response
    def arm_response(self, now, head=False):
        """The response deadline: to the head (``head``: per_try_timeout when the pool
        has one), or inactivity in the body (timeouts.response)."""
        listener = self.listener
        limit = listener.timeouts.response
        if head and self.pool.per_try_timeout is not None:
            limit = self.pool.per_try_timeout
        listener.wheel.arm(self.timer, T_RESPONSE, now + limit)

    def touch_response(self, now):
        """Response bytes arrived: push the inactivity deadline back."""
        if self.timer.kind == T_RESPONSE:
            self.listener.wheel.extend(self.timer, now + self.listener.timeouts.response)

    def suspend_response(self):
        """The client is not reading: the backend is not the one stalling."""
        if self.timer.kind == T_RESPONSE:
            self.listener.wheel.cancel(self.timer)

    def on_timer(self, timer, kind, now):
        if kind == T_CONNECT:
            task = self.task
            if task is not None:
                task.cancel()  # _on_connected sees the cancellation: connect timeout
        elif kind == T_RESPONSE:
            self.owner.on_response_timeout()

    # ------------------------------------------------------------------- end
    def finish(self, now, reuse=False, abort=False):
        """The exchange ended: the connection back to its pool (``reuse``), closed,
        or reset (``abort``: the exchange failed, the backend must not take a
        half-sent request as whole); a connect in progress abandoned; the
        backend's load given back. Safe to call more than once."""
        self.listener.wheel.cancel(self.timer)
        task = self.task
        if task is not None:
            self.task = None
            task.cancel()
        conn = self.conn
        if conn is not None:
            self.conn = None
            if reuse and conn.tls_context is self.pool.tls_context:
                release(conn, now, self.listener.limits.max_idle_per_backend)
            elif reuse:
                conn.close()  # made with TLS files replaced since (reload_pool_tls): not pooled
            elif abort:
                conn.abort()
            else:
                conn.close()
        self._unuse(now)
        self._reset()

    def response_head_seen(self, backend):
        """The final response head (or a 101) arrived: request sent -> head, on a
        sub-microsecond clock (uvloop's loop.time() has millisecond resolution, which
        would make every sub-millisecond backend look equally fast at 0.0 s), into
        the backend's histogram and, for ewma pools, the peak-EWMA sample."""
        self.response_time = elapsed = perf_counter() - self.t_sent
        if self.listener.metrics:
            backend.response_time.observe(elapsed)
        if self.pool.measure_latency:
            self.latency = elapsed


def is_ip(host):
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


async def resolve_backends(loop, backends):
    """Resolve backend host names once (``Backend.addr``); on failure keep the last
    address (or the name, so a connect fails with the resolver's error) and log."""
    for backend in backends:
        if is_ip(backend.host):
            backend.addr = backend.host
            continue
        try:
            infos = await loop.getaddrinfo(backend.host, backend.port, type=socket.SOCK_STREAM)
        except OSError as exc:
            log.warning("backend %s: cannot resolve %s: %s", backend.address, backend.host, exc)
            continue
        if infos:
            addr = infos[0][4][0]
            if addr != backend.addr:
                if backend.addr != backend.host:
                    log.info("backend %s: %s now resolves to %s", backend.address, backend.host, addr)
                backend.addr = addr
