"""``GET /metrics``: the Prometheus exposition of fastlb's plain counters.

Nothing here runs per request. On a scrape, ``snapshot`` reads the counters the
data path keeps on its own objects (counters.py) into plain data: a list of
families, each ``(name, kind, help, samples)`` with samples a mapping from label
values to a number (or, for histograms, to per-bucket counts and a sum). A
prometheus-client collector turns a snapshot into its metric families and the
library writes the text format (or OpenMetrics when the scraper's ``Accept``
asks for it), and adds the standard ``process_*`` metrics.

Snapshots are data so that several worker processes (step 8) can be summed:
``merge`` adds counters and histograms and combines each gauge by its rule in
GAUGE_MERGE (docs/architecture.md#metrics-across-processes).

FAMILIES is the one list of names, kinds, labels and help texts; docs/metrics.md
documents each and a test compares the two with a live /metrics.
"""

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, InfoMetricFamily
from prometheus_client.exposition import choose_encoder

from . import _core
from ._version import __version__
from .counters import BUCKETS, CODE_CLASSES, FLAG_NAMES, cumulative
from .health import STATES, USABLE_STATES

__all__ = ["FAMILIES", "GAUGE_MERGE", "snapshot", "merge", "Registry"]

B = ("pool", "backend")
FAMILIES = {
    # name: (kind, labels, help)
    "fastlb_requests_total": ("counter", B + ("code_class",),
                              "Responses from backends relayed to clients, by status class."),
    "fastlb_responses_generated_total": ("counter", ("code", "reason"),
                                         "fastlb's own answers (no backend response), by status and reason."),
    "fastlb_request_duration_seconds": ("histogram", B,
                                        "Request head received to last response byte, per backend."),
    "fastlb_upstream_connect_duration_seconds": ("histogram", B, "TCP connects to a backend."),
    "fastlb_upstream_response_duration_seconds": ("histogram", B,
                                                  "Request head sent to response head (time to first byte)."),
    "fastlb_backend_up": ("gauge", B, "1 when the backend takes traffic (up or slow_start), else 0."),
    "fastlb_backend_state": ("gauge", B + ("state",), "1 for the backend's current health state, 0 for the others."),
    "fastlb_backend_in_flight": ("gauge", B, "Requests in flight to the backend."),
    "fastlb_backend_weight": ("gauge", B, "Effective weight (slow start included)."),
    "fastlb_health_checks_total": ("counter", B + ("result",), "Active health checks, by result."),
    "fastlb_backend_ejections_total": ("counter", B + ("reason",),
                                       "Passive outlier ejections, by the kind of failure that tipped them."),
    "fastlb_retries_total": ("counter", ("pool", "reason"), "Requests sent again to another backend, by reason."),
    "fastlb_queue_wait_seconds": ("histogram", ("pool",), "Time requests waited in the pool's queue."),
    "fastlb_connections_active": ("gauge", ("listener",), "Client connections open."),
    "fastlb_connections_total": ("counter", ("listener",), "Client connections accepted."),
    "fastlb_bytes_received_total": ("counter", ("listener",), "Bytes received from clients."),
    "fastlb_bytes_sent_total": ("counter", ("listener",), "Bytes sent to clients."),
    "fastlb_ratelimit_rejected_total": ("counter", ("route", "policy"),
                                        "Requests refused with 429 by a rate-limit policy of the route."),
    "fastlb_auth_rejected_total": ("counter", ("route", "reason"),
                                   "Requests refused by the route's authentication (401, 403, 503 busy), by reason."),
    "fastlb_requests_denied_total": ("counter", ("route", "reason"),
                                     "Requests (or connections) refused by the entry guard, by reason; route is "
                                     "empty before a route is known."),
    "fastlb_tls_certificate_expiry_seconds": ("gauge", ("listener", "name"),
                                              "Unix time at which a listener's certificate expires (its notAfter)."),
    "fastlb_tls_handshakes_total": ("counter", ("listener",), "TLS handshakes completed on the listener."),
    "fastlb_tls_handshake_failures_total": ("counter", ("listener", "reason"),
                                            "TLS handshakes that failed on the listener, by reason."),
    "fastlb_tls_certificate_reloads_total": ("counter", ("listener", "result"),
                                             "Certificate reloads (file change, SIGHUP, ticket rotation), by result."),
    "fastlb_upstream_tls_failures_total": ("counter", B + ("reason",),
                                           "TLS handshakes to a backend that failed, by reason (https pools)."),
    "fastlb_config_reloads_total": ("counter", ("result",), "Configuration reloads, by result."),
    "fastlb_access_log_dropped_lines_total": ("counter", (),
                                              "Access-log lines lost: the writer was stuck or a write failed."),
    "fastlb_core_info": ("info", ("implementation",), "The core in use: cython (compiled) or python (pure twin)."),
    "fastlb_build_info": ("info", ("version",), "fastlb's version."),
}

# How a supervisor combines one gauge across worker processes (merge): state-like
# gauges are the same in every worker (health is per instance), loads add up.
GAUGE_MERGE = {
    "fastlb_backend_up": "max",
    "fastlb_backend_state": "max",
    "fastlb_backend_weight": "max",
    "fastlb_backend_in_flight": "sum",
    "fastlb_connections_active": "sum",
    "fastlb_tls_certificate_expiry_seconds": "max",
}

HEALTH_RESULTS = ("passed", "failed")


def snapshot(server, now):
    """Every family's samples, read from the counters (plain data, mergeable)."""
    fam = {name: {} for name in FAMILIES}
    hist = ("fastlb_request_duration_seconds", "fastlb_upstream_connect_duration_seconds",
            "fastlb_upstream_response_duration_seconds")
    for pool in server.pools.values():
        pn = pool.name
        for b in pool.backends:
            key = (pn, b.address)
            requests = fam["fastlb_requests_total"]
            for cls, n in zip(CODE_CLASSES, b.responses):
                requests[key + (cls,)] = n
            for name, h in zip(hist, (b.duration, b.connect_time, b.response_time)):
                fam[name][key] = (list(h.counts), h.sum)
            fam["fastlb_backend_up"][key] = 1 if b.state in USABLE_STATES else 0
            states = fam["fastlb_backend_state"]
            for st in STATES:
                states[key + (st,)] = 1 if b.state == st else 0
            fam["fastlb_backend_in_flight"][key] = pool.load.in_flight(b.index)
            fam["fastlb_backend_weight"][key] = pool.effective_weight(b, now)
            checks = fam["fastlb_health_checks_total"]
            checks[key + ("passed",)] = b.checks_passed
            checks[key + ("failed",)] = b.checks_failed
            ejections = fam["fastlb_backend_ejections_total"]
            for reason, n in b.ejections_total.items():
                ejections[key + (reason,)] = n
            for reason, n in b.tls_failures.items():
                fam["fastlb_upstream_tls_failures_total"][key + (reason,)] = n
        for reason, n in pool.retries_total.items():
            fam["fastlb_retries_total"][(pn, reason)] = n
        fam["fastlb_queue_wait_seconds"][(pn,)] = (list(pool.queue_wait.counts), pool.queue_wait.sum)
    generated = fam["fastlb_responses_generated_total"]
    for rt in server.listeners:
        ln = rt.spec.name
        fam["fastlb_connections_active"][(ln,)] = len(rt.connections)
        fam["fastlb_connections_total"][(ln,)] = rt.connections_total
        rx, tx = rt.bytes_totals()
        fam["fastlb_bytes_received_total"][(ln,)] = rx
        fam["fastlb_bytes_sent_total"][(ln,)] = tx
        for (status, flag), n in rt.generated.items():
            key = (str(status), FLAG_NAMES[flag] or "other")
            generated[key] = generated.get(key, 0) + n
        tls = rt.tls
        if tls is not None:
            for c in tls.current.certs:
                fam["fastlb_tls_certificate_expiry_seconds"][(ln, c.name)] = c.not_after.timestamp()
            fam["fastlb_tls_handshakes_total"][(ln,)] = tls.handshakes
            for reason, n in tls.failures.items():
                fam["fastlb_tls_handshake_failures_total"][(ln, reason)] = n
            for result, n in tls.reloads.items():
                fam["fastlb_tls_certificate_reloads_total"][(ln, result)] = n
        denied = fam["fastlb_requests_denied_total"]
        for reason, n in rt.denied.items():
            denied[("", reason)] = denied.get(("", reason), 0) + n
        for route in rt.router.routes:
            rn = route.name
            for p in route.policies:
                fam["fastlb_ratelimit_rejected_total"][(rn, p.label)] = p.rejected
            for reason, n in route.auth_rejected.items():
                key = (rn, reason)
                fam["fastlb_auth_rejected_total"][key] = fam["fastlb_auth_rejected_total"].get(key, 0) + n
            for reason, n in route.denied.items():
                denied[(rn, reason)] = denied.get((rn, reason), 0) + n
    for result, n in server.reloads.items():
        fam["fastlb_config_reloads_total"][(result,)] = n
    access = server.access_log
    fam["fastlb_access_log_dropped_lines_total"][()] = access.lost_lines if access is not None else 0
    fam["fastlb_core_info"][(_core.IMPLEMENTATION,)] = 1
    fam["fastlb_build_info"][(__version__,)] = 1
    return fam


def merge(snapshots):
    """One snapshot from several processes' (step 8's supervisor): counters and
    histograms add up, gauges by GAUGE_MERGE."""
    out = {name: {} for name in FAMILIES}
    for snap in snapshots:
        for name, samples in snap.items():
            kind = FAMILIES[name][0]
            dest = out[name]
            for key, value in samples.items():
                if key not in dest:
                    dest[key] = (list(value[0]), value[1]) if kind == "histogram" else value
                elif kind == "histogram":
                    counts, total = dest[key]
                    dest[key] = ([a + b for a, b in zip(counts, value[0])], total + value[1])
                elif kind == "info" or (kind == "gauge" and GAUGE_MERGE.get(name) == "max"):
                    dest[key] = max(dest[key], value)
                else:
                    dest[key] = dest[key] + value
    return out


_BOUNDS = tuple(repr(b) for b in BUCKETS) + ("+Inf",)


class _Collector:
    """prometheus-client collector over a snapshot taken at each scrape."""

    def __init__(self, source):
        self.source = source  # () -> snapshot

    def collect(self):
        snap = self.source()
        for name, (kind, labels, doc) in FAMILIES.items():
            samples = snap.get(name, {})
            if kind == "counter":
                fam = CounterMetricFamily(name, doc, labels=labels)
                for key, value in samples.items():
                    fam.add_metric(key, value)
            elif kind == "gauge":
                fam = GaugeMetricFamily(name, doc, labels=labels)
                for key, value in samples.items():
                    fam.add_metric(key, value)
            elif kind == "info":  # NAME_info{labels} 1 (OpenMetrics type info)
                fam = InfoMetricFamily(name[:-len("_info")], doc)
                for key in samples:
                    fam.add_metric((), dict(zip(labels, key)))
            else:
                fam = HistogramMetricFamily(name, doc, labels=labels)
                for key, (counts, total) in samples.items():
                    fam.add_metric(key, list(zip(_BOUNDS, cumulative(counts))), total)
            yield fam


class Registry:
    """The admin listener's /metrics: fastlb's families and the process collector."""

    def __init__(self, server):
        self.server = server
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(lambda: snapshot(server, server.loop.time())))
        ProcessCollector(registry=self.registry)

    def render(self, accept):
        """(body bytes, content type) for a scrape with this Accept header."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
