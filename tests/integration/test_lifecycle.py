"""Connection lifecycle regressions: what happens to a client connection after an error,
on half-close, on shutdown, on a stalled reader, in tunnels. Asserted only through
sockets, processes, logs and exit codes (the data path is being rewritten)."""

import hashlib
import json
import os
import signal
import socket
import struct
import subprocess
import threading
import time

import httpx
import pytest

from tests.integration.conftest import FAST_TIMEOUTS, free_port, pool_doc
from tests.support.backend import pattern_sha256
from tests.support.fastlb_proc import ResponseReader, read_response, recv_until_closed
from tests.support.wait import wait_for

# --------------------------------------------------------------------------- helpers


class RawBackend:
    """A raw TCP backend on 127.0.0.1: ``handler(sock, rec)`` runs in a thread per
    connection; ``rec`` is a dict the handler fills (``raw``: bytes received)."""

    def __init__(self, handler):
        self.handler = handler
        self.ls = socket.socket()
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(64)
        self.ls.settimeout(0.2)
        self.address = "127.0.0.1:%d" % self.ls.getsockname()[1]
        self.records = []
        self.socks = []
        self.stopped = False
        self.lock = threading.Lock()
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
            rec = {"raw": bytearray(), "done": threading.Event()}
            with self.lock:
                self.records.append(rec)
                self.socks.append(s)
            threading.Thread(target=self._run, args=(s, rec), daemon=True).start()

    def _run(self, s, rec):
        s.settimeout(10)
        try:
            self.handler(s, rec)
        except OSError as exc:
            rec["error"] = exc
        finally:
            rec["done"].set()
            try:
                s.close()
            except OSError:
                pass

    @property
    def raw_total(self):
        with self.lock:
            return sum(len(r["raw"]) for r in self.records)

    def stop(self):
        self.stopped = True
        self.ls.close()
        with self.lock:
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


def read_head(sock, rec=None, buf=b"", limit=1 << 20):
    """Read until the end of a head; returns (head, rest)."""
    data = bytearray(buf)
    while b"\r\n\r\n" not in data and len(data) < limit:
        chunk = sock.recv(65536)
        if not chunk:
            break
        if rec is not None:
            rec["raw"] += chunk
        data += chunk
    head, sep, rest = bytes(data).partition(b"\r\n\r\n")
    if not sep:
        raise ConnectionError("no complete head: %r" % bytes(data[:200]))
    return head + sep, rest


def read_to_eof(sock, rec=None, timeout=10.0):
    sock.settimeout(timeout)
    out = bytearray()
    while True:
        data = sock.recv(65536)
        if not data:
            return bytes(out)
        if rec is not None:
            rec["raw"] += data
        out += data


def header_value(head, name):
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == name.lower():
            return v.strip()
    return None


def fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def next_or_eof(sock, request=b"GET /ok HTTP/1.1\r\nHost: h\r\n\r\n", timeout=8.0):
    """After a failure: send one more request on the same connection. Returns
    ("response", status) or ("eof", None); raises AssertionError when stuck."""
    try:
        sock.sendall(request)
    except OSError:
        return ("eof", None)
    sock.settimeout(timeout)
    data = bytearray()
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            break
        except ConnectionResetError:
            return ("eof", None)
        if not chunk:
            if data:
                raise AssertionError("partial bytes then EOF: %r" % bytes(data[:200]))
            return ("eof", None)
        data += chunk
        if b"\r\n\r\n" in data:
            return ("response", int(data.split(b" ", 2)[1]))
    raise AssertionError("connection stuck: neither a response nor EOF within %.0fs (got %r)"
                         % (timeout, bytes(data[:200])))


def two_pool_doc(good, bad_addresses, timeouts=None, retries=0, admin=False):
    """Listener with /ok -> pool good (real backend), everything else -> pool bad."""
    doc = pool_doc([good], timeouts=timeouts, admin=admin)
    doc["pools"]["bad"] = {"backends": [{"address": a} for a in bad_addresses], "retries": retries}
    doc["listeners"][0] = {"name": "main", "bind": "127.0.0.1:0",
                           "routes": [{"path_prefix": "/ok", "pool": "p"}, {"pool": "bad"}]}
    return doc


class FullBacklog:
    """A listener that never accepts, its backlog full: connects to it hang (a blackhole on loopback)."""

    def __init__(self):
        self.ls = socket.socket()
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(0)
        self.address = "127.0.0.1:%d" % self.ls.getsockname()[1]
        self.fillers = []
        for _ in range(3):
            f = socket.socket()
            f.setblocking(False)
            try:
                f.connect(self.ls.getsockname())
            except BlockingIOError:
                pass
            self.fillers.append(f)

    def close(self):
        for f in self.fillers:
            f.close()
        self.ls.close()


@pytest.fixture
def blackhole():
    fb = FullBacklog()
    yield fb
    fb.close()


def small_rcvbuf_socket(port, rcvbuf=16384):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    return s


# ------------------------------------------------------------------ item 1
@pytest.mark.parametrize("kind", ["502", "504"])
def test_item01_next_request_read_after_error_on_large_post(fastlb, backends, blackhole, kind):
    bad = "127.0.0.1:%d" % free_port() if kind == "502" else blackhole.address
    proc = fastlb(two_pool_doc(backends[0], [bad], timeouts={"connect": "1s"}))
    s = proc.connect()
    body = b"x" * (300 * 1024)
    sender = threading.Thread(target=lambda: s.sendall(
        b"POST /fail HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % len(body) + body))
    sender.start()
    reader = ResponseReader(s, timeout=10)
    resp, _ = reader.next("POST")
    sender.join(10)
    assert resp.status_code == int(kind)
    closing = (b"connection", b"close") in [(n.lower(), v.lower()) for n, v in resp.headers]
    assert not closing, "fastlb closed instead of serving the next request (test expects keep-alive)"
    s.sendall(b"GET /ok HTTP/1.1\r\nHost: h\r\n\r\n")
    try:
        resp, body = reader.next()
    except socket.timeout:
        pytest.fail("next request on the connection never answered after %s on a large POST" % kind)
    assert resp.status_code == 200 and json.loads(body)["path"] == "/ok"
    s.close()


# ------------------------------------------------------------------ item 2
def _close_delimited_backend(reset):
    def handler(s, rec):
        read_head(s, rec)
        s.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n" + b"a" * 5000)
        time.sleep(0.3)  # let fastlb forward the part before the end arrives
        if reset:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    return handler


@pytest.mark.parametrize("reset", [True, False], ids=["rst", "fin"])
def test_item02_close_delimited_body_reset_is_not_complete(fastlb, raw_backend, reset):
    b = raw_backend(_close_delimited_backend(reset))
    proc = fastlb(pool_doc([], extra_backends=[b.address], retries=0))
    s = proc.connect()
    s.sendall(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
    data = recv_until_closed(s, timeout=10)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), data[:200]
    assert header_value(head, b"transfer-encoding") == b"chunked"
    if reset:
        assert not body.endswith(b"0\r\n\r\n"), "backend reset mid-body was framed as a complete response"
    else:
        assert body.endswith(b"0\r\n\r\n"), "clean close-delimited end must give a complete chunked body"
        # decode the chunks: the 5000 bytes, exactly
        out, rest = bytearray(), body
        while True:
            size_line, _, rest = rest.partition(b"\r\n")
            n = int(size_line, 16)
            if n == 0:
                break
            out += rest[:n]
            rest = rest[n + 2:]
        assert bytes(out) == b"a" * 5000


# ------------------------------------------------------------------ item 3
@pytest.mark.parametrize("n", [200 * 1000, 3 * 1000 * 1000])
def test_item03_sigterm_delivers_buffered_response_to_slow_reader(fastlb, backends, n):
    """200 kB fits fastlb's write buffer: the exchange is complete and the connection
    idle while the bytes are still queued (the case that was lost); 3 MB is still being
    relayed when SIGTERM comes."""
    proc = fastlb(pool_doc(backends[:1], timeouts={"drain": "10s"}))
    s = small_rcvbuf_socket(proc.port)
    s.sendall(b"GET /size?n=%d HTTP/1.1\r\nHost: h\r\n\r\n" % n)
    # the backend finishes sending: the response now sits in fastlb's buffers / socket buffers
    assert backends[0].wait_until(lambda b: b.connection_count >= 1, timeout=5)
    time.sleep(0.5)
    proc.proc.send_signal(15)
    time.sleep(1.0)  # not reading yet: fastlb holds the rest in its own buffers
    head, rest = read_head(s)
    assert head.startswith(b"HTTP/1.1 200")
    h = hashlib.sha256(rest)
    got = len(rest)
    s.settimeout(15)
    while got < n:
        try:
            chunk = s.recv(16384)
        except ConnectionResetError:
            break
        if not chunk:
            break
        h.update(chunk)
        got += len(chunk)
        time.sleep(0.002)  # a slow reader
    assert got == n, "graceful shutdown truncated the response: %d of %d bytes" % (got, n)
    assert h.hexdigest() == pattern_sha256(n)
    assert proc.proc.wait(20) == 0


def test_item03_sigterm_last_bytes_in_fastlbs_own_buffer_reach_a_slow_reader(fastlb, backends):
    """The response outgrows the kernel's socket buffers, so when the backend's last
    bytes reach fastlb its own write buffer is full: a connection that left the drain
    set on close (before the flush) took those bytes with it at exit (the tree before
    the rebuild lost ~170 kB of 8 MB here). The client keeps its socket open after the
    EOF: fastlb lingers for ``timeouts.linger`` from the moment its buffer is flushed
    (not from the next send-deadline check, 30 s later) and then exits 0."""
    n = 8 * 1000 * 1000
    proc = fastlb(pool_doc(backends[:1], timeouts={"drain": "60s", "linger": "1s", "send": "30s"}))
    s = small_rcvbuf_socket(proc.port, rcvbuf=4096)
    s.settimeout(15)
    s.sendall(b"GET /size?n=%d HTTP/1.1\r\nHost: h\r\n\r\n" % n)
    time.sleep(1.0)  # not reading: the kernel buffers fill, then fastlb's own
    proc.proc.send_signal(signal.SIGTERM)
    head, rest = read_head(s)
    assert head.startswith(b"HTTP/1.1 200"), head
    h = hashlib.sha256(rest)
    got = len(rest)
    while got < n:  # a slow reader (a few MB/s), so the buffers stay full to the end
        try:
            chunk = s.recv(4096)
        except ConnectionResetError:
            break
        if not chunk:
            break
        h.update(chunk)
        got += len(chunk)
        time.sleep(0.001)
    assert got == n, "graceful shutdown truncated the response: %d of %d bytes" % (got, n)
    assert h.hexdigest() == pattern_sha256(n)
    assert s.recv(1) == b"", "fastlb did not close the connection after the response while draining"
    # the socket stays open: fastlb lingers 1 s, then closes and exits
    try:
        code = proc.proc.wait(12)
    except subprocess.TimeoutExpired:
        pytest.fail("fastlb still running 12 s after its buffer was flushed (linger is 1 s)")
    finally:
        s.close()
    assert code == 0


# ------------------------------------------------------------------ item 4
def test_item04_stalled_reader_closed_at_send_deadline_fds_back_to_baseline(fastlb, backends):
    proc = fastlb(pool_doc(backends[:1], timeouts={"send": "1s"}))
    # warm up (pooled upstream connection exists), then take the baseline
    assert httpx.get(proc.url("/")).status_code == 200
    time.sleep(0.2)
    baseline = fd_count(proc.proc.pid)
    s = small_rcvbuf_socket(proc.port)
    s.sendall(b"GET /size?n=%d HTTP/1.1\r\nHost: h\r\n\r\n" % (64 * 1024 * 1024))
    assert wait_for(lambda: fd_count(proc.proc.pid) > baseline, timeout=5)
    # never read: fastlb must give up at the send deadline and release everything
    assert wait_for(lambda: fd_count(proc.proc.pid) <= baseline, timeout=15), \
        "fds stay above baseline %d: %d" % (baseline, fd_count(proc.proc.pid))
    s.settimeout(10)
    got = 0
    try:
        while True:
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            got += len(chunk)
    except ConnectionResetError:
        pass
    assert got < 64 * 1024 * 1024
    s.close()


def _keep_sending_and_read(sock, head, body_total, chunk=65536, timeout=10.0):
    """Send head, then keep sending body bytes in a thread while reading the response to EOF.
    Returns (response bytes, reset?)."""
    stop = threading.Event()

    def send():
        try:
            sock.sendall(head)
            sent = 0
            while sent < body_total and not stop.is_set():
                sock.sendall(b"z" * chunk)
                sent += chunk
        except OSError:
            pass

    t = threading.Thread(target=send, daemon=True)
    t.start()
    sock.settimeout(timeout)
    out = bytearray()
    reset = False
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            reset = True
            break
        except socket.timeout:
            break
        if not data:
            break
        out += data
    stop.set()
    t.join(5)
    return bytes(out), reset


def _complete_json_response(data):
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep, "no complete response head: %r" % data[:200]
    n = int(header_value(head, b"content-length"))
    assert len(body) >= n, "response body cut: %d of %d bytes" % (len(body), n)
    json.loads(body[:n])
    return int(head.split(b" ", 2)[1])


def test_item04_lingering_close_404_for_large_post(fastlb, backends):
    doc = pool_doc(backends[:1])
    doc["listeners"][0] = {"name": "main", "bind": "127.0.0.1:0",
                           "routes": [{"host": "api.example.com", "pool": "p"}]}
    proc = fastlb(doc)
    failures = []
    for _ in range(3):  # an RST is a race: try a few connections, each must be intact
        s = proc.connect()
        data, reset = _keep_sending_and_read(
            s, b"POST /nowhere HTTP/1.1\r\nHost: other.example\r\nContent-Length: %d\r\n\r\n" % (4 << 20), 4 << 20)
        s.close()
        try:
            assert _complete_json_response(data) == 404
        except (AssertionError, ValueError, TypeError) as exc:
            failures.append("reset=%s %s" % (reset, exc))
    assert not failures, failures


def test_item04_lingering_close_400_bad_chunk_while_client_sends(fastlb, backends):
    proc = fastlb(pool_doc(backends[:1]))
    failures = []
    for _ in range(3):
        s = proc.connect()
        data, reset = _keep_sending_and_read(
            s, b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nZZZ\r\n", 4 << 20)
        s.close()
        try:
            assert _complete_json_response(data) == 400
        except (AssertionError, ValueError, TypeError) as exc:
            failures.append("reset=%s %s" % (reset, exc))
    assert not failures, failures
    assert backends[0].request_count == 0


def test_item04_lingering_close_431_huge_head_while_client_sends(fastlb, backends):
    proc = fastlb(pool_doc(backends[:1], limits={"max_header_bytes": "8KiB"}))
    failures = []
    for _ in range(3):
        s = proc.connect()
        data, reset = _keep_sending_and_read(s, b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: ", 4 << 20)
        s.close()
        try:
            assert _complete_json_response(data) == 431
        except (AssertionError, ValueError, TypeError) as exc:
            failures.append("reset=%s %s" % (reset, exc))
    assert not failures, failures


# ------------------------------------------------------------------ item 5
def test_item05_half_closed_client_gets_all_pipelined_answers(fastlb, backends):
    proc = fastlb(pool_doc(backends[:1]))
    s = proc.connect()
    s.sendall(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n")
    s.shutdown(socket.SHUT_WR)
    reader = ResponseReader(s, timeout=10)
    paths = []
    for _ in range(2):
        try:
            resp, body = reader.next()
        except ConnectionError as exc:
            pytest.fail("half-closed client lost a pipelined request: got %r, then %s" % (paths, exc))
        paths.append(json.loads(body)["path"])
    assert paths == ["/a", "/b"]
    assert recv_until_closed(s, timeout=10) == b""  # then closed
    s.close()


def test_item05_half_closed_client_pipelined_request_with_incomplete_body_gets_400(fastlb, backends):
    """The half-close arrives before the second request's body starts: no more bytes can
    come, so it is a 400 at once, not a wait for client_idle (30 s here)."""
    proc = fastlb(pool_doc(backends[:1], timeouts={"client_idle": "30s", "client_header": "30s"}))
    s = proc.connect()
    s.sendall(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n"
              b"POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nCCCC")
    s.shutdown(socket.SHUT_WR)
    reader = ResponseReader(s, timeout=10)
    resp, body = reader.next()
    assert resp.status_code == 200 and json.loads(body)["path"] == "/a"
    t0 = time.monotonic()
    resp, body = reader.next("POST")
    assert resp.status_code == 400, (resp, body)
    assert recv_until_closed(s, timeout=10) == b""
    assert time.monotonic() - t0 < 10, "waited for client_idle instead of answering at once"
    s.close()
    # the backend never saw a complete /b
    assert [r.path for r in backends[0].requests if r.complete] == ["/a"]


# ------------------------------------------------------------------ item 6
WS_REQ = (b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
          b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
SWITCH = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"


def test_item06_client_half_close_relayed_backend_still_sends(fastlb, raw_backend):
    def handler(s, rec):
        _, rest = read_head(s, rec)
        s.sendall(SWITCH)
        got = rest + read_to_eof(s, rec)  # until the relayed half-close
        rec["tunnel"] = got
        s.sendall(b"reply:" + got + b"x" * 200000)  # more than one buffer's worth after the FIN
        s.shutdown(socket.SHUT_WR)

    b = raw_backend(handler)
    proc = fastlb(pool_doc([], extra_backends=[b.address], retries=0))
    s = proc.connect()
    s.sendall(WS_REQ)
    head, rest = read_head(s)
    assert head.startswith(b"HTTP/1.1 101")
    s.sendall(b"hello")
    s.shutdown(socket.SHUT_WR)
    try:
        data = rest + read_to_eof(s, timeout=10)
    except ConnectionResetError:
        pytest.fail("tunnel aborted on client half-close")
    assert data == b"reply:hello" + b"x" * 200000
    assert b.records[0].get("tunnel") == b"hello"
    s.close()


def test_item06_backend_half_close_relayed_client_still_sends(fastlb, raw_backend):
    def handler(s, rec):
        read_head(s, rec)
        s.sendall(SWITCH + b"bye")
        s.shutdown(socket.SHUT_WR)
        rec["tunnel"] = read_to_eof(s, rec)

    b = raw_backend(handler)
    proc = fastlb(pool_doc([], extra_backends=[b.address], retries=0))
    s = proc.connect()
    s.sendall(WS_REQ)
    head, rest = read_head(s)
    assert head.startswith(b"HTTP/1.1 101")
    assert rest + read_to_eof(s, timeout=10) == b"bye"  # the backend's FIN arrives as a FIN
    try:
        s.sendall(b"still-here" * 1000)
        s.shutdown(socket.SHUT_WR)
    except OSError as exc:
        pytest.fail("client could not send after the backend half-closed: %s" % exc)
    assert b.records[0]["done"].wait(10)
    assert b.records[0].get("tunnel") == b"still-here" * 1000, "bytes after backend half-close lost"
    # the tunnel ends when both directions are done
    s.settimeout(10)
    try:
        assert s.recv(10) == b""
    except ConnectionResetError:
        pass
    s.close()


# ------------------------------------------------------------------ item 7
def _two_host_doc(ba, bb):
    doc = pool_doc([ba])
    doc["pools"]["pb"] = {"backends": [{"address": bb.address}]}
    doc["listeners"][0] = {"name": "main", "bind": "127.0.0.1:0",
                           "routes": [{"host": "a.example", "pool": "p"}, {"host": "b.internal", "pool": "pb"}]}
    return doc


def test_item07_absolute_form_with_userinfo_rejected(fastlb, backends):
    proc = fastlb(_two_host_doc(backends[0], backends[1]))
    s = proc.connect()
    s.sendall(b"GET http://a.example:x@b.internal/p HTTP/1.0\r\n\r\n")
    data = recv_until_closed(s)
    assert data.startswith(b"HTTP/1.1 400"), data[:100]
    assert backends[0].connection_count == 0 and backends[1].connection_count == 0
    assert sum(c.raw_len for b in backends for c in b.connections) == 0


def test_item07_absolute_form_routes_by_authority(fastlb, backends):
    proc = fastlb(_two_host_doc(backends[0], backends[1]))
    s = proc.connect()
    s.sendall(b"GET http://b.internal/p HTTP/1.0\r\n\r\n")
    data = recv_until_closed(s)
    assert data.startswith(b"HTTP/1.1 200"), data[:100]
    assert header_value(data.partition(b"\r\n\r\n")[0], b"x-backend") == b"b2"
    assert backends[1].requests[-1].header("host") == b"b.internal"


# ------------------------------------------------------------------ item 8
def _upgrade_backend(protocol):
    """Answers 101 to an Upgrade offering ``protocol`` (then echoes), else a plain 200."""
    def handler(s, rec):
        head, rest = read_head(s, rec)
        rec["head"] = head
        if b"upgrade: " + protocol in head.lower():
            s.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: %s\r\nConnection: Upgrade\r\n\r\n" % protocol)
            data = rest
            while True:
                s.sendall(data)
                data = s.recv(65536)
                if not data:
                    return
        s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nplain")
    return handler


H2C = (b"GET /x HTTP/1.1\r\nHost: h\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"
       b"Connection: Upgrade, HTTP2-Settings\r\n\r\n")


def test_item08_h2c_upgrade_not_forwarded(fastlb, raw_backend):
    b = raw_backend(_upgrade_backend(b"h2c"))
    proc = fastlb(pool_doc([], extra_backends=[b.address], retries=0))
    s = proc.connect()
    s.sendall(H2C)
    resp, body = read_response(s)
    assert resp.status_code == 200 and body == b"plain", "h2c upgrade reached the backend"
    head = b.records[0]["head"].lower()
    assert b"upgrade:" not in head
    assert b"http2-settings" not in head
    conn = header_value(head, b"connection") or b""
    assert b"upgrade" not in conn and b"http2-settings" not in conn
    s.close()


def _assert_tunnel_echoes(proc, request):
    """The upgrade is answered 101 and the tunnel carries bytes both ways (the
    backend echoes); an EOF before the echo fails instead of looping."""
    s = proc.connect()
    s.sendall(request)
    head, rest = read_head(s)
    assert head.startswith(b"HTTP/1.1 101"), head
    s.sendall(b"ping")
    while len(rest) < 4:
        chunk = s.recv(100)
        assert chunk, "tunnel closed before the echo: %r" % rest
        rest += chunk
    assert rest == b"ping"
    s.close()


def test_item08_websocket_still_tunnels(fastlb, raw_backend):
    b = raw_backend(_upgrade_backend(b"websocket"))
    proc = fastlb(pool_doc([], extra_backends=[b.address], retries=0))
    _assert_tunnel_echoes(proc, WS_REQ)


def test_item08_upgrade_protocols_lets_foo_through(fastlb, raw_backend):
    b = raw_backend(_upgrade_backend(b"foo"))
    doc = pool_doc([], extra_backends=[b.address], retries=0)
    doc["listeners"][0]["upgrade_protocols"] = ["websocket", "foo"]
    proc = fastlb(doc)
    _assert_tunnel_echoes(proc, b"GET /x HTTP/1.1\r\nHost: h\r\nUpgrade: foo\r\nConnection: Upgrade\r\n\r\n")


def test_item08_foo_not_upgraded_by_default(fastlb, raw_backend):
    b = raw_backend(_upgrade_backend(b"foo"))
    proc = fastlb(pool_doc([], extra_backends=[b.address], retries=0))
    s = proc.connect()
    s.sendall(b"GET /x HTTP/1.1\r\nHost: h\r\nUpgrade: foo\r\nConnection: Upgrade\r\n\r\n")
    resp, body = read_response(s)
    assert resp.status_code == 200 and body == b"plain"
    assert b"upgrade" not in b.records[0]["head"].lower().partition(b"\r\n")[2]
    s.close()


# ------------------------------------------------------------------ item 9
def _head_then_get(proc, path):
    """HEAD then GET on one connection; returns (first head, bytes after it until the next
    response or EOF)."""
    s = proc.connect()
    s.sendall(b"HEAD %s HTTP/1.1\r\nHost: h\r\n\r\n" % path)
    head, rest = read_head(s)
    s.sendall(b"GET %s HTTP/1.1\r\nHost: h\r\n\r\n" % path)
    closing = (header_value(head, b"connection") or b"").lower() == b"close"
    s.settimeout(5)
    after = bytearray(rest)
    try:
        while len(after) < 16:
            chunk = s.recv(65536)
            if not chunk:
                break
            after += chunk
    except (socket.timeout, ConnectionResetError):
        pass
    s.close()
    return head, bytes(after), closing


@pytest.mark.parametrize("kind", ["404", "502", "503"])
def test_item09_error_response_to_head_has_no_body(fastlb, backends, kind):
    if kind == "404":
        doc = pool_doc(backends[:1])
        doc["listeners"][0] = {"name": "main", "bind": "127.0.0.1:0",
                               "routes": [{"host": "api.example.com", "pool": "p"}]}
    elif kind == "502":
        doc = pool_doc([], extra_backends=["127.0.0.1:%d" % free_port()], retries=0)
    else:
        doc = pool_doc(backends[:1], admin=True)
    proc = fastlb(doc)
    if kind == "503":
        r = httpx.post("http://127.0.0.1:%d/api/v1/pools/p/backends/%s/disable" % (proc.admin_port,
                                                                                     backends[0].address),
                       headers={"Content-Type": "application/json"})
        assert r.status_code == 200
    head, after, closing = _head_then_get(proc, b"/x")
    assert head.startswith(b"HTTP/1.1 " + kind.encode())
    assert int(header_value(head, b"content-length")) > 0
    if closing:
        assert after == b"", "HEAD %s carried body bytes: %r" % (kind, after[:80])
    else:
        assert after.startswith(b"HTTP/1.1 " + kind.encode()), \
            "HEAD %s carried body bytes: %r" % (kind, after[:80])


# ------------------------------------------------------------------ item 11
def test_item11a_admin_explain_with_utf8_and_malformed_keys(fastlb, backends):
    doc = pool_doc(backends, admin=True)
    doc["pools"]["p"].update({"algorithm": "consistent_hash", "hash_key": "header:X-User"})
    proc = fastlb(doc)
    base = "http://127.0.0.1:%d/api/v1/pools" % proc.admin_port
    results = {}
    with httpx.Client(timeout=10) as client:
        for key in ["%E2%82%AC", "%ZZ", "%FF", "plain"]:
            try:
                r = client.get(base + "/p/explain?key=" + key)
                results[key] = (r.status_code, r.json())
            except (httpx.HTTPError, ValueError) as exc:
                results[key] = ("error", repr(exc))
        r = client.get(base + "/nosuch/explain?key=a")
        results["nopool"] = (r.status_code, r.json())
    assert results["plain"][0] == 200
    assert results["%E2%82%AC"][0] == 200, results["%E2%82%AC"]
    # %FF is a well-formed escape of the byte 0xFF: hash keys are bytes, so it is a key
    assert results["%FF"][0] == 200, results["%FF"]
    assert results["%FF"][1] != results["plain"][1]
    for key in ("%ZZ", "nopool"):
        assert isinstance(results[key][0], int) and 400 <= results[key][0] < 500, (key, results[key])
        assert "error" in results[key][1]


def test_item11b_slow_client_not_blamed_on_backend(fastlb, backends):
    """A client that stops reading is closed at the send deadline and the log says so;
    the response timeout (shorter here) never fires while the client is the one stalling."""
    proc = fastlb(pool_doc(backends[:1], timeouts={"response": "1s", "send": "2s"}))
    s = small_rcvbuf_socket(proc.port)
    s.sendall(b"GET /size?n=%d HTTP/1.1\r\nHost: h\r\n\r\n" % (64 * 1024 * 1024))
    # never read; the backend keeps sending, so any stall is the client's
    closed = wait_for(lambda: "stopped reading" in proc.read_output(0.1), timeout=15)
    s.close()
    out = proc.read_output(0.3)  # everything printed so far
    lines = [line for line in out.splitlines() if "stopped reading" in line or "stalled" in line]
    assert closed and lines, out[-2000:]
    assert not any("backend stalled" in line for line in lines), lines
    assert any("client stopped reading the response for 2s" in line for line in lines), lines


# ------------------------------------------------------------------ general: after any failure
FAILURES = ["502", "503", "504_connect", "504_response", "408_body", "400", "404", "client_shut_wr_mid_body"]


@pytest.mark.parametrize("kind", FAILURES)
def test_general_connection_serves_next_or_closes_after_failure(fastlb, backends, blackhole, kind):
    timeouts = {"connect": "1s", "response": "1s", "client_idle": "1s"}
    if kind == "502":
        doc = two_pool_doc(backends[0], ["127.0.0.1:%d" % free_port()], timeouts=timeouts)
    elif kind == "504_connect":
        doc = two_pool_doc(backends[0], [blackhole.address], timeouts=timeouts)
    elif kind == "503":
        doc = two_pool_doc(backends[0], [backends[1].address], timeouts=timeouts, admin=True)
    else:
        doc = two_pool_doc(backends[0], [backends[1].address], timeouts=timeouts)
    if kind == "404":
        doc["listeners"][0]["routes"] = [{"path_prefix": "/ok", "pool": "p"}]
    proc = fastlb(doc)
    if kind == "503":
        r = httpx.post("http://127.0.0.1:%d/api/v1/pools/bad/backends/%s/disable" % (proc.admin_port,
                                                                                       backends[1].address),
                       headers={"Content-Type": "application/json"})
        assert r.status_code == 200
    s = proc.connect()
    expect = {"502": 502, "503": 503, "504_connect": 504, "504_response": 504, "408_body": 408,
              "400": 400, "404": 404}.get(kind)
    if kind == "504_response":
        s.sendall(b"GET /slow?delay=5 HTTP/1.1\r\nHost: h\r\n\r\n")
    elif kind == "408_body":
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\npart")
    elif kind == "400":
        s.sendall(b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n")
    elif kind == "client_shut_wr_mid_body":
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 100000\r\n\r\n" + b"x" * 5000)
        s.shutdown(socket.SHUT_WR)
        data = recv_until_closed(s, timeout=8)
        # closed (maybe after an error response), never stuck and never a 200
        assert not data.startswith(b"HTTP/1.1 200")
        s.settimeout(1)
        try:
            assert s.recv(1) == b""
        except ConnectionResetError:
            pass
        s.close()
        return
    else:
        s.sendall(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
    s.settimeout(10)
    head, rest = read_head(s)
    assert head.startswith(b"HTTP/1.1 %d" % expect), head
    n = int(header_value(head, b"content-length") or 0)
    while len(rest) < n:
        chunk = s.recv(65536)
        if not chunk:
            break
        rest += chunk
    outcome, status = next_or_eof(s, b"GET /ok HTTP/1.1\r\nHost: h\r\n\r\n")
    if outcome == "response":
        assert status == 200
    s.close()


# ------------------------------------------------------------------ general: drain
def _reader(port, path, n, rate, results, idx):
    """Read one response; rate = bytes/s (None = as fast as possible)."""
    res = {"n": n, "got": 0, "complete": False, "framing": None, "sha": None}
    try:
        s = small_rcvbuf_socket(port, 65536)
        s.settimeout(30)
        s.sendall(b"GET %s HTTP/1.1\r\nHost: h\r\n\r\n" % path)
        head, rest = read_head(s)
        res["status"] = int(head.split(b" ", 2)[1])
        chunked = header_value(head, b"transfer-encoding") == b"chunked"
        res["framing"] = "chunked" if chunked else "length"
        raw = bytearray(rest)
        start = time.monotonic()
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            raw += chunk
            if rate:
                ahead = len(raw) / rate - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(min(ahead, 0.5))
            if not chunked and len(raw) >= n:
                break
        if chunked:
            body, rest, complete = bytearray(), bytes(raw), False
            while True:
                line, sep, tail = rest.partition(b"\r\n")
                if not sep:
                    break
                size = int(line, 16)
                if size == 0:
                    complete = tail.startswith(b"\r\n")
                    break
                if len(tail) < size + 2:
                    body += tail[:size]
                    break
                body += tail[:size]
                rest = tail[size + 2:]
            res["complete"] = complete
        else:
            body = bytes(raw[:n])
            res["complete"] = len(raw) >= n
        res["got"] = len(body)
        res["sha"] = hashlib.sha256(body).hexdigest()
        s.close()
    except Exception as exc:  # recorded, asserted by the test
        res["error"] = repr(exc)
    results[idx] = res


def test_general_sigterm_every_byte_or_detectably_incomplete(fastlb, backends):
    proc = fastlb(pool_doc(backends[:1], timeouts={"drain": "4s"}))
    cases = [  # (path size, chunked?, rate)
        (1024, False, None), (1 << 20, False, None), (50 << 20, False, None),
        (64 * 1024, False, 256 * 1024), (3 << 20, True, 2 << 20), (50 << 20, False, 2 << 20),
        (50 << 20, True, 1 << 20),
    ]
    results = [None] * len(cases)
    threads = []
    for i, (n, chunked, rate) in enumerate(cases):
        path = b"/size?n=%d%s" % (n, b"&chunked=1" if chunked else b"")
        t = threading.Thread(target=_reader, args=(proc.port, path, n, rate, results, i), daemon=True)
        t.start()
        threads.append(t)
    assert backends[0].wait_until(lambda b: b.request_count >= len(cases), timeout=10)
    time.sleep(0.2)
    proc.proc.send_signal(15)
    for t in threads:
        t.join(40)
    assert proc.proc.wait(30) == 0
    bad = []
    for (n, chunked, rate), res in zip(cases, results):
        if res is None or "error" in res:
            bad.append((n, chunked, rate, res))
            continue
        if res["complete"]:
            if res["got"] != n or res["sha"] != pattern_sha256(n):
                bad.append(("framed complete but wrong body", n, chunked, rate, res["got"]))
        elif rate is None and n <= (1 << 20):
            bad.append(("small fast response not delivered", n, res["got"]))
    # a fast reader of a small response is always served in full
    assert not bad, bad


# ------------------------------------------------------------------ the keep-alive race, at the exact moment
def _race_backend(raw_backend):
    """The first connection answers one request, then takes the whole next request
    (head and body) and closes without answering: the backend closed an idle
    kept-alive connection at the moment fastlb reused it. Later connections answer
    every request. ``seen`` lists (connection index, request line) as received."""
    seen = []
    count = [0]
    lock = threading.Lock()

    def read_request(s, rec, buf):
        head, rest = read_head(s, rec, buf)
        n = int(header_value(head, b"content-length") or 0)
        while len(rest) < n:
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("request body cut")
            rec["raw"] += chunk
            rest += chunk
        return head, rest[n:]

    def handler(s, rec):
        with lock:
            index = count[0]
            count[0] += 1
        buf = b""
        served = 0
        while True:
            try:
                head, buf = read_request(s, rec, buf)
            except ConnectionError:
                return
            seen.append((index, head.split(b"\r\n", 1)[0]))
            if index == 0 and served == 1:
                return  # accepted the bytes, closes without a word (the handler's finally)
            s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            served += 1

    return raw_backend(handler), seen


def test_keepalive_race_get_is_retried_once_on_a_new_connection(fastlb, raw_backend):
    backend, seen = _race_backend(raw_backend)
    proc = fastlb(pool_doc([backend]))
    with httpx.Client(timeout=10) as client:
        assert client.get(proc.url("/first")).status_code == 200
        r = client.get(proc.url("/raced"))
    assert r.status_code == 200 and r.text == "ok"
    raced = [i for i, line in seen if line.startswith(b"GET /raced ")]
    # sent on the reused connection 0, which closed, then once more on a new one
    assert raced == [0, 1], seen


def test_keepalive_race_post_is_not_retried(fastlb, raw_backend):
    backend, seen = _race_backend(raw_backend)
    proc = fastlb(pool_doc([backend]))
    with httpx.Client(timeout=10) as client:
        assert client.get(proc.url("/first")).status_code == 200
        r = client.post(proc.url("/raced"), content=b"{\"n\": 1}")
    assert r.status_code == 502, r.text
    assert "error" in r.json()
    raced = [i for i, line in seen if line.startswith(b"POST /raced ")]
    assert raced == [0], seen  # the backend may have acted on it: never sent twice
