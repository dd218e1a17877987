"""The admin API: a small JSON HTTP server on its own listener (h11, not the hot path).

Endpoints (docs/operations.md):
    GET  /healthz                                  200 {"status": "ok"} while serving
    GET  /metrics                                  Prometheus text format, or OpenMetrics when Accept asks (docs/metrics.md)
    GET  /dashboard                                the live dashboard page (docs/dashboard.md)
    GET  /api/v1/stats                             live rates, error rates, latencies and their history (docs/dashboard.md)
    GET  /api/v1/info                              version, core implementation, listeners (TLS: certificates, handshakes)
    GET  /api/v1/pools                             every pool with its backends and counters
    GET  /api/v1/pools/{pool}                      one pool
    GET  /api/v1/pools/{pool}/explain?key=K        which backend a request with key K would get, and why
         (also ?ip=ADDR for ip_hash / hash_key ip; without key: the round-robin fallback)
    POST /api/v1/pools/{pool}/backends/{address}/disable   take a backend out of rotation
    POST /api/v1/pools/{pool}/backends/{address}/enable    put it back
    POST /api/v1/pools/{pool}/backends/{address}/drain     no new requests; in-flight ones finish
    POST /api/v1/pools/{pool}/backends/{address}/undrain   back (through a passing check when checks are on)
    POST /api/v1/pools/{pool}/backends/{address}/weight    body {"weight": N}: change its weight (1-1000)

Writes and reads (docs/operations.md#securing-the-admin-api). A write is any method other
than GET and HEAD (today the POST endpoints above); it is checked before it is routed:
- With a token (``admin.token_file``, else the ``FASTLB_ADMIN_TOKEN`` environment variable;
  ``admin_token``, read once when the AdminServer is built): a write needs
  ``Authorization: Bearer <token>`` (RFC 6750 §2.1), compared in constant time; without it, or
  with a wrong one, 401 with ``WWW-Authenticate: Bearer realm="fastlb-admin"`` (RFC 6750 §3).
- Without a token: only a loopback admin bind is allowed (``check_bind``: a non-loopback bind
  with no token is a ConfigError at start, before anything is served), and a write needs
  ``Content-Type: application/json``, else 415. A cross-site HTML form can only send
  ``application/x-www-form-urlencoded``, ``multipart/form-data`` or ``text/plain`` and cannot
  set ``Authorization``; a cross-site ``fetch`` with a JSON content type needs a CORS preflight,
  which this server never grants (it sends no Access-Control-* headers). So a page in the
  operator's browser cannot make a write.
Reads (GET/HEAD: /healthz, /metrics, /dashboard, /api/v1/...) need no token, so Prometheus
scrapes without one: bind the admin listener to loopback or a management network.
"""

import asyncio
import hmac
import importlib.resources
import ipaddress
import json
import logging
import os
import urllib.parse

import h11

from . import _core, health
from ._version import __version__
from .errors import ConfigError
from .model import Address

log = logging.getLogger("fastlb.admin")

__all__ = ["AdminServer", "admin_token", "check_bind", "is_loopback", "TOKEN_ENV"]

MAX_BODY = 64 * 1024

TOKEN_ENV = "FASTLB_ADMIN_TOKEN"
REALM = 'Bearer realm="fastlb-admin"'
# Methods that only read (RFC 9110 §9.2.1 safe methods this server answers); any other is a write.
READ_METHODS = frozenset((b"GET", b"HEAD"))


def admin_token(spec, environ=None):
    """The admin API's bearer token as bytes, or None when none is configured.

    ``spec.token_file`` (an ``AdminSpec``) wins: the file's contents with surrounding
    whitespace stripped (so ``openssl rand -hex 32 > FILE`` and its newline work); an empty
    file is an error. Else ``environ[TOKEN_ENV]`` (``os.environ`` by default), stripped;
    unset or blank means no token. A token must be visible ASCII without spaces (RFC 6750
    §2.1's b64token is a subset), since it travels in a header. Errors are ConfigErrors
    naming where the token came from.
    """
    if environ is None:
        environ = os.environ
    path = getattr(spec, "token_file", None)
    if path:
        try:
            with open(path, "rb") as f:
                token = f.read().strip()
        except OSError as exc:
            raise ConfigError(("admin.token_file", "cannot read %s: %s" % (path, exc.strerror or exc))) from None
        if not token:
            raise ConfigError(("admin.token_file", "%s is empty: write a token to it, e.g. "
                                                    "openssl rand -hex 32 > %s" % (path, path)))
        where = "admin.token_file"
    else:
        value = environ.get(TOKEN_ENV, "")
        token = value.strip().encode("utf-8", "surrogateescape")
        if not token:
            if value:
                log.warning("%s is set but blank: the admin API has no token", TOKEN_ENV)
            return None
        where = TOKEN_ENV
    if any(c < 0x21 or c > 0x7E for c in token):
        raise ConfigError((where, "the admin token must be printable ASCII without spaces or control "
                                  "characters (e.g. openssl rand -hex 32)"))
    return token


def is_loopback(host):
    """True for "localhost" and for addresses in 127.0.0.0/8 or ::1 (names are not resolved)."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_name(value):
    """The host of a Host header value, without port or IPv6 brackets."""
    text = value.decode("latin-1").strip()
    if text.startswith("["):
        return text[1:text.find("]")] if "]" in text else ""
    return text.rpartition(":")[0] if text.count(":") == 1 else text


def check_bind(bind, token):
    """Refuse an admin API that anyone off the machine could write to: with no token, the
    bind (a model.Address) must be a loopback address. A ConfigError on ``admin.bind`` otherwise."""
    if token is None and not is_loopback(bind.host):
        raise ConfigError(("admin.bind", (
            "%s is not a loopback address and no admin token is set, so anyone who can reach it could "
            "change backends: set admin.token_file (or the %s environment variable) to require a bearer "
            "token for writes, or bind the admin API to 127.0.0.1") % (bind, TOKEN_ENV)))


class Raw:
    """A non-JSON answer: bytes with their content type."""

    __slots__ = ("body", "content_type")

    def __init__(self, body, content_type):
        self.body = body
        self.content_type = content_type


def dashboard_page():
    """The dashboard's single static file, shipped in the package (no build step, no CDN)."""
    return importlib.resources.files("fastlb").joinpath("dashboard/index.html").read_bytes()


class AdminServer:
    """The admin listener for ``server`` (a server.Server). Built before it serves: the token
    is read here, once, and an open non-loopback bind raises ConfigError (``check_bind``)."""

    def __init__(self, server, environ=None):
        self.server = server
        spec = server.config.admin
        self.token = admin_token(spec, environ)
        check_bind(spec.bind, self.token)
        if self.token is not None:
            log.info("admin API: writes need the bearer token (from %s)",
                     "admin.token_file" if spec.token_file else TOKEN_ENV)
        else:
            log.info("admin API: no token set; writes accepted on loopback with Content-Type: application/json")
        self.accept = ""
        self._srv = None
        self.address = None
        self._metrics = None
        self._page = None

    async def start(self, host, port):
        check_bind(Address(host, port), self.token)  # the address actually bound, should it differ
        self._srv = await asyncio.start_server(self._handle, host, port, reuse_address=True)
        sock = self._srv.sockets[0].getsockname()
        self.address = "[%s]:%d" % sock[:2] if ":" in sock[0] else "%s:%d" % sock[:2]

    async def stop(self):
        if self._srv is not None:
            self._srv.close()
            self._srv = None

    async def _handle(self, reader, writer):
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=16 * 1024)
        try:
            while True:
                request, body = await self._read_request(conn, reader)
                if request is None:
                    break
                self.accept = dict(request.headers).get(b"accept", b"").decode("latin-1")
                extra = ()
                refused = None if request.method in READ_METHODS else self.authorize_write(request, writer)
                if refused is not None:
                    status, payload, extra = refused
                else:
                    status, payload = self._answer(request.method.decode("latin-1"),
                                                   request.target.decode("latin-1"), body)
                if isinstance(payload, Raw):
                    data, ctype = payload.body, payload.content_type
                else:
                    data, ctype = json.dumps(payload, indent=2).encode() + b"\n", "application/json"
                headers = [("Content-Type", ctype), ("Content-Length", str(len(data))), ("Cache-Control", "no-store")]
                headers.extend(extra)
                if request.method == b"HEAD":
                    data = b""
                writer.write(conn.send(h11.Response(status_code=status, headers=headers)))
                writer.write(conn.send(h11.Data(data=data)))
                writer.write(conn.send(h11.EndOfMessage()))
                await writer.drain()
                if conn.our_state is h11.MUST_CLOSE:
                    break
                conn.start_next_cycle()
        except (h11.RemoteProtocolError, ConnectionError, asyncio.TimeoutError) as exc:
            log.debug("admin connection closed: %s", exc)
        finally:
            writer.close()

    async def _read_request(self, conn, reader):
        request, body = None, b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await asyncio.wait_for(reader.read(65536), 30)
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_BODY:
                    raise h11.RemoteProtocolError("admin request body too large")
            elif isinstance(event, h11.EndOfMessage):
                return request, body
            elif isinstance(event, h11.ConnectionClosed):
                return None, b""

    def authorize_write(self, request, writer):
        """None when the write ``request`` (an h11.Request) may go on, else the refusal:
        (status, JSON payload, extra headers). The token itself is never logged."""
        what = "%s %s" % (request.method.decode("latin-1"), request.target.decode("latin-1").partition("?")[0])
        if self.token is not None:
            values = [v for k, v in request.headers if k == b"authorization"]
            scheme, _, credential = values[0].strip().partition(b" ") if len(values) == 1 else (b"", b"", b"")
            if scheme.lower() != b"bearer" or not credential.strip():
                log.info("admin: %s refused: no bearer token", what)
                return 401, {"error": "this admin API needs a bearer token for writes: "
                                      "send Authorization: Bearer <token>"}, (("WWW-Authenticate", REALM),)
            if not hmac.compare_digest(credential.strip(), self.token):
                log.warning("admin: %s from %s refused: wrong bearer token", what, _peer(writer))
                return 401, {"error": "wrong bearer token"}, (
                    ("WWW-Authenticate", REALM + ', error="invalid_token"'),)
            return None
        # DNS rebinding: a page whose name resolves to 127.0.0.1 can send JSON to a
        # loopback admin API, but its Host header names the page's host, not loopback
        hosts = [v for k, v in request.headers if k == b"host"]
        host = _host_name(hosts[0]) if len(hosts) == 1 else ""
        if not is_loopback(host):
            log.warning("admin: %s refused: Host %r is not a loopback name (DNS rebinding?)", what,
                        hosts[0][:100] if hosts else None)
            return 403, {"error": "without an admin token, writes must be addressed to a loopback host "
                                  "(Host: 127.0.0.1 or localhost)"}, ()
        values = [v for k, v in request.headers if k == b"content-type"]
        media = values[0].partition(b";")[0].strip().lower() if len(values) == 1 else b""
        if media != b"application/json":
            log.info("admin: %s refused: Content-Type is not application/json", what)
            return 415, {"error": "admin writes need Content-Type: application/json (without an admin token this "
                                  "is what keeps a cross-site form from posting them); got %s" % (
                                      values[0].decode("latin-1")[:100] if len(values) == 1 else
                                      "no Content-Type" if not values else "several Content-Type headers")}, ()
        return None

    def _answer(self, method, target, body):
        """dispatch(), with any bad input a 400 and any bug a 500: always a JSON answer,
        never a dropped connection."""
        try:
            return self.dispatch(method, target, body)
        except BadRequest as exc:
            return 400, {"error": str(exc)}
        except Exception as exc:
            log.exception("admin: %s %s failed", method, target)
            return 500, {"error": "internal error: %s" % exc.__class__.__name__}

    def dispatch(self, method, target, body):
        path, _, query = target.partition("?")
        path = path.rstrip("/") or "/"
        parts = [p for p in path.split("/") if p]
        srv = self.server
        if path == "/healthz":
            if method != "GET":
                return 405, {"error": "use GET"}
            return 200, {"status": "draining" if srv._drain_task else "ok"}
        if path == "/metrics":
            if method not in ("GET", "HEAD"):
                return 405, {"error": "use GET"}
            if self._metrics is None:
                from .metrics import Registry

                self._metrics = Registry(srv)
            body, ctype = self._metrics.render(self.accept)
            return 200, Raw(body, ctype)
        if path == "/dashboard":
            if method not in ("GET", "HEAD"):
                return 405, {"error": "use GET"}
            if self._page is None:
                self._page = dashboard_page()
            return 200, Raw(self._page, "text/html; charset=utf-8")
        if parts[:2] != ["api", "v1"]:
            return 404, {"error": "not found: %s" % path}
        rest = parts[2:]
        if rest == ["stats"] and method == "GET":
            return 200, srv.stats.as_dict(srv.loop.time())
        if rest == ["info"] and method == "GET":
            return 200, {
                "version": __version__,
                "core": _core.IMPLEMENTATION,
                "core_fallback_reason": _core.FALLBACK_REASON,
                "listeners": [{"name": rt.spec.name, "address": rt.address,
                               "connections": len(rt.connections),
                               "tls": rt.tls.as_dict() if rt.tls is not None else None} for rt in srv.listeners],
            }
        if rest == ["pools"] and method == "GET":
            now = srv.loop.time()
            return 200, {"pools": [p.as_dict(now) for p in srv.pools.values()]}
        if len(rest) >= 2 and rest[0] == "pools":
            pool = srv.pools.get(rest[1])
            if pool is None:
                return 404, {"error": "no pool named %r" % rest[1]}
            if len(rest) == 2 and method == "GET":
                return 200, pool.as_dict(self.server.loop.time())
            if len(rest) == 3 and rest[2] == "explain" and method == "GET":
                key = query_bytes(query, "key")
                if key is None:
                    key = query_bytes(query, "ip")
                return 200, pool.explain(key, self.server.loop.time())
            if len(rest) == 5 and rest[2] == "backends" and rest[4] == "weight":
                if method != "POST":
                    return 405, {"error": "use POST"}
                backend = pool.backend(rest[3])
                if backend is None:
                    return 404, {"error": "pool %s has no backend %s" % (pool.name, rest[3])}
                try:
                    weight = json.loads(body or b"null")["weight"]
                    if isinstance(weight, bool) or not isinstance(weight, int):
                        raise TypeError
                    pool.set_weight(backend, weight, self.server.loop.time())
                except (ValueError, KeyError, TypeError):
                    return 400, {"error": 'expected a JSON body {"weight": N} with N an integer from 1 to 1000'}
                log.info("admin: weight %s/%s = %d", pool.name, backend.address, weight)
                return 200, pool.backend_dict(backend, self.server.loop.time())
            if len(rest) == 5 and rest[2] == "backends" and rest[4] in ADMIN_EVENTS:
                if method != "POST":
                    return 405, {"error": "use POST"}
                backend = pool.backend(rest[3])
                if backend is None:
                    return 404, {"error": "pool %s has no backend %s" % (pool.name, rest[3])}
                now = self.server.loop.time()
                event = rest[4]
                old = backend.state
                if health.transition(pool, backend, event, now, "admin API: %s" % event) is None \
                        and old != ADMIN_EVENTS[event] and not (event in ("enable", "undrain")
                                                                 and old not in (health.DRAINING, health.DISABLED)):
                    return 409, {"error": "cannot %s a backend that is %s" % (event, old), "state": old}
                log.info("admin: %s %s/%s", event, pool.name, backend.address)
                return 200, pool.backend_dict(backend, now)
        return 404, {"error": "not found: %s %s" % (method, path)}


# Admin events (health.py's table) and the state each one leads to; repeating one
# (draining a draining backend, enabling an enabled one) is a no-op, not an error.
ADMIN_EVENTS = {"disable": health.DISABLED, "drain": health.DRAINING, "enable": None, "undrain": None}


def _peer(writer):
    peer = writer.get_extra_info("peername")
    if not peer:
        return "?"
    return "[%s]:%d" % peer[:2] if ":" in peer[0] else "%s:%d" % peer[:2]


class BadRequest(ValueError):
    """Admin input that cannot be understood: answered 400 with the message."""


_HEX = frozenset("0123456789abcdefABCDEF")


def query_bytes(query, name):
    """The first value of ``name`` in a query string, percent-decoded to bytes
    (RFC 3986 §2.1), or None. The key is the exact bytes a request would carry
    (UTF-8 for text); a malformed escape such as ``%ZZ`` is a BadRequest."""
    for part in query.split("&"):
        k, _, v = part.partition("=")
        if urllib.parse.unquote_plus(k) != name:
            continue
        i = v.find("%")
        while i >= 0:
            if len(v) < i + 3 or v[i + 1] not in _HEX or v[i + 2] not in _HEX:
                raise BadRequest("malformed percent-encoding in query parameter %r" % name)
            i = v.find("%", i + 3)
        return urllib.parse.unquote_to_bytes(v.replace("+", " "))
    return None
