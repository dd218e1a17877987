"""Large bodies through a real fastlb: every byte, in order, in bounded memory.

The bytes are not a repeating pattern: every 1 MiB block starts with its own
index over a random block, so a chunk dropped, repeated or moved anywhere
changes the SHA-256. Both ends hash what they handled, as they go (nothing
holds a whole body): the backend what it sent or received, the client what it
received or sent, and the test compares the two.

The backend here is a plain blocking-socket server in a thread (one request per
connection, Content-Length framing both ways) so it can stop reading or writing
on command, which is what the backpressure tests need.
"""

import hashlib
import json
import random
import socket
import socketserver
import struct
import threading
import time
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest

from tests.integration.conftest import pool_doc

MIB = 1 << 20
GIB = 1 << 30
_BASE = random.Random(20261203).randbytes(MIB)


def stamped(n):
    """Yield n bytes: block i is its index (8 bytes, big-endian) then the random base."""
    i = 0
    left = n
    while left > 0:
        block = struct.pack(">Q", i) + _BASE[8:]
        take = min(left, MIB)
        yield block if take == MIB else block[:take]
        left -= take
        i += 1


class _Handler(socketserver.BaseRequestHandler):
    def handle(self):
        srv = self.server.owner
        sock = self.request
        sock.settimeout(120)
        head = b""
        while b"\r\n\r\n" not in head:
            data = sock.recv(65536)
            if not data:
                return
            head += data
        head, _, rest = head.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        url = urlsplit(target)
        query = dict(parse_qsl(url.query))
        stall = float(query.get("stall", 0))
        record = {"path": url.path, "bytes": 0, "sha256": None, "done": False}
        srv.records.append(record)
        h = hashlib.sha256()
        if method == "POST":
            length = int(headers["content-length"])
            if stall:
                srv.stalled.set()
                time.sleep(stall)  # stop reading the upload
            h.update(rest)
            got = len(rest)
            while got < length:
                data = sock.recv(min(MIB, length - got))
                if not data:
                    break
                h.update(data)
                got += len(data)
                record["bytes"] = got
            record.update(bytes=got, sha256=h.hexdigest(), done=got == length)
            body = json.dumps({"received": got, "sha256": record["sha256"]}).encode()
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                         b"Connection: close\r\n\r\n%s" % (len(body), body))
            return
        n = int(query["n"])
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n"
                     b"Connection: close\r\n\r\n" % n)
        for block in stamped(n):
            sock.sendall(block)
            h.update(block)
            record["bytes"] += len(block)
        record.update(sha256=h.hexdigest(), done=True)


def _wait_done(record, timeout=10.0):
    """The backend marks a download done after its last sendall returns and it hashed
    the block: a fast client can have read every byte before that. Wait (bounded)."""
    deadline = time.monotonic() + timeout
    while not record["done"] and time.monotonic() < deadline:
        time.sleep(0.01)
    return record["done"]


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class StreamBackend:
    def __init__(self):
        self.records = []
        self.stalled = threading.Event()
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.owner = self
        self.address = "127.0.0.1:%d" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stream_backend():
    b = StreamBackend().start()
    yield b
    b.stop()


@pytest.fixture
def lb(fastlb, stream_backend):
    # limits that matter here are fastlb's own: its write buffers (256 KiB high water)
    return fastlb(pool_doc([stream_backend], timeouts={"response": "60s", "send": "60s",
                                                        "client_idle": "60s"}))


def _status(pid, key):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError("%s not in /proc/%d/status" % (key, pid))


def _warm_up(lb):
    """One small transfer each way, so the baseline includes what the first request allocates."""
    with httpx.Client(timeout=30) as c:
        assert c.get(lb.url("/download?n=%d" % (4 * MIB))).status_code == 200
        assert c.post(lb.url("/upload"), content=b"w" * (4 * MIB)).status_code == 200
    time.sleep(0.2)
    return _status(lb.proc.pid, "VmRSS")


@pytest.mark.slow
def test_one_gib_download_and_upload_hash_equal_on_both_sides(lb, stream_backend):
    baseline = _warm_up(lb)
    stream_backend.records.clear()
    # download: the client hashes what arrives, the backend what it sent
    h = hashlib.sha256()
    got = 0
    with httpx.stream("GET", lb.url("/download?n=%d" % GIB), timeout=60) as r:
        assert r.status_code == 200 and int(r.headers["content-length"]) == GIB
        for chunk in r.iter_raw(MIB):
            h.update(chunk)
            got += len(chunk)
    sent = stream_backend.records[-1]
    assert _wait_done(sent) and sent["bytes"] == GIB
    assert got == GIB, "client got %d of %d bytes" % (got, GIB)
    assert h.hexdigest() == sent["sha256"], "the download arrived altered"

    # upload: the client hashes what it sends (streamed from a generator), the backend what arrives
    up = hashlib.sha256()

    def body():
        for block in stamped(GIB):
            up.update(block)
            yield block

    r = httpx.post(lb.url("/upload"), content=body(), headers={"Content-Length": str(GIB)}, timeout=60)
    assert r.status_code == 200
    assert r.json() == {"received": GIB, "sha256": up.hexdigest()}, "the upload arrived altered"
    assert stream_backend.records[-1]["done"]
    # 2 GiB went through; fastlb's peak memory grew by a small constant, not with the bodies
    peak = _status(lb.proc.pid, "VmHWM")
    assert peak - baseline < 64 * MIB, "peak RSS %d MiB over a %d MiB baseline" % (
        (peak - baseline) // MIB, baseline // MIB)


def test_client_that_stops_reading_holds_fastlb_memory_bounded_then_gets_every_byte(lb, stream_backend):
    n = 512 * MIB
    baseline = _warm_up(lb)
    stream_backend.records.clear()
    s = socket.create_connection(("127.0.0.1", lb.port), timeout=30)
    s.sendall(b"GET /download?n=%d HTTP/1.1\r\nHost: h\r\n\r\n" % n)
    # the client reads nothing for 3 s: fastlb must stop reading the backend
    time.sleep(3.0)
    rec = stream_backend.records[-1]
    sent_during_stall = rec["bytes"]
    rss = _status(lb.proc.pid, "VmRSS")
    time.sleep(1.0)
    assert rec["bytes"] - sent_during_stall < 8 * MIB, "the backend kept sending while the client read nothing"
    # kernel socket buffers on both legs plus fastlb's own 256 KiB: far less than the body
    assert sent_during_stall < 64 * MIB, "%d MiB left the backend while the client read nothing" % (
        sent_during_stall // MIB)
    assert rss - baseline < 32 * MIB, "fastlb RSS grew %d MiB while the client stalled" % ((rss - baseline) // MIB)
    # resume: every byte arrives, in order
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"content-length: %d" % n in head.lower()
    h = hashlib.sha256(rest)
    got = len(rest)
    while got < n:
        chunk = s.recv(MIB)
        if not chunk:
            break
        h.update(chunk)
        got += len(chunk)
    s.close()
    assert got == n
    assert _wait_done(rec) and h.hexdigest() == rec["sha256"]


def test_backend_that_stops_reading_holds_fastlb_memory_bounded_then_gets_every_byte(lb, stream_backend):
    n = 512 * MIB
    baseline = _warm_up(lb)
    stream_backend.records.clear()
    stream_backend.stalled.clear()
    sent = [0]
    up = hashlib.sha256()

    def body():
        for block in stamped(n):
            up.update(block)
            sent[0] += len(block)
            yield block

    result = {}

    def upload():
        try:
            r = httpx.post(lb.url("/upload?stall=3"), content=body(),
                           headers={"Content-Length": str(n)}, timeout=60)
            result["status"], result["json"] = r.status_code, r.json()
        except Exception as exc:  # asserted below
            result["error"] = repr(exc)

    t = threading.Thread(target=upload, daemon=True)
    t.start()
    assert stream_backend.stalled.wait(10), "the upload never reached the backend"
    time.sleep(2.0)  # the backend reads nothing for 3 s in all
    sent_during_stall = sent[0]
    rss = _status(lb.proc.pid, "VmRSS")
    assert sent_during_stall < 64 * MIB, "the client could send %d MiB while the backend read nothing" % (
        sent_during_stall // MIB)
    assert rss - baseline < 32 * MIB, "fastlb RSS grew %d MiB while the backend stalled" % ((rss - baseline) // MIB)
    t.join(90)
    assert not t.is_alive(), "the upload never finished"
    assert result.get("status") == 200, result
    assert result["json"] == {"received": n, "sha256": up.hexdigest()}
