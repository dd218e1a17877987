"""Backend health: one state machine, active probes and passive outlier detection.

The state machine is data (as h11's ``_state.py``): ``TRANSITIONS`` maps
(state, event) to the next state, and docs/health.md is generated from the same
table (``state_table_markdown``; a test keeps the two equal). Everything that
changes a backend's state goes through ``transition``, which records the reason
and the time (loop time, seconds) on the backend and keeps the pool's ``usable``
flags and selector in step. Time is always passed in: this part is sans-IO and
tested without sockets (tests/unit/test_health.py).

States (``Backend.state``):
    checking    active checks are on and the backend has not passed one yet (at
                start, or back from an ejection, a drain or a disable): no traffic
    up          takes traffic
    slow_start  takes traffic at a weight ramping from ~0 to its own over
                ``slow_start`` seconds (new and recovered backends alike)
    down        failed ``fall`` active checks in a row: no traffic until ``rise`` pass
    ejected     passive outlier detection took it out for a while: no traffic
    draining    admin: no new requests; in-flight ones finish; idle connections closed
    disabled    admin: out of rotation until enabled

Events:
    pass        one active check passed          rise   ``rise`` passed in a row
    fall        ``fall`` checks failed in a row   eject  passive detection ejects it
    ejection_over  its ejection time is up        ramped slow start finished
    drain / undrain / disable / enable            admin API

Two targets depend on the pool and are resolved by ``transition``:
    USABLE  ``slow_start`` when the pool has one, else ``up``
    RETURN  ``checking`` when the pool has active checks (one passing check brings
            it back), else USABLE

Passive outlier detection (Envoy's consecutive-5xx / consecutive-gateway-failure
detectors, HAProxy's ``observe layer7``): connect failures, resets, timeouts and
the configured statuses from the backend count as failures; any other response
resets the count. ``consecutive_failures`` in a row eject the backend for
``base_ejection_time`` x 2^(n-1) for its n-th ejection, at most
``max_ejection_time``; never more than ``max_ejection_percent`` of the pool's
backends are ejected at once (rounded down: below 100%, a pool of one is never
ejected). The ejection count falls back to zero at the first tick, at least
``max_ejection_time`` after its last ejection ended, that finds the backend in
rotation.

Active checks (``Prober``, the only asyncio part): one task per checked backend,
at most one probe in flight per backend, each probe its own connection (never
the request keep-alive pool), a hard timeout, HTTP through h11 or a plain TCP
connect. One prober per fastlb instance: the server owns it (worker processes,
step 8, will receive states, not probe). A pool with ``tls`` (https backends) is
probed over TLS with the pool's own context and server name (``Pool.tls_context``,
``Pool.tls_server_name``): a ``tcp`` check then passes only once the handshake,
certificate check included, is done, and a failed one is the check's detail.
"""

import asyncio
import functools
import logging
import random

import h11

from .tls import describe_tls_error

__all__ = [
    "CHECKING", "UP", "SLOW_START", "DOWN", "EJECTED", "DRAINING", "DISABLED", "STATES", "EVENTS",
    "TRANSITIONS", "USABLE_STATES", "transition", "check_result", "report_failure", "report_success",
    "tick", "Prober", "probe", "state_table_markdown",
]

log = logging.getLogger("fastlb.health")

CHECKING = "checking"
UP = "up"
SLOW_START = "slow_start"
DOWN = "down"
EJECTED = "ejected"
DRAINING = "draining"
DISABLED = "disabled"
STATES = (CHECKING, UP, SLOW_START, DOWN, EJECTED, DRAINING, DISABLED)
USABLE_STATES = frozenset((UP, SLOW_START))

EVENTS = ("pass", "rise", "fall", "eject", "ejection_over", "ramped", "drain", "undrain", "disable", "enable")

USABLE = "USABLE"  # slow_start if the pool ramps new backends, else up
RETURN = "RETURN"  # checking if the pool has active checks, else USABLE

_ADMIN = {"drain": DRAINING, "disable": DISABLED}

TRANSITIONS = {
    (CHECKING, "pass"): USABLE,
    (CHECKING, "fall"): DOWN,
    (UP, "fall"): DOWN,
    (UP, "eject"): EJECTED,
    (SLOW_START, "fall"): DOWN,
    (SLOW_START, "eject"): EJECTED,
    (SLOW_START, "ramped"): UP,
    (DOWN, "rise"): USABLE,
    (EJECTED, "ejection_over"): RETURN,
    (EJECTED, "fall"): DOWN,
    (DRAINING, "undrain"): RETURN,
    (DRAINING, "enable"): RETURN,
    (DISABLED, "enable"): RETURN,
}
for _state in (CHECKING, UP, SLOW_START, DOWN, EJECTED):
    TRANSITIONS[(_state, "drain")] = DRAINING
    TRANSITIONS[(_state, "disable")] = DISABLED
TRANSITIONS[(DRAINING, "disable")] = DISABLED
TRANSITIONS[(DISABLED, "drain")] = DRAINING
del _state

HISTORY = 16  # transitions kept per backend (admin API)


def _resolve(pool, target):
    if target == RETURN:
        target = CHECKING if pool.health is not None else USABLE
    if target == USABLE:
        target = SLOW_START if pool.slow_start > 0 else UP
    return target


def transition(pool, backend, event, now, reason):
    """Apply ``event`` to ``backend``; returns the new state, or None when the table
    has no such transition (the event does not matter in that state)."""
    target = TRANSITIONS.get((backend.state, event))
    if target is None:
        return None
    target = _resolve(pool, target)
    old = backend.state
    backend.state = target
    backend.state_reason = reason
    backend.state_since = now
    history = backend.history
    history.append((now, old, target, event, reason))
    if len(history) > HISTORY:
        del history[0]
    if target == CHECKING:
        backend.passes = 0
        backend.fails = 0
    if target == EJECTED and pool.outlier is not None:
        backend.ejections += 1
        base = pool.outlier.base_ejection_time
        backend.ejected_until = now + min(base * (1 << min(backend.ejections - 1, 30)),
                                          pool.outlier.max_ejection_time)
        backend.last_ejection = now
    if target in USABLE_STATES or old in USABLE_STATES:
        backend.consecutive_failures = 0
    pool.state_changed(backend, old, now)
    level = logging.INFO if target in USABLE_STATES or target in (CHECKING, DRAINING, DISABLED) else logging.WARNING
    log.log(level, "pool %s backend %s: %s -> %s (%s)", pool.name, backend.address, old, target, reason)
    return target


# ---------------------------------------------------------------- active checks
def check_result(pool, backend, ok, now, detail):
    """One active check's outcome (``detail``: what was seen, for the log and the API)."""
    backend.checks_total += 1
    backend.last_check = now
    backend.last_check_ok = ok
    backend.last_check_detail = detail
    spec = pool.health
    if ok:
        backend.checks_passed += 1
        backend.passes += 1
        backend.fails = 0
        if backend.state == CHECKING:
            transition(pool, backend, "pass", now, "check passed: %s" % detail)
        elif backend.passes >= spec.rise:
            transition(pool, backend, "rise", now, "%d checks passed in a row: %s" % (backend.passes, detail))
    else:
        backend.checks_failed += 1
        backend.fails += 1
        backend.passes = 0
        if backend.fails >= spec.fall:
            transition(pool, backend, "fall", now, "%d checks failed in a row: %s" % (backend.fails, detail))


# ------------------------------------------------------ passive outlier detection
def report_failure(pool, backend, now, reason, kind="failure"):
    """A request to ``backend`` failed in a way that counts against it (connect
    failure or timeout, reset, response timeout, a configured status). ``kind``
    names it in a fixed vocabulary (counters.FLAGS names, or "status"): an
    ejection is counted under the kind of the failure that tipped it."""
    backend.failures_total += 1
    spec = pool.outlier
    if spec is None or backend.state not in USABLE_STATES:
        return
    backend.consecutive_failures += 1
    if backend.consecutive_failures < spec.consecutive_failures:
        return
    ejected = sum(1 for b in pool.backends if b.state == EJECTED)
    if (ejected + 1) * 100 > spec.max_ejection_percent * len(pool.backends):
        backend.ejections_refused += 1
        return  # the share of the pool that may be ejected at once is used up
    if transition(pool, backend, "eject", now, "%d failures in a row, last: %s" % (
            backend.consecutive_failures, reason)) is not None:
        backend.ejections_total[kind] = backend.ejections_total.get(kind, 0) + 1


def report_success(backend):
    """A response that does not count as a failure: the run of failures is over."""
    backend.consecutive_failures = 0


def tick(pool, now):
    """Time-driven transitions: ejections that are over, slow starts that are done,
    ejection counts that have aged out. Called from the server's tick."""
    spec = pool.outlier
    for b in pool.backends:
        state = b.state
        if state == EJECTED:
            if now >= b.ejected_until:
                transition(pool, b, "ejection_over", now, "ejection time (%gs) is over" % (
                    b.ejected_until - b.last_ejection))
        elif state == SLOW_START:
            if now - b.state_since >= pool.slow_start:
                transition(pool, b, "ramped", now, "slow start (%gs) is over" % pool.slow_start)
        if b.ejections and spec is not None and b.state in USABLE_STATES \
                and now - b.last_ejection >= spec.max_ejection_time + (b.ejected_until - b.last_ejection):
            b.ejections = 0
    if pool.ramping:
        pool.ramp(now)


# ----------------------------------------------------------------------- probes
class _ProbeProtocol(asyncio.Protocol):
    """Reads one probe response with h11 as it arrives; ``done`` resolves with
    (ok, detail) at the end of the response, a close, an error or the body limit.
    The end of the message is enough: a backend that keeps the connection open
    despite ``Connection: close`` still passes."""

    def __init__(self, done, spec):
        self.done = done
        self.spec = spec
        self.transport = None
        self.conn = h11.Connection(h11.CLIENT)
        self.conn.send(h11.Request(method=spec.method, target=spec.path, headers=[("Host", "x")]))
        self.conn.send(h11.EndOfMessage())
        self.status = None
        self.body = bytearray()
        self.received = 0

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.received += len(data)
        self.conn.receive_data(data)
        self._events()

    def eof_received(self):
        self.conn.receive_data(b"")
        self._events()
        return False

    def connection_lost(self, exc):
        self._finish(False, "connection closed before a response" if self.status is None
                     else "status %d, response cut short" % self.status)

    def _finish(self, ok, detail):
        if not self.done.done():
            self.done.set_result((ok, detail))

    def _events(self):
        spec = self.spec
        try:
            while not self.done.done():
                ev = self.conn.next_event()
                if ev is h11.NEED_DATA:
                    if len(self.body) >= PROBE_BODY_LIMIT and self.status is not None:
                        self._finish(*_verdict(spec, self.status, self.body))
                    return
                if isinstance(ev, h11.Response):
                    self.status = ev.status_code
                elif isinstance(ev, h11.Data):
                    if len(self.body) < PROBE_BODY_LIMIT:
                        self.body += ev.data[:PROBE_BODY_LIMIT - len(self.body)]
                elif isinstance(ev, h11.EndOfMessage):
                    self._finish(*_verdict(spec, self.status, self.body))
                elif isinstance(ev, h11.ConnectionClosed):
                    self._finish(False, "connection closed before a response")
        except h11.RemoteProtocolError as exc:
            if self.status is None:
                self._finish(False, "connection closed before a response" if not self.received
                             else "invalid response: %s" % exc)
            else:
                self._finish(False, "status %d, response cut short or invalid: %s" % (self.status, exc))


PROBE_BODY_LIMIT = 64 * 1024  # response body bytes a probe reads at most (for expect_body)


def _verdict(spec, status, body):
    """(ok, detail) for a complete (or limit-long) probe response."""
    if not any(lo <= status <= hi for lo, hi in spec.expect_status):
        return False, "status %d" % status
    if spec.expect_body is not None and spec.expect_body.encode() not in body:
        return False, "status %d, body lacks %r" % (status, spec.expect_body)
    return True, "status %d" % status


async def probe(loop, spec, host, port, host_header, ssl_context=None, server_name=None):
    """One active check of ``host:port``: (ok, detail). Never raises; the whole
    probe (connect, TLS handshake, request, response) is bounded by ``spec.timeout``.
    ``ssl_context``: speak TLS (an https pool), checking ``server_name`` (also its SNI)."""
    done = loop.create_future()
    held = []  # the transport, once connected, so that it is closed on every exit

    async def run():
        factory = functools.partial(_ProbeProtocol, done, spec)
        if ssl_context is None:
            transport, _ = await loop.create_connection(factory, host, port)
        else:
            transport, _ = await loop.create_connection(factory, host, port, ssl=ssl_context,
                                                        server_hostname=server_name or host,
                                                        ssl_handshake_timeout=spec.timeout)
        held.append(transport)
        if spec.kind == "tcp":
            return True, "connected" if ssl_context is None else "connected, TLS handshake done"
        head = "%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: fastlb-health\r\nConnection: close\r\n\r\n" % (
            spec.method, spec.path, spec.host or host_header)
        transport.write(head.encode("latin-1"))
        return await done

    try:
        return await asyncio.wait_for(run(), spec.timeout)
    except asyncio.TimeoutError:
        return False, "timed out after %gs" % spec.timeout
    except OSError as exc:
        if ssl_context is not None:
            kind, detail = describe_tls_error(exc)
            if kind is not None:
                return False, "TLS handshake failed: %s (server_name %s)" % (detail, server_name or host)
        return False, "connect failed: %s" % (exc.strerror or exc)
    finally:
        for transport in held:
            transport.close()  # one connection per probe: never pooled, never reused


class Prober:
    """Active checks for every pool that has them: one task per backend."""

    def __init__(self, loop, pools, seed=None):
        self.loop = loop
        self.pools = [p for p in pools if p.health is not None]
        self.tasks = []
        self.rng = random.Random(seed)

    def start(self):
        for pool in self.pools:
            for backend in pool.backends:
                self.tasks.append(self.loop.create_task(self._run(pool, backend)))

    def stop(self):
        for t in self.tasks:
            t.cancel()
        self.tasks = []

    def _delay(self, spec, backend):
        base = spec.down_interval if backend.state == DOWN and spec.down_interval else spec.interval
        if spec.jitter:
            base *= 1.0 + self.rng.uniform(-spec.jitter, spec.jitter)
        return base

    async def _run(self, pool, backend):
        spec = pool.health
        loop = self.loop
        # The first check at once, spread a little so that many backends do not
        # start in lockstep: a pool takes traffic as soon as its backends pass.
        await asyncio.sleep(self.rng.uniform(0, min(0.05, spec.interval / 10)))
        while True:
            if backend.state not in (DRAINING, DISABLED):
                # an https pool: the pool's TLS context, its server name checked (else the
                # backend's configured host), and that name as the probe's Host too
                name = pool.tls_server_name
                ok, detail = await probe(loop, spec, backend.addr, backend.port, name or backend.address,
                                         pool.tls_context, name or backend.host)
                try:
                    check_result(pool, backend, ok, loop.time(), detail)
                except Exception:  # one backend's bug must not stop the others' checks
                    log.exception("health check bookkeeping failed for %s", backend.address)
            await asyncio.sleep(self._delay(spec, backend))


# ------------------------------------------------------------------------- docs
def state_table_markdown():
    """The transition table as the markdown docs/health.md shows (a test compares)."""
    names = {USABLE: "`slow_start` if the pool has `slow_start`, else `up`",
             RETURN: "`checking` if the pool has `health_check`, else `slow_start` or `up` (as above)"}
    lines = ["| state | event | next state |", "|---|---|---|"]
    for (state, event), target in sorted(TRANSITIONS.items(), key=lambda kv: (STATES.index(kv[0][0]),
                                                                                EVENTS.index(kv[0][1]))):
        lines.append("| `%s` | %s | %s |" % (state, event, names.get(target, "`%s`" % target)))
    return "\n".join(lines)
