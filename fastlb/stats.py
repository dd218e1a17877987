"""Live traffic for the dashboard: ``GET /api/v1/stats`` (docs/dashboard.md).

Prometheus computes rates and quantiles from the cumulative counters; the
dashboard has no Prometheus, so this module does it in-process. Once a second
(from the server's tick) ``StatsSampler`` takes the difference of every
backend's and pool's counters since the previous sample: requests ended,
errors, and the request-duration histogram. The last HISTORY samples are kept
(5 minutes), so the page shows a history the moment it opens. "Current"
values cover the last WINDOW seconds.

Quantiles come from the histogram buckets by linear interpolation within the
bucket (as Prometheus's ``histogram_quantile``): their precision is the bucket
layout's (counters.BUCKETS).
"""

import time
from collections import deque

from . import _core
from ._version import __version__
from .counters import BUCKETS

__all__ = ["StatsSampler", "quantile", "HISTORY", "WINDOW", "INTERVAL"]

INTERVAL = 1.0  # seconds between samples
HISTORY = 300  # samples kept: 5 minutes
WINDOW = 10  # samples the current rps / error rate / p50 / p99 cover


def quantile(q, counts):
    """The ``q`` quantile of per-bucket counts (not cumulative; the last is +Inf),
    None when there are none. Within a bucket, linear interpolation; a quantile in
    +Inf is reported as the last finite bound."""
    total = sum(counts)
    if not total:
        return None
    rank = q * total
    seen = 0
    for i, c in enumerate(counts):
        if c and seen + c >= rank:
            if i == len(BUCKETS):
                return BUCKETS[-1]
            lo = BUCKETS[i - 1] if i else 0.0
            return lo + (BUCKETS[i] - lo) * ((rank - seen) / c)
        seen += c
    return BUCKETS[-1]


class _Series:
    """Per-second deltas of one backend (or one pool's own refusals)."""

    __slots__ = ("samples", "last")

    def __init__(self):
        self.samples = deque(maxlen=HISTORY)  # (requests, errors, bucket deltas, seconds covered)
        self.last = None  # (requests, errors, bucket counts) at the previous sample


def _backend_totals(b):
    """Requests ended, errors, duration buckets: what the dashboard plots."""
    return b.duration.count, b.errors + b.responses[4], list(b.duration.counts)


def _pool_totals(p):
    """A pool's own answers with no backend (503s), counted as requests and errors."""
    n = p.unavailable_total + p.queue_full_total + p.queue_timeouts_total
    return n, n, None


class StatsSampler:
    def __init__(self, server):
        self.server = server
        self._next = 0.0
        self._last = None  # loop time of the previous sample
        self._series = {}  # id -> _Series (backends by (pool, address), pools by name)
        self.samples_taken = 0

    def maybe_sample(self, now):
        """From the server's tick: a sample once INTERVAL has passed. A late tick (a
        busy loop) makes a longer sample, and its rates are divided by the time it
        really covers."""
        if now >= self._next:
            self._next = now + INTERVAL
            dt = now - self._last if self._last is not None else INTERVAL
            self._last = now
            self.sample(max(dt, 1e-3))

    def sample(self, dt=INTERVAL):
        self.samples_taken += 1
        for pool in self.server.pools.values():
            self._take(("pool", pool.name), _pool_totals(pool), dt)
            for b in pool.backends:
                self._take((pool.name, b.address), _backend_totals(b), dt)

    def _take(self, key, totals, dt):
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series()
        last = series.last
        series.last = totals
        if last is None:
            return  # the first sample is the baseline
        n, err, buckets = totals
        delta = None if buckets is None else [a - b for a, b in zip(buckets, last[2])]
        series.samples.append((n - last[0], err - last[1], delta, dt))

    # ---------------------------------------------------------------- JSON
    def _summary(self, samples_list):
        """Current rps, error rate, p50, p99 over the last WINDOW samples, and the
        history (one value per sample) of the sum of ``samples_list``."""
        length = max((len(s) for s in samples_list), default=0)
        rows = []
        for i in range(length):
            n = err = 0
            dt = INTERVAL
            buckets = [0] * (len(BUCKETS) + 1)
            for s in samples_list:
                j = i - (length - len(s))  # align the newest samples
                if j < 0:
                    continue
                sn, serr, sb, dt = s[j]
                n += sn
                err += serr
                if sb is not None:
                    for k, c in enumerate(sb):
                        buckets[k] += c
            rows.append((n, err, buckets, dt))
        hist = {"rps": [], "error_rate": [], "p50": [], "p99": []}
        for n, err, buckets, dt in rows:
            hist["rps"].append(round(n / dt, 3))
            hist["error_rate"].append(round(min(1.0, err / n), 4) if n else 0.0)
            hist["p50"].append(_round(quantile(0.5, buckets)))
            hist["p99"].append(_round(quantile(0.99, buckets)))
        recent = rows[-WINDOW:]
        n = sum(r[0] for r in recent)
        err = sum(r[1] for r in recent)
        buckets = [sum(col) for col in zip(*(r[2] for r in recent))] if recent else []
        seconds = sum(r[3] for r in recent)
        return {
            "rps": round(n / seconds, 3) if seconds else 0.0,
            "error_rate": round(min(1.0, err / n), 4) if n else 0.0,
            "p50": _round(quantile(0.5, buckets)) if buckets else None,
            "p99": _round(quantile(0.99, buckets)) if buckets else None,
            "history": hist,
        }

    def as_dict(self, now):
        srv = self.server
        pools = []
        all_samples = []
        total_in_flight = 0
        for pool in srv.pools.values():
            backends = []
            pool_samples = []
            for b in pool.backends:
                series = self._series.get((pool.name, b.address))
                samples = series.samples if series is not None else deque()
                pool_samples.append(samples)
                in_flight = pool.load.in_flight(b.index)
                out = {
                    "address": b.address,
                    "state": b.state,
                    "state_reason": b.state_reason,
                    "state_for": round(max(0.0, now - b.state_since), 3),
                    "in_flight": in_flight,
                    "weight": b.weight,
                    "effective_weight": round(pool.effective_weight(b, now), 3),
                    "requests": b.duration.count,
                }
                out.update(self._summary([samples]))
                backends.append(out)
            own = self._series.get(("pool", pool.name))
            if own is not None:
                pool_samples.append(own.samples)
            all_samples.extend(pool_samples)
            total_in_flight += pool.active
            entry = {
                "name": pool.name,
                "algorithm": pool.algorithm,
                "usable": pool.healthy(),
                "backends_total": len(pool.backends),
                "queue": len(pool.queue),
                "in_flight": pool.active,
                "requests": sum(b.duration.count for b in pool.backends) + pool.unavailable_total
                + pool.queue_full_total + pool.queue_timeouts_total,
            }
            entry.update(self._summary(pool_samples))
            entry["backends"] = backends
            pools.append(entry)
        totals = self._summary(all_samples)
        listeners = []
        for rt in srv.listeners:
            rx, tx = rt.bytes_totals()
            listeners.append({"name": rt.spec.name, "address": rt.address,
                              "connections_active": len(rt.connections), "connections_total": rt.connections_total,
                              "bytes_received": rx, "bytes_sent": tx})
        return {
            "version": __version__,
            "core": _core.IMPLEMENTATION,
            "uptime": round(time.time() - srv.started, 3) if srv.started else 0.0,
            "time": round(time.time(), 3),
            "interval": INTERVAL,
            "window": WINDOW * INTERVAL,
            "totals": {"rps": totals["rps"], "error_rate": totals["error_rate"], "in_flight": total_in_flight,
                       "requests": sum(rt.requests_total for rt in srv.listeners)},
            "listeners": listeners,
            "pools": pools,
        }


def _round(value):
    return None if value is None else round(value, 6)
