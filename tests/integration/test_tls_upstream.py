"""TLS from fastlb to its backends ("https pools": ``pools.NAME.tls``), end to end.

Real TLS everywhere: a trustme CA (and a second, untrusted one) made per test,
certificates written to tmp_path, backends serving HTTPS (tests/support/backend.py
with an ``ssl_context``, or raw ``ssl`` sockets written here when a test needs to
control the TLS layer byte by byte: alerts, close_notify, resets). Clients speak
plain HTTP to a real fastlb process (``fastlb`` fixture); what fastlb decided is
read from the responses, its log (``proc.output``), the admin API and the
backends' own records. Two tests run fastlb's Server in this process (a thread
with its own uvloop loop) to read the counters no API shows yet
(``Backend.tls_failures``, ``Pool.retries_total``).

Every client call has a timeout; every wait polls with a deadline.
"""

import asyncio
import hashlib
import os
import signal
import socket
import ssl
import struct
import threading
import time

import httpx
import pytest
import trustme

from tests.integration.conftest import FAST_TIMEOUTS, pool_doc
from tests.support.backend import BackendServer, pattern_sha256
from tests.support.fastlb_proc import recv_until_closed
from tests.support.wait import wait_for

T = 10.0  # seconds: every client call
MARGIN = 3.0  # seconds added to timing bounds (a loaded machine)


# ------------------------------------------------------------------------ PKI
class Pki:
    """A trusted CA, an untrusted one, and their certificates as files in tmp_path."""

    def __init__(self, tmp_path):
        self.dir = tmp_path
        self.ca = trustme.CA(organization_name="fastlb test CA")
        self.other_ca = trustme.CA(organization_name="someone else's CA")
        self.ca_file = self._write("ca.pem", self.ca.cert_pem.bytes())
        # the backends' certificate: their DNS name and their address
        self.server = self.ca.issue_cert("api.internal", "127.0.0.1")
        self.untrusted = self.other_ca.issue_cert("api.internal", "127.0.0.1")
        # fastlb's client certificate (mTLS to the backend)
        self.client = self.ca.issue_cert("fastlb.internal")
        self.client_cert = self._write("client.pem", b"".join(p.bytes() for p in self.client.cert_chain_pems))
        self.client_key = self._write("client.key", self.client.private_key_pem.bytes())

    def _write(self, name, data):
        path = self.dir / name
        path.write_bytes(data)
        return str(path)

    def server_context(self, leaf=None, client_ca=None):
        """A backend's server context: ``leaf`` (default: the trusted certificate);
        ``client_ca``: require a client certificate issued by that CA."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        (leaf or self.server).configure_cert(ctx)
        if client_ca is not None:
            ctx.verify_mode = ssl.CERT_REQUIRED
            client_ca.configure_trust(ctx)
        return ctx


@pytest.fixture
def pki(tmp_path):
    return Pki(tmp_path)


class SniLog:
    """Records the SNI name of every handshake a server context sees."""

    def __init__(self, ctx):
        self.names = []
        ctx.sni_callback = self._on_sni

    def _on_sni(self, sslobj, name, ctx):
        self.names.append(name)
        return None


@pytest.fixture
def https_backends():
    """Factory: https_backends(ctx, name) -> a started BackendServer serving HTTPS."""
    started = []

    def start(ctx, name="b1"):
        b = BackendServer(name=name, ssl_context=ctx).start()
        started.append(b)
        return b

    yield start
    for b in started:
        b.stop()


def tls_doc(backends, tls, timeouts=None, retries=None, admin=False, **pool_keys):
    doc = pool_doc(backends, timeouts=timeouts, retries=retries, admin=admin)
    doc["pools"]["p"]["tls"] = tls
    doc["pools"]["p"].update(pool_keys)
    return doc


def output_has(proc, text, timeout=3.0):
    """Wait (bounded) until ``text`` shows in the process's output."""
    return wait_for(lambda: text in proc.read_output(0.05), timeout)


def admin_pool(proc, pool="p"):
    r = httpx.get("http://127.0.0.1:%d/api/v1/pools/%s" % (proc.admin_port, pool), timeout=T)
    r.raise_for_status()
    return r.json()


# ------------------------------------------------------------- raw TLS backends
class RawTlsServer:
    """A TLS server on blocking ``ssl`` sockets, one connection at a time:
    ``handler(ssock)`` runs after each successful handshake. Unlike uvloop's TLS,
    OpenSSL on a socket writes its alerts to the peer (a refused client
    certificate arrives at fastlb as a TLS alert)."""

    def __init__(self, ctx, handler):
        self.ctx = ctx
        self.handler = handler
        self.handshake_errors = []
        self.requests = []
        self.ls = socket.socket()
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(16)
        self.ls.settimeout(0.2)
        self.address = "127.0.0.1:%d" % self.ls.getsockname()[1]
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stopped.is_set():
            try:
                s, _ = self.ls.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            s.settimeout(5)
            try:
                ssock = self.ctx.wrap_socket(s, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                self.handshake_errors.append(exc)
                s.close()
                continue
            try:
                self.handler(self, ssock)
            except (ssl.SSLError, OSError):
                pass
            finally:
                try:
                    ssock.close()
                except OSError:
                    pass

    def read_head(self, ssock):
        data = bytearray()
        while b"\r\n\r\n" not in data:
            chunk = ssock.recv(65536)
            if not chunk:
                raise ConnectionError("no complete head")
            data += chunk
        self.requests.append(bytes(data))
        return bytes(data)

    def stop(self):
        self.stopped.set()
        self.ls.close()
        self.thread.join(5)


@pytest.fixture
def raw_tls():
    made = []

    def make(ctx, handler):
        srv = RawTlsServer(ctx, handler)
        made.append(srv)
        return srv

    yield make
    for srv in made:
        srv.stop()


def header_value(head, name):
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == name:
            return v.strip()
    return None


def dechunk(body):
    """A complete chunked body -> its bytes (AssertionError when it is not complete)."""
    out, rest = bytearray(), body
    while True:
        size_line, sep, rest = rest.partition(b"\r\n")
        assert sep, "chunked body ends without its last chunk"
        n = int(size_line, 16)
        if n == 0:
            assert rest.startswith(b"\r\n"), "no final CRLF"
            return bytes(out)
        out += rest[:n]
        rest = rest[n + 2:]


# --------------------------------------------------------- fastlb in this process
class InProcessFastlb:
    """fastlb's Server on its own uvloop loop in a thread: the counters no API
    shows (yet) can be read from its objects once the requests are over."""

    def __init__(self, doc):
        from fastlb import config

        self.config = config.from_dict(doc)
        self.server = None
        self.loop = None
        self.port = None
        self.error = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import uvloop

        from fastlb.server import Server

        async def main():
            self.loop = asyncio.get_running_loop()
            try:
                self.server = Server(self.config, self.loop)
                await self.server.start()
                self.port = int(self.server.listeners[0].address.rsplit(":", 1)[1])
            except BaseException as exc:
                self.error = exc
                raise
            finally:
                self._ready.set()
            await self.server.wait_stopped()

        try:
            uvloop.run(main())
        except BaseException:
            pass

    def start(self):
        self._thread.start()
        assert self._ready.wait(20), "in-process fastlb did not start"
        if self.error is not None:
            raise self.error
        return self

    def url(self, path="/"):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def pool(self, name="p"):
        return self.server.pools[name]

    def stop(self):
        if self.loop is not None and self.server is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(lambda: self.loop.create_task(self.server.stop()))
        self._thread.join(20)


@pytest.fixture
def inproc():
    made = []

    def make(doc):
        f = InProcessFastlb(doc).start()
        made.append(f)
        return f

    yield make
    for f in made:
        f.stop()


class Hang:
    """Accepts TCP (the kernel's backlog does) and never says a word: a TLS handshake
    to it never finishes."""

    def __init__(self):
        self.ls = socket.socket()
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(16)
        self.address = "127.0.0.1:%d" % self.ls.getsockname()[1]

    def close(self):
        self.ls.close()


@pytest.fixture
def hang():
    h = Hang()
    yield h
    h.close()


# ========================================================================= tests
@pytest.mark.parametrize("by", ["server_name", "address"])
def test_verified_backend_200_sni_sent_and_keep_alive_reuses_one_connection(fastlb, pki, https_backends, by):
    ctx = pki.server_context()
    sni = SniLog(ctx)
    b = https_backends(ctx)
    tls = {"ca": pki.ca_file, "server_name": "api.internal"} if by == "server_name" else {"ca": pki.ca_file}
    proc = fastlb(tls_doc([b], tls))
    with httpx.Client(timeout=T) as client:
        r = client.get(proc.url("/first"), headers={"Host": "shop.example"})
        assert r.status_code == 200, r.text
        assert r.headers["x-backend"] == "b1"
        assert r.json()["path"] == "/first"
        assert r.json()["headers"]["host"] == "shop.example"  # the client's Host goes on, as on plain pools
        for i in range(20):
            r = client.get(proc.url("/n%d" % i))
            assert r.status_code == 200 and r.json()["path"] == "/n%d" % i
    assert b.request_count == 21
    assert b.connection_count == 1, "the pooled TLS connection was not reused"
    # SNI: the configured server_name; none for an IP address (RFC 6066 §3), whose
    # certificate is then checked against its IP SAN
    assert sni.names == (["api.internal"] if by == "server_name" else [None])


def test_backend_closing_an_idle_tls_connection_is_dropped_and_the_next_request_reconnects(fastlb, pki,
                                                                                          https_backends):
    b = https_backends(pki.server_context())
    proc = fastlb(tls_doc([b], {"ca": pki.ca_file, "server_name": "api.internal"}))
    with httpx.Client(timeout=T) as client:
        assert client.get(proc.url("/a")).status_code == 200
        assert b.connection_count == 1
        assert b.close_idle_connections() == 1  # close_notify, then FIN, on the pooled connection
        time.sleep(0.3)  # fastlb sees it close while idle and drops it
        for i in range(3):
            r = client.get(proc.url("/b%d" % i))
            assert r.status_code == 200, r.text
    assert b.connection_count == 2  # one new TLS connection, then reused again
    assert b.request_count == 4


def test_sighup_reloads_a_pools_ca_closes_pooled_connections_and_keeps_it_when_the_new_file_is_bad(
        fastlb, pki, https_backends, tmp_path):
    """SIGHUP reads a pool's ca again when it changed: the next request handshakes
    with the new file (an idle connection verified with the old one is closed, one
    in use when the signal comes is not pooled again); unchanged files keep the
    pooled connections; a bad new file is logged with its key path and the running
    CA stays."""
    b = https_backends(pki.server_context())
    ca = tmp_path / "backends-ca.pem"
    ca.write_bytes(pki.ca.cert_pem.bytes())
    proc = fastlb(tls_doc([b], {"ca": str(ca), "server_name": "api.internal"}))
    with httpx.Client(timeout=T) as client:
        assert client.get(proc.url("/a")).status_code == 200
        assert client.get(proc.url("/b")).status_code == 200
        assert b.connection_count == 1
        # nothing changed: the pooled connection stays
        proc.proc.send_signal(signal.SIGHUP)
        assert output_has(proc, "pools.p.tls: SIGHUP: CA and client certificate files unchanged", 5)
        assert client.get(proc.url("/b2")).status_code == 200
        assert b.connection_count == 1
        # a request in flight when the CA file is rewritten and reloaded: answered, then
        # its connection closed
        b.delay = 1.0
        got = []
        t = threading.Thread(target=lambda: got.append(httpx.get(proc.url("/slow"), timeout=T).status_code))
        t.start()
        assert wait_for(lambda: b.request_count == 4, 5)
        ca.write_bytes(pki.ca.cert_pem.bytes())  # the same CA, written again
        proc.proc.send_signal(signal.SIGHUP)
        assert output_has(proc, "pools.p.tls: SIGHUP: CA and client certificate files reloaded", 5)
        t.join(T)
        assert got == [200]
        b.delay = 0
        assert client.get(proc.url("/c")).status_code == 200
        assert b.connection_count == 2, "a connection made before the reload went back to the pool"
        # the file now names another CA: the backend's certificate no longer verifies
        ca.write_bytes(pki.other_ca.cert_pem.bytes())
        proc.proc.send_signal(signal.SIGHUP)
        assert output_has(proc, "(1 idle connection closed)", 5)
        r = client.get(proc.url("/d"))
        assert r.status_code == 502 and "certificate verify failed" in r.json()["error"], r.text
        # not a certificate at all: logged with its key path, the running (other) CA stays
        ca.write_bytes(b"not a certificate\n")
        proc.proc.send_signal(signal.SIGHUP)
        assert output_has(proc, "not reloaded, the running TLS context stays: pools.p.tls.ca:", 5)
        assert client.get(proc.url("/e")).status_code == 502
        # both CAs in the bundle: verified again
        ca.write_bytes(pki.other_ca.cert_pem.bytes() + pki.ca.cert_pem.bytes())
        proc.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: client.get(proc.url("/f")).status_code == 200, 5)
    assert "Traceback" not in proc.read_output()


@pytest.mark.parametrize("case", ["unknown_ca", "expired"])
def test_certificate_that_fails_verification_502_logged_nothing_forwarded(fastlb, pki, https_backends, case):
    if case == "unknown_ca":
        leaf, message = pki.untrusted, "certificate verify failed: unable to get local issuer certificate"
    else:
        leaf = pki.ca.issue_cert("api.internal", not_before=_days_ago(30), not_after=_days_ago(1))
        message = "certificate verify failed: certificate has expired"
    b = https_backends(pki.server_context(leaf))
    proc = fastlb(tls_doc([b], {"ca": pki.ca_file, "server_name": "api.internal"}))
    t0 = time.monotonic()
    r = httpx.get(proc.url("/secret"), timeout=T)
    assert r.status_code == 502
    assert time.monotonic() - t0 < MARGIN  # answered at once, not after a timeout
    body = r.json()
    assert set(body) == {"error", "request_id"}
    assert body["error"].startswith("TLS handshake failed: " + message), body
    assert len(r.content) < 400
    line = "backend %s: TLS handshake failed: %s (server_name api.internal)" % (b.address, message)
    assert output_has(proc, line), proc.read_output()
    assert b.request_count == 0, "a request went to a backend whose certificate failed verification"


def _days_ago(n):
    import datetime

    return datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=n)


def test_server_name_mismatch_502(fastlb, pki, https_backends):
    b = https_backends(pki.server_context())  # a certificate for api.internal and 127.0.0.1
    proc = fastlb(tls_doc([b], {"ca": pki.ca_file, "server_name": "other.internal"}))
    r = httpx.get(proc.url("/"), timeout=T)
    assert r.status_code == 502
    assert "Hostname mismatch" in r.json()["error"] and "other.internal" in r.json()["error"]
    assert output_has(proc, "backend %s: TLS handshake failed: certificate verify failed: Hostname mismatch, "
                            "certificate is not valid for 'other.internal'." % b.address), proc.read_output()
    assert b.request_count == 0


def test_verify_false_accepts_an_untrusted_certificate_and_warns_at_start(fastlb, pki, https_backends):
    b = https_backends(pki.server_context(pki.untrusted))
    proc = fastlb(tls_doc([b], {"verify": False}))
    with httpx.Client(timeout=T) as client:
        for i in range(3):
            r = client.get(proc.url("/v%d" % i))
            assert r.status_code == 200 and r.headers["x-backend"] == "b1"
    assert b.connection_count == 1
    assert "pool p: tls.verify is false" in proc.read_output()


def test_tls_true_uses_the_system_cas_which_do_not_know_a_private_ca(fastlb, pki, https_backends):
    b = https_backends(pki.server_context())
    proc = fastlb(tls_doc([b], True))
    r = httpx.get(proc.url("/"), timeout=T)
    assert r.status_code == 502
    assert "certificate verify failed" in r.json()["error"]
    assert "(server_name 127.0.0.1)" in r.json()["error"]  # no server_name: the backend's host is checked


def test_backend_requiring_a_client_certificate(fastlb, pki, https_backends, tmp_path):
    b = https_backends(pki.server_context(client_ca=pki.ca))
    base = {"ca": pki.ca_file, "server_name": "api.internal"}
    # without a client certificate: refused (TLS 1.3: after fastlb's side of the handshake)
    proc = fastlb(tls_doc([b], dict(base)))
    t0 = time.monotonic()
    r = httpx.get(proc.url("/"), timeout=T)
    assert r.status_code == 502, r.text
    assert time.monotonic() - t0 < MARGIN  # not a response timeout
    assert b.request_count == 0
    proc.kill()
    # a client certificate from a CA the backend does not trust: refused too
    stranger = pki.other_ca.issue_cert("fastlb.internal")
    (tmp_path / "stranger.pem").write_bytes(stranger.cert_chain_pems[0].bytes())
    (tmp_path / "stranger.key").write_bytes(stranger.private_key_pem.bytes())
    proc = fastlb(tls_doc([b], dict(base, cert=str(tmp_path / "stranger.pem"), key=str(tmp_path / "stranger.key"))))
    assert httpx.get(proc.url("/"), timeout=T).status_code == 502
    assert b.request_count == 0
    proc.kill()
    # with fastlb's certificate from the backend's CA: served, on one reused connection
    proc = fastlb(tls_doc([b], dict(base, cert=pki.client_cert, key=pki.client_key)))
    with httpx.Client(timeout=T) as client:
        for i in range(5):
            r = client.get(proc.url("/m%d" % i))
            assert r.status_code == 200, r.text
    assert b.request_count == 5
    assert b.connection_count == 1


def test_sighup_reloads_a_pools_client_certificate_and_refuses_a_key_that_does_not_match(
        fastlb, pki, https_backends, tmp_path):
    """The client certificate is reloaded on SIGHUP too, checked as at load."""
    b = https_backends(pki.server_context(client_ca=pki.ca))
    stranger = pki.other_ca.issue_cert("fastlb.internal")
    cert, key = tmp_path / "fastlb.pem", tmp_path / "fastlb.key"
    cert.write_bytes(stranger.cert_chain_pems[0].bytes())
    key.write_bytes(stranger.private_key_pem.bytes())
    proc = fastlb(tls_doc([b], {"ca": pki.ca_file, "server_name": "api.internal", "cert": str(cert), "key": str(key)}))
    assert httpx.get(proc.url("/"), timeout=T).status_code == 502  # the backend does not trust it
    # the new certificate is written first: with the old key it does not match, and stays out
    cert.write_bytes(b"".join(p.bytes() for p in pki.client.cert_chain_pems))
    proc.proc.send_signal(signal.SIGHUP)
    assert output_has(proc, "not reloaded, the running TLS context stays: pools.p.tls.key:", 5)
    assert "does not match the certificate" in proc.read_output()
    assert httpx.get(proc.url("/"), timeout=T).status_code == 502
    key.write_bytes(pki.client.private_key_pem.bytes())
    proc.proc.send_signal(signal.SIGHUP)
    assert output_has(proc, "pools.p.tls: SIGHUP: CA and client certificate files reloaded", 5)
    r = httpx.get(proc.url("/"), timeout=T)
    assert r.status_code == 200, r.text
    assert b.request_count == 1


def test_refused_client_certificate_alert_is_logged_as_a_tls_failure(fastlb, pki, raw_tls):
    """A backend on OpenSSL sockets (nginx, HAProxy...) refuses a missing client
    certificate with an alert (TLS 1.3: after the client's side of the handshake)."""

    def handler(srv, ssock):  # never runs: the handshake fails first
        srv.read_head(ssock)
        ssock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    srv = raw_tls(pki.server_context(client_ca=pki.ca), handler)
    proc = fastlb(tls_doc([srv.address], {"ca": pki.ca_file, "server_name": "api.internal"}, retries=0))
    r = httpx.get(proc.url("/"), timeout=T)
    assert r.status_code == 502
    assert output_has(proc, "backend %s: TLS handshake refused by the backend: tlsv13 alert certificate required"
                      % srv.address), proc.read_output()
    assert srv.requests == []
    assert srv.handshake_errors and "certificate" in str(srv.handshake_errors[0]).lower()


def test_post_bodies_and_a_large_response_round_trip_intact_over_tls(fastlb, pki, https_backends):
    b = https_backends(pki.server_context())
    proc = fastlb(tls_doc([b], {"ca": pki.ca_file, "server_name": "api.internal"}))
    body = os.urandom(200 * 1024)
    with httpx.Client(timeout=T) as client:
        r = client.post(proc.url("/echo"), content=body, headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 200
        assert r.content == body
        # chunked request body, streamed through without being kept
        big = os.urandom(3 * 1024 * 1024 + 17)
        r = client.post(proc.url("/sink"), content=iter([big[i:i + 65536] for i in range(0, len(big), 65536)]))
        assert r.status_code == 200
        assert r.json() == {"backend": "b1", "received": len(big), "sha256": hashlib.sha256(big).hexdigest()}
        # 8 MiB down, through both sides' backpressure (pause_reading on a TLS transport)
        n = 8 * 1024 * 1024
        with client.stream("GET", proc.url("/size?n=%d" % n)) as resp:
            assert resp.status_code == 200
            h = hashlib.sha256()
            got = 0
            for chunk in resp.iter_bytes():
                h.update(chunk)
                got += len(chunk)
                if got < n // 2:
                    time.sleep(0.0005)  # a slowish reader for the first half
        assert got == n and h.hexdigest() == pattern_sha256(n)
    assert b.connection_count == 1  # all three on the one pooled TLS connection
    assert b.requests[0].body == body


@pytest.mark.parametrize("kind", ["http", "tcp"])
def test_health_checks_speak_tls_and_take_a_bad_certificate_down(fastlb, pki, https_backends, kind):
    good_ctx = pki.server_context()
    sni = SniLog(good_ctx)
    good = https_backends(good_ctx, "good")
    bad = https_backends(pki.server_context(pki.untrusted), "bad")
    check = {"path": "/health", "interval": "200ms", "rise": 1, "fall": 1} if kind == "http" else {
        "type": "tcp", "interval": "200ms", "rise": 1, "fall": 1}
    proc = fastlb(tls_doc([good, bad], {"ca": pki.ca_file, "server_name": "api.internal"}, admin=True,
                          health_check=check))

    def states():
        return {b["address"]: b for b in admin_pool(proc)["backends"]}

    got = wait_for(lambda: (lambda s: s if s[good.address]["state"] == "up" and s[bad.address]["state"] == "down"
                            else None)(states()), 5)
    assert got, states()
    detail = got[bad.address]["checks"]["last"]["detail"]
    assert detail.startswith("TLS handshake failed: certificate verify failed: unable to get local issuer "
                             "certificate (server_name api.internal)"), detail
    good_detail = got[good.address]["checks"]["last"]["detail"]
    assert good_detail == ("status 200" if kind == "http" else "connected, TLS handshake done")
    time.sleep(1.0)
    with httpx.Client(timeout=T) as client:
        names = [client.get(proc.url("/r%d" % i)).headers["x-backend"] for i in range(10)]
    assert names == ["good"] * 10
    assert bad.request_count == 0
    assert "api.internal" in sni.names  # the probes' SNI
    if kind == "http":
        probes = [r for r in good.requests if r.path == "/health"]
        assert probes, "no probe reached the good backend over TLS"
        assert probes[0].header(b"user-agent") == b"fastlb-health"
        assert probes[0].header(b"host") == b"api.internal"  # an https pool's probe names its server_name
    else:
        assert not any(r.path == "/health" for r in good.requests)


def _cut_handler(mode):
    body = b"a" * 5000

    def handler(srv, ssock):
        srv.read_head(ssock)
        if mode == "content_length_rst":
            ssock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\nContent-Type: text/plain\r\n\r\n" + body)
        else:
            ssock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n" + body)
        time.sleep(0.3)  # fastlb forwards what it has before the end arrives
        if mode == "content_length_rst":
            ssock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            ssock.close()  # RST: no close_notify
        elif mode == "close_delimited_fin":
            ssock.shutdown(socket.SHUT_RDWR)  # a TCP FIN without TLS close_notify: a truncation
        else:
            ssock.unwrap()  # close_notify: the clean end of a close-delimited body on TLS

    return handler


@pytest.mark.parametrize("mode", ["content_length_rst", "close_delimited_fin", "close_delimited_close_notify"])
def test_backend_cut_mid_response_over_tls_is_never_passed_off_as_complete(fastlb, pki, raw_tls, mode):
    srv = raw_tls(pki.server_context(), _cut_handler(mode))
    proc = fastlb(tls_doc([srv.address], {"ca": pki.ca_file, "server_name": "api.internal"}, retries=0))
    s = proc.connect()
    try:
        s.sendall(b"GET /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        data = recv_until_closed(s, timeout=T)
    finally:
        s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), data[:300]
    if mode == "content_length_rst":
        assert header_value(head, b"content-length") == b"100000"
        assert len(body) < 100000, "a cut Content-Length body arrived whole?"
        assert body == b"a" * len(body)
    elif mode == "close_delimited_fin":
        assert header_value(head, b"transfer-encoding") == b"chunked"
        assert not body.endswith(b"0\r\n\r\n"), "a TCP FIN without close_notify was framed as a complete body"
    else:
        assert header_value(head, b"transfer-encoding") == b"chunked"
        assert dechunk(body) == b"a" * 5000
    assert len(srv.requests) == 1


def test_plain_http_backend_in_a_tls_pool_502_names_the_mistake(fastlb, pki, backends):
    proc = fastlb(tls_doc(backends[:1], {"ca": pki.ca_file, "server_name": "api.internal"}))
    r = httpx.get(proc.url("/"), timeout=T)
    assert r.status_code == 502
    assert "does the backend speak plain HTTP?" in r.json()["error"], r.json()
    assert output_has(proc, "backend %s: TLS handshake failed: wrong version number" % backends[0].address), \
        proc.read_output()


def test_handshake_that_never_finishes_is_a_connect_timeout_504(fastlb, pki, hang):
    proc = fastlb(tls_doc([hang.address], {"ca": pki.ca_file, "server_name": "api.internal"},
                          timeouts={"connect": "1s"}, retries=0))
    t0 = time.monotonic()
    r = httpx.get(proc.url("/"), timeout=T)
    elapsed = time.monotonic() - t0
    assert r.status_code == 504, r.text
    assert 0.9 <= elapsed < 1.0 + MARGIN
    out = proc.read_output()
    assert ("backend %s: TLS handshake timed out after 1s (server_name api.internal)" % hang.address in out
            or "backend %s: connect to %s timed out after 1s (TCP connect and TLS handshake)"
            % (hang.address, hang.address) in out), out


# ------------------------------------------------------- counters (in process)
def test_tls_failures_counted_by_reason_and_reported_as_connect_failures(inproc, pki, https_backends, backends,
                                                                         hang):
    wrong = https_backends(pki.server_context(pki.untrusted), "wrong")
    doc = tls_doc([wrong, backends[0], hang.address], {"ca": pki.ca_file, "server_name": "api.internal"},
                  timeouts=dict(FAST_TIMEOUTS, connect="1s"), retries=0)
    lb = inproc(doc)
    with httpx.Client(timeout=T) as client:
        statuses = [client.get(lb.url("/c%d" % i)).status_code for i in range(3)]  # round robin: one each
    assert statuses == [502, 502, 504]
    pool = lb.pool()
    b_wrong, b_plain, b_hang = pool.backends
    # (timeout: uvloop's handshake timer runs from the TCP connect, the connect
    # deadline from before it, checked on fastlb's ticks: the handshake's fires first)
    assert (b_wrong.tls_failures, b_plain.tls_failures, b_hang.tls_failures) == (
        {"verify_failed": 1}, {"handshake_failed": 1}, {"timeout": 1})
    assert [b.failures_total for b in pool.backends] == [1, 1, 1]  # each one a failure against the backend
    assert wrong.request_count == 0 and backends[0].request_count == 0


def test_tls_failure_is_retried_on_another_backend_post_included(inproc, pki, https_backends):
    wrong = https_backends(pki.server_context(pki.untrusted), "wrong")
    good = https_backends(pki.server_context(), "good")
    lb = inproc(tls_doc([wrong, good], {"ca": pki.ca_file, "server_name": "api.internal"}, retries=1))
    pool = lb.pool()
    assert pool.tls_context is not None and pool.tls_server_name == "api.internal"
    with httpx.Client(timeout=T) as client:
        r = client.get(lb.url("/g"))  # round robin starts at "wrong": retried on "good"
        assert r.status_code == 200 and r.headers["x-backend"] == "good"
        assert pool.retries_total["connect_failed"] == 1
        # nothing reached the backend, so a POST and its body go to another one too
        for i in range(3):
            r = client.post(lb.url("/echo"), content=b"payload%d" % i * 1000)
            assert r.status_code == 200 and r.headers["x-backend"] == "good"
            assert r.content == b"payload%d" % i * 1000
    retried = pool.retries_total["connect_failed"]
    assert retried >= 2, "no POST was ever picked for the failing backend and retried"
    assert pool.backends[0].tls_failures == {"verify_failed": retried}
    assert pool.backends[0].failures_total == retried
    assert wrong.request_count == 0 and good.request_count == 4


# ------------------------------------------------------------------- tunnels
WS_REQUEST = (b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def test_websocket_tunnel_to_a_tls_backend(fastlb, pki, https_backends):
    b = https_backends(pki.server_context())
    proc = fastlb(tls_doc([b], {"ca": pki.ca_file, "server_name": "api.internal"}))
    s = proc.connect()
    s.settimeout(T)
    try:
        s.sendall(WS_REQUEST)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            assert chunk, data
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101")
        assert b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head
        for msg in (b"\x81\x05hello", os.urandom(300 * 1024)):
            s.sendall(msg)
            got = rest
            while len(got) < len(msg):
                chunk = s.recv(65536)
                assert chunk, "tunnel closed after %d of %d bytes" % (len(got), len(msg))
                got += chunk
            assert got == msg
            rest = b""
    finally:
        s.close()
    assert b.wait_until(lambda srv: srv.connections and srv.connections[0].upgraded, T)


def test_backend_ending_a_tunnel_with_close_notify(fastlb, pki, raw_tls):
    def handler(srv, ssock):
        srv.read_head(ssock)
        ssock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        ssock.sendall(b"echo:" + ssock.recv(100))
        time.sleep(0.2)
        ssock.unwrap()  # the backend ends the tunnel: close_notify

    srv = raw_tls(pki.server_context(), handler)
    proc = fastlb(tls_doc([srv.address], {"ca": pki.ca_file, "server_name": "api.internal"}))
    s = proc.connect()
    try:
        s.sendall(WS_REQUEST)
        time.sleep(0.2)
        s.sendall(b"hello")
        data = recv_until_closed(s, timeout=T)
    finally:
        s.close()
    assert data.startswith(b"HTTP/1.1 101")
    assert data.endswith(b"\r\n\r\necho:hello")
    out = proc.read_output(0.3)
    assert "eof_received" not in out, out  # no uvloop warning about a half-close TLS cannot do


def test_min_version_13_refuses_a_tls12_only_backend(fastlb, pki, raw_tls):
    ctx = pki.server_context()
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    srv = raw_tls(ctx, lambda srv, ssock: srv.read_head(ssock))
    proc = fastlb(tls_doc([srv.address], {"ca": pki.ca_file, "server_name": "api.internal", "min_version": "1.3"}))
    r = httpx.get(proc.url("/"), timeout=T)
    assert r.status_code == 502
    assert r.json()["error"] == "TLS handshake failed: tlsv1 alert protocol version (server_name api.internal)"
    assert srv.requests == []
