"""The test backend itself (tests/support/backend.py), driven directly, not through fastlb.

The proxy's integration tests trust this backend's records and endpoints; these
tests are what earns that trust. Raw sockets where framing matters, httpx
where it does not.
"""

import base64
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import tracemalloc

import httpx
import pytest

from tests.support.backend import (
    BLOCK_SIZE,
    BackendServer,
    pattern,
    pattern_sha256,
    websocket_accept,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def srv():
    with BackendServer(name="b1") as s:
        yield s


class Raw:
    """A raw client socket with a tiny, permissive HTTP/1.1 response reader."""

    def __init__(self, port, timeout=5.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = bytearray()

    @property
    def port(self):
        return self.sock.getsockname()[1]

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self):
        data = self.sock.recv(256 * 1024)
        if not data:
            raise EOFError("connection closed by the backend")
        self.buf += data

    def read_until(self, marker):
        while marker not in self.buf:
            self._fill()
        i = self.buf.index(marker) + len(marker)
        out = bytes(self.buf[:i])
        del self.buf[:i]
        return out

    def read_exact(self, n):
        while len(self.buf) < n:
            self._fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_to_eof(self, limit=1 << 30):
        try:
            while len(self.buf) <= limit:
                self._fill()
        except EOFError:
            pass
        out = bytes(self.buf)
        self.buf.clear()
        return out

    def read_head(self):
        head = self.read_until(b"\r\n\r\n")
        lines = head[:-4].split(b"\r\n")
        status = int(lines[0].split(b" ")[1])
        headers = [tuple(x.strip() for x in line.split(b":", 1)) for line in lines[1:]]
        return status, headers

    def read_response(self, head=False):
        """(status, {lower name: value}, headers list, body); skips nothing (1xx is returned as is)."""
        status, headers = self.read_head()
        h = {k.lower(): v for k, v in headers}
        if head or status in (204, 304) or 100 <= status < 200:
            body = b""
        elif b"chunked" in h.get(b"transfer-encoding", b""):
            body = bytearray()
            while True:
                size = int(self.read_until(b"\r\n").split(b";")[0], 16)
                if size == 0:
                    self.read_until(b"\r\n")
                    break
                body += self.read_exact(size)
                assert self.read_exact(2) == b"\r\n"
            body = bytes(body)
        elif b"content-length" in h:
            body = self.read_exact(int(h[b"content-length"]))
        else:
            body = self.read_to_eof()
        return status, h, headers, body

    def at_eof(self, timeout=2.0):
        """True when the backend has closed (FIN or RST) and nothing is buffered."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False
        self.buf += data
        return data == b""

    def close(self):
        self.sock.close()


@pytest.fixture
def raw(srv):
    conns = []

    def make():
        c = Raw(srv.port)
        conns.append(c)
        return c

    yield make
    for c in conns:
        c.close()


# -- records ------------------------------------------------------------------------


def test_root_json_and_unknown_path(srv):
    with httpx.Client() as c:
        r = c.get(srv.url + "/", headers={"X-Test": "yes"})
        assert r.status_code == 200
        assert r.headers["x-backend"] == "b1"
        assert r.headers["content-length"] == str(len(r.content))
        info = r.json()
        assert info["backend"] == "b1" and info["method"] == "GET" and info["path"] == "/"
        assert info["headers"]["x-test"] == "yes"
        assert info["headers"]["host"] == srv.address
        r = c.request("DELETE", srv.url + "/no/such/path?q=1")
        assert r.status_code == 200
        assert r.json()["path"] == "/no/such/path" and r.json()["target"] == "/no/such/path?q=1"
        assert r.json()["method"] == "DELETE"
    reqs = srv.requests
    assert [(q.method, q.path) for q in reqs] == [("GET", "/"), ("DELETE", "/no/such/path")]
    assert reqs[1].query == {"q": "1"}
    assert srv.connection_count == 1  # keep-alive reuse


def test_raw_bytes_and_parsed_records(srv, raw):
    c = raw()
    sent = (
        b"POST /echo?x=1 HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nx-a: 2\r\nContent-Length: 5\r\n\r\nhello"
        b"GET /second HTTP/1.1\r\nHost: h\r\n\r\n"
    )
    c.send(sent)
    assert c.read_response()[3] == b"hello"
    assert c.read_response()[0] == 200
    (conn,) = srv.connections
    assert bytes(conn.raw) == sent and isinstance(conn.raw, bytearray)
    assert conn.raw_len == len(sent)
    assert conn.peer_port == c.port
    assert not conn.closed and conn.error is None
    first, second = conn.requests
    assert (first.method, first.target, first.path, first.query) == ("POST", "/echo?x=1", "/echo", {"x": "1"})
    assert first.headers == [(b"Host", b"h"), (b"X-A", b"1"), (b"x-a", b"2"), (b"Content-Length", b"5")]
    assert first.body == b"hello" and first.body_len == 5 and first.complete
    assert first.header("x-a") == b"1" and first.header_values("X-A") == [b"1", b"2"]
    assert first.http_version == "1.1" and first.keep_alive and first.peer_port == c.port
    assert second.target == "/second" and second.body == b"" and second.conn == 0
    assert [r.target for r in srv.requests] == ["/echo?x=1", "/second"]
    c.close()
    assert srv.wait_until(lambda s: s.connections[0].closed)


def test_chunked_request_with_trailers(srv, raw):
    c = raw()
    c.send(
        b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nX-Checksum: 9\r\n\r\n"
    )
    assert c.read_response()[3] == b"abcde"
    (req,) = srv.requests
    assert req.headers == [(b"Host", b"h"), (b"Transfer-Encoding", b"chunked")]
    assert req.trailers == [(b"X-Checksum", b"9")]
    assert req.body == b"abcde" and req.body_len == 5


def test_records_are_snapshots_and_reset(srv):
    httpx.get(srv.url + "/a")
    snap = srv.connections
    snap[0].raw.clear()
    snap[0].requests.clear()
    assert srv.connections[0].raw and srv.connections[0].requests
    srv.reset()
    assert srv.connections == [] and srv.requests == [] and srv.connection_count == 0
    httpx.get(srv.url + "/b")
    assert [r.path for r in srv.requests] == ["/b"] and srv.connection_count == 1


def test_reset_keeps_live_connection_recorded(srv, raw):
    c = raw()
    c.send(b"GET /one HTTP/1.1\r\nHost: h\r\n\r\n")
    c.read_response()
    srv.reset()
    c.send(b"GET /two HTTP/1.1\r\nHost: h\r\n\r\n")
    c.read_response()
    (conn,) = srv.connections
    assert [r.path for r in conn.requests] == ["/two"]
    assert bytes(conn.raw) == b"GET /two HTTP/1.1\r\nHost: h\r\n\r\n"


def test_concurrent_clients_thread_safe(srv):
    def worker():
        with httpx.Client() as c:
            for i in range(15):
                assert c.post(srv.url + "/echo", content=b"%d" % i).content == b"%d" % i

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert srv.request_count == 90
    assert srv.connection_count == 6
    assert sum(len(c.requests) for c in srv.connections) == 90


# -- keep-alive, pipelining, framing -----------------------------------------------------


def test_pipelining_in_order_with_slow_first(srv, raw):
    c = raw()
    c.send(
        b"GET /slow?delay=0.3 HTTP/1.1\r\nHost: h\r\n\r\n"
        b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
        b"GET /status?code=404 HTTP/1.1\r\nHost: h\r\n\r\n"
        b"POST /echo?chunked=1 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nxy\r\n1\r\nz\r\n0\r\n\r\n"
    )
    t0 = time.monotonic()
    status, h, _, body = c.read_response()
    assert status == 200 and json.loads(body)["path"] == "/slow"
    assert time.monotonic() - t0 >= 0.25
    assert c.read_response()[3] == b"abc"
    assert c.read_response()[0] == 404
    status, h, _, body = c.read_response()
    assert body == b"xyz" and h[b"transfer-encoding"] == b"chunked"
    assert srv.connection_count == 1 and srv.request_count == 4


def test_half_close_after_pipeline_still_answers(srv, raw):
    c = raw()
    c.send(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /slow?delay=0.1 HTTP/1.1\r\nHost: h\r\n\r\n")
    c.sock.shutdown(socket.SHUT_WR)
    assert json.loads(c.read_response()[3])["path"] == "/a"
    assert json.loads(c.read_response()[3])["path"] == "/slow"
    assert c.at_eof()


def test_http10_and_connection_close(srv, raw):
    c = raw()
    c.send(b"GET / HTTP/1.0\r\n\r\n")
    status, h, _, _ = c.read_response()
    assert status == 200 and h[b"connection"] == b"close"
    assert c.at_eof()
    c = raw()
    c.send(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert c.read_response()[1][b"connection"] == b"close"
    assert c.at_eof()
    c = raw()
    c.send(b"GET /?close=1 HTTP/1.1\r\nHost: h\r\n\r\n")
    assert c.read_response()[1][b"connection"] == b"close"
    assert c.at_eof()
    c = raw()
    c.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert c.read_response()[0] == 200
    assert not c.at_eof(timeout=0.2)
    assert [r.http_version for r in srv.requests] == ["1.0", "1.1", "1.1", "1.0"]
    assert [r.keep_alive for r in srv.requests] == [False, False, True, True]


def test_strict_parser_rejects_ambiguity(srv, raw):
    bad = [
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        b"GET / HTTP/1.1\r\nHost : h\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n",
        b"GET / HTTP/1.1\nHost: h\n\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ]
    for i, data in enumerate(bad):
        c = raw()
        c.send(data)
        status, h, _, _ = c.read_response()
        assert status == 400, data
        assert h[b"connection"] == b"close"
        assert c.at_eof()
    conns = srv.wait_until(lambda s: [x for x in s.connections if x.closed], timeout=5)
    assert len(conns) == len(bad)
    assert all(x.error for x in srv.connections)
    assert all(not r.complete for r in srv.requests)


def test_close_idle_connections(srv, raw):
    c = raw()
    c.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    c.read_response()
    busy = raw()
    busy.send(b"GET /slow?delay=0.5 HTTP/1.1\r\nHost: h\r\n\r\n")
    srv.wait_until(lambda s: s.request_count == 2)
    assert srv.close_idle_connections() == 1
    assert c.at_eof()
    assert busy.read_response()[0] == 200


# -- endpoints ------------------------------------------------------------------------------


def test_echo_variants(srv, raw):
    body = os.urandom(100_000)
    with httpx.Client() as cl:
        r = cl.post(srv.url + "/echo", content=body, headers={"Content-Type": "x/y"})
        assert r.content == body and r.headers["content-length"] == str(len(body))
        assert r.headers["content-type"] == "x/y"
        r = cl.put(srv.url + "/echo?chunked=1&chunk=1000", content=body)
        assert r.content == body and r.headers["transfer-encoding"] == "chunked"
        r = cl.post(srv.url + "/echo", content=iter([b"ab", b"cd"]))  # chunked request
        assert r.content == b"abcd"
        assert cl.get(srv.url + "/echo").content == b""
    c = raw()
    c.send(b"POST /echo?close=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nbody")
    status, h, _, got = c.read_response()
    assert got == b"body" and h[b"connection"] == b"close"
    assert b"content-length" not in h and b"transfer-encoding" not in h
    c = raw()
    c.send(b"POST /echo?chunked=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n")
    assert c.read_until(b"\r\n\r\n").endswith(b"Transfer-Encoding: chunked\r\n\r\n")
    assert c.read_exact(5) == b"0\r\n\r\n"


@pytest.mark.parametrize("mode", ["", "&chunked=1", "&close=1"])
def test_size(srv, mode):
    n = 3 * BLOCK_SIZE + 12345
    r = httpx.get(srv.url + "/size?n=%d%s" % (n, mode))
    assert r.status_code == 200 and len(r.content) == n
    assert r.content == pattern(0, n)
    assert hashlib.sha256(r.content).hexdigest() == pattern_sha256(n)
    if mode == "&chunked=1":
        assert r.headers["transfer-encoding"] == "chunked"
    elif mode == "&close=1":
        assert r.headers["connection"] == "close" and "content-length" not in r.headers
    else:
        assert r.headers["content-length"] == str(n)


def test_size_large_streams_with_backpressure(srv, raw):
    n = 64 * 1024 * 1024
    c = raw()
    c.send(b"GET /size?n=%d HTTP/1.1\r\nHost: h\r\n\r\n" % n)
    status, headers = c.read_head()
    assert status == 200
    h = hashlib.sha256(c.buf)
    got = len(c.buf)
    c.buf.clear()
    time.sleep(0.3)  # a stalled reader: the backend must pause, not buffer 64 MiB
    while got < n:
        data = c.sock.recv(1 << 20)
        assert data
        h.update(data)
        got += len(data)
    assert got == n and h.hexdigest() == pattern_sha256(n)
    c.send(b"HEAD /size?n=%d HTTP/1.1\r\nHost: h\r\n\r\n" % n)
    status, hd, _, body = c.read_response(head=True)
    assert hd[b"content-length"] == b"%d" % n and body == b""
    c.send(b"GET /size?n=0 HTTP/1.1\r\nHost: h\r\n\r\n")
    assert c.read_response()[3] == b""


def test_pattern_helpers():
    assert pattern(0, 3) == b"ABC"
    assert pattern(62, 4) == b"-_AB"
    assert pattern(BLOCK_SIZE - 1, 2) == b"_A"
    assert hashlib.sha256(pattern(0, 200_000)).hexdigest() == pattern_sha256(200_000)


def test_sink_50mb_constant_memory(srv):
    total = 50 * 1024 * 1024
    block = os.urandom(64 * 1024)
    expect = hashlib.sha256()
    for _ in range(total // len(block)):
        expect.update(block)

    def body():
        for _ in range(total // len(block)):
            yield block

    tracemalloc.start()
    try:
        with httpx.Client(timeout=30) as cl:
            r = cl.post(srv.url + "/sink", content=body(), headers={"Content-Length": str(total)})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r.json()["received"] == total and r.json()["sha256"] == expect.hexdigest()
    # the raw record keeps at most raw_limit (8 MiB); nothing else may grow with the body
    assert peak < 20 * 1024 * 1024, peak
    (req,) = srv.requests
    assert req.body == b"" and req.body_len == total and req.complete
    (conn,) = srv.connections
    assert conn.raw_len > total and len(conn.raw) == srv.raw_limit


def test_sink_chunked_request(srv):
    r = httpx.put(srv.url + "/sink", content=iter([b"a" * 1000, b"b" * 24]))
    assert r.json()["received"] == 1024
    assert r.json()["sha256"] == hashlib.sha256(b"a" * 1000 + b"b" * 24).hexdigest()
    assert srv.requests[0].header("transfer-encoding") == b"chunked"


def test_status_and_head(srv, raw):
    with httpx.Client() as cl:
        for code in (200, 201, 404, 418, 503):
            r = cl.get(srv.url + "/status?code=%d" % code)
            assert r.status_code == code and r.text == "status %d\n" % code
        g = cl.get(srv.url + "/status?code=201")
        h = cl.head(srv.url + "/status?code=201")
        assert h.status_code == 201 and h.content == b""
        assert h.headers["content-length"] == g.headers["content-length"]
        g = cl.get(srv.url + "/")
        h = cl.head(srv.url + "/")
        assert h.headers["content-length"] == g.headers["content-length"] and h.content == b""
        assert cl.get(srv.url + "/status?code=99").status_code == 400
    c = raw()
    for code in (204, 304):
        c.send(b"GET /status?code=%d HTTP/1.1\r\nHost: h\r\n\r\n" % code)
        status, h, _, body = c.read_response()
        assert status == code and b"content-length" not in h and b"transfer-encoding" not in h
    c.send(b"GET /status?code=200 HTTP/1.1\r\nHost: h\r\n\r\n")  # framing held: same connection
    assert c.read_response()[3] == b"status 200\n"


def test_slow_and_slowbody(srv, raw):
    t0 = time.monotonic()
    assert httpx.get(srv.url + "/slow?delay=0.3").status_code == 200
    assert time.monotonic() - t0 >= 0.28
    c = raw()
    c.send(b"GET /slowbody?delay=0.4 HTTP/1.1\r\nHost: h\r\n\r\n")
    t0 = time.monotonic()
    status, headers = c.read_head()
    t_head = time.monotonic() - t0
    length = int(dict((k.lower(), v) for k, v in headers)[b"content-length"])
    body = c.read_exact(length)
    t_body = time.monotonic() - t0
    # the head came first, the body only after the delay (lower bounds only: load cannot flake them)
    assert status == 200 and t_body - t_head >= 0.35
    assert json.loads(body)["path"] == "/slowbody"


def test_reset_and_halfhead(srv, raw):
    c = raw()
    c.send(b"GET /reset HTTP/1.1\r\nHost: h\r\n\r\n")
    assert c.at_eof() and c.buf == b""
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        httpx.get(srv.url + "/reset")
    c = raw()
    c.send(b"GET /halfhead HTTP/1.1\r\nHost: h\r\n\r\n")
    got = c.read_to_eof()
    assert got.startswith(b"HTTP/1.1 200 OK\r\n") and b"\r\n\r\n" not in got
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(srv.url + "/halfhead")


def test_headers_in_order(srv, raw):
    c = raw()
    c.send(b"GET /headers HTTP/1.1\r\nHost: h\r\nX-B: 2\r\nx-a: 1\r\nX-B: 3\r\nCookie: a=1; b=2\r\n\r\n")
    body = c.read_response()[3]
    assert json.loads(body) == [["Host", "h"], ["X-B", "2"], ["x-a", "1"], ["X-B", "3"], ["Cookie", "a=1; b=2"]]


def test_hop_by_hop_response(srv, raw):
    c = raw()
    c.send(b"GET /hop HTTP/1.1\r\nHost: h\r\n\r\n")
    status, h, headers, body = c.read_response()
    assert status == 200 and body == b"hop\n"
    names = [k.lower() for k, _ in headers]
    for hop in (b"connection", b"keep-alive", b"x-hop", b"proxy-connection", b"trailer", b"upgrade"):
        assert hop in names
    assert h[b"connection"] == b"close, X-Hop" and h[b"x-end"] == b"1"
    assert c.at_eof()


def test_expect_continue(srv, raw):
    c = raw()
    c.send(b"POST /echo HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
    assert c.read_until(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
    c.send(b"data")
    status, _, _, body = c.read_response()
    assert status == 200 and body == b"data"
    assert srv.requests[0].expect_continue
    # without a body there is nothing to continue: no 100
    c.send(b"GET / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n")
    assert c.read_response()[0] == 200
    with httpx.Client() as cl:  # httpx sends the body at once: still answered correctly
        r = cl.post(srv.url + "/echo", content=b"abc", headers={"Expect": "100-continue"})
        assert r.status_code == 200 and r.content == b"abc"


def test_expect_reject(srv, raw):
    c = raw()
    c.send(b"PUT /expect-reject HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 1000000\r\n\r\n")
    status, h, _, _ = c.read_response()
    assert status == 417 and h[b"connection"] == b"close"
    assert c.at_eof()
    assert srv.requests[0].body_len == 0


def test_websocket_upgrade_and_tunnel(srv, raw):
    key = base64.b64encode(os.urandom(16))
    c = raw()
    c.send(
        b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n"
        b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\nearly"
    )
    status, h, _, _ = c.read_response()
    assert status == 101
    assert h[b"sec-websocket-accept"] == websocket_accept(key).encode()
    assert h[b"upgrade"] == b"websocket"
    assert c.read_exact(5) == b"early"
    frame = b"\x81\x85" + os.urandom(4) + b"hello"  # any bytes: the tunnel does not parse
    c.send(frame)
    assert c.read_exact(len(frame)) == frame
    blob = os.urandom(300_000)
    c.send(blob)
    assert c.read_exact(len(blob)) == blob
    c.sock.shutdown(socket.SHUT_WR)
    assert c.at_eof()
    assert srv.connections[0].upgraded
    assert websocket_accept("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455 §1.3


def test_websocket_refused_connection_goes_on(srv, raw):
    c = raw()
    c.send(b"GET /ws HTTP/1.1\r\nHost: h\r\n\r\n")
    status, h, _, _ = c.read_response()
    assert status == 426 and h[b"upgrade"] == b"websocket"
    # an upgrade request to a path that does not upgrade: answered, then HTTP goes on
    c.send(
        b"GET /plain HTTP/1.1\r\nHost: h\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"
        b"GET /after HTTP/1.1\r\nHost: h\r\n\r\n"
    )
    assert json.loads(c.read_response()[3])["path"] == "/plain"
    assert json.loads(c.read_response()[3])["path"] == "/after"
    c.send(b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
    assert c.read_response()[0] == 400  # no Sec-WebSocket-Key
    assert srv.connection_count == 1 and not srv.connections[0].upgraded


def test_keepalive_leftover(srv, raw):
    c = raw()
    c.send(b"GET /keepalive-leftover HTTP/1.1\r\nHost: h\r\n\r\n")
    head = c.read_until(b"\r\n\r\n")
    assert b"Content-Length: 2\r\n" in head
    assert c.read_exact(4) == b"okXX"
    assert not c.at_eof(timeout=0.2)  # stays open: a proxy must close it, not reuse it


def test_stats_endpoint(srv):
    with httpx.Client() as cl:
        cl.get(srv.url + "/")
        assert cl.get(srv.url + "/__backend/stats").json() == {
            "backend": "b1",
            "connections": 1,
            "open": 1,
            "requests": 2,
        }


# -- lifecycle ----------------------------------------------------------------------------


def test_record_false_keeps_counts_only():
    with BackendServer(name="soak", record=False) as s:
        with httpx.Client() as cl:
            for _ in range(5):
                assert cl.post(s.url + "/echo", content=b"abc").content == b"abc"
        assert s.request_count == 5 and s.requests == []
        (conn,) = s.connections
        assert conn.raw == b"" and conn.raw_len > 0 and conn.requests == []


def test_stop_aborts_and_port_can_be_reused():
    srv = BackendServer(name="tmp").start()
    port = srv.port
    c = Raw(port)
    c.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    c.read_response()
    srv.stop()
    assert c.at_eof()
    c.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    with BackendServer(name="again", port=port) as again:
        assert httpx.get(again.url + "/").json()["backend"] == "again"


def test_bind_failure_raises():
    with BackendServer(name="a") as a:
        with pytest.raises(OSError):
            BackendServer(name="b", port=a.port).start()


def test_subprocess_mode():
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.backend", "--name", "sub", "--port", "0", "--print-port"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        line = proc.stdout.readline()
        port = int(line)
        r = httpx.get("http://127.0.0.1:%d/x" % port, timeout=5)
        assert r.json()["backend"] == "sub" and r.headers["x-backend"] == "sub"
        assert httpx.get("http://127.0.0.1:%d/__backend/stats" % port).json()["requests"] == 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
