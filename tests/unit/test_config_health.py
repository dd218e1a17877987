"""Config: the health_check, outlier_detection and slow_start pool keys (fastlb.config)."""

import pytest

from fastlb import config
from fastlb.errors import ConfigError
from fastlb.model import HealthSpec, OutlierSpec


def doc(algorithm=None, **pool):
    body = {"backends": ["127.0.0.1:9001", "127.0.0.1:9002"]}
    if algorithm:
        body["algorithm"] = algorithm
    if algorithm in ("consistent_hash", "maglev"):
        body["hash_key"] = "header:X-User"
    body.update(pool)
    return {"listeners": [{"bind": "127.0.0.1:0", "pool": "p"}], "pools": {"p": body}}


def pool(**kw):
    return config.from_dict(doc(**kw)).pool("p")


def problems(**kw):
    with pytest.raises(ConfigError) as ei:
        config.from_dict(doc(**kw))
    return ei.value


def assert_only(err, path):
    """Every problem is at ``path`` and the message names it."""
    assert [p for p, _ in err.problems] and all(p == path for p, _ in err.problems), err.problems
    assert str(err).startswith(path + ": ")


# ------------------------------------------------------------------------ defaults
def test_defaults_without_the_keys():
    p = pool()
    assert p.health is None
    assert p.outlier == OutlierSpec()
    assert p.slow_start == 0.0


def test_health_check_defaults():
    h = pool(health_check={}).health
    assert h == HealthSpec()
    assert (h.kind, h.interval, h.down_interval, h.timeout, h.rise, h.fall, h.jitter) == \
        ("http", 5.0, None, 2.0, 2, 3, 0.1)
    assert (h.method, h.path, h.host, h.expect_status, h.expect_body) == ("GET", "/", None, ((200, 399),), None)


def test_outlier_defaults():
    o = pool(outlier_detection={}).outlier
    assert o == OutlierSpec()
    assert (o.consecutive_failures, o.statuses, o.base_ejection_time, o.max_ejection_time,
            o.max_ejection_percent) == (5, (502, 503, 504), 30.0, 300.0, 50)


def test_every_health_check_key():
    h = pool(health_check={
        "type": "http", "interval": "10s", "down_interval": "1m", "timeout": "500ms", "rise": 5, "fall": 1,
        "jitter": "20%", "method": "head", "path": "/healthz?deep=1", "host": "health.example.com:8080",
        "expect_status": ["200-204", 301, "418"], "expect_body": "ready"}).health
    assert h == HealthSpec(kind="http", interval=10.0, down_interval=60.0, timeout=0.5, rise=5, fall=1, jitter=0.2,
                           method="HEAD", path="/healthz?deep=1", host="health.example.com:8080",
                           expect_status=((200, 204), (301, 301), (418, 418)), expect_body="ready")


@pytest.mark.parametrize("value, want", [(200, ((200, 200),)), ("200-299", ((200, 299),)),
                                         (" 200 - 204 ", ((200, 204),)), ([204, "300-302"], ((204, 204), (300, 302))),
                                         ("503", ((503, 503),))])
def test_expect_status_forms(value, want):
    assert pool(health_check={"expect_status": value}).health.expect_status == want


@pytest.mark.parametrize("value, want", [(0, 0.0), (0.5, 0.5), ("10%", 0.1), ("0%", 0.0), (" 50% ", 0.5)])
def test_jitter_forms(value, want):
    assert pool(health_check={"jitter": value}).health.jitter == pytest.approx(want)


def test_tcp_check():
    h = pool(health_check={"type": "tcp", "interval": 2, "timeout": 1, "rise": 1, "fall": 1}).health
    assert (h.kind, h.interval, h.timeout, h.rise, h.fall) == ("tcp", 2.0, 1.0, 1, 1)


def test_every_outlier_key():
    o = pool(outlier_detection={"consecutive_failures": 3, "statuses": [500, 502], "base_ejection_time": "10s",
                                "max_ejection_time": "2m", "max_ejection_percent": 30}).outlier
    assert o == OutlierSpec(consecutive_failures=3, statuses=(500, 502), base_ejection_time=10.0,
                            max_ejection_time=120.0, max_ejection_percent=30)


def test_outlier_detection_false_disables():
    assert pool(outlier_detection=False).outlier is None


@pytest.mark.parametrize("algorithm", ["round_robin", "least_connections", "random", "p2c", "ewma"])
def test_slow_start(algorithm):
    assert pool(algorithm=algorithm, slow_start="30s").slow_start == 30.0
    assert pool(algorithm=algorithm, slow_start=1.5).slow_start == 1.5


# -------------------------------------------------------------------------- errors
HC = "pools.p.health_check"
OD = "pools.p.outlier_detection"


@pytest.mark.parametrize("key, value", [
    ("type", "udp"), ("type", "HTTP"), ("type", 5), ("type", None),
    ("interval", 0), ("interval", -1), ("interval", "fast"), ("interval", True), ("interval", None),
    ("interval", "5 parsecs"),
    ("down_interval", 0), ("down_interval", "x"), ("down_interval", [1]),
    ("timeout", 0), ("timeout", "x"), ("timeout", False),
    ("rise", 0), ("rise", 101), ("rise", "2"), ("rise", 2.5), ("rise", True), ("rise", None),
    ("fall", 0), ("fall", 101), ("fall", "3"), ("fall", 1.0), ("fall", False),
    ("jitter", 0.6), ("jitter", -0.1), ("jitter", "51%"), ("jitter", "x%"), ("jitter", "abc"), ("jitter", True),
    ("jitter", None),
    ("method", "G ET"), ("method", ""), ("method", "CONNECT"), ("method", "connect"), ("method", 5),
    ("method", None), ("method", "GET/"),
    ("path", "healthz"), ("path", "/a b"), ("path", "/a\x7f"), ("path", "/a\tb"), ("path", ""), ("path", 5),
    ("path", None),
    ("host", "bad host"), ("host", "a:b:c"), ("host", ""), ("host", 5), ("host", "-bad"), ("host", None),
    ("host", "x/y"),
    ("expect_status", "abc"), ("expect_status", []), ("expect_status", 99), ("expect_status", 600),
    ("expect_status", "300-200"), ("expect_status", True), ("expect_status", [200, "x"]),
    ("expect_status", "2xx"), ("expect_status", {"a": 1}), ("expect_status", [200, True]),
    ("expect_body", ""), ("expect_body", 5), ("expect_body", None), ("expect_body", ["ok"]),
])
def test_health_check_bad_value_names_the_key(key, value):
    assert_only(problems(health_check={key: value}), "%s.%s" % (HC, key))


def test_health_check_unknown_key():
    err = problems(health_check={"intervall": 5})
    assert_only(err, HC + ".intervall")
    assert "unknown key" in str(err)


@pytest.mark.parametrize("value", [True, 5, "yes", ["interval"], None])
def test_health_check_must_be_a_mapping(value):
    err = problems(health_check=value)
    assert_only(err, HC)
    assert "expected a mapping" in str(err)


@pytest.mark.parametrize("host", ["example.com:abc", "example.com:8o80", "example.com:0", "example.com:70000"])
def test_health_check_host_port_must_be_a_number(host):
    # sent as the probe's Host header: an invalid port (RFC 3986 port = *DIGIT) would make
    # a strict backend answer 400, so the backend would never pass a check
    assert_only(problems(health_check={"host": host}), HC + ".host")


@pytest.mark.parametrize("key, value", [("method", "HEAD"), ("path", "/health"), ("host", "h.example"),
                                        ("expect_status", 200), ("expect_body", "ok")])
def test_tcp_with_http_only_keys(key, value):
    err = problems(health_check={"type": "tcp", key: value})
    assert_only(err, "%s.%s" % (HC, key))
    assert "applies to type http only" in str(err)


def test_timeout_above_interval():
    err = problems(health_check={"interval": "2s", "timeout": "3s"})
    assert_only(err, HC + ".timeout")
    assert "must not exceed interval" in str(err)
    assert pool(health_check={"interval": "2s", "timeout": "2s"}).health.timeout == 2.0  # equal is fine


def test_short_interval_alone_shortens_the_default_timeout():
    # interval 1s without a timeout: the probe timeout defaults to the interval (2 s otherwise)
    assert pool(health_check={"interval": "1s"}).health.timeout == 1.0
    assert pool(health_check={"interval": "10s"}).health.timeout == 2.0
    # an explicit timeout longer than the interval is still an error, naming timeout
    assert_only(problems(health_check={"interval": "1s", "timeout": "2s"}), HC + ".timeout")


def test_several_health_problems_are_all_reported():
    err = problems(health_check={"rise": 0, "fall": 0, "path": "x", "type": "tcp"})
    assert sorted(p for p, _ in err.problems) == [HC + ".fall", HC + ".path", HC + ".path", HC + ".rise"]


@pytest.mark.parametrize("key, value", [
    ("consecutive_failures", 0), ("consecutive_failures", 1001), ("consecutive_failures", "5"),
    ("consecutive_failures", True), ("consecutive_failures", 2.0),
    ("statuses", [404]), ("statuses", "502"), ("statuses", 502), ("statuses", [True]), ("statuses", [502, "503"]),
    ("statuses", [600]), ("statuses", None),
    ("base_ejection_time", 0), ("base_ejection_time", "x"), ("base_ejection_time", True),
    ("max_ejection_time", 0), ("max_ejection_time", "x"), ("max_ejection_time", "10s"),  # < base 30 s
    ("max_ejection_percent", 101), ("max_ejection_percent", -1), ("max_ejection_percent", "50"),
    ("max_ejection_percent", 50.0), ("max_ejection_percent", True),
])
def test_outlier_bad_value_names_the_key(key, value):
    assert_only(problems(outlier_detection={key: value}), "%s.%s" % (OD, key))


def test_outlier_max_below_base():
    err = problems(outlier_detection={"base_ejection_time": "1m", "max_ejection_time": "30s"})
    assert_only(err, OD + ".max_ejection_time")
    assert "at least base_ejection_time" in str(err)
    o = pool(outlier_detection={"base_ejection_time": "1m", "max_ejection_time": "1m"}).outlier
    assert o.base_ejection_time == o.max_ejection_time == 60.0


def test_outlier_unknown_key():
    assert_only(problems(outlier_detection={"consecutive_5xx": 5}), OD + ".consecutive_5xx")


@pytest.mark.parametrize("value", [True, "no", 0, None, ["x"]])
def test_outlier_detection_must_be_a_mapping_or_false(value):
    err = problems(outlier_detection=value)
    assert_only(err, OD)


@pytest.mark.parametrize("algorithm", ["consistent_hash", "maglev", "ip_hash"])
def test_slow_start_on_hash_algorithms(algorithm):
    err = problems(algorithm=algorithm, slow_start="10s")
    assert_only(err, "pools.p.slow_start")
    assert algorithm in str(err)


@pytest.mark.parametrize("value", [0, -1, "x", True, None, "10 s s"])
def test_slow_start_bad_value(value):
    assert_only(problems(slow_start=value), "pools.p.slow_start")
