"""The plain counters the data path bumps, and the vocabulary they are named with.

Every number /metrics, /api/v1/stats and the dashboard show is a plain integer
or float attribute on fastlb's own objects (Backend, Pool, ListenerRuntime, the
listener's table of generated answers), bumped in place on the request path; the
renderers (metrics.py, stats.py) read them on scrape. Nothing here allocates per
request: a histogram observation is one bisect, one list increment and one add.

Why this shape survives several worker processes (step 8): every counter is a
monotonic number keyed by labels fixed by the configuration, so the snapshot
of one process (``metrics.snapshot``) is a flat mapping ``(family, labels) ->
value``, and the supervisor's view is the sum of its workers' snapshots
(``metrics.merge``); docs/architecture.md says how they reach it.

Termination flags (docs/access-log.md): why a request ended other than with a
complete response relayed from a backend. They are the access log's ``flags``
and the ``reason`` label of ``fastlb_responses_generated_total``, one fixed
vocabulary (HAProxy's termination state and Envoy's response flags in words).
"""

from bisect import bisect_left

__all__ = ["BUCKETS", "Histogram", "cumulative", "FLAGS", "FLAG_NAMES", "CODE_CLASSES", "parse_flag"]

# Histogram bucket upper bounds, seconds (Prometheus ``le``): APIs answer in 1 ms to
# 10 s; 1-2.5-5 steps per decade. docs/metrics.md lists them.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

CODE_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


class Histogram:
    """Counts per bucket (not cumulative; the last one is +Inf) and the sum."""

    __slots__ = ("counts", "sum")

    def __init__(self):
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, value):
        # le semantics: a value equal to a bound falls in that bound's bucket
        self.counts[bisect_left(BUCKETS, value)] += 1
        self.sum += value

    @property
    def count(self):
        return sum(self.counts)

    def cumulative(self):
        return cumulative(self.counts)


def cumulative(counts):
    """Per-bucket counts -> Prometheus's cumulative ones (the last is +Inf = count)."""
    out = []
    total = 0
    for c in counts:
        total += c
        out.append(total)
    return out


# Termination flags: (code, name, what it means). 0 is "none": a complete response.
FLAGS = (
    (1, "client_closed", "the client closed or reset its connection before the response was complete"),
    (2, "client_timeout", "the client was too slow: request head or body not received in time, "
                          "or it stopped reading the response"),
    (3, "parse_error", "the request was malformed and rejected by the parser (nothing forwarded)"),
    (4, "limits", "the request exceeded a size limit: request line, header bytes or count, body (max_body)"),
    (5, "no_route", "no route matched the request's host and path"),
    (6, "method", "the method cannot be proxied (CONNECT) or is not in the route's limits.methods (405)"),
    (7, "no_backend", "no backend of the pool was usable"),
    (8, "queue_full", "every backend was at its capacity and the pool's queue was full"),
    (9, "queue_timeout", "the request waited in the pool's queue longer than queue_timeout"),
    (10, "upstream_connect_failed", "connecting to the backend failed (refused, unreachable)"),
    (11, "upstream_connect_timeout", "connecting to the backend took longer than timeouts.connect"),
    (12, "upstream_reset", "the backend reset or closed the connection before the response was complete"),
    (13, "upstream_timeout", "the backend did not answer (or stalled in its body) within the timeout"),
    (14, "upstream_invalid", "the backend sent an invalid response (head, chunked framing or protocol switch)"),
    (15, "shutdown", "fastlb was shutting down and the drain time was over"),
    (16, "rate_limited", "a rate-limit policy of the route had no token left for the request's key (429)"),
    (17, "auth", "the route's authentication refused the request: no or a bad credential (401), "
                 "or an identity that is not allowed (403)"),
    (18, "denied", "refused by the entry guard: the client address is not allowed (access, 403), a rejected "
                   "path (400), too many connections from the address (429), or a bad PROXY protocol header"),
)
# What an ejection is counted under (health.report_failure's kind): the flags of
# backend failures, and "status" (a status listed in outlier_detection.statuses).
EJECTION_REASONS = ("upstream_connect_failed", "upstream_connect_timeout", "upstream_reset", "upstream_timeout",
                    "upstream_invalid", "status")
F_NONE = 0
(F_CLIENT_CLOSED, F_CLIENT_TIMEOUT, F_PARSE_ERROR, F_LIMITS, F_NO_ROUTE, F_METHOD, F_NO_BACKEND, F_QUEUE_FULL,
 F_QUEUE_TIMEOUT, F_CONNECT_FAILED, F_CONNECT_TIMEOUT, F_UPSTREAM_RESET, F_UPSTREAM_TIMEOUT, F_UPSTREAM_INVALID,
 F_SHUTDOWN, F_RATE_LIMITED, F_AUTH, F_DENIED) = range(1, 19)
FLAG_NAMES = ("",) + tuple(name for _, name, _ in FLAGS)


def parse_flag(status):
    """The flag of a request the parser rejected with ``status``."""
    return F_LIMITS if status in (413, 414, 431) else F_PARSE_ERROR


# Why the entry guard refused a request (fastlb_requests_denied_total{reason}).
DENY_REASONS = ("access", "method", "body_too_large", "path", "connections", "proxy_protocol")
