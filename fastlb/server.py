"""Listeners, the timer tick, signals and graceful drain — the top of the graph.

``Server`` turns a validated ``model.Config`` into running parts: one
``balancer.Pool`` per pool, one asyncio server per listener (protocol
``proxy.ProxyConnection``), the admin listener, one timer wheel (timers.py) that
every connection's deadlines live on, and one tick that expires the wheel and
sweeps idle backend connections (one loop timer for the process, not one per
request; its period is a quarter of the shortest timeout, between 50 ms and 1 s;
it reschedules itself before doing any work, so nothing a callback raises can
stop it). Backend host names are resolved before the listeners open, and again
every ``timeouts.dns_refresh`` seconds.

SIGTERM and SIGINT drain: listeners stop accepting, idle client connections are
closed, in-flight requests finish (their responses carry ``Connection: close``)
for up to ``timeouts.drain`` seconds. A connection counts as gone only when its
transport has flushed and closed (``connection_lost``), so a finished response
still in a buffer is delivered before exit. Then what is left is reset and the
process exits 0.
"""

import asyncio
import logging
import os
import signal
import time

from . import _core, auth, health
from ._version import __version__
from .errors import ConfigError
from .accesslog import AccessLog
from .balancer import Pool
from .clientaddr import AddressSet
from .guard import Route
from .http1 import path_of, split_host
from .model import ObservabilitySpec
from .proxy import HEAD, ProxyConnection
from .proxyproto import ProxyProtocolError, parse as parse_proxy_header
from .stats import StatsSampler
from .timers import Wheel
from .tls import CertError, ListenerTls
from .upstream import dispatch, is_ip, prepare_tls, reload_pool_tls, resolve_backends, sweep_idle

log = logging.getLogger("fastlb")

__all__ = ["Server", "Router", "ListenerRuntime", "run"]

TRACE_MODES = {"off": 0, "propagate": 1, "start": 2}


class Router:
    """First matching route wins, in configuration order. Routes are guard.Route
    objects (pool, label, entry guard), built once per configured route."""

    __slots__ = ("routes", "only", "table")

    def __init__(self, route_specs, pools, loop=None, drop_names=()):
        self.routes = []
        self.table = []
        for r in route_specs:
            host = r.host
            wildcard = None
            if host and host.startswith("*."):
                wildcard = host[1:].encode("ascii")  # ".example.com"
                host = None
            authenticator = auth.build(r.auth, loop) if r.auth is not None else None
            route = Route(r, pools[r.pool], authenticator, drop_names)
            self.routes.append(route)
            self.table.append((host.encode("ascii") if host else None, wildcard, r.path_prefix.encode("ascii"), route))
        # The common case, one catch-all route, skips all matching.
        only = self.table[0] if len(self.table) == 1 else None
        self.only = only[3] if only and only[0] is None and only[1] is None and only[2] == b"/" else None

    def route(self, host, target):
        if self.only is not None:
            return self.only
        # ``host`` is the scanner's: Host, or an absolute-form target's authority
        name = split_host(host) if host else b""
        path = path_of(target)
        for rhost, wildcard, prefix, route in self.table:
            if rhost is not None and name != rhost:
                continue
            if wildcard is not None and not name.endswith(wildcard):
                continue
            if path.startswith(prefix):
                return route
        return None


class ListenerRuntime:
    """What every ProxyConnection of one listener shares."""

    __slots__ = (
        "spec", "loop", "router", "timeouts", "limits", "connections", "draining",
        "extra_proto", "server", "address", "wheel", "upgrade_protocols", "_rid_prefix", "_rid_counter",
        "connections_total", "bytes_received", "bytes_sent", "generated", "requests_total",
        "access_log", "metrics", "observe", "trace_mode",
        "trusted", "proxy_protocol", "max_per_client", "per_client", "denied",
        "tls", "hsts", "redirect", "tls_rotated",
    )

    def __init__(self, spec, loop, pools, timeouts, limits, wheel, observability=None, access_log=None,
                 path="listeners[0]"):
        self.spec = spec
        self.loop = loop
        # TLS (docs/tls.md): the certificates are read and checked here (a CertError
        # names the key path); the subject header is removed from every request first
        self.tls = None
        drop = ()
        self.hsts = b""
        if spec.tls is not None:
            try:
                self.tls = ListenerTls(spec.tls, path + ".tls")
            except CertError as exc:
                raise ConfigError((exc.path, str(exc))) from None
            if spec.tls.subject_header:
                drop = (spec.tls.subject_header.encode("ascii"),)
            if spec.tls.hsts:
                self.hsts = b"Strict-Transport-Security: %s\r\n" % spec.tls.hsts.encode("ascii")
        self.tls_rotated = loop.time()
        self.redirect = spec.redirect_https  # None, or the HTTPS port every request is sent to (308)
        self.router = Router(spec.routes, pools, loop, drop)
        self.timeouts = timeouts
        self.limits = spec.head_limits or limits  # the scanners' limits: this listener's, else the global ones
        self.connections = set()
        self.draining = False
        self.extra_proto = b"X-Forwarded-Proto: https\r\n" if spec.tls is not None else b"X-Forwarded-Proto: http\r\n"
        self.wheel = wheel
        self.upgrade_protocols = frozenset(p.lower().encode("ascii") for p in spec.upgrade_protocols)
        self.server = None
        self.address = None
        # Request ids: 20 random hex digits per process + a 12-digit counter:
        # unique without a syscall or a uuid object per request.
        self._rid_prefix = os.urandom(10).hex().encode("ascii")
        self._rid_counter = 0
        # counters (counters.py): connections accepted; bytes of connections that
        # ended (live ones add theirs: bytes_totals); fastlb's own answers by
        # (status, flag); requests that ended
        self.connections_total = 0
        self.bytes_received = 0
        self.bytes_sent = 0
        self.generated = {}
        self.requests_total = 0
        obs = observability or ObservabilitySpec()
        self.metrics = obs.metrics
        self.access_log = access_log
        self.observe = obs.metrics or access_log is not None  # proxy._record runs at all
        self.trace_mode = TRACE_MODES[obs.tracing]
        # the entry guard (docs/security.md): trusted proxies (None: none), PROXY
        # protocol, open connections per client address (max_per_client, 0 = no cap),
        # refusals before a route is known (reason -> count)
        self.trusted = AddressSet(spec.trusted_proxies) if spec.trusted_proxies else None
        self.proxy_protocol = spec.proxy_protocol
        self.max_per_client = spec.max_connections_per_client
        self.per_client = {}
        self.denied = {}

    def route(self, host, target):
        return self.router.route(host, target)

    def deny(self, reason):
        self.denied[reason] = self.denied.get(reason, 0) + 1

    def bytes_totals(self):
        """(received, sent) by every connection so far, live ones included."""
        rx, tx = self.bytes_received, self.bytes_sent
        for conn in self.connections:
            rx += conn.received
            tx += conn.sent
        return rx, tx

    def next_request_id(self):
        self._rid_counter += 1
        return b"%s%012x" % (self._rid_prefix, self._rid_counter)


def tls_factory(rt):
    """The protocol factory of a TLS listener: each accepted connection gets the
    current generation's context (a reload or ticket rotation takes effect on the
    next handshake) and a handshake future that counts how it ended (by reason).
    This is what uvloop's server does for ``create_server(ssl=...)``, with the
    context chosen per connection and the outcome seen. With ``proxy_protocol``
    each connection starts in a ProxyHeaderGate, which calls ``make(app)``."""
    loop = rt.loop
    tls = rt.tls
    try:
        import uvloop
        from uvloop.loop import SSLProtocol
        if not isinstance(loop, uvloop.Loop):
            raise ImportError
    except ImportError:  # a plain asyncio loop (fastlb runs on uvloop; tests may not)
        from asyncio.sslproto import SSLProtocol
    handshake_timeout = rt.timeouts.client_header
    shutdown_timeout = rt.timeouts.linger
    done = tls.handshake_done

    def make(app=None):
        waiter = loop.create_future()
        waiter.add_done_callback(done)
        return SSLProtocol(loop, app if app is not None else ProxyConnection(rt), tls.current.context, waiter,
                           server_side=True,
                           ssl_handshake_timeout=handshake_timeout, ssl_shutdown_timeout=shutdown_timeout)
    if rt.proxy_protocol:
        return lambda: ProxyHeaderGate(rt, make)
    return make


class ProxyHeaderGate(asyncio.Protocol):
    """The first protocol of a connection to a TLS listener with ``proxy_protocol``:
    the PROXY header comes in the clear, before the handshake. It is read here
    (proxyproto.parse, at most MAX_V2 bytes, within ``timeouts.client_header``);
    then the socket goes to the TLS layer (``make``: tls_factory's SSLProtocol, what
    ``loop.start_tls`` does) with the bytes that came after the header (the
    ClientHello, often in the same segment, which start_tls would lose) and a
    ProxyConnection that knows the header's client address. A bad header is counted
    (``denied{proxy_protocol}``), logged, and the connection closed with no answer:
    the client speaks neither TLS nor HTTP to fastlb yet. A close or a timeout before
    the header ends the connection quietly, as on a plain listener."""

    __slots__ = ("rt", "make", "transport", "buf", "timer")

    def __init__(self, rt, make):
        self.rt = rt
        self.make = make
        self.transport = None
        self.buf = bytearray()
        self.timer = None

    def connection_made(self, transport):
        self.transport = transport
        self.timer = self.rt.loop.call_later(self.rt.timeouts.client_header, self._expired)

    def data_received(self, data):
        if self.transport is None:
            return
        buf = self.buf
        buf += data
        try:
            got = parse_proxy_header(buf)
        except ProxyProtocolError as exc:
            self.rt.deny("proxy_protocol")
            peer = self.transport.get_extra_info("peername")
            log.info("connection from %s closed: PROXY protocol header required on this listener: %s",
                     peer[0] if peer else "?", exc.reason)
            self._close()
            return
        if got is None:
            return
        consumed, src_ip = got[0], got[1]
        self.rt.bytes_received += consumed
        self.timer.cancel()
        transport = self.transport
        self.transport = None
        app = ProxyConnection(self.rt)
        app.proxied(src_ip)
        tls = self.make(app)
        transport.set_protocol(tls)
        tls.connection_made(transport)
        rest = bytes(buf[consumed:])
        self.buf = None
        while rest and not transport.is_closing():
            room = tls.get_buffer(len(rest))
            n = min(len(room), len(rest))
            room[:n] = rest[:n]
            tls.buffer_updated(n)
            rest = rest[n:]

    def eof_received(self):
        self._close()
        return False

    def connection_lost(self, exc):
        self.transport = None
        if self.timer is not None:
            self.timer.cancel()

    def _expired(self):
        self._close()

    def _close(self):
        transport = self.transport
        if transport is not None:
            self.transport = None
            self.timer.cancel()
            transport.close()


class Server:
    def __init__(self, config, loop=None):
        self.config = config
        self.loop = loop or asyncio.get_event_loop()
        # random/p2c/ewma draw from a per-process seed; `fastlb simulate` uses fixed seeds.
        seed = int.from_bytes(os.urandom(8), "little")
        now = self.loop.time()
        self.pools = {p.name: Pool(p, seed, now) for p in config.pools}
        prepare_tls(self.pools.values())  # https pools: their client TLS contexts
        self.prober = health.Prober(self.loop, self.pools.values())
        self.listeners = []
        self.admin = None
        self._tick_handle = None
        self._stopped = asyncio.Event()
        self._drain_task = None
        self._resolve_task = None
        self._next_sweep = 0.0
        t = config.timeouts
        pool_times = [p.per_try_timeout for p in config.pools if p.per_try_timeout] + [
            p.queue_timeout for p in config.pools if p.max_connections or p.max_in_flight
            or any(b.max_connections or b.max_in_flight for b in p.backends)]
        shortest = min([t.client_header, t.client_idle, t.connect, t.response, t.upstream_idle, t.tunnel,
                        t.send, t.linger] + pool_times)
        self.tick_interval = max(0.05, min(1.0, shortest / 4))
        self.wheel = Wheel(self.tick_interval, self.loop.time())
        self.backends = [b for pool in self.pools.values() for b in pool.backends]
        self.access_log = None
        self.started = 0.0  # time.time() at start (uptime, the dashboard)
        self.reloads = {"success": 0, "failure": 0}  # no reload yet (docs/metrics.md)
        self.stats = StatsSampler(self)

    async def start(self):
        if self.config.admin is not None and self.admin is None:
            from .admin import AdminServer

            # reads the admin token; refuses an open non-loopback bind (ConfigError)
            # before anything listens
            self.admin = AdminServer(self)
        obs = self.config.observability
        if obs.access_log is not None and self.access_log is None:
            self.access_log = AccessLog(obs.access_log)  # a file that cannot be opened fails here
        self.started = time.time()
        await resolve_backends(self.loop, self.backends)
        runtimes = [ListenerRuntime(spec, self.loop, self.pools, self.config.timeouts, self.config.limits,
                                    self.wheel, obs, self.access_log, "listeners[%d]" % i)
                    for i, spec in enumerate(self.config.listeners)]  # every certificate checked first
        for rt in runtimes:
            spec = rt.spec
            factory = tls_factory(rt) if rt.tls is not None else (lambda rt=rt: ProxyConnection(rt))
            rt.server = await self.loop.create_server(
                factory, spec.bind.host, spec.bind.port, reuse_address=True, backlog=1024,
            )
            for route in rt.router.routes:
                if route.auth is not None:
                    await route.auth.start()
            sock = rt.server.sockets[0].getsockname()
            rt.address = "[%s]:%d" % sock[:2] if ":" in sock[0] else "%s:%d" % sock[:2]
            self.listeners.append(rt)
        if self.admin is not None:
            await self.admin.start(self.config.admin.bind.host, self.config.admin.bind.port)
        self.prober.start()  # one prober per instance (docs/health.md)
        self._tick_handle = self.loop.call_later(self.tick_interval, self._tick)
        if not all(is_ip(b.host) for b in self.backends):
            self._resolve_task = self.loop.create_task(self._refresh_names())

    def _tick(self):
        # Rescheduled first: an exception below cannot stop every deadline.
        self._tick_handle = self.loop.call_later(self.tick_interval, self._tick)
        now = self.loop.time()
        self.wheel.expire(now)  # each callback guarded on its own
        if self.access_log is not None:
            try:
                self.access_log.flush()
            except Exception:
                log.exception("access log flush failed")
        try:
            self.stats.maybe_sample(now)
        except Exception:
            log.exception("stats sample failed")
        try:
            sweep_idle(self.backends, now, self.config.timeouts.upstream_idle)
        except Exception:
            log.exception("idle connection sweep failed")
        if now >= self._next_sweep:
            self._next_sweep = now + 1.0
            for rt in self.listeners:
                if rt.tls is not None:
                    try:
                        self._tls_tick(rt, now)
                    except Exception:
                        log.exception("certificate check failed for listener %s", rt.spec.name)
                for route in rt.router.routes:
                    if route.policies:
                        try:
                            route.sweep(now)  # refilled rate-limit buckets leave the table
                        except Exception:
                            log.exception("rate-limit sweep failed for route %s", route.name)
        for pool in self.pools.values():
            try:
                health.tick(pool, now)  # ejections over, slow start ramps
                for _ in range(min(len(pool.queue), sum(pool.usable))):
                    dispatch(pool, self.loop)  # capacity that came back with a state change
            except Exception:
                log.exception("health tick failed for pool %s", pool.name)

    def _tls_tick(self, rt, now):
        """Once a second: reload a listener's certificates when their files changed
        (and stayed unchanged for a second: a cert and its key are often written one
        after the other), and replace the session-ticket keys when they are due."""
        tls = rt.tls
        if tls.spec.watch and tls.poll():
            if tls.reload("certificate files changed"):
                rt.tls_rotated = now
        if now - rt.tls_rotated >= tls.spec.ticket_rotation:
            rt.tls_rotated = now
            tls.reload("session ticket rotation")

    def reload_certificates(self, why="SIGHUP"):
        """SIGHUP: every TLS listener reads its certificate files again, and every
        https pool its CA and client certificate; a listener or pool whose new files
        are bad keeps the ones it has."""
        now = self.loop.time()
        for rt in self.listeners:
            if rt.tls is not None and rt.tls.reload(why):
                rt.tls_rotated = now
        for pool in self.pools.values():
            if pool._spec.tls is not None:
                reload_pool_tls(pool, why)

    async def _refresh_names(self):
        while True:
            await asyncio.sleep(self.config.timeouts.dns_refresh)
            await resolve_backends(self.loop, self.backends)

    def describe(self):
        lines = []
        for rt in self.listeners:
            routes = []
            for r in rt.spec.routes:
                pool = self.pools[r.pool]
                match = (r.host or "*") + (r.path_prefix if r.path_prefix != "/" else "")
                routes.append("%s -> pool %s (%s: %s)" % (
                    match, pool.name, pool.algorithm, ", ".join(b.address for b in pool.backends)))
            if rt.redirect is not None:
                routes = ["every request redirected (308) to https on port %d" % rt.redirect]
            if rt.tls is not None:
                certs = rt.tls.current.certs
                routes.insert(0, "https (%s)" % ", ".join("%s %s" % (c.name, c.key_type) for c in certs))
            lines.append("listening on %s [%s]: %s" % (rt.address, rt.spec.name, "; ".join(routes)))
        if self.admin is not None:
            lines.append("admin API listening on %s" % self.admin.address)
        return lines

    def install_signal_handlers(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self.begin_drain, sig.name)
        self.loop.add_signal_handler(signal.SIGUSR1, self.reopen_logs)
        self.loop.add_signal_handler(signal.SIGHUP, self.reload_certificates)

    def reopen_logs(self):
        """SIGUSR1 (logrotate): reopen the access log file."""
        if self.access_log is not None:
            log.info("SIGUSR1: reopening the access log")
            self.access_log.reopen()

    def begin_drain(self, why="drain"):
        if self._drain_task is None:
            log.info("%s: draining (up to %gs)", why, self.config.timeouts.drain)
            self._drain_task = self.loop.create_task(self._drain())

    async def _drain(self):
        for rt in self.listeners:
            rt.draining = True
            rt.server.close()
            for conn in list(rt.connections):
                if conn.state == HEAD and conn.ex is None and not conn.buf:  # idle between requests
                    conn.close_client(linger=False)
        deadline = self.loop.time() + self.config.timeouts.drain
        while any(rt.connections for rt in self.listeners) and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        left = sum(len(rt.connections) for rt in self.listeners)
        if left:
            log.warning("drain timeout: closing %d connection(s) still in flight", left)
            for rt in self.listeners:
                for conn in list(rt.connections):
                    conn.shutdown_abort()
        await self.stop()

    async def stop(self):
        self.prober.stop()
        if self._tick_handle is not None:
            self._tick_handle.cancel()
            self._tick_handle = None
        if self._resolve_task is not None:
            self._resolve_task.cancel()
            self._resolve_task = None
        for rt in self.listeners:
            rt.server.close()
            for route in rt.router.routes:
                if route.auth is not None:
                    route.auth.close()
        if self.admin is not None:
            await self.admin.stop()
        for pool in self.pools.values():
            for b in pool.backends:
                while b.idle:
                    b.idle.pop().close()
        if self.access_log is not None:
            # connections reset just before (the drain's end) log their line from
            # connection_lost, a loop turn or two later
            for _ in range(3):
                await asyncio.sleep(0)
            self.access_log.close()  # every line written (bounded wait)
        self._stopped.set()

    async def wait_stopped(self):
        await self._stopped.wait()


def run(config, ready=None):
    """Serve ``config`` until SIGTERM/SIGINT; return the exit code."""
    import uvloop

    async def main():
        server = Server(config, asyncio.get_running_loop())
        await server.start()
        server.install_signal_handlers()
        # One line saying which build serves (tests and operators read it).
        print("fastlb %s (core: %s)" % (__version__, _core.IMPLEMENTATION), flush=True)
        for line in server.describe():
            print(line, flush=True)
        if _core.IMPLEMENTATION != "cython":
            log.warning("running on the pure-Python core (%s): expect lower throughput", _core.FALLBACK_REASON)
        if ready is not None:
            ready(server)
        await server.wait_stopped()
        # Let transports closed during the drain finish their close callbacks.
        await asyncio.sleep(0)
        return 0

    return uvloop.run(main())
