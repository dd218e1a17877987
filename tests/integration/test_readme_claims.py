"""README / docs claims exercised through a real ``python -m fastlb run`` process.

Each test names the claim it checks (README.md, docs/configuration.md,
docs/operations.md, docs/http-parsing.md) and asserts only through sockets, the
process's log and its exit code. Timing assertions are one-sided where a slow
machine could only make them pass later (an observed close is never earlier than
the real one), and every wait is bounded.
"""

import json
import signal
import socket
import threading
import time

import httpx
import pytest

from tests.integration.conftest import pool_doc
from tests.support.backend import BackendServer
from tests.support.wait import wait_for

# --------------------------------------------------------------------------- helpers


def read_until_end(sock, timeout=8.0):
    """Read until the peer closes. Returns (bytes, how): how is "eof", "reset" or "timeout"."""
    out = bytearray()
    end = time.monotonic() + timeout
    while True:
        left = end - time.monotonic()
        if left <= 0:
            return bytes(out), "timeout"
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except socket.timeout:
            return bytes(out), "timeout"
        except ConnectionResetError:
            return bytes(out), "reset"
        if not data:
            return bytes(out), "eof"
        out += data


def read_head(sock, buf=b"", timeout=8.0):
    """Read until a blank line; returns (head incl. CRLFCRLF, rest)."""
    data = bytearray(buf)
    end = time.monotonic() + timeout
    while b"\r\n\r\n" not in data:
        left = end - time.monotonic()
        if left <= 0:
            raise AssertionError("no complete head within %.0fs: %r" % (timeout, bytes(data[:300])))
        sock.settimeout(left)
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError("connection closed before a complete head: %r" % bytes(data[:300]))
        data += chunk
    head, sep, rest = bytes(data).partition(b"\r\n\r\n")
    return head + sep, rest


def parse_head(head):
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(b":")
            headers.setdefault(k.strip().lower(), v.strip())
    return lines[0], status, headers


def read_response(sock, buf=b"", timeout=8.0):
    """One Content-Length framed response (what fastlb's errors and the raw backends use).
    Returns (status line, status, headers, body, rest)."""
    head, rest = read_head(sock, buf, timeout)
    line, status, headers = parse_head(head)
    n = int(headers.get(b"content-length", b"0"))
    data = bytearray(rest)
    end = time.monotonic() + timeout
    while len(data) < n:
        left = end - time.monotonic()
        assert left > 0, "body cut: %d of %d" % (len(data), n)
        sock.settimeout(left)
        chunk = sock.recv(65536)
        assert chunk, "body cut: %d of %d" % (len(data), n)
        data += chunk
    return line, status, headers, bytes(data[:n]), bytes(data[n:])


def connect(proc, listener=None):
    return socket.create_connection(("127.0.0.1", proc.ports[listener] if listener else proc.port), timeout=10)


class RawBackend:
    """A raw TCP backend (thread per connection) for responses BackendServer cannot
    send. ``handler(sock, state)`` serves one connection; ``accepted`` counts them."""

    def __init__(self, handler):
        self.handler = handler
        self.ls = socket.socket()
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(16)
        self.ls.settimeout(0.2)
        self.address = "127.0.0.1:%d" % self.ls.getsockname()[1]
        self.accepted = 0
        self.errors = []
        self.socks = []
        self.stopped = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self.stopped:
            try:
                s, _ = self.ls.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.accepted += 1
            self.socks.append(s)
            threading.Thread(target=self._run, args=(s,), daemon=True).start()

    def _run(self, s):
        s.settimeout(10)
        try:
            self.handler(s)
        except Exception as exc:  # reported by the test
            self.errors.append(repr(exc))
        finally:
            try:
                s.close()
            except OSError:
                pass

    def stop(self):
        self.stopped = True
        self.ls.close()
        for s in self.socks:
            try:
                s.close()
            except OSError:
                pass
        self.thread.join(5)


@pytest.fixture
def raw_backend():
    made = []

    def make(handler):
        b = RawBackend(handler)
        made.append(b)
        return b

    yield make
    for b in made:
        b.stop()


@pytest.fixture
def named_backends():
    """Four recording backends: exact, wild, apex, default."""
    started = []
    try:
        for name in ("exact", "wild", "apex", "default"):
            started.append(BackendServer(name=name).start())
        yield started
    finally:
        for b in started:
            b.stop()


# ====================================================================== 1. host routing
# README "Routing by host (exact or *.domain)"; configuration.md routes[j].host:
# "*.example.com matches any subdomain of example.com (not example.com itself)",
# case-insensitive, port ignored, first match wins; no match -> 404 with JSON.


def test_host_routes_exact_wildcard_apex_default_and_404(fastlb, named_backends):
    exact, wild, apex, default = named_backends
    doc = pool_doc([exact])
    doc["pools"] = {
        "exact": {"backends": [exact.address]},
        "wild": {"backends": [wild.address]},
        "apex": {"backends": [apex.address]},
        "default": {"backends": [default.address]},
    }
    host_routes = [
        {"host": "api.example.com", "pool": "exact"},  # before the wildcard: first match wins
        {"host": "*.example.com", "pool": "wild"},
    ]
    doc["listeners"] = [
        # no catch-all: an unmatched host is a 404
        {"name": "strict", "bind": "127.0.0.1:0", "routes": list(host_routes)},
        # with the apex and a catch-all route
        {"name": "full", "bind": "127.0.0.1:0",
         "routes": host_routes + [{"host": "example.com", "pool": "apex"}, {"pool": "default"}]},
    ]
    proc = fastlb(doc)

    def backend_for(listener, host):
        r = httpx.get(proc.url("/route-check", listener=listener), headers={"Host": host}, timeout=10)
        return r.status_code, r.headers.get("x-backend"), r

    expected_full = {
        "api.example.com": "exact",
        "API.Example.COM:8080": "exact",  # case-insensitive, port ignored
        "a.example.com": "wild",
        "x.y.example.com": "wild",  # "any subdomain": * spans several labels
        "deep.er.x.y.example.com": "wild",
        "B.EXAMPLE.com:9": "wild",
        "example.com": "apex",  # the wildcard does not match the domain itself
        "xexample.com": "default",  # a suffix match without the dot is not a subdomain
        "example.com.evil.org": "default",
        "other.org": "default",
    }
    got = {host: backend_for("full", host)[:2] for host in expected_full}
    assert got == {h: (200, name) for h, name in expected_full.items()}

    for host, name in (("api.example.com", "exact"), ("a.example.com", "wild"), ("x.y.example.com", "wild")):
        assert backend_for("strict", host)[:2] == (200, name), host
    for host in ("example.com", "xexample.com", "other.org"):
        status, backend, r = backend_for("strict", host)
        assert (status, backend) == (404, None), (host, status, backend)
        assert r.headers["content-type"] == "application/json"
        body = r.json()
        assert body["error"] and body["request_id"] == r.headers["x-request-id"]

    # the Host the backend saw is the client's (README: "Host preserved")
    assert wild.requests[0].header("host") == b"a.example.com"
    assert [b.request_count for b in named_backends] == [3, 6, 1, 3]


# ====================================================================== 2. idle upstream connections
# README "idle ones are capped and expire"; configuration.md limits.max_idle_per_backend
# ("0 disables backend keep-alive") and timeouts.upstream_idle ("The connection is closed.").


def _concurrent_gets(proc, path, n):
    """n requests at once, each on its own client connection; returns their statuses."""
    results = [None] * n

    def one(i):
        try:
            with socket.create_connection(("127.0.0.1", proc.port), timeout=10) as s:
                s.sendall(b"GET %s HTTP/1.1\r\nHost: h\r\n\r\n" % path)
                results[i] = read_response(s)[1]
        except Exception as exc:
            results[i] = repr(exc)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    return results


@pytest.mark.parametrize("cap", [2, 0])
def test_max_idle_per_backend_caps_open_upstream_connections(fastlb, backends, cap):
    b = backends[0]
    proc = fastlb(pool_doc([b], limits={"max_idle_per_backend": cap}))
    n = 5
    # /slow keeps all five in flight together: fastlb needs five upstream connections
    assert _concurrent_gets(proc, b"/slow?delay=0.5", n) == [200] * n
    assert b.connection_count == n, b.connections
    # the released connections beyond the cap are closed, the rest stay pooled
    assert wait_for(lambda: b.open_connection_count <= cap, timeout=5), b.connections
    time.sleep(0.3)
    assert b.open_connection_count == cap, b.connections
    # the pooled ones are reused (cap 2); with cap 0 every request connects anew
    with httpx.Client(timeout=10) as client:
        for _ in range(2):
            assert client.get(proc.url("/after")).status_code == 200
    assert b.connection_count == (n if cap else n + 2), b.connections
    assert wait_for(lambda: b.open_connection_count == cap, timeout=5), b.connections


def test_upstream_idle_expires_pooled_connections(fastlb, backends):
    b = backends[0]
    proc = fastlb(pool_doc([b], timeouts={"upstream_idle": "1s"}))
    t_sent = time.monotonic()
    assert _concurrent_gets(proc, b"/slow?delay=0.3", 3) == [200] * 3
    assert b.connection_count == 3
    # Released no earlier than t_sent + 0.3 (the backend's delay), so an expiry after 1 s
    # cannot close any before t_sent + 1.3; the first close we observe is never earlier.
    first_close = None
    end = time.monotonic() + 10
    while time.monotonic() < end and b.open_connection_count:
        if first_close is None and b.open_connection_count < 3:
            first_close = time.monotonic()
        time.sleep(0.02)
    if first_close is None and b.open_connection_count < 3:
        first_close = time.monotonic()
    assert b.open_connection_count == 0, "idle upstream connections not closed after upstream_idle: %r" % (
        b.connections,)
    assert first_close - t_sent >= 1.0, "pooled connection closed %.2fs after the request, before 1s idle" % (
        first_close - t_sent)
    # the next request still works, on a new connection
    r = httpx.get(proc.url("/again"), timeout=10)
    assert r.status_code == 200 and r.json()["conn"] == 3
    assert b.connection_count == 4


# ====================================================================== 3. tunnel inactivity
# configuration.md timeouts.tunnel: "Inactivity on an upgraded (WebSocket) connection ...
# on expiry: Both sides are closed."

WS_REQUEST = (b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def test_tunnel_timeout_closes_idle_websocket_both_sides(fastlb, backends):
    b = backends[0]
    proc = fastlb(pool_doc([b], timeouts={"tunnel": "1.5s"}))
    s = connect(proc)
    s.sendall(WS_REQUEST)
    head, rest = read_head(s)
    assert head.startswith(b"HTTP/1.1 101"), head
    assert rest == b""
    # traffic for well over the timeout keeps the tunnel alive
    start = time.monotonic()
    i = 0
    while time.monotonic() - start < 2.5:
        msg = b"ping-%03d" % i
        s.sendall(msg)
        got = b""
        s.settimeout(5)
        while len(got) < len(msg):
            chunk = s.recv(4096)
            assert chunk, "tunnel closed after %.2fs despite traffic every 0.2s (timeout 1.5s)" % (
                time.monotonic() - start)
            got += chunk
        assert got == msg
        last = time.monotonic()
        i += 1
        time.sleep(0.2)
    # now silence: fastlb closes the client side ...
    data, how = read_until_end(s, timeout=10)
    closed_after = time.monotonic() - last
    assert how in ("eof", "reset"), "idle tunnel still open %.1fs after the last byte" % closed_after
    assert data == b""
    assert closed_after >= 0.6, "tunnel closed %.2fs after the last byte (timeout 1.5s)" % closed_after
    # ... and the backend side
    assert b.wait_until(lambda srv: all(c.closed for c in srv.connections), timeout=5), b.connections
    assert [c.upgraded for c in b.connections] == [True]
    s.close()
    # the listener still serves
    assert httpx.get(proc.url("/"), timeout=10).status_code == 200


def test_tunnel_kept_alive_by_traffic_in_either_direction_alone(fastlb, raw_backend):
    """One direction at a time, each for longer than the timeout: bytes from the client
    alone, then bytes from the backend alone, each keep the tunnel open; then silence
    closes it on both sides."""
    events = {}

    def handler(s):
        read_head(s)
        s.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        got = b""
        while not got.endswith(b"!"):  # phase 1: the client talks, the backend is silent
            chunk = s.recv(4096)
            if not chunk:
                events["phase1_eof"] = got
                return
            got += chunk
        s.sendall(b"alive-1")
        for _ in range(13):  # phase 2: the backend talks, the client is silent
            time.sleep(0.2)
            s.sendall(b"b")
        s.sendall(b"!")
        got = b""
        while len(got) < 7:
            chunk = s.recv(4096)
            if not chunk:
                events["phase2_eof"] = got
                return
            got += chunk
        events["alive-2"] = got
        s.settimeout(15)
        events["end"] = s.recv(4096)  # silence: fastlb closes the backend side
        events["end_at"] = time.monotonic()

    backend = raw_backend(handler)
    proc = fastlb(pool_doc([], extra_backends=[backend.address], retries=0, timeouts={"tunnel": "1.5s"}))
    s = connect(proc)
    s.sendall(b"GET /t HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
    head, rest = read_head(s)
    assert head.startswith(b"HTTP/1.1 101"), head
    for _ in range(13):  # 2.6 s of client bytes only
        time.sleep(0.2)
        s.sendall(b"c")
    s.sendall(b"!")
    got = rest
    s.settimeout(8)
    while not got.endswith(b"!"):
        chunk = s.recv(4096)
        assert chunk, "tunnel closed: %r, backend %r" % (got, events)
        got += chunk
    assert got == b"alive-1" + b"b" * 13 + b"!", got
    last = time.monotonic()
    s.sendall(b"alive-2")
    data, how = read_until_end(s, timeout=10)
    assert how in ("eof", "reset") and data == b"", (data, how)
    assert time.monotonic() - last >= 0.6
    assert wait_for(lambda: "end_at" in events, timeout=5), events
    assert events["alive-2"] == b"alive-2" and events["end"] == b"", events
    assert not backend.errors, backend.errors
    s.close()


# ====================================================================== 4. drain timeout
# operations.md "Stopping": "after timeouts.drain whatever is still open is reset ... the
# process exits 0"; configuration.md timeouts.drain "Connections still open are reset;
# fastlb exits 0". (test_lifecycle.py drains slow *readers*; this is a slow *backend*
# that has sent nothing, and the log line.)


def test_drain_timeout_cuts_a_request_that_outlives_it(fastlb, backends):
    b = backends[0]
    proc = fastlb(pool_doc([b], timeouts={"drain": "1s"}))
    s = connect(proc)
    s.sendall(b"GET /slow?delay=30 HTTP/1.1\r\nHost: h\r\n\r\n")
    assert b.wait_until(lambda srv: srv.request_count == 1, timeout=5)
    t0 = time.monotonic()
    proc.proc.send_signal(signal.SIGTERM)
    code = proc.proc.wait(15)
    elapsed = time.monotonic() - t0
    assert code == 0
    assert elapsed >= 0.9, "exited %.2fs after SIGTERM, before the 1s drain" % elapsed
    assert elapsed < 10, elapsed
    data, how = read_until_end(s, timeout=5)
    assert how in ("eof", "reset"), how
    assert data == b"", "client got bytes instead of a cut connection: %r" % data[:200]
    out = proc.read_output(0.5)
    assert "SIGTERM: draining" in out, out
    assert "drain timeout" in out and "1 connection" in out, out


# ====================================================================== 5. SIGINT
# README "Graceful shutdown: SIGTERM/SIGINT stop accepting, let in-flight requests finish
# ... exit 0"; operations.md "Both signals drain gracefully" (steps 1-6).


def test_sigint_drains_like_sigterm(fastlb, backends):
    b = backends[0]
    proc = fastlb(pool_doc([b], timeouts={"drain": "10s"}))
    idle = connect(proc)  # a kept-alive client connection between requests
    idle.sendall(b"GET /first HTTP/1.1\r\nHost: h\r\n\r\n")
    assert read_response(idle)[1] == 200
    result = {}

    def in_flight():
        try:
            with socket.create_connection(("127.0.0.1", proc.port), timeout=10) as s:
                s.sendall(b"GET /slow?delay=2 HTTP/1.1\r\nHost: h\r\n\r\n")
                result["resp"] = read_response(s, timeout=15)
                result["end"] = read_until_end(s, timeout=10)[1]
        except Exception as exc:
            result["error"] = repr(exc)

    t = threading.Thread(target=in_flight, daemon=True)
    t.start()
    assert b.wait_until(lambda srv: srv.request_count == 2, timeout=5)
    port = proc.port
    proc.proc.send_signal(signal.SIGINT)
    # the idle connection is closed quietly
    data, how = read_until_end(idle, timeout=8)
    assert (data, how) in ((b"", "eof"), (b"", "reset")), (data[:200], how)
    # new connections are refused while the request is still in flight
    def refused():
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return False
        except OSError:
            return True

    assert wait_for(refused, timeout=5), "listener still accepting after SIGINT"
    t.join(20)
    assert "error" not in result, result
    line, status, headers, body, _ = result["resp"]
    assert status == 200 and json.loads(body)["path"] == "/slow"
    assert headers.get(b"connection") == b"close"
    assert result["end"] in ("eof", "reset")
    assert proc.proc.wait(15) == 0
    out = proc.read_output(0.5)
    assert "SIGINT: draining" in out, out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out
    assert "drain timeout" not in out, out


# ====================================================================== 6. 414 / 431 / 501 / 505
# README "rejected with 400/414/431/501/505 and the connection closed; nothing reaches a
# backend"; configuration.md limits.*; http-parsing.md §2, §3, §6; operations.md table.

LIMITS = {"max_request_line": 200, "max_header_bytes": 600, "max_header_fields": 8}


def _request_line_of(length, version=b"HTTP/1.1"):
    """``GET /aaa... HTTP/1.1`` exactly ``length`` bytes long (CRLF excluded)."""
    fixed = len(b"GET /") + 1 + len(version)
    return b"GET /" + b"a" * (length - fixed) + b" " + version


def _head_of_size(total):
    """A request head of exactly ``total`` bytes (blank line included), 4 fields, each
    line within the 200-byte line limit."""
    start = b"GET /head-size HTTP/1.1\r\nHost: h\r\n"
    pad_room = total - len(start) - 2  # final CRLF
    lines = []
    for k in range(3):
        share = pad_room // (3 - k)
        name = b"X-Pad-%d: " % k
        lines.append(name + b"p" * (share - len(name) - 2) + b"\r\n")
        pad_room -= share
    head = start + b"".join(lines) + b"\r\n"
    assert len(head) == total and all(len(line) - 2 <= 200 for line in lines)
    return head


def _fields(n):
    return b"GET /fields HTTP/1.1\r\nHost: h\r\n" + b"".join(b"X-F%d: v\r\n" % i for i in range(n - 1)) + b"\r\n"


def _field_line(length):
    name = b"X-Long: "
    return b"GET /field-line HTTP/1.1\r\nHost: h\r\n" + name + b"v" * (length - len(name)) + b"\r\n\r\n"


CHUNKED_BODY = b"5\r\nhello\r\n0\r\n\r\n"

LIMIT_CASES = {
    # name: (rejected request, status, the same just within the limit, path the backend sees)
    "request-line-414": (_request_line_of(201) + b"\r\nHost: h\r\n\r\n", 414,
                         _request_line_of(200) + b"\r\nHost: h\r\n\r\n", "/" + "a" * (200 - 14)),
    "header-bytes-431": (_head_of_size(601), 431, _head_of_size(600), "/head-size"),
    "header-fields-431": (_fields(9), 431, _fields(8), "/fields"),
    "field-line-431": (_field_line(201), 431, _field_line(200), "/field-line"),
    "te-gzip-chunked-501": (
        b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n" + CHUNKED_BODY, 501,
        b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n" + CHUNKED_BODY, "/echo"),
    "te-deflate-chunked-501": (
        b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: deflate\r\nTransfer-Encoding: chunked\r\n\r\n"
        + CHUNKED_BODY, 501,
        b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n" + CHUNKED_BODY, "/echo"),
    "http-1.2-505": (b"GET /v HTTP/1.2\r\nHost: h\r\n\r\n", 505, b"GET /v HTTP/1.1\r\nHost: h\r\n\r\n", "/v"),
    "http-2.0-505": (b"GET /v HTTP/2.0\r\nHost: h\r\n\r\n", 505, b"GET /v HTTP/1.0\r\nHost: h\r\n\r\n", "/v"),
}


@pytest.mark.parametrize("case", sorted(LIMIT_CASES))
def test_limit_and_input_errors_answered_closed_and_never_forwarded(fastlb, backends, case):
    rejected, status, accepted, path = LIMIT_CASES[case]
    b = backends[0]
    proc = fastlb(pool_doc([b], limits=LIMITS))

    s = connect(proc)
    s.sendall(rejected)
    line, got, headers, body, rest = read_response(s)
    assert got == status, (line, body)
    assert headers[b"content-type"] == b"application/json"
    err = json.loads(body)
    assert err["error"] and err["request_id"] == headers[b"x-request-id"].decode()
    assert headers.get(b"connection") == b"close"
    tail, how = read_until_end(s, timeout=8)
    assert rest + tail == b"" and how == "eof", "connection not closed after %d: %r %s" % (status, tail, how)
    s.close()
    time.sleep(0.2)
    assert b.connection_count == 0 and b.request_count == 0, "rejected request reached the backend: %r" % (
        b.connections,)
    assert "%d from client" % status in proc.read_output(0.3)

    # the same request within the limit (or with the supported framing / version) is forwarded
    s = connect(proc)
    s.sendall(accepted)
    line, got, headers, body, _ = read_response(s)
    assert got == 200, (line, body)
    assert headers[b"x-backend"] == b"b1"
    s.close()
    (req,) = b.requests
    assert req.path == path
    if path == "/echo":
        assert body == b"hello" and req.body == b"hello"


# ====================================================================== 7. 1xx relayed
# README "1xx ... handled"; proxy relays 1xx interim responses to HTTP/1.1 clients
# (RFC 9110 §15.2) before the final response, keep-alive intact.


def test_1xx_early_hints_and_processing_relayed_before_final(fastlb, raw_backend):
    gate = threading.Event()  # the client has seen the interim response
    sent_final = []

    def handler(s):
        buf = b""
        while True:
            data = bytearray(buf)
            while b"\r\n\r\n" not in data:
                chunk = s.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, buf = bytes(data).partition(b"\r\n\r\n")
            target = head.split(b" ", 2)[1]
            if target == b"/hints":
                s.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n")
                gate.wait(5)  # hold the final response until the client read the 103
                sent_final.append(target)
                s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            elif target == b"/processing":
                s.sendall(b"HTTP/1.1 102 Processing\r\n\r\n"
                          b"HTTP/1.1 103 Early Hints\r\nLink: </b.js>; rel=preload; as=script\r\n\r\n"
                          b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok2")
            else:  # an HTTP/1.0 client's request
                s.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </c.css>; rel=preload\r\n\r\n"
                          b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok3")

    backend = raw_backend(handler)
    proc = fastlb(pool_doc([], extra_backends=[backend.address], retries=0))
    s = connect(proc)
    s.sendall(b"GET /hints HTTP/1.1\r\nHost: h\r\n\r\n")
    head, rest = read_head(s)
    # the 103 arrives while the backend still holds the 200: relayed as it comes
    assert not sent_final
    line, status, headers = parse_head(head)
    assert line == b"HTTP/1.1 103 Early Hints", head
    assert headers.get(b"link") == b"</a.css>; rel=preload", head
    gate.set()
    line, status, headers, body, rest = read_response(s, rest)
    assert (status, body, rest) == (200, b"ok", b"")

    # the same client connection serves the next request: 102 and 103, then the 200
    s.sendall(b"GET /processing HTTP/1.1\r\nHost: h\r\n\r\n")
    heads = []
    buf = b""
    for _ in range(2):
        head, buf = read_head(s, buf)
        heads.append(parse_head(head))
    assert [h[0] for h in heads] == [b"HTTP/1.1 102 Processing", b"HTTP/1.1 103 Early Hints"], heads
    assert heads[1][2].get(b"link") == b"</b.js>; rel=preload; as=script"
    line, status, headers, body, rest = read_response(s, buf)
    assert (status, body, rest) == (200, b"ok2", b"")
    s.close()
    # one upstream connection served both exchanges (reusable after the 1xx)
    assert backend.accepted == 1

    # HTTP/1.0 clients get no 1xx (RFC 9110 §15.2)
    s = connect(proc)
    s.sendall(b"GET /old HTTP/1.0\r\nHost: h\r\n\r\n")
    data, how = read_until_end(s)
    assert how == "eof"
    assert data.startswith(b"HTTP/1.1 200 OK\r\n") and b" 103 " not in data and data.endswith(b"ok3"), data
    assert not backend.errors, backend.errors
