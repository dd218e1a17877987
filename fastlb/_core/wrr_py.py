"""Smooth weighted round robin — pure-Python twin of ``wrr.pyx``.

The algorithm is nginx's (ngx_http_upstream_round_robin.c, "smooth weighted
round-robin balancing"): on every pick each usable peer's ``current`` grows by
its weight, the peer with the largest ``current`` wins (the first one on ties)
and pays back the sum of the usable weights. Weights 5,1,1 give
``a a b a c a a`` — interleaved, never a burst of five a's — and over any run of
``sum(weights)`` picks each peer is chosen exactly ``weight`` times.

Invariants: the selector is immutable in membership (indexes ``0..n-1`` into the
pool's backend list, weights fixed); when membership or weights change the pool
builds a new selector and swaps it whole. Only ``current`` changes per pick.

``usable`` is an optional bytes-like of length n: peer i is considered only when
``usable[i]`` is non-zero (down, draining, ejected or just-failed peers are 0).
An unusable peer's ``current`` is left alone, as nginx skips down peers.
"""


class SmoothWRR:
    __slots__ = ("_weights", "_current", "_n")

    def __init__(self, weights):
        weights = [int(w) for w in weights]
        if not weights:
            raise ValueError("SmoothWRR needs at least one peer")
        for w in weights:
            if w < 1:
                raise ValueError("weights must be >= 1, got %d" % w)
        self._weights = weights
        self._current = [0] * len(weights)
        self._n = len(weights)

    @property
    def size(self):
        return self._n

    def weights(self):
        return list(self._weights)

    def pick(self, usable=None):
        """Index of the chosen peer, or -1 when no peer is usable."""
        weights = self._weights
        current = self._current
        best = -1
        total = 0
        for i in range(self._n):
            if usable is not None and not usable[i]:
                continue
            w = weights[i]
            current[i] += w
            total += w
            if best < 0 or current[i] > current[best]:
                best = i
        if best >= 0:
            current[best] -= total
        return best
