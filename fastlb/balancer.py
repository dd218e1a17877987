"""Pools, backend state and selectors (sans-IO: no asyncio, no clock).

A ``Pool`` owns its ``Backend`` objects, one ``LoadState`` (live in-flight counts
and peak-EWMA latency per backend slot) and an immutable selector over backend
indexes, built from the algorithm table and swapped whole when membership or
weights change (Pingora's build/update split). Live state lives in the
LoadState and on the Backend objects, never in the selector, so it survives
rebuilds.

``usable`` is one byte per backend (1 = may be picked): the one accept
predicate every selector consults. Admin ``disable`` clears a backend's byte;
later steps (health checks, outlier ejection, draining) clear it the same way.

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
        "state", "requests_total", "failures_total", "idle", "addr",
    )

    def __init__(self, index, host, port, weight, pool_name):
        self.index = index
        self.host = host
        self.port = port
        self.address = "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)
        self.weight = weight
        self.pool_name = pool_name
        self.state = "up"  # "up" | "disabled" (admin)
        self.requests_total = 0
        self.failures_total = 0
        self.idle = []  # idle keep-alive upstream connections, most recent last (upstream.py owns them)
        self.addr = host  # the address connects use: ``host`` resolved (upstream.resolve_backends)


class Pool:
    __slots__ = (
        "name", "algorithm", "retries", "backends", "selector", "fallback", "load", "usable",
        "host_header", "key_kind", "key_name", "measure_latency", "_by_address", "_spec", "_seed",
    )

    def __init__(self, spec, seed=0):
        self.name = spec.name
        self.algorithm = spec.algorithm
        self.retries = spec.retries
        self.backends = [
            Backend(i, b.address.host, b.address.port, b.weight, spec.name) for i, b in enumerate(spec.backends)
        ]
        self._by_address = {b.address: b for b in self.backends}
        # Host sent upstream for HTTP/1.0 requests that carry none (HTTP/1.1 requires one).
        self.host_header = self.backends[0].address.encode("ascii")
        self.usable = bytearray(b"\x01" * len(self.backends))
        self.load = LoadState(len(self.backends), spec.ewma_decay)
        kind, name = spec.hash_key or (None, "")
        self.key_kind = _KEY_KINDS.get(kind, KEY_NONE)
        self.key_name = name.encode("ascii")
        self.measure_latency = spec.algorithm == "ewma"
        self._spec = spec
        self._seed = seed
        self._build()

    def _build(self):
        """Build the selector (and the keyless fallback) from the current weights and swap
        them in whole; the LoadState is kept, so in-flight counts and latencies survive."""
        names = [b.address.encode("ascii") for b in self.backends]
        weights = [b.weight for b in self.backends]
        selector = build_selector(self._spec, names, weights, self._seed)
        # Requests without their key are balanced by round robin over the same backends.
        fallback = RoundRobin(weights) if self.key_kind != KEY_NONE else None
        self.selector, self.fallback = selector, fallback

    # -- selection ------------------------------------------------------------------
    def pick(self, key=None, now=0.0):
        """The backend for a request (``key``: its hash key bytes, if the pool uses one),
        or None when no backend is usable (-> 503)."""
        return self._pick(self.usable, key, now)

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
        self.load.acquire(backend.index)

    def finished(self, backend, latency=-1.0, now=0.0):
        """A request to ``backend`` is over; ``latency`` (s) feeds peak-EWMA, -1 = no sample."""
        self.load.release(backend.index, latency, now)

    # -- admin ----------------------------------------------------------------------------
    def backend(self, address):
        return self._by_address.get(address)

    def set_weight(self, backend, weight):
        """Change a backend's weight at run time: the selector is rebuilt and swapped."""
        if not 1 <= weight <= 1000:
            raise ValueError("weight must be between 1 and 1000")
        backend.weight = weight
        self._build()

    def set_state(self, backend, state):
        backend.state = state
        self.usable[backend.index] = 1 if state == "up" else 0

    def backend_dict(self, backend, now=0.0):
        ewma = self.load.ewma(backend.index, now)
        return {
            "address": backend.address,
            "weight": backend.weight,
            "state": backend.state,
            "in_flight": self.load.in_flight(backend.index),
            "requests_total": backend.requests_total,
            "failures_total": backend.failures_total,
            "idle_connections": len(backend.idle),
            "ewma_seconds": None if ewma < 0 else round(ewma, 6),
        }

    def as_dict(self, now=0.0):
        return {
            "name": self.name,
            "algorithm": self.algorithm,
            "summary": ALGORITHMS[self.algorithm]["summary"],
            "backends": [self.backend_dict(b, now) for b in self.backends],
        }
