"""Pools, backend state and selectors (sans-IO: no asyncio, no clock).

A ``Pool`` owns its ``Backend`` objects, one ``LoadState`` (live in-flight counts
and peak-EWMA latency per backend slot) and an immutable selector over backend
indexes, built from the algorithm table and swapped whole when membership or
weights change (Pingora's build/update split). Live state lives in the
LoadState and on the Backend objects, never in the selector, so it survives
rebuilds.

``usable`` is one byte per backend (1 = may be picked): the one accept
predicate every selector consults. It mirrors ``Backend.state`` (health.py owns
the state machine and calls ``state_changed``): 1 for ``up`` and ``slow_start``.
While a backend is in slow start the selector is rebuilt with ramping
effective weights (``ramp``, from the server's tick).

Hash algorithms take a request key (bytes; model.PoolSpec.hash_key says which);
a request without one (no such header, cookie or query parameter) is balanced
by round robin instead (documented in docs/algorithms.md).
"""

from ._core import (
    KetamaRing,
    LeastConnections,
    LoadState,
    Maglev,
    P2C,
    PeakEWMA,
    RoundRobin,
    WeightedRandom,
    key_hash,
)
from collections import deque

from .counters import EJECTION_REASONS, Histogram
from .model import ALGORITHMS

__all__ = ["Backend", "Pool", "build_selector", "KEY_NONE", "KEY_IP", "KEY_PATH", "KEY_HEADER", "KEY_COOKIE",
           "KEY_QUERY"]

# Where a pool's request key comes from (proxy.py extracts it).
KEY_NONE, KEY_IP, KEY_PATH, KEY_HEADER, KEY_COOKIE, KEY_QUERY = range(6)
_KEY_KINDS = {"ip": KEY_IP, "path": KEY_PATH, "header": KEY_HEADER, "cookie": KEY_COOKIE, "query": KEY_QUERY}


def build_selector(spec, names, weights, seed=0):
    """The selector for ``spec.algorithm`` over backends with these names and weights."""
    algorithm = spec.algorithm
    if algorithm == "round_robin":
        return RoundRobin(weights)
    if algorithm == "least_connections":
        return LeastConnections(weights)
    if algorithm == "random":
        return WeightedRandom(weights, seed)
    if algorithm == "p2c":
        return P2C(weights, seed)
    if algorithm == "ewma":
        return PeakEWMA(weights, seed)
    if algorithm in ("ip_hash", "consistent_hash"):
        return KetamaRing(names, weights, spec.hash_balance_factor)
    if algorithm == "maglev":
        return Maglev(names, weights, spec.maglev_table_size, spec.hash_balance_factor)
    raise ValueError("unknown algorithm %r" % algorithm)


class Backend:
    """One backend instance: address, weight, counters, admin state."""

    __slots__ = (
        "index", "address", "host", "port", "weight", "pool_name",
        "state", "state_reason", "state_since", "history",
        "passes", "fails", "checks_total", "checks_passed", "checks_failed",
        "last_check", "last_check_ok", "last_check_detail",
        "consecutive_failures", "ejections", "ejected_until", "last_ejection", "ejections_refused",
        "requests_total", "failures_total", "idle", "addr", "limit", "max_connections", "conns_open",
        "responses", "errors", "duration", "connect_time", "response_time", "ejections_total", "tls_failures",
    )

    def __init__(self, index, host, port, weight, pool_name, state="up", now=0.0, max_connections=0,
                 max_in_flight=0):
        self.index = index
        self.host = host
        self.port = port
        self.address = "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)
        self.weight = weight
        self.pool_name = pool_name
        # health.py's state machine (health.STATES); every change records why and when
        self.state = state
        self.state_reason = "active checks on: waiting for a first passing check" if state == "checking" \
            else "configured"
        self.state_since = now
        self.history = []  # (time, old, new, event, reason), the last health.HISTORY
        # active checks
        self.passes = 0  # in a row
        self.fails = 0  # in a row
        self.checks_total = 0
        self.checks_passed = 0
        self.checks_failed = 0
        self.last_check = None
        self.last_check_ok = None
        self.last_check_detail = None
        # passive outlier detection
        self.consecutive_failures = 0
        self.ejections = 0  # this run of ejections (doubles the ejection time)
        self.ejected_until = 0.0
        self.last_ejection = 0.0
        self.ejections_refused = 0  # would have been ejected but the pool's share was used up
        self.requests_total = 0
        self.failures_total = 0
        self.idle = []  # idle keep-alive upstream connections, most recent last (upstream.py owns them)
        self.addr = host  # the address connects use: ``host`` resolved (upstream.resolve_backends)
        # Capacity. Each request in flight holds one connection (HTTP/1.1), so the
        # in-flight limit is the smaller of the two; idle connections beyond
        # max_connections are closed (upstream.release).
        self.max_connections = max_connections
        limits = [n for n in (max_connections, max_in_flight) if n]
        self.limit = min(limits) if limits else 0  # requests at once; 0 = no limit
        self.conns_open = 0  # upstream sockets, in use and idle (upstream.UpstreamConnection)
        # observability (counters.py; metrics.py and stats.py read them)
        self.responses = [0, 0, 0, 0, 0]  # relayed responses by class: 1xx .. 5xx
        self.errors = 0  # requests that ended with the backend's failure (502/504, cut responses)
        self.duration = Histogram()  # request head received -> last response byte
        self.connect_time = Histogram()  # TCP connect to this backend
        self.response_time = Histogram()  # request head sent -> response head
        # failure kind -> ejections (never reset, unlike ``ejections``); every kind from
        # the start, so that increase() sees a backend's first ejection
        self.ejections_total = dict.fromkeys(EJECTION_REASONS, 0)
        # TLS to the backend (https pools): failed handshakes by reason, upstream.TLS_FAILURE_REASONS
        self.tls_failures = {}


# Why a request was sent again (Pool.retries_total keys; docs/health.md).
RETRY_REASONS = ("connect_failed", "connect_timeout", "reset", "closed", "per_try_timeout")

# Effective weights while a backend ramps up: every weight x RAMP_SCALE, the ramping
# ones x their progress (at least 1), so a weight-1 backend can ramp in 1% steps.
RAMP_SCALE = 100
RAMP_STEP = 0.25  # seconds between selector rebuilds while ramping


class Pool:
    __slots__ = (
        "name", "algorithm", "retries", "backends", "selector", "fallback", "load", "usable",
        "host_header", "key_kind", "key_name", "measure_latency", "health", "outlier", "slow_start", "fail_statuses",
        "ramping", "_ramp_at", "_weights", "_by_address", "_spec", "_seed",
        "retry_non_idempotent", "budget_percent", "budget_min", "per_try_timeout",
        "active", "retries_in_flight", "retries_total", "retry_budget_refused",
        "limited", "queue", "queue_size", "queue_timeout", "queue_full_total", "queue_timeouts_total", "queued_total",
        "panic", "panic_total", "unavailable_total", "queue_wait_seconds_total", "queue_wait",
        "tls_context", "tls_server_name", "tls_stamps",
    )

    def __init__(self, spec, seed=0, now=0.0):
        self.name = spec.name
        self.algorithm = spec.algorithm
        self.retries = spec.retries
        self.health = spec.health
        self.outlier = spec.outlier
        self.slow_start = spec.slow_start
        # backend statuses that count against it (passive detection); empty when off
        self.fail_statuses = frozenset(spec.outlier.statuses) if spec.outlier is not None else frozenset()
        # With active checks every backend starts in "checking": no traffic to a backend
        # fastlb has never seen healthy.
        first = "checking" if spec.health is not None else "up"
        self.backends = [
            Backend(i, b.address.host, b.address.port, b.weight, spec.name, first, now,
                    spec.max_connections if b.max_connections is None else b.max_connections,
                    spec.max_in_flight if b.max_in_flight is None else b.max_in_flight)
            for i, b in enumerate(spec.backends)
        ]
        self.limited = any(b.limit for b in self.backends)
        self.queue = deque()  # requests waiting for capacity (upstream.py serves them, FIFO)
        self.queue_size = spec.queue_size
        self.queue_timeout = spec.queue_timeout
        self.queue_full_total = 0
        self.queue_timeouts_total = 0
        self.queued_total = 0
        self.panic = spec.panic
        self.panic_total = 0
        self.unavailable_total = 0  # 503: no usable backend
        self.queue_wait_seconds_total = 0.0  # time requests spent in the queue, served or not
        self.queue_wait = Histogram()  # the same, per request
        self._by_address = {b.address: b for b in self.backends}
        # Host sent upstream for HTTP/1.0 requests that carry none (HTTP/1.1 requires one).
        self.host_header = self.backends[0].address.encode("ascii")
        self.usable = bytearray(b"\x01" if first == "up" else b"\x00") * len(self.backends)
        self.ramping = False
        self._ramp_at = 0.0
        self._weights = None
        # retries (upstream.BackendSession) and their budget
        self.retry_non_idempotent = spec.retry_non_idempotent
        self.budget_percent = spec.retry_budget_percent
        self.budget_min = spec.retry_budget_min
        self.per_try_timeout = spec.per_try_timeout
        self.active = 0  # requests in flight to this pool's backends
        self.retries_in_flight = 0  # of them, those on a retry
        self.retries_total = dict.fromkeys(RETRY_REASONS, 0)
        self.retry_budget_refused = 0
        self.load = LoadState(len(self.backends), spec.ewma_decay)
        kind, name = spec.hash_key or (None, "")
        self.key_kind = _KEY_KINDS.get(kind, KEY_NONE)
        self.key_name = name.encode("ascii")
        self.measure_latency = spec.algorithm == "ewma"
        # https pools (spec.tls): the client ssl.SSLContext and the name checked in the
        # backends' certificates (None: each backend's host), set by upstream.prepare_tls
        self.tls_context = None
        self.tls_server_name = None
        self.tls_stamps = None  # the ca/cert/key files' stamps when tls_context was built (reload_pool_tls)
        self._spec = spec
        self._seed = seed
        self._build()

    def _build(self, weights=None):
        """Build the selector (and the keyless fallback) from the current weights (or the
        effective ones while ramping) and swap them in whole; the LoadState is kept, so
        in-flight counts and latencies survive."""
        names = [b.address.encode("ascii") for b in self.backends]
        if weights is None:
            weights = [b.weight for b in self.backends]
        self._weights = weights
        selector = build_selector(self._spec, names, weights, self._seed)
        # Requests without their key are balanced by round robin over the same backends.
        fallback = RoundRobin(weights) if self.key_kind != KEY_NONE else None
        self.selector, self.fallback = selector, fallback

    # -- selection ------------------------------------------------------------------
    def pick(self, key=None, now=0.0):
        """The backend for a request (``key``: its hash key bytes, if the pool uses one),
        or None when no backend is usable (-> 503) or every usable one is at its
        capacity (-> the queue: ``healthy()`` tells the two apart). With ``panic``, a
        pool with no healthy backend tries every backend not drained or disabled."""
        backend = self._pick(self.usable, key, now)
        if backend is None and self.panic and not self.healthy():
            mask = bytearray(0 if b.state in ("draining", "disabled") else 1 for b in self.backends)
            backend = self._pick(mask, key, now)
            if backend is not None:
                self.panic_total += 1
        return backend

    def healthy(self):
        """Backends whose state takes traffic, full or not."""
        return sum(1 for b in self.backends if b.state in ("up", "slow_start"))

    def has_capacity(self):
        """Some usable backend can take a request now (a queued one may go)."""
        return any(self.usable)

    def pick_excluding(self, tried, key=None, now=0.0):
        """Pick among usable backends not in ``tried`` (a set of indexes), for retries:
        a hash algorithm walks on to the next backend for the same key."""
        usable = bytearray(self.usable)
        for i in tried:
            usable[i] = 0
        return self._pick(usable, key, now)

    def _pick(self, usable, key, now):
        if self.fallback is None:
            i = self.selector.pick(usable, self.load, 0, now)
        elif key is None:
            i = self.fallback.pick(usable, self.load, 0, now)
        else:
            i = self.selector.pick(usable, self.load, key_hash(key), now)
        return self.backends[i] if i >= 0 else None

    def explain(self, key=None, now=0.0):
        """Why a request with this key would go where it goes (a dry run: no state changes
        beyond what a pick itself changes)."""
        if self.fallback is not None and key is None:
            out = dict(self.fallback.explain(self.usable, self.load, 0, now))
            out["note"] = "no hash key in the request: round robin fallback"
        else:
            kh = key_hash(key) if (self.fallback is not None and key is not None) else 0
            out = dict(self.selector.explain(self.usable, self.load, kh, now))
            if self.fallback is not None:
                out["key"] = key.decode("latin-1")
                out["key_hash"] = kh
        chosen = out.get("chosen", -1)
        out["pool"] = self.name
        out["algorithm"] = self.algorithm
        out["backend"] = self.backends[chosen].address if chosen is not None and chosen >= 0 else None
        return out

    # -- live load ----------------------------------------------------------------------
    def started(self, backend):
        backend.requests_total += 1
        self.active += 1
        i = backend.index
        self.load.acquire(i)
        if backend.limit and self.load.in_flight(i) >= backend.limit:
            self.usable[i] = 0  # full: selectors skip it until a request ends

    def finished(self, backend, latency=-1.0, now=0.0):
        """A request to ``backend`` is over; ``latency`` (s) feeds peak-EWMA, -1 = no sample."""
        self.active -= 1
        i = backend.index
        self.load.release(i, latency, now)
        if backend.limit and not self.usable[i] and backend.state in ("up", "slow_start") \
                and self.load.in_flight(i) < backend.limit:
            self.usable[i] = 1

    def retry_allowed(self):
        """The retry budget (Envoy's retry_budget): one more retry in flight only while
        they stay within ``budget_percent`` of the active requests, or ``budget_min``."""
        limit = self.active * self.budget_percent // 100
        if limit < self.budget_min:
            limit = self.budget_min
        return self.retries_in_flight < limit

    # -- admin ----------------------------------------------------------------------------
    def backend(self, address):
        return self._by_address.get(address)

    def set_weight(self, backend, weight, now=0.0):
        """Change a backend's weight at run time: the selector is rebuilt and swapped."""
        if not 1 <= weight <= 1000:
            raise ValueError("weight must be between 1 and 1000")
        backend.weight = weight
        if self.ramping:
            self._ramp_at = 0.0
            self.ramp(now)
        else:
            self._build()

    # -- state (health.py's machine calls this after every transition) -------------
    def state_changed(self, backend, old, now):
        """Keep ``usable`` and the ramp in step with ``backend.state``; a backend that
        leaves rotation has its idle pooled connections closed."""
        usable = backend.state in ("up", "slow_start")
        i = backend.index
        self.usable[i] = 1 if usable and (not backend.limit or self.load.in_flight(i) < backend.limit) else 0
        if not usable:
            idle = backend.idle
            while idle:
                idle.pop().close()
        ramping = any(b.state == "slow_start" for b in self.backends)
        if ramping or self.ramping:
            self.ramping = ramping
            self._ramp_at = 0.0
            self.ramp(now)

    def effective_weight(self, backend, now):
        """The weight a backend takes traffic at now (slow start ramps it), as a
        fraction-precise float for the API; the selector uses RAMP_SCALE integers."""
        if backend.state == "slow_start" and self.slow_start > 0:
            return backend.weight * min(1.0, max(0.0, (now - backend.state_since) / self.slow_start))
        return float(backend.weight)

    def ramp(self, now):
        """While any backend is in slow start: rebuild the selector with ramped weights,
        at most every RAMP_STEP seconds. When none is, back to the plain weights."""
        if not self.ramping:
            if self._weights != [b.weight for b in self.backends]:
                self._build()
            return
        if now < self._ramp_at:
            return
        self._ramp_at = now + RAMP_STEP
        weights = [max(1, int(self.effective_weight(b, now) * RAMP_SCALE)) for b in self.backends]
        if weights != self._weights:
            self._build(weights)

    def backend_dict(self, backend, now=0.0):
        ewma = self.load.ewma(backend.index, now)
        out = {
            "address": backend.address,
            "weight": backend.weight,
            "effective_weight": round(self.effective_weight(backend, now), 3),
            "state": backend.state,
            "state_reason": backend.state_reason,
            "state_for_seconds": round(now - backend.state_since, 3),
            "in_flight": self.load.in_flight(backend.index),
            "max_in_flight": backend.limit or None,
            "connections_open": backend.conns_open,
            "requests_total": backend.requests_total,
            "failures_total": backend.failures_total,
            "consecutive_failures": backend.consecutive_failures,
            "ejections": backend.ejections,
            "idle_connections": len(backend.idle),
            "ewma_seconds": None if ewma < 0 else round(ewma, 6),
            "transitions": [{"seconds_ago": round(now - t, 3), "from": a, "to": b, "event": e, "reason": r}
                            for t, a, b, e, r in reversed(backend.history)],
        }
        if backend.state == "ejected":
            out["ejected_for_seconds"] = round(max(0.0, backend.ejected_until - now), 3)
        if self.health is not None:
            out["checks"] = {
                "total": backend.checks_total, "passed": backend.checks_passed, "failed": backend.checks_failed,
                "passes_in_a_row": backend.passes, "failures_in_a_row": backend.fails,
                "last": None if backend.last_check is None else {
                    "ok": backend.last_check_ok, "detail": backend.last_check_detail,
                    "seconds_ago": round(now - backend.last_check, 3)},
            }
        return out

    def as_dict(self, now=0.0):
        return {
            "name": self.name,
            "algorithm": self.algorithm,
            "summary": ALGORITHMS[self.algorithm]["summary"],
            "health_check": None if self.health is None else {
                "type": self.health.kind, "interval": self.health.interval, "timeout": self.health.timeout,
                "rise": self.health.rise, "fall": self.health.fall,
                "path": self.health.path if self.health.kind == "http" else None},
            "outlier_detection": None if self.outlier is None else {
                "consecutive_failures": self.outlier.consecutive_failures,
                "statuses": list(self.outlier.statuses),
                "base_ejection_time": self.outlier.base_ejection_time,
                "max_ejection_time": self.outlier.max_ejection_time,
                "max_ejection_percent": self.outlier.max_ejection_percent},
            "slow_start": self.slow_start,
            "retries": {"max": self.retries, "non_idempotent": self.retry_non_idempotent,
                        "per_try_timeout": self.per_try_timeout,
                        "budget": {"percent": self.budget_percent, "min_concurrent": self.budget_min},
                        "in_flight": self.retries_in_flight, "total": dict(self.retries_total),
                        "budget_refused": self.retry_budget_refused},
            "usable_backends": sum(self.usable),
            "queue": {"size": self.queue_size, "timeout": self.queue_timeout, "waiting": len(self.queue),
                      "queued_total": self.queued_total, "full_total": self.queue_full_total,
                      "timeouts_total": self.queue_timeouts_total,
                      "wait_seconds_total": round(self.queue_wait_seconds_total, 6)},
            "unavailable_total": self.unavailable_total,
            "panic": self.panic, "panic_total": self.panic_total,
            "backends": [self.backend_dict(b, now) for b in self.backends],
        }
