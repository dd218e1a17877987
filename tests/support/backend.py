"""A real HTTP/1.1 test backend for the integration and end-to-end tests.

It is written on raw asyncio protocols (uvloop when installed) and never imports
fastlb: the tests put a real fastlb process in front of it, so it must not share
the code under test. Requests are parsed strictly by httptools (llhttp in strict
mode: TE+CL, duplicate CL, obs-fold, bare LF, space before colon are rejected with
400 and a close), and the raw bytes received on every connection are recorded
too, so a test can assert exactly what the proxy sent upstream.

Two ways to run it:

* in-process, in a background thread with its own event loop::

      with BackendServer(name="b1") as srv:      # or srv.start() / srv.stop()
          httpx.get("http://%s/" % srv.address)
          assert srv.requests[0].headers[0] == (b"Host", srv.address.encode())

* as a subprocess: ``python -m tests.support.backend --name b1 --port 0 --print-port``
  prints ``PORT`` on one line, then serves until SIGTERM (exit 0). It keeps counts
  only (``/__backend/stats``) unless ``--record`` is given.

Records (read from any thread; every read returns a snapshot taken under a lock):

* ``srv.connections``: list of ``ConnectionRecord`` (``raw`` bytearray of the
  bytes received, at most ``raw_limit`` of them, ``raw_len`` the true total;
  ``requests``; ``peer_port``; ``closed``; ``error``; ``upgraded``);
* ``srv.requests``: every ``RequestRecord`` (method, target, path, query,
  headers as a list of (name, value) bytes in received order, body bytes,
  body_len, http_version, keep_alive, expect_continue, conn index) across
  connections, in arrival order; chunked trailer fields go to ``trailers``;
  ``srv.connection_count``; ``srv.reset()``; ``srv.wait_until(pred)``; ``srv.settle()``
  (returns once connections already queued in the kernel are accepted and recorded);
  ``srv.close_idle_connections()`` (FIN every keep-alive connection waiting for a request).

Endpoints (path based; unknown paths behave like ``/``; every response carries
``X-Backend: NAME``; ``HEAD`` gets the GET's head with no body; ``srv.delay = S``
makes every answer wait S seconds, a slow backend; ``srv.echo_request_id = True`` adds
``X-Echo-Request-ID: VALUE`` (the request's first X-Request-ID, when it has one) to every
response with a Content-Length or chunked head, i.e. all but the raw ones of /hop,
/keepalive-leftover, /halfhead, /ws and the close-delimited ``?close=1`` bodies):

    /                      200 JSON {"backend","method","path","target","headers":{lower: value},
                           "conn","peer_port"}; ``?close=1`` adds Connection: close and closes
    /echo                  the request body back, Content-Length framed;
                           ``?chunked=1`` chunked (``&chunk=N`` bytes a chunk), ``?close=1`` close-delimited
    /size?n=BYTES          n pattern bytes (see ``pattern``), 64 KiB at a time with backpressure;
                           ``&chunked=1`` chunked, ``&close=1`` close-delimited
    /sink                  streams the body through sha256 without keeping it:
                           {"received": N, "sha256": hex}; the recorded body stays b""
    /status?code=N         that status (204/304: no body)
    /slow?delay=S          sleeps, then 200;   /slowbody?delay=S  head, sleep, body
    /reset                 transport.abort() without a response
    /halfhead              part of a response head, then close
    /headers               JSON list of [name, value] as received, in order
    /hop                   200 with hop-by-hop headers (Connection: close, X-Hop; Keep-Alive;
                           X-Hop; Proxy-Connection; Trailer; Upgrade) plus X-End: 1, then close
    /expect-reject         417 at once, without reading the body, then close
    /ws                    Upgrade: websocket + Connection: Upgrade -> 101 with the right
                           Sec-WebSocket-Accept, then echoes raw bytes (tunnel); otherwise 426
    /keepalive-leftover    Content-Length: 2 with 4 body bytes ("okXX"); the connection stays open
    /__backend/stats       JSON {"backend","connections","open","requests"} (for subprocess use)

``Expect: 100-continue`` on a request with a body gets ``HTTP/1.1 100 Continue``
before the body is read (in order with earlier pipelined responses). Keep-alive
and pipelining are supported; responses leave in request order.
"""

import argparse
import asyncio
import base64
import copy
import hashlib
import http
import json
import signal
import sys
import threading
import time
from urllib.parse import parse_qsl, urlsplit

import httptools

try:  # uvloop is a fastlb dependency, but the backend also runs on plain asyncio
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None

__all__ = [
    "BackendServer",
    "ConnectionRecord",
    "RequestRecord",
    "pattern",
    "pattern_sha256",
    "websocket_accept",
    "main",
]

# /size body: byte i is ALPHABET[i % 64]; a 64 KiB block is a whole number of
# alphabets, so every block starts aligned and a checker needs only the offset.
ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
BLOCK_SIZE = 64 * 1024
BLOCK = ALPHABET * (BLOCK_SIZE // len(ALPHABET))

# RFC 6455 §1.3: the GUID appended to Sec-WebSocket-Key before SHA-1.
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

DEFAULT_RAW_LIMIT = 8 * 1024 * 1024  # raw bytes kept per connection (raw_len counts all)
MAX_DELAY = 60.0  # cap for /slow and /slowbody, seconds
WRITE_HIGH_WATER = 256 * 1024
MAX_QUEUED = 64  # pipelined requests queued before reading pauses


def pattern(offset, length):
    """The /size body bytes [offset, offset+length) (for small checks)."""
    out = bytearray()
    pos = offset
    end = offset + length
    while pos < end:
        start = pos % len(ALPHABET)
        take = min(end - pos, BLOCK_SIZE - start)
        out += BLOCK[start : start + take]
        pos += take
    return bytes(out)


def pattern_sha256(n):
    """sha256 hex of the /size?n=N body, computed in constant memory."""
    h = hashlib.sha256()
    full, rest = divmod(n, BLOCK_SIZE)
    for _ in range(full):
        h.update(BLOCK)
    h.update(BLOCK[:rest])
    return h.hexdigest()


def websocket_accept(key):
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455 §4.2.2)."""
    if isinstance(key, str):
        key = key.encode("latin-1")
    return base64.b64encode(hashlib.sha1(key.strip() + WS_GUID).digest()).decode("ascii")


class RequestRecord:
    """One parsed request as the backend saw it."""

    __slots__ = (
        "method",
        "target",
        "path",
        "query",
        "headers",
        "trailers",
        "body",
        "body_len",
        "http_version",
        "keep_alive",
        "expect_continue",
        "complete",
        "conn",
        "peer_port",
    )

    def __init__(self, conn, peer_port):
        self.method = ""
        self.target = ""
        self.path = ""
        self.query = {}
        self.headers = []  # [(name bytes, value bytes)] in received order
        self.trailers = []  # chunked trailer fields, same form
        self.body = b""
        self.body_len = 0
        self.http_version = ""
        self.keep_alive = True
        self.expect_continue = False
        self.complete = False
        self.conn = conn  # index of the ConnectionRecord in srv.connections
        self.peer_port = peer_port

    def header(self, name, default=None):
        """First value of header ``name`` (case-insensitive), as bytes."""
        if isinstance(name, str):
            name = name.encode("latin-1")
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return default

    def header_values(self, name):
        if isinstance(name, str):
            name = name.encode("latin-1")
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]

    def snapshot(self):
        c = copy.copy(self)
        c.headers = list(self.headers)
        c.trailers = list(self.trailers)
        c.query = dict(self.query)
        c.body = bytes(self.body)
        return c

    def __repr__(self):
        return "<RequestRecord %s %s conn=%d body_len=%d>" % (
            self.method,
            self.target,
            self.conn,
            self.body_len,
        )


class ConnectionRecord:
    """One accepted connection: the raw bytes in and the requests parsed from them."""

    __slots__ = ("index", "peer_port", "raw", "raw_len", "requests", "closed", "error", "upgraded")

    def __init__(self, index, peer_port):
        self.index = index
        self.peer_port = peer_port
        self.raw = bytearray()
        self.raw_len = 0
        self.requests = []
        self.closed = False
        self.error = None  # parse error text, when the backend answered 400
        self.upgraded = False

    def snapshot(self):
        c = copy.copy(self)
        c.raw = bytearray(self.raw)
        c.requests = [r.snapshot() for r in self.requests]
        return c

    def __repr__(self):
        return "<ConnectionRecord #%d port=%s raw_len=%d requests=%d closed=%s>" % (
            self.index,
            self.peer_port,
            self.raw_len,
            len(self.requests),
            self.closed,
        )


class _Exchange:
    """Loop-side state of one request while it is being received and answered."""

    __slots__ = ("rec", "body", "done", "aborted", "sink", "hasher", "upgrade", "url", "in_body")

    def __init__(self, rec):
        self.rec = rec
        self.body = bytearray()
        self.done = asyncio.Event()
        self.aborted = False
        self.sink = False
        self.hasher = None
        self.upgrade = False
        self.url = bytearray()
        self.in_body = False  # headers complete: further on_header calls are trailers


_EOF = "eof"
_ERROR = "error"


def _reason(code):
    try:
        return http.HTTPStatus(code).phrase
    except ValueError:
        return "Unknown"


def _tokens(value):
    if value is None:
        return set()
    return {t.strip().lower() for t in value.split(b",") if t.strip()}


def _number(query, key, default, cast=int):
    try:
        return cast(query.get(key, default))
    except (TypeError, ValueError):
        return None


class _BackendProtocol(asyncio.Protocol):
    """One client connection: httptools parses, a worker task answers in order."""

    def __init__(self, server):
        self.server = server
        self.loop = server._loop
        self.transport = None
        self.record = None
        self.parser = httptools.HttpRequestParser(self)
        self.queue = asyncio.Queue()
        self.current = None  # exchange being received
        self.held = None  # bytes after an upgrade request, until it is decided
        self.tunnel = False
        self.dead = False  # parse error or EOF: no more parsing
        self.idle = True  # worker waiting for a request (for close_idle_connections)
        self.writable = asyncio.Event()
        self.writable.set()
        self.reading_paused = False
        self.worker = None
        self.generation = 0

    # -- transport callbacks -------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        peer = transport.get_extra_info("peername")
        self.generation = self.server._generation
        self.record = self.server._new_connection(peer[1] if peer else None)
        self.server._protocols.add(self)
        self.worker = self.loop.create_task(self._work())

    def data_received(self, data):
        if self.generation != self.server._generation:
            self.server._rebind(self)
        self.server._record_raw(self.record, data)
        if self.tunnel:
            self.transport.write(data)
            return
        if self.held is not None:
            self.held += data
            return
        if self.dead:
            return
        self._feed(data)

    def _feed(self, data):
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            offset = exc.args[0] if exc.args else len(data)
            self.held = bytearray(data[offset:])
        except httptools.HttpParserError as exc:
            self.dead = True
            with self.server._lock:
                self.record.error = str(exc) or type(exc).__name__
            self._abort_current()
            self.queue.put_nowait(_ERROR)
        if self.queue.qsize() > MAX_QUEUED and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()

    def eof_received(self):
        self._abort_current()
        if self.tunnel:
            return False  # close: the client is done sending in the tunnel
        self.dead = True
        self.queue.put_nowait(_EOF)
        return True  # keep the write side open until queued responses are sent

    def connection_lost(self, exc):
        with self.server._lock:
            self.record.closed = True
        self.server._protocols.discard(self)
        self._abort_current()
        self.writable.set()
        if self.worker is not None and not self.worker.done():
            self.worker.cancel()

    def pause_writing(self):
        self.writable.clear()
        if self.tunnel:
            self.transport.pause_reading()

    def resume_writing(self):
        self.writable.set()
        if self.tunnel:
            self.transport.resume_reading()

    def _abort_current(self):
        ex = self.current
        if ex is not None and not ex.done.is_set():
            ex.aborted = True
            ex.done.set()
        self.current = None

    # -- httptools callbacks ---------------------------------------------------

    def on_message_begin(self):
        rec = RequestRecord(self.record.index, self.record.peer_port)
        self.current = _Exchange(rec)

    def on_url(self, url):
        self.current.url += url

    def on_header(self, name, value):
        ex = self.current
        if ex.in_body:
            with self.server._lock:
                ex.rec.trailers.append((bytes(name), bytes(value)))
        else:
            ex.rec.headers.append((bytes(name), bytes(value)))

    def on_headers_complete(self):
        ex = self.current
        ex.in_body = True
        rec = ex.rec
        p = self.parser
        rec.method = p.get_method().decode("latin-1")
        rec.http_version = p.get_http_version()
        rec.keep_alive = bool(p.should_keep_alive())
        rec.target = ex.url.decode("latin-1")
        parts = urlsplit(rec.target)
        rec.path = parts.path or "/"
        rec.query = dict(parse_qsl(parts.query, keep_blank_values=True))
        rec.expect_continue = b"100-continue" in _tokens(rec.header(b"expect"))
        if rec.path == "/sink":
            ex.sink = True
            ex.hasher = hashlib.sha256()
        ex.upgrade = bool(p.should_upgrade())
        self.server._add_request(self.record, rec)
        self.queue.put_nowait(ex)

    def on_body(self, body):
        ex = self.current
        if ex.sink:
            ex.hasher.update(body)
            ex.rec.body_len += len(body)  # int store: atomic for readers
        else:
            with self.server._lock:
                ex.body += body
                ex.rec.body_len += len(body)

    def on_message_complete(self):
        ex = self.current
        with self.server._lock:
            ex.rec.body = bytes(ex.body)
            ex.rec.complete = True
        ex.done.set()
        self.current = None

    # -- the worker: one request at a time, in order ---------------------------

    async def _work(self):
        try:
            while True:
                self.idle = True
                item = await self.queue.get()
                self.idle = False
                if self.reading_paused and self.queue.qsize() <= MAX_QUEUED // 2:
                    self.reading_paused = False
                    self.transport.resume_reading()
                if item is _EOF:
                    self.transport.close()
                    return
                if item is _ERROR:
                    body = b"bad request\n"
                    self._write_head(400, [(b"Content-Type", b"text/plain")], len(body), True)
                    self.transport.write(body)
                    self.transport.close()
                    return
                keep = await self._handle(item)
                if self.transport.is_closing():
                    return
                if self.tunnel:
                    return
                if not keep:
                    self.transport.close()
                    return
                if item.upgrade:  # an upgrade request that was refused: parse on
                    held, self.held = self.held, None
                    self.parser = httptools.HttpRequestParser(self)
                    if held:
                        self._feed(bytes(held))
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # a bug here must not hang the test: log and cut
            print("backend %s: worker error: %r" % (self.server.name, exc), file=sys.stderr)
            self.transport.abort()

    async def _body(self, ex):
        """Wait for the whole request body; False when the client went away."""
        if not ex.done.is_set():
            await ex.done.wait()
        return not ex.aborted

    async def _drain(self):
        if not self.writable.is_set():
            await self.writable.wait()

    def _write_head(self, code, headers, length, close, chunked=False, rec=None):
        lines = [b"HTTP/1.1 %d %s\r\n" % (code, _reason(code).encode("latin-1"))]
        for name, value in headers:
            lines.append(b"%s: %s\r\n" % (name, value))
        lines.append(b"X-Backend: %s\r\n" % self.server.name.encode("latin-1"))
        if rec is not None and self.server.echo_request_id:
            rid = rec.header(b"x-request-id")
            if rid is not None:
                lines.append(b"X-Echo-Request-ID: %s\r\n" % rid)
        if chunked:
            lines.append(b"Transfer-Encoding: chunked\r\n")
        elif length is not None:
            lines.append(b"Content-Length: %d\r\n" % length)
        if close:
            lines.append(b"Connection: close\r\n")
        lines.append(b"\r\n")
        self.transport.write(b"".join(lines))

    def _respond(self, rec, code, headers, body, close=False):
        """A whole Content-Length response; returns keep-alive."""
        close = close or not rec.keep_alive
        bodiless = code in (204, 304) or 100 <= code < 200
        self._write_head(code, headers, None if bodiless else len(body), close, rec=rec)
        if rec.method != "HEAD" and not bodiless and body:
            self.transport.write(body)
        return not close

    def _json(self, rec, code, obj, close=False):
        body = json.dumps(obj).encode("utf-8")
        return self._respond(rec, code, [(b"Content-Type", b"application/json")], body, close)

    def _info(self, rec):
        # HEAD reports "GET" so that its Content-Length is the GET's (RFC 9110 §9.3.2).
        method = "GET" if rec.method == "HEAD" else rec.method
        hdrs = {}
        for k, v in rec.headers:
            key = k.decode("latin-1").lower()
            val = v.decode("latin-1")
            hdrs[key] = hdrs[key] + ", " + val if key in hdrs else val
        return {
            "backend": self.server.name,
            "method": method,
            "path": rec.path,
            "target": rec.target,
            "headers": hdrs,
            "conn": rec.conn,
            "peer_port": rec.peer_port,
        }

    async def _handle(self, ex):
        rec = ex.rec
        path = rec.path
        q = rec.query
        t = self.transport

        # Answered before the body is read.
        if path == "/expect-reject":
            body = b"expectation failed\n"
            return self._respond(rec, 417, [(b"Content-Type", b"text/plain")], body, close=True)
        if path == "/reset":
            t.abort()
            return False
        if rec.expect_continue and not ex.done.is_set() and self._has_body(rec):
            t.write(b"HTTP/1.1 100 Continue\r\n\r\n")

        if not await self._body(ex):
            return True  # client vanished mid-body; the EOF/error item that follows decides
        if self.server.delay > 0:  # a slow backend: every answer waits (tests of latency-aware balancing)
            await asyncio.sleep(min(self.server.delay, MAX_DELAY))

        if path == "/echo":
            return await self._echo(ex, q)
        if path == "/size":
            return await self._size(rec, q)
        if path == "/sink":
            return self._json(
                rec,
                200,
                {"backend": self.server.name, "received": rec.body_len, "sha256": ex.hasher.hexdigest()},
            )
        if path == "/status":
            code = _number(q, "code", 200)
            if code is None or not 200 <= code <= 599:
                return self._respond(rec, 400, [], b"bad code\n")
            return self._respond(
                rec, code, [(b"Content-Type", b"text/plain")], b"status %d\n" % code, q.get("close") == "1"
            )
        if path == "/slow":
            delay = _number(q, "delay", 1.0, float)
            await asyncio.sleep(min(max(delay or 0.0, 0.0), MAX_DELAY))
            return self._json(rec, 200, self._info(rec))
        if path == "/slowbody":
            delay = _number(q, "delay", 1.0, float)
            body = json.dumps(self._info(rec)).encode("utf-8")
            close = not rec.keep_alive
            self._write_head(200, [(b"Content-Type", b"application/json")], len(body), close, rec=rec)
            if rec.method == "HEAD":
                return not close
            await asyncio.sleep(min(max(delay or 0.0, 0.0), MAX_DELAY))
            if t.is_closing():
                return False
            t.write(body)
            return not close
        if path == "/halfhead":
            t.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/pl")
            t.close()
            return False
        if path == "/headers":
            pairs = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in rec.headers]
            return self._json(rec, 200, pairs)
        if path == "/hop":
            body = b"hop\n"
            t.write(
                b"HTTP/1.1 200 OK\r\n"
                b"Connection: close, X-Hop\r\n"
                b"Keep-Alive: timeout=5\r\n"
                b"X-Hop: 1\r\n"
                b"Proxy-Connection: x\r\n"
                b"Trailer: x\r\n"
                b"Upgrade: foo\r\n"
                b"X-End: 1\r\n"
                b"X-Backend: %s\r\n"
                b"Content-Type: text/plain\r\n"
                b"Content-Length: %d\r\n\r\n" % (self.server.name.encode("latin-1"), len(body))
            )
            if rec.method != "HEAD":
                t.write(body)
            return False
        if path == "/ws":
            return self._websocket(ex)
        if path == "/keepalive-leftover":
            close = not rec.keep_alive
            t.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Backend: %s\r\n%s\r\nokXX"
                % (self.server.name.encode("latin-1"), b"Connection: close\r\n" if close else b"")
            )
            return not close
        if path == "/__backend/stats":
            return self._json(rec, 200, self.server.stats())
        return self._json(rec, 200, self._info(rec), q.get("close") == "1")

    @staticmethod
    def _has_body(rec):
        if b"chunked" in _tokens(rec.header(b"transfer-encoding")):
            return True
        try:
            return int(rec.header(b"content-length", b"0")) > 0
        except ValueError:
            return False

    async def _echo(self, ex, q):
        rec = ex.rec
        body = rec.body
        ctype = rec.header(b"content-type", b"application/octet-stream")
        head_only = rec.method == "HEAD"
        t = self.transport
        if q.get("close") == "1":
            t.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nX-Backend: %s\r\nConnection: close\r\n\r\n"
                % (ctype, self.server.name.encode("latin-1"))
            )
            if not head_only:
                t.write(body)
            return False
        if q.get("chunked") == "1":
            close = not rec.keep_alive
            step = _number(q, "chunk", 16 * 1024) or 16 * 1024
            self._write_head(200, [(b"Content-Type", ctype)], None, close, chunked=True, rec=rec)
            if head_only:
                return not close
            for i in range(0, len(body), max(step, 1)):
                piece = body[i : i + step]
                t.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                await self._drain()
            t.write(b"0\r\n\r\n")
            return not close
        return self._respond(rec, 200, [(b"Content-Type", ctype)], body)

    async def _size(self, rec, q):
        n = _number(q, "n", 0)
        if n is None or n < 0:
            return self._respond(rec, 400, [], b"bad n\n")
        t = self.transport
        name = self.server.name.encode("latin-1")
        ctype = (b"Content-Type", b"application/octet-stream")
        close_delimited = q.get("close") == "1"
        chunked = q.get("chunked") == "1" and not close_delimited
        close = close_delimited or not rec.keep_alive
        if close_delimited:
            t.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                b"X-Backend: %s\r\nConnection: close\r\n\r\n" % name
            )
        else:
            self._write_head(200, [ctype], n, close, chunked=chunked, rec=rec)
        if rec.method == "HEAD":
            return not close
        sent = 0
        blocks = 0
        while sent < n:
            if t.is_closing():
                return False
            take = min(BLOCK_SIZE, n - sent)
            piece = BLOCK if take == BLOCK_SIZE else BLOCK[:take]
            if chunked:
                t.writelines((b"%x\r\n" % take, piece, b"\r\n"))
            else:
                t.write(piece)
            sent += take
            blocks += 1
            if not self.writable.is_set():
                await self.writable.wait()
            elif blocks % 16 == 0:
                await asyncio.sleep(0)  # let the loop breathe on a fast reader
        if chunked:
            t.write(b"0\r\n\r\n")
        return not close

    def _websocket(self, ex):
        rec = ex.rec
        upgrade = _tokens(rec.header(b"upgrade"))
        connection = _tokens(rec.header(b"connection"))
        if not ex.upgrade or b"websocket" not in upgrade or b"upgrade" not in connection:
            body = b"upgrade required\n"
            return self._respond(
                rec,
                426,
                [(b"Upgrade", b"websocket"), (b"Connection", b"Upgrade"), (b"Content-Type", b"text/plain")],
                body,
            )
        key = rec.header(b"sec-websocket-key")
        if not key:
            return self._respond(rec, 400, [(b"Content-Type", b"text/plain")], b"missing Sec-WebSocket-Key\n")
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\n"
            b"Upgrade: websocket\r\n"
            b"Connection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: %s\r\n"
            b"X-Backend: %s\r\n\r\n" % (websocket_accept(key).encode("ascii"), self.server.name.encode("latin-1"))
        )
        self.tunnel = True
        with self.server._lock:
            self.record.upgraded = True
        held, self.held = self.held, None
        if held:
            self.transport.write(bytes(held))
        if self.dead:  # the client already half-closed
            self.transport.close()
        return True


class BackendServer:
    """The test backend, run in a background thread (``start``) or in the caller's loop (``serve``)."""

    def __init__(self, name="b1", host="127.0.0.1", port=0, raw_limit=DEFAULT_RAW_LIMIT, record=True,
                 ssl_context=None):
        """``record=False`` keeps counts only (no raw bytes, no request records):
        for long soak runs, where records would grow without bound. ``ssl_context``
        (a server-side ssl.SSLContext): serve HTTPS; the records hold the decrypted bytes."""
        self.name = name
        self.ssl_context = ssl_context
        self.host = host
        self.port = port
        self.raw_limit = raw_limit if record else 0
        self.record = record
        self.delay = 0.0  # seconds every response waits after the request body; settable any time
        # When true, every response written by _write_head for a parsed request carries
        # X-Echo-Request-ID: the request's first X-Request-ID value (when it had one), so
        # a client can pair the responses it got with the requests the backend saw.
        self.echo_request_id = False
        self._lock = threading.Lock()
        self._connections = []
        self._requests = []
        self._request_count = 0
        self._generation = 0
        self._protocols = set()
        self._loop = None
        self._server = None
        self._thread = None
        self._ready = threading.Event()
        self._start_error = None

    # -- lifecycle ---------------------------------------------------------------

    @property
    def address(self):
        return "%s:%d" % (self.host, self.port)

    @property
    def url(self):
        return "http://%s" % self.address

    def start(self, timeout=10.0):
        """Bind and serve in a background thread; returns self once listening."""
        if self._thread is not None:
            raise RuntimeError("backend %s already started" % self.name)
        self._ready.clear()
        self._thread = threading.Thread(target=self._run_thread, name="backend-%s" % self.name, daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("backend %s did not start within %.0fs" % (self.name, timeout))
        if self._start_error is not None:
            self._thread.join(timeout)
            self._thread = None
            raise self._start_error
        return self

    def _run_thread(self):
        loop = uvloop.new_event_loop() if uvloop is not None else asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            try:
                loop.run_until_complete(self._listen(loop))
            except BaseException as exc:
                self._start_error = exc
                return
            finally:
                self._ready.set()
            loop.run_forever()
        finally:
            self._shutdown(loop)

    async def _listen(self, loop):
        self._loop = loop
        self._server = await loop.create_server(
            lambda: _BackendProtocol(self), self.host, self.port, backlog=1024, reuse_address=True,
            ssl=self.ssl_context,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    def _shutdown(self, loop):
        try:
            if self._server is not None:
                self._server.close()
            for proto in list(self._protocols):
                if proto.transport is not None:
                    proto.transport.abort()
            tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for t in tasks:
                t.cancel()
            if tasks:
                loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()

    def stop(self, timeout=10.0):
        """Stop serving: the listener closes and open connections are aborted."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(loop.stop)
            except RuntimeError:
                pass
        thread.join(timeout)
        self._server = None
        self._loop = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    async def serve(self, stop_event):
        """Serve in the running loop until ``stop_event`` (an asyncio.Event) is set."""
        await self._listen(asyncio.get_running_loop())
        try:
            await stop_event.wait()
        finally:
            self._server.close()
            for proto in list(self._protocols):
                if proto.transport is not None:
                    proto.transport.abort()

    # -- control from tests ----------------------------------------------------------

    def close_idle_connections(self, timeout=5.0):
        """Close (FIN) every connection that is waiting for its next request.

        Lets a test make a proxy's pooled keep-alive connection stale. Returns
        how many were closed.
        """

        def do():
            n = 0
            for proto in list(self._protocols):
                if proto.idle and not proto.tunnel and proto.queue.empty() and proto.current is None:
                    proto.transport.close()
                    n += 1
            return n

        return self._call(do, timeout)

    def settle(self, rounds=3, timeout=5.0):
        """Return once the backend's loop has run ``rounds`` more iterations, each polling
        for I/O: a connection already waiting in the kernel's accept queue (say, one a
        proxy opened and abandoned) is then accepted and recorded, so a test can tell
        which connections came before a ``reset()``."""
        for _ in range(rounds):
            self._call(lambda: None, timeout)

    def _call(self, fn, timeout):
        loop = self._loop
        if loop is None:
            raise RuntimeError("backend %s is not running" % self.name)
        done = threading.Event()
        box = []

        def run():
            try:
                box.append(fn())
            finally:
                done.set()

        loop.call_soon_threadsafe(run)
        if not done.wait(timeout):
            raise TimeoutError("backend %s did not answer" % self.name)
        return box[0] if box else None

    # -- records (loop side) -----------------------------------------------------------

    def _new_connection(self, peer_port):
        with self._lock:
            rec = ConnectionRecord(len(self._connections), peer_port)
            self._connections.append(rec)
            return rec

    def _record_raw(self, rec, data):
        with self._lock:
            room = self.raw_limit - len(rec.raw)
            if room > 0:
                rec.raw += data[:room] if len(data) > room else data
            rec.raw_len += len(data)

    def _add_request(self, conn_rec, req):
        with self._lock:
            self._request_count += 1
            if self.record:
                conn_rec.requests.append(req)
                self._requests.append(req)

    # -- records (any thread) ------------------------------------------------------------

    @property
    def connections(self):
        with self._lock:
            return [c.snapshot() for c in self._connections]

    @property
    def requests(self):
        with self._lock:
            return [r.snapshot() for r in self._requests]

    @property
    def connection_count(self):
        with self._lock:
            return len(self._connections)

    @property
    def request_count(self):
        with self._lock:
            return self._request_count

    @property
    def open_connection_count(self):
        with self._lock:
            return sum(1 for c in self._connections if not c.closed)

    def reset(self):
        """Forget every record.

        Open connections keep working: one that receives bytes again is recorded
        afresh (a new ConnectionRecord holding only what came after the reset).
        """
        with self._lock:
            self._connections = []
            self._requests = []
            self._request_count = 0
            self._generation += 1

    def _rebind(self, proto):
        """A connection from before reset() received data: give it a new record."""
        with self._lock:
            old = proto.record
            rec = ConnectionRecord(len(self._connections), old.peer_port)
            rec.upgraded = old.upgraded
            self._connections.append(rec)
            proto.record = rec
            proto.generation = self._generation
            if proto.current is not None:
                proto.current.rec.conn = rec.index

    def stats(self):
        with self._lock:
            return {
                "backend": self.name,
                "connections": len(self._connections),
                "open": sum(1 for c in self._connections if not c.closed),
                "requests": self._request_count,
            }

    def wait_until(self, predicate, timeout=5.0, interval=0.01):
        """Poll ``predicate(self)`` until true; returns its last value."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate(self)
            if value or time.monotonic() >= deadline:
                return value
            time.sleep(interval)

    def __repr__(self):
        return "<BackendServer %s %s>" % (self.name, self.address)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tests.support.backend", description=__doc__.split("\n")[0])
    ap.add_argument("--name", default="b1")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--print-port", action="store_true", help="print the bound port on one line once listening")
    ap.add_argument(
        "--record",
        action="store_true",
        help="keep raw bytes and request records (off by default: a subprocess exposes only /__backend/stats)",
    )
    args = ap.parse_args(argv)
    if not args.host.startswith("127.") and args.host not in ("localhost", "::1"):
        ap.error("the test backend only binds loopback addresses")

    srv = BackendServer(name=args.name, host=args.host, port=args.port, record=args.record)

    async def run():
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        task = loop.create_task(srv.serve(stop))
        while srv._server is None and not task.done():
            await asyncio.sleep(0.005)
        if task.done():
            task.result()  # bind failure: raise it
        if args.print_port:
            sys.stdout.write("%d\n" % srv.port)
            sys.stdout.flush()
        await task

    if uvloop is not None:
        uvloop.run(run())
    else:  # pragma: no cover
        asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
