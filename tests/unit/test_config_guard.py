"""The entry guard's configuration keys: a valid document builds the expected specs,
and each kind of mistake is one error naming its key path (docs/security.md)."""

import hashlib
import ipaddress

import pytest

from fastlb import config
from fastlb.errors import ConfigError

DIGEST = hashlib.sha256(b"k1").hexdigest()


def doc(route=None, listener=None, top=None):
    d = {"pools": {"api": {"backends": ["127.0.0.1:9000"]}},
         "listeners": [dict({"bind": "127.0.0.1:8080", "routes": [dict({"pool": "api"}, **(route or {}))]},
                            **(listener or {}))]}
    d.update(top or {})
    return d


def problems(d):
    with pytest.raises(ConfigError) as info:
        config.from_dict(d)
    return info.value.lines()


def test_a_guarded_route_builds_its_specs():
    cfg = config.from_dict(doc(
        route={"path_prefix": "/v1", "access": {"allow": ["10.0.0.0/8", "2001:db8::/32"], "deny": ["10.0.0.66/32"]},
               "rate_limits": [{"key": "ip", "rate": "100/s", "burst": 200},
                               {"key": "header:X-API-Key", "rate": "6000/m", "burst": 100},
                               {"key": "api_key", "rate": "10/h", "name": "per-key"}],
               "auth": {"api_key": {"header": "X-API-Key", "keys_sha256": [DIGEST]}},
               "limits": {"methods": ["get", "POST"], "reject_dot_segments": True}},
        listener={"trusted_proxies": ["10.0.0.0/8"], "proxy_protocol": True,
                  "limits": {"max_connections_per_client": 5, "max_header_fields": 50}},
        top={"limits": {"max_body": "1MiB"}}))
    lst = cfg.listeners[0]
    r = lst.routes[0]
    assert lst.trusted_proxies == (ipaddress.ip_network("10.0.0.0/8"),) and lst.proxy_protocol
    assert lst.max_connections_per_client == 5 and lst.head_limits.max_header_fields == 50
    assert r.name == "/v1"
    assert r.access.deny == (ipaddress.ip_network("10.0.0.66/32"),) and len(r.access.allow) == 2
    assert [(p.kind, p.name, p.rate, p.burst, p.label) for p in r.rate_limits] == [
        ("ip", "", 100.0, 200, "ip"), ("header", "x-api-key", 100.0, 100, "header:X-API-Key"),
        ("api_key", "", 10 / 3600, 10, "per-key")]
    assert r.auth.kind == "api_key" and r.auth.api_key.digests == (bytes.fromhex(DIGEST),)
    # route limits on top of the listener's, on top of the global ones
    assert r.limits.max_body == 1024 * 1024 and r.limits.methods == (b"GET", b"POST") and r.limits.reject_dot_segments


@pytest.mark.parametrize("route, listener, path, text", [
    ({}, {"trusted_proxies": ["10.0.0.1/8"]}, "listeners[0].trusted_proxies[0]", "did you mean 10.0.0.0/8"),
    ({"access": {"allow": ["300.0.0.0/8"]}}, {}, "listeners[0].routes[0].access.allow[0]", "not a valid"),
    ({"access": {}}, {}, "listeners[0].routes[0].access", "give allow, deny or both"),
    ({"rate_limits": [{"key": "ip", "rate": "5/d"}]}, {}, "listeners[0].routes[0].rate_limits[0].rate", "100/s"),
    ({"rate_limits": [{"key": "ip", "rate": "0/s"}]}, {}, "listeners[0].routes[0].rate_limits[0].rate", "above zero"),
    ({"rate_limits": [{"key": "cookie:x", "rate": "1/s"}]}, {}, "listeners[0].routes[0].rate_limits[0].key",
     "expected ip, header:NAME"),
    ({"rate_limits": [{"key": "api_key", "rate": "1/s"}]}, {}, "listeners[0].routes[0].rate_limits[0].key",
     "needs auth.api_key"),
    ({"rate_limits": [{"key": "ip", "rate": "1/s"}, {"key": "ip", "rate": "9/m"}]}, {},
     "listeners[0].routes[0].rate_limits[1]", "give one of them a name"),
    ({"rate_limits": [{"key": "ip", "rate": "1/s", "burst": 0}]}, {}, "listeners[0].routes[0].rate_limits[0].burst",
     "between"),
    ({"auth": {"jwt": {"algorithms": ["RS512"], "jwks_url": "https://idp/jwks"}}}, {},
     "listeners[0].routes[0].auth.jwt.algorithms[0]", "unknown algorithm"),
    ({"auth": {"jwt": {"algorithms": ["none"]}}}, {}, "listeners[0].routes[0].auth.jwt.algorithms[0]",
     "never accepted"),
    ({"auth": {"jwt": {"algorithms": ["RS256"], "jwks_file": "/nonexistent/jwks.json"}}}, {},
     "listeners[0].routes[0].auth.jwt.jwks_file", "cannot read"),
    ({"auth": {"jwt": {"algorithms": ["RS256"]}}}, {}, "listeners[0].routes[0].auth.jwt", "jwks_file or jwks_url"),
    ({"auth": {"jwt": {"algorithms": ["HS256"], "secret_file": "/nonexistent"}}}, {},
     "listeners[0].routes[0].auth.jwt.secret_file", "cannot read"),
    ({"auth": {"jwt": {"algorithms": ["RS256"], "jwks_url": "https://idp/jwks", "leeway": "soon"}}}, {},
     "listeners[0].routes[0].auth.jwt.leeway", "duration"),
    ({"auth": {"basic": {"htpasswd": "/nonexistent/htpasswd"}}}, {}, "listeners[0].routes[0].auth.basic.htpasswd",
     "cannot read"),
    ({"auth": {"api_key": {"keys_sha256": ["abc"]}}}, {}, "listeners[0].routes[0].auth.api_key.keys_sha256[0]",
     "64 hex digits"),
    ({"auth": {"api_key": {"keys_sha256": [DIGEST]}, "basic": {"htpasswd": "x"}}}, {}, "listeners[0].routes[0].auth",
     "exactly one"),
    ({"limits": {"methods": ["GET", "CONNECT"]}}, {}, "listeners[0].routes[0].limits.methods", "CONNECT"),
    ({"limits": {"max_body": "lots"}}, {}, "listeners[0].routes[0].limits.max_body", "size"),
    ({}, {"proxy_protocol": "yes"}, "listeners[0].proxy_protocol", "true or false"),
    ({}, {"limits": {"max_connections_per_client": -1}}, "listeners[0].limits.max_connections_per_client",
     "between"),
])
def test_each_mistake_names_its_key_path(route, listener, path, text):
    lines = problems(doc(route, listener))
    assert any(line.startswith(path + ":") and text in line for line in lines), lines


def test_a_bad_htpasswd_line_and_keys_file(tmp_path):
    ht = tmp_path / "htpasswd"
    ht.write_text("alice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n")
    keys = tmp_path / "keys"
    keys.write_text("not-a-digest\n")
    lines = problems(doc({"auth": {"basic": {"htpasswd": str(ht)}}}))
    assert any("auth.basic.htpasswd:" in x and "only bcrypt" in x for x in lines), lines
    lines = problems(doc({"auth": {"api_key": {"keys_file": str(keys)}}}))
    assert any("auth.api_key.keys_file:" in x and "line 1" in x for x in lines), lines


def test_admin_token_file_must_exist():
    lines = problems(doc(top={"admin": {"bind": "127.0.0.1:9901", "token_file": "/nonexistent/token"}}))
    assert any(x.startswith("admin.token_file:") and "cannot read" in x for x in lines), lines
