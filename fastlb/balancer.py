"""Pools, backend state and selectors (sans-IO: no asyncio, no clock).

A ``Pool`` owns its ``Backend`` objects and an immutable selector over their
indexes, built from the algorithm table and swapped whole when membership or
weights change (Pingora's build/update split). Live per-backend state
(in-flight count, request and failure counters, admin state) lives on the
``Backend`` object, not the selector, so it survives rebuilds.

``usable`` is one byte per backend (1 = may be picked); the selector consults it
through one accept predicate. Admin ``disable``/``drain`` clear a backend's byte;
later steps (health checks, outlier ejection) clear it the same way.
"""

from ._core import SmoothWRR

__all__ = ["Backend", "Pool", "build_selector"]


def build_selector(algorithm, weights):
    """Selector for ``algorithm`` over backends with these weights."""
    if algorithm == "round_robin":
        return SmoothWRR(weights)
    raise ValueError("unknown algorithm %r" % algorithm)


class Backend:
    """One backend instance: address, weight, live counters, admin state."""

    __slots__ = (
        "index", "address", "host", "port", "weight", "pool_name",
        "state", "in_flight", "requests_total", "failures_total", "idle",
    )

    def __init__(self, index, host, port, weight, pool_name):
        self.index = index
        self.host = host
        self.port = port
        self.address = "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)
        self.weight = weight
        self.pool_name = pool_name
        self.state = "up"  # "up" | "disabled" (admin)
        self.in_flight = 0
        self.requests_total = 0
        self.failures_total = 0
        self.idle = []  # idle keep-alive upstream connections, most recent last (upstream.py owns them)

    def as_dict(self):
        return {
            "address": self.address,
            "weight": self.weight,
            "state": self.state,
            "in_flight": self.in_flight,
            "requests_total": self.requests_total,
            "failures_total": self.failures_total,
            "idle_connections": len(self.idle),
        }


class Pool:
    __slots__ = ("name", "algorithm", "retries", "backends", "selector", "usable", "host_header", "_by_address")

    def __init__(self, spec):
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
        self.selector = build_selector(self.algorithm, [b.weight for b in self.backends])

    def pick(self):
        """The next backend, or None when no backend is usable (-> 503)."""
        i = self.selector.pick(self.usable)
        return self.backends[i] if i >= 0 else None

    def pick_excluding(self, tried):
        """Pick among usable backends not in ``tried`` (a set of indexes), for retries."""
        usable = bytearray(self.usable)
        for i in tried:
            usable[i] = 0
        i = self.selector.pick(usable)
        return self.backends[i] if i >= 0 else None

    def backend(self, address):
        return self._by_address.get(address)

    def set_state(self, backend, state):
        backend.state = state
        self.usable[backend.index] = 1 if state == "up" else 0

    def has_usable(self):
        return any(self.usable)

    def as_dict(self):
        return {
            "name": self.name,
            "algorithm": self.algorithm,
            "backends": [b.as_dict() for b in self.backends],
        }
