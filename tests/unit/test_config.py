"""YAML -> model: defaults, every key, and errors that name the key path."""

import pytest

from fastlb import config
from fastlb.errors import ConfigError
from fastlb.model import Address

GOOD = """
listeners:
  - name: public
    bind: 127.0.0.1:8080
    routes:
      - host: api.example.com
        path_prefix: /v1
        pool: api
      - pool: web
    upgrade_protocols: [websocket, Foo]
pools:
  api:
    algorithm: round_robin
    retries: 1
    backends:
      - address: 127.0.0.1:9001
        weight: 3
      - 127.0.0.1:9002
  web:
    backends:
      - address: "[::1]:9003"
admin:
  bind: 127.0.0.1:9901
timeouts:
  client_header: 250ms
  client_idle: 2s
  connect: 1.5
  response: 1m
  upstream_idle: 30s
  tunnel: 1h
  drain: 5s
  send: 3s
  linger: 500ms
  dns_refresh: 10s
limits:
  max_request_line: 4KiB
  max_header_bytes: 32k
  max_header_fields: 50
  max_idle_per_backend: 8
"""


def problems(text):
    with pytest.raises(ConfigError) as exc:
        config.load_text(text)
    return exc.value.problems


def test_full_document():
    cfg = config.load_text(GOOD)
    (lst,) = cfg.listeners
    assert lst.name == "public" and lst.bind == Address("127.0.0.1", 8080)
    assert [(r.host, r.path_prefix, r.pool) for r in lst.routes] == [("api.example.com", "/v1", "api"), (None, "/", "web")]
    api = cfg.pool("api")
    assert api.retries == 1 and api.algorithm == "round_robin"
    assert [(str(b.address), b.weight) for b in api.backends] == [("127.0.0.1:9001", 3), ("127.0.0.1:9002", 1)]
    assert str(cfg.pool("web").backends[0].address) == "[::1]:9003"
    assert cfg.admin.bind == Address("127.0.0.1", 9901)
    t = cfg.timeouts
    assert (t.client_header, t.client_idle, t.connect, t.response, t.upstream_idle, t.tunnel, t.drain) == \
        (0.25, 2.0, 1.5, 60.0, 30.0, 3600.0, 5.0)
    assert (t.send, t.linger, t.dns_refresh) == (3.0, 0.5, 10.0)
    assert lst.upgrade_protocols == ("websocket", "foo")
    lim = cfg.limits
    assert (lim.max_request_line, lim.max_header_bytes, lim.max_header_fields, lim.max_idle_per_backend) == \
        (4096, 32768, 50, 8)


def test_defaults():
    cfg = config.load_text("listeners: [{bind: '127.0.0.1:0', pool: p}]\npools: {p: {backends: ['127.0.0.1:1']}}\n")
    assert cfg.admin is None
    assert cfg.timeouts.client_header == 10.0 and cfg.timeouts.response == 30.0
    assert cfg.limits.max_request_line == 8192 and cfg.limits.max_header_bytes == 65536
    assert cfg.limits.max_header_fields == 100
    assert (cfg.timeouts.send, cfg.timeouts.linger, cfg.timeouts.dns_refresh) == (30.0, 5.0, 30.0)
    assert cfg.listeners[0].upgrade_protocols == ("websocket",)


def test_backend_address_error_names_key_path():
    text = GOOD.replace("- 127.0.0.1:9002", "- address: '127.0.0.1'")
    assert ("pools.api.backends[1].address", "expected HOST:PORT, got '127.0.0.1'") in problems(text)


@pytest.mark.parametrize("edit, path, fragment", [
    (("weight: 3", "weight: 0"), "pools.api.backends[0].weight", "between 1 and 1000"),
    (("weight: 3", "wieght: 3"), "pools.api.backends[0].wieght", "unknown key"),
    (("algorithm: round_robin", "algorithm: fastest"), "pools.api.algorithm", "unknown algorithm 'fastest'"),
    (("client_header: 250ms", "client_header: soon"), "timeouts.client_header", "expected a duration"),
    (("connect: 1.5", "connect: 0"), "timeouts.connect", "greater than zero"),
    (("max_header_bytes: 32k", "max_header_bytes: lots"), "limits.max_header_bytes", "expected a size"),
    (("pool: web", "pool: nope"), "listeners[0].routes[1].pool", "no pool named 'nope'"),
    (("bind: 127.0.0.1:9901", "bind: 127.0.0.1:8080"), "admin.bind", "already bound"),
    (("path_prefix: /v1", "path_prefix: v1"), "listeners[0].routes[0].path_prefix", "starting with '/'"),
    (("bind: 127.0.0.1:8080", "bind: 127.0.0.1:99999"), "listeners[0].bind", "port must be"),
    (("address: \"[::1]:9003\"", "address: \"::1:9003\""), "pools.web.backends[0].address", "brackets"),
    # host patterns that could never match a Host are errors, not silent dead routes
    (("host: api.example.com", "host: '*example.com'"), "listeners[0].routes[0].host", "*.domain"),
    (("host: api.example.com", "host: .example.com"), "listeners[0].routes[0].host", "*.domain"),
    (("host: api.example.com", "host: 'api.*.com'"), "listeners[0].routes[0].host", "*.domain"),
    (("host: api.example.com", "host: '*.'"), "listeners[0].routes[0].host", "*.domain"),
    (("upgrade_protocols: [websocket, Foo]", "upgrade_protocols: [websocket, h2c]"),
     "listeners[0].upgrade_protocols", "h2c cannot be allowed"),
    (("upgrade_protocols: [websocket, Foo]", "upgrade_protocols: websocket"),
     "listeners[0].upgrade_protocols", "expected a list"),
    (("send: 3s", "send: 0"), "timeouts.send", "greater than zero"),
    (("linger: 500ms", "linger: long"), "timeouts.linger", "expected a duration"),
])
def test_errors_name_the_key_path(edit, path, fragment):
    got = problems(GOOD.replace(*edit))
    assert any(p == path and fragment in m for p, m in got), got


def test_all_problems_reported_together():
    text = GOOD.replace("weight: 3", "weight: -1").replace("connect: 1.5", "connect: never")
    paths = {p for p, _ in problems(text)}
    assert {"pools.api.backends[0].weight", "timeouts.connect"} <= paths


def test_unknown_top_level_key_and_missing_sections():
    got = problems("listeners: []\nbogus: 1\n")
    assert ("bogus", "unknown key (allowed: listeners, pools, admin, timeouts, limits, metrics, access_log, tracing)") in got
    assert ("pools", "required key is missing") in got


def test_duplicate_backend_and_listener_binds():
    text = """
listeners:
  - {bind: '127.0.0.1:8080', pool: p}
  - {bind: '127.0.0.1:8080', pool: p}
pools:
  p: {backends: ['127.0.0.1:1', '127.0.0.1:1']}
"""
    got = dict(problems(text))
    assert "already bound by listeners[0]" in got["listeners[1].bind"]
    assert "already backends[0]" in got["pools.p.backends[1].address"]


def test_yaml_syntax_error_has_line():
    (only,) = problems("listeners: [\n  - bind: x\n pools")
    assert "not valid YAML" in only[1] and "line" in only[1]


def test_empty_document():
    assert problems("") == [("", "<config> is empty")]


@pytest.mark.parametrize("text, seconds", [("250ms", 0.25), ("2s", 2.0), ("1.5m", 90.0), ("1h", 3600.0), (3, 3.0)])
def test_durations(text, seconds):
    assert config.parse_duration(text) == seconds


@pytest.mark.parametrize("text, size", [("8KiB", 8192), ("64k", 65536), ("1MiB", 1 << 20), (100, 100), ("2KB", 2000)])
def test_sizes(text, size):
    assert config.parse_size(text) == size


def _pool_text(body):
    return "listeners: [{bind: '127.0.0.1:0', pool: p}]\npools:\n  p:\n" + \
        "".join("    %s\n" % line for line in body.strip().splitlines()) + "    backends: ['127.0.0.1:1', '127.0.0.1:2']\n"


@pytest.mark.parametrize("algorithm", ["round_robin", "least_connections", "random", "p2c", "ewma", "ip_hash"])
def test_every_keyless_algorithm_is_accepted(algorithm):
    pool = config.load_text(_pool_text("algorithm: %s" % algorithm)).pool("p")
    assert pool.algorithm == algorithm
    assert pool.hash_key == (("ip", "") if algorithm == "ip_hash" else None)


@pytest.mark.parametrize("text, key", [
    ("ip", ("ip", "")), ("path", ("path", "")), ("header:X-User", ("header", "x-user")),
    ("cookie:session", ("cookie", "session")), ("query:user", ("query", "user")),
])
def test_hash_keys(text, key):
    pool = config.load_text(_pool_text("algorithm: consistent_hash\nhash_key: '%s'\nhash_balance_factor: 1.25" % text)).pool("p")
    assert pool.hash_key == key and pool.hash_balance_factor == 1.25


def test_maglev_and_ewma_options():
    pool = config.load_text(_pool_text("algorithm: maglev\nhash_key: path\nmaglev_table_size: 251")).pool("p")
    assert pool.maglev_table_size == 251
    pool = config.load_text(_pool_text("algorithm: ewma\newma_decay: 2s")).pool("p")
    assert pool.ewma_decay == 2.0


@pytest.mark.parametrize("body, path, fragment", [
    ("algorithm: consistent_hash", "pools.p.hash_key", "needs a hash_key"),
    ("algorithm: maglev\nhash_key: 'header:'", "pools.p.hash_key", "expected ip, path, header:NAME"),
    ("algorithm: round_robin\nhash_key: ip", "pools.p.hash_key", "only consistent_hash and maglev"),
    ("algorithm: consistent_hash\nhash_key: ip\nhash_balance_factor: 0.5", "pools.p.hash_balance_factor", ">= 1.0"),
    ("algorithm: p2c\nhash_balance_factor: 1.5", "pools.p.hash_balance_factor", "applies to consistent_hash"),
    ("algorithm: maglev\nhash_key: ip\nmaglev_table_size: 1000", "pools.p.maglev_table_size", "prime"),
    ("algorithm: maglev\nhash_key: ip\nmaglev_table_size: 11", "pools.p.maglev_table_size", "at least 7 x"),
    ("algorithm: round_robin\newma_decay: 1s", "pools.p.ewma_decay", "ewma algorithm only"),
])
def test_algorithm_option_errors(body, path, fragment):
    got = problems(_pool_text(body))
    assert any(p == path and fragment in m for p, m in got), got
