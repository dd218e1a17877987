"""The proxy data path end to end: a real fastlb process, real backends, real clients."""

import json
import re
import signal
import socket
import threading
import time

import httpx
import pytest

from tests.integration.conftest import free_port, pool_doc
from tests.support.fastlb_proc import ResponseReader, read_response, recv_until_closed


@pytest.fixture
def lb(fastlb, backends):
    return fastlb(pool_doc(backends))


@pytest.fixture
def one(fastlb, backends):
    """fastlb in front of a single backend (backends[0])."""
    return fastlb(pool_doc(backends[:1]))


def raw(proc, data, timeout=10.0):
    s = proc.connect()
    s.sendall(data)
    return s


# --------------------------------------------------------------------------- basics
def test_round_robin_spreads_requests_by_weight(fastlb, backends):
    proc = fastlb(pool_doc(backends, weights={0: 2}))
    with httpx.Client() as client:
        names = [client.get(proc.url("/")).headers["x-backend"] for _ in range(40)]
    assert {n: names.count(n) for n in set(names)} == {"b1": 20, "b2": 10, "b3": 10}
    # Smooth (nginx): weights 2,1,1 interleave as b1 b2 b3 b1, never b1 b1 in a row.
    assert names[:4] == ["b1", "b2", "b3", "b1"]


def test_keep_alive_reuses_backend_connections(one, backends):
    b = backends[0]
    with httpx.Client() as client:
        for i in range(30):
            assert client.get(one.url("/n%d" % i)).status_code == 200
    assert b.request_count == 30
    assert b.connection_count == 1  # one upstream connection, reused 30 times


def test_forwarding_headers_and_host_preserved(one, backends):
    r = httpx.get(one.url("/headers"), headers={"Host": "api.example.com", "X-Forwarded-For": "203.0.113.7"})
    assert r.status_code == 200
    got = {}
    for name, value in r.json():
        got.setdefault(name.lower(), []).append(value)
    assert got["host"] == ["api.example.com"]
    # the client is not a trusted proxy: its X-Forwarded-For is replaced by its address
    assert got["x-forwarded-for"] == ["127.0.0.1"]
    assert got["x-forwarded-proto"] == ["http"]
    (rid,) = got["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", rid)
    # A client's own request id is kept, not replaced.
    r = httpx.get(one.url("/headers"), headers={"X-Request-ID": "client-chosen-42"})
    ids = [v for n, v in r.json() if n.lower() == "x-request-id"]
    assert ids == ["client-chosen-42"]


def test_hop_by_hop_headers_removed_both_ways(one, backends):
    req = (b"GET /headers HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\n"
           b"Keep-Alive: timeout=5\r\nTE: trailers\r\nTrailer: X-T\r\nProxy-Connection: keep-alive\r\n"
           b"Upgrade: foo\r\nX-Kept: yes\r\n\r\n")
    s = raw(one, req)
    resp, body = read_response(s)
    names = [n.lower() for n, _ in json.loads(body)]
    for hop in ("connection", "x-secret", "keep-alive", "te", "trailer", "proxy-connection", "upgrade"):
        assert hop not in names, hop
    assert "x-kept" in names
    # Response side: /hop sends Connection: close, X-Hop / Keep-Alive / Proxy-Connection / Trailer / Upgrade.
    s.sendall(b"GET /hop HTTP/1.1\r\nHost: h\r\n\r\n")
    reader = ResponseReader(s)
    resp, _ = reader.next()
    rnames = {n.decode().lower() for n, _ in resp.headers}
    for hop in ("x-hop", "keep-alive", "proxy-connection", "trailer", "upgrade"):
        assert hop not in rnames, hop
    assert "x-end" in rnames
    # The backend closing its side does not close ours: the client connection stays usable.
    assert ("connection", "close") not in {(n.decode().lower(), v.decode().lower()) for n, v in resp.headers}
    s.sendall(b"GET /after HTTP/1.1\r\nHost: h\r\n\r\n")
    resp, _ = reader.next()
    assert resp.status_code == 200
    s.close()


# ------------------------------------------------------------------------ framing
def test_pipelined_requests_answered_in_order(one):
    paths = ["/p%d" % i for i in range(8)]
    data = b"".join(b"GET %s HTTP/1.1\r\nHost: h\r\n\r\n" % p.encode() for p in paths)
    data += b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
    data += b"GET /last HTTP/1.1\r\nHost: h\r\n\r\n"
    s = raw(one, data)
    reader = ResponseReader(s)
    for p in paths:
        resp, body = reader.next()
        assert json.loads(body)["path"] == p
    resp, body = reader.next("POST")
    assert body == b"hello"
    resp, body = reader.next()
    assert json.loads(body)["path"] == "/last"
    s.close()


def test_head_204_304_framing(one):
    s = raw(one, b"HEAD /size?n=1000 HTTP/1.1\r\nHost: h\r\n\r\n"
                 b"GET /status?code=204 HTTP/1.1\r\nHost: h\r\n\r\n"
                 b"GET /status?code=304 HTTP/1.1\r\nHost: h\r\n\r\n"
                 b"GET /size?n=10 HTTP/1.1\r\nHost: h\r\n\r\n")
    reader = ResponseReader(s)
    resp, body = reader.next("HEAD")
    assert resp.status_code == 200 and body == b""
    assert dict(resp.headers)[b"content-length"] == b"1000"
    resp, body = reader.next()
    assert resp.status_code == 204 and body == b""
    resp, body = reader.next()
    assert resp.status_code == 304 and body == b""
    resp, body = reader.next()
    assert resp.status_code == 200 and len(body) == 10
    s.close()


def test_chunked_upload_is_reframed_and_delivered(one, backends):
    def gen():
        for i in range(50):
            yield (b"%04d" % i) * 1000
    r = httpx.post(one.url("/echo"), content=gen())
    assert r.status_code == 200
    assert r.content == b"".join((b"%04d" % i) * 1000 for i in range(50))
    # Raw chunked with extensions and a trailer: the backend gets clean chunked framing.
    s = raw(one, b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n")
    resp, body = read_response(s)
    assert resp.status_code == 200 and body == b"hello world"
    rec = backends[0].requests[-1]
    assert rec.header("transfer-encoding") == b"chunked" and rec.header("content-length") is None
    s.close()


def test_chunked_and_close_delimited_responses_reframed_for_http11(one):
    with httpx.Client() as client:
        r = client.get(one.url("/size?n=300000&chunked=1"))
        assert len(r.content) == 300000 and r.headers["transfer-encoding"] == "chunked"
        r = client.get(one.url("/size?n=300000&close=1"))
        assert len(r.content) == 300000 and r.headers["transfer-encoding"] == "chunked"
        # the client connection survived the backend's close: still one connection
        assert client.get(one.url("/")).status_code == 200


def test_http10_client_gets_close_delimited_body(one):
    s = raw(one, b"GET /size?n=5000&chunked=1 HTTP/1.0\r\n\r\n")
    data = recv_until_closed(s)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"transfer-encoding" not in head.lower()
    assert len(body) == 5000


def test_expect_100_continue(one):
    s = raw(one, b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
    s.settimeout(5)
    first = s.recv(100)
    assert first.startswith(b"HTTP/1.1 100 Continue\r\n")
    s.sendall(b"body")
    data = first
    while b"body" not in data.split(b"\r\n\r\n", 2)[-1]:
        chunk = s.recv(65536)
        assert chunk
        data += chunk
    assert b"HTTP/1.1 200" in data
    s.close()


def test_expect_rejected_by_backend_closes(one):
    s = raw(one, b"POST /expect-reject HTTP/1.1\r\nHost: h\r\nContent-Length: 1000\r\nExpect: 100-continue\r\n\r\n")
    data = recv_until_closed(s)
    assert data.startswith(b"HTTP/1.1 417")
    assert b"connection: close" in data.lower()


def test_websocket_tunnel(one, backends):
    key = b"dGhlIHNhbXBsZSBub25jZQ=="
    s = raw(one, b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
    s.settimeout(5)
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(4096)
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101")
    assert b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head  # RFC 6455 §1.3 example key
    assert b"upgrade: websocket" in head.lower()
    for msg in (b"\x81\x05hello", b"binary\x00\xff" * 100):
        s.sendall(msg)
        got = rest
        while len(got) < len(msg):
            got += s.recv(65536)
        assert got == msg
        rest = b""
    s.close()


def test_upgrade_header_without_101_is_a_normal_response(one):
    s = raw(one, b"GET /plain HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
    reader = ResponseReader(s)
    resp, _ = reader.next()
    assert resp.status_code == 200
    s.sendall(b"GET /again HTTP/1.1\r\nHost: h\r\n\r\n")
    resp, body = reader.next()
    assert json.loads(body)["path"] == "/again"
    s.close()


# Large bodies (1 GiB both ways, backpressure) are in test_streams.py.


# ---------------------------------------------------------------------- failures
def _json_error(resp, status):
    assert resp.status_code == status
    body = resp.json()
    assert set(body) == {"error", "request_id"} and body["error"]
    assert body["request_id"] == resp.headers["x-request-id"]
    return body


def test_502_when_backend_refuses(fastlb):
    proc = fastlb(pool_doc([], extra_backends=["127.0.0.1:%d" % free_port()], retries=0))
    _json_error(httpx.get(proc.url("/")), 502)
    assert "connect to 127.0.0.1" in proc.read_output(0.5)


def test_connect_failure_retried_on_another_backend(fastlb, backends):
    proc = fastlb(pool_doc(backends[:1], extra_backends=["127.0.0.1:%d" % free_port()]))
    with httpx.Client() as client:
        assert all(client.get(proc.url("/")).status_code == 200 for _ in range(10))


def test_502_when_backend_resets_or_sends_half_a_head(one):
    with httpx.Client() as client:
        _json_error(client.get(one.url("/reset")), 502)
        _json_error(client.get(one.url("/halfhead")), 502)
        assert client.get(one.url("/")).status_code == 200


def test_503_when_no_backend_is_usable(fastlb, backends):
    proc = fastlb(pool_doc(backends[:2], admin=True))
    admin = "http://127.0.0.1:%d" % proc.admin_port
    for b in backends[:2]:
        r = httpx.post(admin + "/api/v1/pools/p/backends/%s/disable" % b.address,
                       headers={"Content-Type": "application/json"})
        assert r.status_code == 200 and r.json()["state"] == "disabled"
    _json_error(httpx.get(proc.url("/")), 503)
    httpx.post(admin + "/api/v1/pools/p/backends/%s/enable" % backends[1].address,
               headers={"Content-Type": "application/json"})
    r = httpx.get(proc.url("/"))
    assert r.status_code == 200 and r.headers["x-backend"] == "b2"


def test_504_when_backend_is_too_slow(fastlb, backends):
    proc = fastlb(pool_doc(backends[:1], timeouts={"response": "1s"}))
    # the backend would answer 200 after 5 s: a 504 can only come from the 1 s timeout
    body = _json_error(httpx.get(proc.url("/slow?delay=5"), timeout=10), 504)
    assert "did not respond within 1s" in body["error"]
    assert httpx.get(proc.url("/")).status_code == 200


def test_leftover_bytes_mean_no_reuse(one, backends):
    b = backends[0]
    with httpx.Client() as client:
        r = client.get(one.url("/keepalive-leftover"))
        assert r.content == b"ok"
        assert client.get(one.url("/")).status_code == 200
    # The connection that carried extra bytes was closed, not reused.
    conns = b.connections
    assert len(conns) == 2
    assert [r.path for r in conns[0].requests] == ["/keepalive-leftover"]


def test_stale_pooled_connection_is_retried_transparently(one, backends):
    b = backends[0]
    with httpx.Client() as client:
        assert client.get(one.url("/")).status_code == 200
        assert b.close_idle_connections() == 1
        time.sleep(0.2)
        assert client.get(one.url("/")).status_code == 200


# ----------------------------------------------------------------- client abuse
def test_malformed_request_gets_400_and_nothing_forwarded(one, backends):
    s = raw(one, b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    data = recv_until_closed(s)
    assert data.startswith(b"HTTP/1.1 400 ")
    body = json.loads(data.partition(b"\r\n\r\n")[2])
    assert body["error"]
    assert backends[0].request_count == 0


def test_slowloris_gets_408(fastlb, backends):
    proc = fastlb(pool_doc(backends[:1], timeouts={"client_header": "1s"}))
    s = raw(proc, b"GET / HTTP/1.1\r\nHost: h\r\n")
    for _ in range(3):  # trickling bytes does not extend the deadline
        time.sleep(0.3)
        s.sendall(b"X-A: b\r\n")
    data = recv_until_closed(s, timeout=10)
    assert data.startswith(b"HTTP/1.1 408 ")
    assert b"request head not received within 1s" in data
    assert backends[0].request_count == 0


def test_idle_keepalive_connection_closed_quietly(fastlb, backends):
    proc = fastlb(pool_doc(backends[:1], timeouts={"client_idle": "1s"}))
    s = raw(proc, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    resp, _ = read_response(s)
    assert resp.status_code == 200
    s.settimeout(5)
    assert s.recv(10) == b""  # closed without a response


def test_404_when_no_route_matches(fastlb, backends):
    doc = pool_doc(backends[:1])
    doc["listeners"][0] = {"name": "main", "bind": "127.0.0.1:0",
                           "routes": [{"host": "api.example.com", "path_prefix": "/v1", "pool": "p"}]}
    proc = fastlb(doc)
    assert httpx.get(proc.url("/v1/x"), headers={"Host": "api.example.com:8080"}).status_code == 200
    _json_error(httpx.get(proc.url("/v2/x"), headers={"Host": "api.example.com"}), 404)
    _json_error(httpx.get(proc.url("/v1/x"), headers={"Host": "other.example.com"}), 404)


# ------------------------------------------------------------------------- drain
def test_sigterm_drains_in_flight_requests(fastlb, backends):
    proc = fastlb(pool_doc(backends[:1]))
    results = []

    def slow():
        results.append(httpx.get(proc.url("/slow?delay=1.5"), timeout=10))

    threads = [threading.Thread(target=slow) for _ in range(3)]
    for t in threads:
        t.start()
    assert backends[0].wait_until(lambda b: b.request_count >= 3, timeout=5)
    proc.proc.send_signal(signal.SIGTERM)

    def refused():
        try:
            socket.create_connection(("127.0.0.1", proc.port), timeout=1).close()
            return False
        except OSError:
            return True

    # while the three requests are still in flight, the listener already refuses
    deadline = time.monotonic() + 5
    while not refused() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert refused(), "still accepting after SIGTERM"
    assert proc.proc.poll() is None and not results, "checked only after the drain ended"
    code = proc.terminate(timeout=15)
    for t in threads:
        t.join(10)
    assert code == 0
    assert [r.status_code for r in results] == [200, 200, 200]
    assert all(r.headers.get("connection") == "close" for r in results)


def test_http10_absolute_form_without_host_routes_by_target(fastlb, backends):
    doc = pool_doc(backends[:1])
    doc["listeners"][0] = {"name": "main", "bind": "127.0.0.1:0",
                           "routes": [{"host": "api.example.com", "pool": "p"}]}
    proc = fastlb(doc)
    s = raw(proc, b"GET http://api.example.com/v1/x HTTP/1.0\r\n\r\n")
    data = recv_until_closed(s)
    assert data.startswith(b"HTTP/1.1 200")
    rec = backends[0].requests[-1]
    assert rec.header("host") == b"api.example.com"


def test_504_when_connect_times_out(fastlb):
    # A listener that never accepts, its backlog full: further SYNs are dropped, so a
    # connect hangs exactly as to a blackholed host (on loopback only).
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(0)
    port = ls.getsockname()[1]
    fillers = []
    for _ in range(3):
        f = socket.socket()
        f.setblocking(False)
        try:
            f.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fillers.append(f)
    try:
        proc = fastlb(pool_doc([], extra_backends=["127.0.0.1:%d" % port], retries=0, timeouts={"connect": "1s"}))
        body = _json_error(httpx.get(proc.url("/"), timeout=15), 504)
        assert "timed out after 1s" in body["error"]
    finally:
        for f in fillers:
            f.close()
        ls.close()
