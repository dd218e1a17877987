"""Step 5 without sockets: histograms, quantiles, snapshot merging, traceparent
validation, access-log formatting and its writer's failure modes, config errors."""

import json
import os
import time

import pytest

from fastlb import accesslog, config, http1, metrics, stats
from fastlb.counters import BUCKETS, FLAGS, Histogram
from fastlb.errors import ConfigError
from fastlb.model import AccessLogSpec

TP = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


# ---------------------------------------------------------------- histograms
def test_histogram_le_semantics_and_cumulative():
    h = Histogram()
    for v in (0.0, 0.001, 0.0011, 0.5, 10.0, 11.0):
        h.observe(v)
    assert h.counts[0] == 2  # 0 and exactly 0.001 (le)
    assert h.counts[1] == 1  # 0.0011 <= 0.0025
    assert h.counts[BUCKETS.index(0.5)] == 1
    assert h.counts[BUCKETS.index(10.0)] == 1
    assert h.counts[-1] == 1  # +Inf
    assert h.count == 6 and h.cumulative()[-1] == 6
    assert h.sum == pytest.approx(21.5021)


def test_quantile_interpolates_within_buckets():
    counts = [0] * (len(BUCKETS) + 1)
    assert stats.quantile(0.5, counts) is None
    counts[BUCKETS.index(0.01)] = 10  # all between 5 ms and 10 ms
    assert stats.quantile(0.5, counts) == pytest.approx(0.0075)
    assert stats.quantile(0.99, counts) == pytest.approx(0.00995)
    counts[-1] = 90  # most above 10 s: the last finite bound
    assert stats.quantile(0.99, counts) == 10.0


# -------------------------------------------------------------- merge
def test_merge_adds_counters_and_histograms_and_combines_gauges():
    a = {name: {} for name in metrics.FAMILIES}
    b = {name: {} for name in metrics.FAMILIES}
    key = ("p", "127.0.0.1:1")
    a["fastlb_requests_total"][key + ("2xx",)] = 5
    b["fastlb_requests_total"][key + ("2xx",)] = 7
    b["fastlb_requests_total"][key + ("5xx",)] = 1
    a["fastlb_request_duration_seconds"][key] = ([1, 2] + [0] * 12, 0.5)
    b["fastlb_request_duration_seconds"][key] = ([0, 3] + [0] * 12, 0.25)
    a["fastlb_backend_in_flight"][key] = 2
    b["fastlb_backend_in_flight"][key] = 3
    a["fastlb_backend_up"][key] = 1
    b["fastlb_backend_up"][key] = 1
    a["fastlb_core_info"][("cython",)] = 1
    b["fastlb_core_info"][("cython",)] = 1
    m = metrics.merge([a, b])
    assert m["fastlb_requests_total"] == {key + ("2xx",): 12, key + ("5xx",): 1}
    assert m["fastlb_request_duration_seconds"][key] == ([1, 5] + [0] * 12, 0.75)
    assert m["fastlb_backend_in_flight"][key] == 5  # loads add up
    assert m["fastlb_backend_up"][key] == 1  # state: the same in every worker
    assert m["fastlb_core_info"][("cython",)] == 1
    assert a["fastlb_request_duration_seconds"][key] == ([1, 2] + [0] * 12, 0.5)  # inputs untouched


def test_every_family_has_a_kind_labels_and_help():
    for name, (kind, labels, doc) in metrics.FAMILIES.items():
        assert name.startswith("fastlb_") and kind in ("counter", "gauge", "histogram", "info")
        assert (kind == "counter") == name.endswith("_total")
        assert isinstance(labels, tuple) and doc.endswith(".")
        assert not {"path", "client", "ip", "url"} & set(labels)  # cardinality bounded by config
    for name in metrics.GAUGE_MERGE:
        assert metrics.FAMILIES[name][0] == "gauge"


# ---------------------------------------------------------------- tracing
@pytest.mark.parametrize("value, ok", [
    (TP, True),
    (b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00", True),
    (TP.upper(), False),
    (TP[:-1], False),
    (TP + b"-x", False),  # version 00 is exactly 55
    (b"01" + TP[2:] + b"-future", True),  # later versions: parse what 00 defines
    (b"01" + TP[2:] + b"x", False),
    (b"ff" + TP[2:], False),
    (b"00-" + b"0" * 32 + b"-b7ad6b7169203331-01", False),
    (b"00-0af7651916cd43dd8448eb211c80319c-" + b"0" * 16 + b"-01", False),
    (b"00_0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", False),
    (b"0g-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", False),
    (b"", False),
])
def test_valid_traceparent(value, ok):
    assert http1.valid_traceparent(value) is ok


def test_new_traceparent_is_valid_sampled_and_new_each_time():
    seen = {http1.new_traceparent() for _ in range(200)}
    assert len(seen) == 200
    for tp in seen:
        assert http1.valid_traceparent(tp) and tp.endswith(b"-01") and tp.startswith(b"00-")


# -------------------------------------------------------------- access log
class _Conn:
    def __init__(self, flag=0):
        self.flag = flag
        self.req_in = 120
        self.sent = 700
        self.sent0 = 100
        self.client_ip = b"127.0.0.1"
        self.trace = TP


def test_combined_format_escapes_request_bytes():
    assert accesslog._text(b"/a b") == "/a b"
    assert accesslog._text(b'/a"b\\\x00\xe9') == "/a\\x22b\\x5c\\x00\\xe9"


def test_rejected_line_has_every_field_and_flags(tmp_path):
    path = tmp_path / "a.log"
    log = accesslog.AccessLog(AccessLogSpec(path=str(path)))
    try:
        for code, name, _ in FLAGS:
            log.rejected(_Conn(code), 400, 0.001, b'id"1')
    finally:
        log.close()
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["flags"] for x in lines] == [[name] for _, name, _ in FLAGS]
    assert lines[0]["request_id"] == 'id"1' and lines[0]["bytes_out"] == 600 and lines[0]["method"] is None


def test_a_full_disk_drops_and_counts_never_raises():
    """/dev/full: every write fails with ENOSPC, as on a full disk."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    log = accesslog.AccessLog(AccessLogSpec(path="/dev/full"))
    try:
        for _ in range(10):
            log.rejected(_Conn(3), 400, 0.001, b"r")
        log.flush()
        deadline = time.monotonic() + 5
        while log.lost_lines < 10 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert log.lost_lines == 10 and log.written_lines == 0
    finally:
        log.close()


def test_a_stuck_writer_bounds_the_backlog(monkeypatch, tmp_path):
    """With the writer blocked, batches beyond MAX_BACKLOG are dropped and counted."""
    monkeypatch.setattr(accesslog, "MAX_BACKLOG", 10000)
    r, w = os.pipe()  # nobody reads r: the pipe fills and the writer blocks
    log = accesslog.AccessLog(AccessLogSpec(path="-"))
    log._fd = w
    try:
        for _ in range(1000):  # ~300 KB of lines, far beyond the pipe and the backlog
            log.rejected(_Conn(3), 400, 0.001, b"r")
            if len(log.lines) >= 20:
                log.flush()
        log.flush()
        assert log.dropped_lines > 0
        assert log.queued_bytes - log.written_bytes <= 10000 + 64 * 1024
    finally:
        os.close(r)  # the blocked write fails with EPIPE; the writer goes on
        log.close()  # and closes w, its file


def test_sample_and_statuses_filters():
    log = accesslog.AccessLog.__new__(accesslog.AccessLog)
    log._acc = 0.0
    log.sample = 0.25
    log._ranges = ((400, 499),)
    assert not log._wanted(200, 0)
    assert log._wanted(200, 7)  # flagged: always
    assert log._wanted(503, 0)  # 5xx: always
    got = [log._wanted(404, 0) for _ in range(8)]
    assert got.count(True) == 2


# ------------------------------------------------------------------ config
BASE = "listeners: [{bind: 127.0.0.1:0, pool: p}]\npools: {p: {backends: [127.0.0.1:1]}}\n"


@pytest.mark.parametrize("extra, path", [
    ("access_log: {format: xml}", "access_log.format"),
    ("access_log: {sample: 0}", "access_log.sample"),
    ("access_log: {sample: 1.5}", "access_log.sample"),
    ("access_log: {statuses: [6xx]}", "access_log.statuses"),
    ("access_log: {path: ''}", "access_log.path"),
    ("access_log: {query: yes please}", "access_log.query"),
    ("access_log: {bogus: 1}", "access_log.bogus"),
    ("metrics: {enabled: maybe}", "metrics.enabled"),
    ("metrics: {bogus: true}", "metrics.bogus"),
    ("tracing: {mode: always}", "tracing.mode"),
])
def test_bad_observability_keys_name_the_key_path(extra, path):
    with pytest.raises(ConfigError) as info:
        config.load_text(BASE + extra)
    assert path in [p for p, _ in info.value.problems], info.value.problems


def test_observability_defaults_and_values():
    obs = config.load_text(BASE).observability
    assert obs.metrics is True and obs.access_log is None and obs.tracing == "start"
    obs = config.load_text(BASE + "access_log: {statuses: [5xx, 404, '200-204']}\ntracing: {mode: off}\n"
                           "metrics: {enabled: false}\n").observability
    assert obs.access_log.statuses == ((500, 599), (404, 404), (200, 204))
    assert obs.tracing == "off" and obs.metrics is False
    assert obs.access_log.path == "-" and obs.access_log.format == "json"
