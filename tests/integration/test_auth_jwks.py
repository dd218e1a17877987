"""fastlb.auth with jwks_url: a real HTTP server on 127.0.0.1 (http.server in a thread)
serves a JWKS the test changes; keys, tokens and signatures are real (RSA 2048)."""

import asyncio
import http.server
import json
import logging
import threading
import time

import jwt
import pytest
import uvloop
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from fastlb import auth
from fastlb.model import AuthSpec, JwtSpec

KEYS = {kid: rsa.generate_private_key(public_exponent=65537, key_size=2048) for kid in ("k1", "k2")}


def jwk(kid):
    d = RSAAlgorithm.to_jwk(KEYS[kid].public_key(), as_dict=True)
    d["kid"] = kid
    return d


def token(kid, **extra):
    claims = {"sub": "alice", "exp": int(time.time()) + 300}
    claims.update(extra)
    return b"Bearer " + jwt.encode(claims, KEYS[kid], algorithm="RS256", headers={"kid": kid}).encode()


def header_for(value):
    return {b"authorization": value}.get


class JwksServer:
    """Serves ``body`` with ``status`` (after ``delay`` seconds); counts the requests."""

    def __init__(self):
        self.body = b'{"keys": []}'
        self.status = 200
        self.delay = 0.0
        self.location = None
        self.hits = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.hits += 1
                if server.delay:
                    time.sleep(server.delay)
                self.send_response(server.status)
                if server.location:
                    self.send_header("Location", server.location)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(server.body)))
                self.end_headers()
                try:
                    self.wfile.write(server.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client stopped reading (the size cap)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = "http://127.0.0.1:%d/.well-known/jwks.json" % self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def serve(self, *kids):
        self.body = json.dumps({"keys": [jwk(k) for k in kids]}).encode()


@pytest.fixture
def server():
    s = JwksServer()
    s.thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def make(url, **kw):
    spec = JwtSpec(algorithms=("RS256",), jwks_url=url, **kw)
    return auth.build(AuthSpec(kind="jwt", jwt=spec), asyncio.get_running_loop())


def run(coro, loop_kind="asyncio"):
    if loop_kind == "uvloop":
        loop = uvloop.new_event_loop()
        try:
            return loop.run_until_complete(coro)
        finally:
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()
    return asyncio.run(coro)


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_fetch_at_start_then_a_new_kid_forces_one_refresh(server, loop_kind):
    server.serve("k1")

    async def main():
        a = make(server.url)
        await a.start()
        assert server.hits == 1
        assert a.check(header_for(token("k1")), b"/").passed  # at once: the key is known
        server.serve("k1", "k2")  # the issuer rotates in a new key
        pending = a.check(header_for(token("k2")), b"/")
        assert isinstance(pending, asyncio.Future)
        v = await asyncio.wait_for(pending, 10)
        assert v.passed and v.identity == b"alice"
        assert server.hits == 2
        assert a.check(header_for(token("k2")), b"/").passed  # no further wait
        # another unknown kid within the cooldown: refused at once, no fetch
        forged = jwt.encode({"sub": "x", "exp": int(time.time()) + 60}, KEYS["k1"], algorithm="RS256",
                            headers={"kid": "k3"}).encode()
        v = a.check(header_for(b"Bearer " + forged), b"/")
        assert not isinstance(v, asyncio.Future) and (v.status, v.reason) == (401, "unknown_key")
        assert server.hits == 2
        a.close()

    run(main(), loop_kind)


def test_refresh_cooldown_then_one_more(server, monkeypatch):
    monkeypatch.setattr(auth, "JWKS_FORCED_COOLDOWN", 0.3)
    server.serve("k1")

    async def main():
        a = make(server.url)
        await a.start()
        first = a.check(header_for(token("k2")), b"/")
        assert isinstance(first, asyncio.Future)
        assert (await first).reason == "unknown_key"  # still not served after the refresh
        assert server.hits == 2
        assert a.check(header_for(token("k2")), b"/").reason == "unknown_key"  # cooling down
        assert server.hits == 2
        await asyncio.sleep(0.35)
        server.serve("k1", "k2")
        again = a.check(header_for(token("k2")), b"/")
        assert isinstance(again, asyncio.Future) and (await again).passed
        assert server.hits == 3
        a.close()

    run(main())


def test_at_most_one_fetch_in_flight(server):
    server.serve("k1")

    async def main():
        a = make(server.url)
        await a.start()
        server.serve("k1", "k2")
        server.delay = 0.3
        waits = [a.check(header_for(token("k2", n=i)), b"/") for i in range(5)]
        assert all(isinstance(w, asyncio.Future) for w in waits)
        results = await asyncio.wait_for(asyncio.gather(*waits), 10)
        assert all(v.passed for v in results)
        assert server.hits == 2  # five waiting requests, one fetch
        a.close()

    run(main())


def test_failing_url_is_retried_and_requests_wait_once(server, monkeypatch, caplog):
    monkeypatch.setattr(auth, "JWKS_RETRY", 0.2)
    server.status = 500
    server.serve("k1")

    async def main():
        a = make(server.url)
        with caplog.at_level(logging.ERROR, logger="fastlb.auth"):
            await a.start()  # logs, does not raise
        assert any("jwks_url" in r.getMessage() for r in caplog.records)
        pending = a.check(header_for(token("k1")), b"/")
        assert isinstance(pending, asyncio.Future)
        assert (await pending).reason == "unknown_key"  # after one wait
        server.status = 200
        for _ in range(50):
            await asyncio.sleep(0.05)
            if a._by_alg:
                break
        assert a.check(header_for(token("k1")), b"/").passed  # the retry loop found the keys
        a.close()

    run(main())


def test_periodic_refresh_and_a_removed_key(server):
    server.serve("k1", "k2")

    async def main():
        a = make(server.url, jwks_refresh=0.2)
        await a.start()
        assert a.check(header_for(token("k1")), b"/").passed
        server.serve("k2")  # k1 revoked
        await asyncio.sleep(0.7)
        assert server.hits >= 3
        assert len(a._cache) == 0  # a removed key empties the token cache
        v = a.check(header_for(token("k1")), b"/")
        v = (await v) if isinstance(v, asyncio.Future) else v
        assert (v.status, v.reason) == (401, "unknown_key")
        assert a.check(header_for(token("k2")), b"/").passed
        a.close()
        assert a._task is None

    run(main())


def test_bad_refresh_keeps_the_keys(server, caplog):
    server.serve("k1")

    async def main():
        a = make(server.url)
        await a.start()
        for body in (b"not json", b'{"keys": []}', b'{"keys": [{"kty": "oct", "k": "AAAA"}]}',
                     b"x" * (auth.JWKS_MAX_BYTES + 1)):
            server.body = body
            assert await a._fetch() is False
            assert a.check(header_for(token("k1")), b"/").passed
        a.close()

    with caplog.at_level(logging.ERROR, logger="fastlb.auth"):
        run(main())
    assert any("larger than" in r.getMessage() for r in caplog.records)


def test_fetch_limits(server):
    server.body = b"x" * (auth.JWKS_MAX_BYTES + 1)
    with pytest.raises(ValueError, match="larger than"):
        auth.fetch_jwks(server.url)
    server.body = b"{}"
    server.status = 302
    server.location = "ftp://127.0.0.1/jwks.json"
    with pytest.raises(Exception, match="non-HTTP"):
        auth.fetch_jwks(server.url)
    server.status, server.location = 200, None
    server.delay = 0.6
    t0 = time.monotonic()
    with pytest.raises(OSError):  # socket timeout
        auth.fetch_jwks(server.url, timeout=0.2)
    assert time.monotonic() - t0 < 2
