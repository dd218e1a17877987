"""Step 6 through real processes: the entry guard (docs/security.md).

Real fastlb processes in front of real backends on 127.0.0.1, real clients (httpx,
raw sockets bound to other loopback addresses: 127.0.0.0/8 is all local on Linux, so
a test can be "client 127.0.0.66"). Every refusal is checked three ways: the status
and headers the client got, nothing forwarded to the backend, and the counter and
access-log flag fastlb reports. Every load is bounded in requests and seconds.
"""

import base64
import hashlib
import hmac
import json
import socket
import time

import bcrypt
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.integration.conftest import FAST_TIMEOUTS
from tests.integration.test_observability import parse_samples, scrape, value
from tests.support.rawclient import proxy_v2, send_raw
from tests.support.wait import wait_for

API_KEY = "k-3f1c9a7e2b"
API_DIGEST = hashlib.sha256(API_KEY.encode()).hexdigest()


def guarded(backends, route, listener=None, admin=True, log=None, **top):
    doc = {
        "listeners": [dict({"name": "main", "bind": "127.0.0.1:0",
                            "routes": [dict({"path_prefix": "/", "pool": "p"}, **route)]}, **(listener or {}))],
        "pools": {"p": {"backends": [b.address for b in backends]}},
        "timeouts": dict(FAST_TIMEOUTS),
    }
    if admin:
        doc["admin"] = {"bind": "127.0.0.1:0"}
    if log is not None:
        doc["access_log"] = {"path": str(log), "format": "json"}
    doc.update(top)
    return doc


def client_from(addr):
    """An httpx client whose connections come from ``addr`` (a loopback address)."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=addr), timeout=5)


raw = send_raw  # bytes out on a new connection from a loopback source, all until the close back


def log_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def seen(backend):
    return [r.path for r in backend.requests]


# ------------------------------------------------------------------ limits

def test_methods_405_with_allow_and_nothing_forwarded(fastlb, backends, tmp_path):
    b = backends[0]
    proc = fastlb(guarded([b], {"limits": {"methods": ["GET", "POST"]}}, log=tmp_path / "a.log"))
    r = httpx.delete(proc.url("/x"))
    assert r.status_code == 405
    assert r.headers["allow"] == "GET, HEAD, POST"
    assert r.json()["error"].startswith("method DELETE is not allowed")
    assert httpx.get(proc.url("/ok")).status_code == 200
    assert httpx.head(proc.url("/ok")).status_code == 200  # HEAD goes with GET
    assert httpx.post(proc.url("/ok"), content=b"x").status_code == 200
    assert seen(b) == ["/ok", "/ok", "/ok"]
    samples = parse_samples(scrape(proc).text)
    assert value(samples, "fastlb_requests_denied_total", route="/", reason="method") == 1
    wait_for(lambda: any(line["flags"] == "method" for line in log_lines(tmp_path / "a.log")))


def test_max_body_declared_is_413_before_forwarding(fastlb, backends):
    b = backends[0]
    proc = fastlb(guarded([b], {"limits": {"max_body": "1KiB"}}))
    r = httpx.post(proc.url("/echo"), content=b"x" * 1025)
    assert r.status_code == 413
    assert httpx.post(proc.url("/echo"), content=b"y" * 1024).content == b"y" * 1024
    assert [(r.path, r.body_len) for r in b.requests] == [("/echo", 1024)]
    samples = parse_samples(scrape(proc).text)
    assert value(samples, "fastlb_requests_denied_total", reason="body_too_large") == 1


def test_max_body_chunked_is_counted_while_streaming(fastlb, backends):
    """A chunked body over max_body: 413 once the limit is crossed, the connection
    closed, and the backend never gets a complete request (its connection is reset)."""
    b = backends[0]
    proc = fastlb(guarded([b], {"limits": {"max_body": "1KiB"}}))
    head = b"POST /sink HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    body = b"".join(b"200\r\n" + b"z" * 512 + b"\r\n" for _ in range(3)) + b"0\r\n\r\n"
    out = raw(proc.port, head + body)
    assert out.startswith(b"HTTP/1.1 413 "), out[:200]
    assert b"Connection: close" in out
    wait_for(lambda: b.connection_count >= 1)
    time.sleep(0.3)
    assert not any(r.complete for r in b.requests)  # never passed off as a whole request
    # under the limit, chunked bodies pass whole
    small = b"200\r\n" + b"z" * 512 + b"\r\n0\r\n\r\n"
    out = raw(proc.port, head.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n") + small)
    assert out.startswith(b"HTTP/1.1 200 "), out[:200]
    assert json.loads(out.split(b"\r\n\r\n", 1)[1])["received"] == 512


@pytest.mark.parametrize("target", [b"/a/../etc/passwd", b"/a/%2e%2E/b", b"/./x", b"/a/..", b"/x%2Fy", b"/x%5cy"])
def test_path_rules_400(fastlb, backends, target):
    b = backends[0]
    proc = fastlb(guarded([b], {"limits": {"reject_dot_segments": True, "reject_encoded_slashes": True}},
                          admin=False))
    out = raw(proc.port, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400 "), out[:200]
    assert b.requests == []
    ok = raw(proc.port, b"GET /a/b..c/.d/%41 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert ok.startswith(b"HTTP/1.1 200 ")


# ------------------------------------------------------------------ access

def test_access_allow_deny_ipv4(fastlb, backends, tmp_path):
    b = backends[0]
    proc = fastlb(guarded([b], {"access": {"allow": ["127.0.0.0/8"], "deny": ["127.0.0.66/32"]}},
                          log=tmp_path / "a.log"))
    with client_from("127.0.0.1") as c:
        assert c.get(proc.url("/allowed")).status_code == 200
    with client_from("127.0.0.66") as c:
        r = c.get(proc.url("/denied"))
        assert r.status_code == 403  # deny wins over allow
        assert "127.0.0.66" in r.json()["error"]
    with client_from("127.0.0.67") as c:
        assert c.get(proc.url("/allowed")).status_code == 200
    assert seen(b) == ["/allowed", "/allowed"]
    samples = parse_samples(scrape(proc).text)
    assert value(samples, "fastlb_requests_denied_total", route="/", reason="access") == 1
    wait_for(lambda: [(l["client"], l["flags"]) for l in log_lines(tmp_path / "a.log") if l["status"] == 403]
             == [("127.0.0.66", "denied")])


def test_access_allow_list_ipv6(fastlb, backends):
    try:
        s = socket.socket(socket.AF_INET6)
        s.bind(("::1", 0))
        s.close()
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    b = backends[0]
    doc = guarded([b], {"access": {"allow": ["2001:db8::/32"]}}, admin=False)
    doc["listeners"][0]["bind"] = "[::1]:0"
    proc = fastlb(doc)
    r = httpx.get("http://[::1]:%d/" % proc.port)
    assert r.status_code == 403  # ::1 is not in 2001:db8::/32
    doc2 = guarded([b], {"access": {"allow": ["::1/128"]}}, admin=False)
    doc2["listeners"][0]["bind"] = "[::1]:0"
    proc2 = fastlb(doc2)
    assert httpx.get("http://[::1]:%d/" % proc2.port).status_code == 200


# ------------------------------------------------------------------ rate limits

def test_rate_limit_burst_then_rate_headers_and_honest_retry_after(fastlb, backends):
    b = backends[0]
    proc = fastlb(guarded([b], {"rate_limits": [{"key": "ip", "rate": "2/s", "burst": 5}]}))
    with httpx.Client(timeout=5) as c:
        got = [c.get(proc.url("/r%d" % i)) for i in range(7)]
    statuses = [r.status_code for r in got]
    # the burst passes at once (a token may refill while 7 requests run: 2/s, <0.5 s)
    passed = statuses.count(200)
    assert 5 <= passed <= 6 and statuses[:5] == [200] * 5 and statuses[-1] == 429, statuses
    remaining = [int(r.headers["ratelimit-remaining"]) for r in got[:5]]
    assert remaining == sorted(remaining, reverse=True) and remaining[0] == 4 and remaining[4] <= 1
    assert all(r.headers["ratelimit-limit"] == "5" for r in got)
    last = got[-1]
    assert last.headers["ratelimit-remaining"] == "0"
    retry = int(last.headers["retry-after"])
    assert 1 <= retry <= 1  # one token of 2/s comes within 0.5 s: rounded up to 1 s
    assert int(last.headers["ratelimit-reset"]) >= 1
    time.sleep(retry)
    with httpx.Client(timeout=5) as c:
        assert c.get(proc.url("/after")).status_code == 200  # Retry-After was honest
    assert len(b.requests) == passed + 1
    samples = parse_samples(scrape(proc).text)
    assert value(samples, "fastlb_ratelimit_rejected_total", route="/", policy="ip") == 7 - passed


def test_rate_limit_sustained_rate_within_tolerance(fastlb, backends):
    """Over 3 s of steady attempts, burst + rate x elapsed pass (+-2: the first and
    last partial tokens, and the tick-less refill computed per request)."""
    b = backends[0]
    proc = fastlb(guarded([b], {"rate_limits": [{"key": "ip", "rate": "10/s", "burst": 5}]}, admin=False))
    ok = 0
    with httpx.Client(timeout=5) as c:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 3.0:
            if c.get(proc.url("/")).status_code == 200:
                ok += 1
            time.sleep(0.01)
        elapsed = time.monotonic() - t0
    expected = 5 + 10 * elapsed
    assert abs(ok - expected) <= 2 + 0.1 * expected, (ok, expected)


def test_rate_limit_keys_header_and_route_all_must_pass(fastlb, backends):
    b = backends[0]
    proc = fastlb(guarded([b], {"rate_limits": [
        {"key": "header:X-Tenant", "rate": "1/h", "burst": 2},
        {"key": "route", "rate": "1/h", "burst": 5},
    ]}))
    with httpx.Client(timeout=5) as c:
        a = [c.get(proc.url("/"), headers={"X-Tenant": "a"}).status_code for _ in range(3)]
        bb = [c.get(proc.url("/"), headers={"X-Tenant": "b"}).status_code for _ in range(3)]
        # no X-Tenant: the header policy does not apply, the route one does (1 token left)
        n = [c.get(proc.url("/")).status_code for _ in range(2)]
    assert a == [200, 200, 429] and bb == [200, 200, 429]
    assert n == [200, 429]
    samples = parse_samples(scrape(proc).text)
    assert value(samples, "fastlb_ratelimit_rejected_total", policy="header:X-Tenant") == 2
    assert value(samples, "fastlb_ratelimit_rejected_total", policy="route") == 1


# ------------------------------------------------------------------ authentication

def test_api_key_header(fastlb, backends, tmp_path):
    b = backends[0]
    proc = fastlb(guarded([b], {"auth": {"api_key": {"header": "X-API-Key", "keys_sha256": [API_DIGEST]}},
                                "rate_limits": [{"key": "api_key", "rate": "1/h", "burst": 3}]},
                          log=tmp_path / "a.log"))
    r = httpx.get(proc.url("/"))
    assert r.status_code == 401 and "ApiKey" in r.headers["www-authenticate"]
    r = httpx.get(proc.url("/"), headers={"X-API-Key": "wrong"})
    assert r.status_code == 401
    assert "wrong" not in r.text
    r = httpx.get(proc.url("/headers"), headers={"X-API-Key": API_KEY})
    assert r.status_code == 200
    assert "x-api-key" not in {n.lower() for n, _ in r.json()}  # the credential is not forwarded
    with httpx.Client(timeout=5) as c:
        rest = [c.get(proc.url("/"), headers={"X-API-Key": API_KEY}).status_code for _ in range(3)]
    assert rest == [200, 200, 429]  # the api_key policy keys on the authenticated key
    samples = parse_samples(scrape(proc).text)
    assert value(samples, "fastlb_auth_rejected_total", route="/", reason="missing") == 1
    assert value(samples, "fastlb_auth_rejected_total", route="/", reason="invalid") == 1
    assert value(samples, "fastlb_ratelimit_rejected_total", route="/", policy="api_key") == 1
    wait_for(lambda: sorted(l["flags"] for l in log_lines(tmp_path / "a.log") if l["status"] in (401, 429))
             == ["auth", "auth", "rate_limited"])


def test_api_key_query_parameter_is_removed_from_the_target(fastlb, backends, tmp_path):
    b = backends[0]
    keys = tmp_path / "keys"
    keys.write_text("# one digest per line\n%s\n" % API_DIGEST)
    proc = fastlb(guarded([b], {"auth": {"api_key": {"query": "api_key", "keys_file": str(keys)}}}, admin=False))
    assert httpx.get(proc.url("/x?a=1")).status_code == 401
    r = httpx.get(proc.url("/x?a=1&api_key=%s&b=2" % API_KEY))
    assert r.status_code == 200
    assert r.json()["target"] == "/x?a=1&b=2"


def _rsa():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key


def _jwks(tmp_path, keys):
    doc = {"keys": []}
    for kid, key in keys:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()) if isinstance(key, rsa.RSAPrivateKey)
                         else jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
        jwk["kid"] = kid
        doc["keys"].append(jwk)
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(doc))
    return path


def _b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _hs256_by_hand(claims, secret, kid):
    """An HS256 token whose HMAC key is ``secret`` (PyJWT refuses to sign with a PEM key:
    this is the algorithm-confusion attack, made by hand)."""
    signing = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode()) + b"." + _b64(
        json.dumps(claims).encode())
    return (signing + b"." + _b64(hmac.new(secret, signing, hashlib.sha256).digest())).decode()


def test_jwt_rs256_es256_claims_forwarded_and_spoofs_removed(fastlb, backends, tmp_path):
    b = backends[0]
    rsa_key = _rsa()
    ec_key = ec.generate_private_key(ec.SECP256R1())
    jwks = _jwks(tmp_path, [("r1", rsa_key), ("e1", ec_key)])
    proc = fastlb(guarded([b], {"auth": {"jwt": {
        "algorithms": ["RS256", "ES256"], "jwks_file": str(jwks), "issuer": "https://idp.test",
        "audience": "api", "leeway": "5s", "forward_claims": {"sub": "X-User-Id"}}},
        "rate_limits": [{"key": "jwt:sub", "rate": "1/h", "burst": 2}]}))
    now = int(time.time())
    claims = {"sub": "alice", "iss": "https://idp.test", "aud": "api", "exp": now + 300, "iat": now}
    rs = jwt.encode(claims, rsa_key, algorithm="RS256", headers={"kid": "r1"})
    es = jwt.encode(dict(claims, sub="bob"), ec_key, algorithm="ES256", headers={"kid": "e1"})
    for token, user in ((rs, "alice"), (es, "bob")):
        r = httpx.get(proc.url("/headers"), headers={"Authorization": "Bearer " + token, "X-User-Id": "root"})
        assert r.status_code == 200, r.text
        got = [(n.lower(), v) for n, v in r.json()]
        assert [v for n, v in got if n == "x-user-id"] == [user]  # the spoofed copy never arrives
        assert "authorization" not in {n for n, _ in got}
    bad = {
        "expired": jwt.encode(dict(claims, exp=now - 60), rsa_key, algorithm="RS256", headers={"kid": "r1"}),
        "audience": jwt.encode(dict(claims, aud="other"), rsa_key, algorithm="RS256", headers={"kid": "r1"}),
        "issuer": jwt.encode(dict(claims, iss="https://evil"), rsa_key, algorithm="RS256", headers={"kid": "r1"}),
        "wrong key": jwt.encode(claims, _rsa(), algorithm="RS256", headers={"kid": "r1"}),
        "none": (base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=") + b"."
                 + base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=") + b".").decode(),
        "hs256 with the public key": _hs256_by_hand(claims, rsa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo), "r1"),
    }
    for what, token in bad.items():
        r = httpx.get(proc.url("/"), headers={"Authorization": "Bearer " + token})
        assert r.status_code == 401, (what, r.status_code, r.text)
        assert r.headers["www-authenticate"].startswith("Bearer")
    with httpx.Client(timeout=5) as c:
        again = [c.get(proc.url("/"), headers={"Authorization": "Bearer " + rs}).status_code for _ in range(2)]
    assert again == [200, 429]  # jwt:sub: alice had 2 tokens, used one above
    assert len(b.requests) == 3


def test_basic_auth_htpasswd_bcrypt(fastlb, backends, tmp_path):
    b = backends[0]
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("alice:%s\ncarol:%s\n" % (bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4)).decode(),
                                                  bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()))
    proc = fastlb(guarded([b], {"auth": {"basic": {"htpasswd": str(htpasswd), "realm": "ops", "users": ["alice"]}}}))
    r = httpx.get(proc.url("/"))
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith('Basic realm="ops"')
    assert httpx.get(proc.url("/"), auth=("alice", "nope")).status_code == 401
    assert httpx.get(proc.url("/"), auth=("carol", "pw")).status_code == 403  # valid, not allowed here
    r = httpx.get(proc.url("/headers"), auth=("alice", "s3cret"))
    assert r.status_code == 200
    assert "authorization" not in {n.lower() for n, _ in r.json()}
    samples = parse_samples(scrape(proc).text)
    assert value(samples, "fastlb_auth_rejected_total", reason="forbidden") == 1
    assert len(b.requests) == 1


# ------------------------------------------------------------------ client address and spoofing

SPOOF = {"X-Forwarded-For": "203.0.113.9", "Forwarded": "for=203.0.113.9", "X-Real-IP": "203.0.113.9",
         "X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https"}


def test_forwarding_headers_from_an_untrusted_peer_never_arrive(fastlb, backends):
    b = backends[0]
    proc = fastlb(guarded([b], {"access": {"deny": ["203.0.113.0/24"]}}, admin=False))
    r = httpx.get(proc.url("/headers"), headers=SPOOF)
    assert r.status_code == 200  # the ACL keyed on the socket peer, not the claimed address
    got = [(n.lower(), v) for n, v in r.json()]
    assert [v for n, v in got if n == "x-forwarded-for"] == ["127.0.0.1"]
    assert [v for n, v in got if n == "x-forwarded-proto"] == ["http"]
    for name in ("forwarded", "x-real-ip", "x-forwarded-host"):
        assert name not in {n for n, _ in got}


def test_trusted_proxy_headers_are_kept_and_keyed_on(fastlb, backends, tmp_path):
    b = backends[0]
    proc = fastlb(guarded([b], {"access": {"deny": ["203.0.113.0/24"]},
                                "rate_limits": [{"key": "ip", "rate": "1/h", "burst": 2}]},
                          listener={"trusted_proxies": ["127.0.0.0/8"]}, log=tmp_path / "a.log"))
    with httpx.Client(timeout=5) as c:
        r = c.get(proc.url("/headers"), headers={"X-Forwarded-For": "198.51.100.7, 127.0.0.5",
                                                  "X-Forwarded-Proto": "https", "X-Real-IP": "198.51.100.7"})
        assert r.status_code == 200
        got = [(n.lower(), v) for n, v in r.json()]
        assert [v for n, v in got if n == "x-forwarded-for"] == ["198.51.100.7, 127.0.0.5, 127.0.0.1"]
        assert [v for n, v in got if n == "x-forwarded-proto"] == ["https"]
        assert [v for n, v in got if n == "x-real-ip"] == ["198.51.100.7"]
        # the ACL sees the rightmost untrusted hop
        assert c.get(proc.url("/"), headers={"X-Forwarded-For": "203.0.113.9"}).status_code == 403
        assert c.get(proc.url("/"), headers={"Forwarded": 'for="203.0.113.9:4711"'}).status_code == 403
        # and so do rate limits: 198.51.100.7 has one token left, 198.51.100.8 has two
        assert c.get(proc.url("/"), headers={"X-Forwarded-For": "198.51.100.7"}).status_code == 200
        assert c.get(proc.url("/"), headers={"X-Forwarded-For": "198.51.100.7"}).status_code == 429
        assert c.get(proc.url("/"), headers={"X-Forwarded-For": "198.51.100.8"}).status_code == 200
    wait_for(lambda: "198.51.100.8" in {l["client"] for l in log_lines(tmp_path / "a.log")})


def test_proxy_protocol_v1_v2_required(fastlb, backends):
    b = backends[0]
    proc = fastlb(guarded([b], {"access": {"deny": ["192.0.2.66/32"]}}, listener={"proxy_protocol": True}))
    req = b"GET /headers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    out = raw(proc.port, b"PROXY TCP4 192.0.2.10 192.0.2.1 56324 443\r\n" + req)
    assert out.startswith(b"HTTP/1.1 200 "), out[:200]
    got = dict((n.lower(), v) for n, v in json.loads(out.split(b"\r\n\r\n", 1)[1]))
    assert got["x-forwarded-for"] == "192.0.2.10"
    out = raw(proc.port, proxy_v2("192.0.2.11", 40000, "192.0.2.1", 443) + req)
    got = dict((n.lower(), v) for n, v in json.loads(out.split(b"\r\n\r\n", 1)[1]))
    assert got["x-forwarded-for"] == "192.0.2.11"
    # the ACL keys on the PROXY source
    assert raw(proc.port, b"PROXY TCP4 192.0.2.66 192.0.2.1 1 443\r\n" + req).startswith(b"HTTP/1.1 403 ")
    # a plain request without the header is refused and nothing is forwarded
    n = len(b.requests)
    out = raw(proc.port, req)
    assert out.startswith(b"HTTP/1.1 400 ") and b"PROXY protocol" in out
    assert len(b.requests) == n
    samples = parse_samples(scrape(proc).text)
    assert value(samples, "fastlb_requests_denied_total", route="", reason="proxy_protocol") == 1


def test_connections_per_client_cap(fastlb, backends):
    b = backends[0]
    proc = fastlb(guarded([b], {}, listener={"limits": {"max_connections_per_client": 2}}))
    held = [socket.create_connection(("127.0.0.1", proc.port), source_address=("127.0.0.9", 0)) for _ in range(2)]
    try:
        time.sleep(0.2)
        out = raw(proc.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", source="127.0.0.9")
        assert out.startswith(b"HTTP/1.1 429 "), out[:200]
        # another address is not affected
        assert raw(proc.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                   source="127.0.0.10").startswith(b"HTTP/1.1 200 ")
        held.pop().close()

        def frees():
            return raw(proc.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                       source="127.0.0.9").startswith(b"HTTP/1.1 200 ")
        wait_for(frees, timeout=5)
    finally:
        for s in held:
            s.close()
    samples = parse_samples(scrape(proc).text)
    assert value(samples, "fastlb_requests_denied_total", route="", reason="connections") >= 1


# ------------------------------------------------------------------ slowloris

def test_slowloris_does_not_delay_normal_clients(fastlb, backends):
    """500 connections sending one header byte per second: normal requests are
    served meanwhile, and the slow ones are closed at the header timeout."""
    import selectors

    b = backends[0]
    doc = guarded([b], {}, admin=False)
    doc["timeouts"]["client_header"] = "2s"
    proc = fastlb(doc)
    slow = []
    for i in range(500):
        s = socket.create_connection(("127.0.0.1", proc.port), source_address=("127.0.%d.%d" % (1 + i // 200, 1 + i % 200), 0))
        s.setblocking(False)
        slow.append(s)
    head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 64
    sent = 0
    served = 0
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < 4.0:  # twice the header timeout
            for s in slow:
                try:
                    s.send(head[sent:sent + 1])
                except OSError:
                    pass
            sent += 1
            r = httpx.get(proc.url("/normal"), timeout=2)
            assert r.status_code == 200
            served += 1
            time.sleep(max(0.0, 1.0 - (time.monotonic() - t0) % 1.0))
        # every slow connection has been answered 408 (or closed) by now
        sel = selectors.DefaultSelector()
        closed = 0
        deadline = time.monotonic() + 3
        pending = set(slow)
        for s in slow:
            sel.register(s, selectors.EVENT_READ)
        while pending and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=0.2):
                s = key.fileobj
                try:
                    data = s.recv(65536)
                except (ConnectionResetError, BlockingIOError):
                    data = b""
                if not data:
                    sel.unregister(s)
                    pending.discard(s)
                    closed += 1
        assert not pending, "%d slow connections still open after the header timeout" % len(pending)
    finally:
        for s in slow:
            s.close()
    assert served >= 4
    assert not any(r.path != "/normal" for r in b.requests)
