"""HTTPS listeners: real TLS with certificates generated in the test (trustme), real
fastlb processes, real clients (httpx, curl, openssl s_client, ssl sockets)."""

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time

import datetime

import httpx
import pytest
import trustme
import yaml
from cryptography import x509

from tests.integration.conftest import FAST_TIMEOUTS
from tests.support.rawclient import proxy_v2
from tests.support.scrape import parse_samples, scrape, value
from tests.support.wait import wait_for

CURL = shutil.which("curl")
OPENSSL = shutil.which("openssl")


class Certs:
    """A CA and certificates written to tmp_path; ``pair(name)`` -> (cert, key) paths."""

    def __init__(self, tmp_path, ca=None):
        self.dir = tmp_path
        self.ca = ca or trustme.CA()
        self.ca_path = str(tmp_path / ("ca-%x.pem" % id(self)))
        self.ca.cert_pem.write_to_path(self.ca_path)

    def issue(self, stem, *names, key_type=trustme.KeyType.ECDSA, **kw):
        leaf = self.ca.issue_cert(*names, key_type=key_type, **kw)
        cert = self.dir / (stem + ".pem")
        key = self.dir / (stem + ".key")
        cert.write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
        key.write_bytes(leaf.private_key_pem.bytes())
        return str(cert), str(key), leaf

    def client_context(self, **kw):
        ctx = ssl.create_default_context(cafile=self.ca_path)
        for k, v in kw.items():
            setattr(ctx, k, v)
        return ctx


def peer_cert(port, server_name, ctx):
    """The certificate the listener presents for ``server_name`` (None: no SNI), as a dict."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_name) as s:
            return s.getpeercert()


def san(cert):
    return sorted(v for k, v in cert.get("subjectAltName", ()) if k in ("DNS", "IP Address"))


def https_get(port, path="/", sni="api.test", ctx=None, headers=None, timeout=5):
    with httpx.Client(verify=ctx, timeout=timeout) as client:  # a new connection: a full handshake
        return client.get("https://127.0.0.1:%d%s" % (port, path), headers=dict({"Host": sni}, **(headers or {})),
                          extensions={"sni_hostname": sni})


def tls_doc(backends, tls, admin=True, timeouts=None, **listener):
    doc = {
        "listeners": [dict({"name": "secure", "bind": "127.0.0.1:0", "pool": "p", "tls": tls}, **listener)],
        "pools": {"p": {"backends": [b.address for b in backends]}},
        "timeouts": dict(FAST_TIMEOUTS, **(timeouts or {})),
    }
    if admin:
        doc["admin"] = {"bind": "127.0.0.1:0"}
    return doc


@pytest.fixture
def certs(tmp_path):
    return Certs(tmp_path)


def test_sni_picks_the_certificate_exact_wildcard_and_default(fastlb, backends, certs):
    api = certs.issue("api", "api.test")  # ECDSA P-256
    www = certs.issue("www", "www.test", "*.apps.test", key_type=trustme.KeyType.RSA)
    proc = fastlb(tls_doc(backends, {"certificates": [{"cert": api[0], "key": api[1]},
                                                      {"cert": www[0], "key": www[1]}]}))
    ctx = certs.client_context()
    assert san(peer_cert(proc.port, "api.test", ctx)) == ["api.test"]
    assert san(peer_cert(proc.port, "www.test", ctx)) == ["*.apps.test", "www.test"]
    assert san(peer_cert(proc.port, "shop.apps.test", ctx)) == ["*.apps.test", "www.test"]
    # a wildcard covers one label only; an unknown name or no SNI gets the default (the first)
    loose = certs.client_context(check_hostname=False)
    assert san(peer_cert(proc.port, "a.b.apps.test", loose)) == ["api.test"]
    assert san(peer_cert(proc.port, None, loose)) == ["api.test"]
    # httpx with SNI for both names: verified, and the request goes through
    for name in ("api.test", "www.test"):
        r = https_get(proc.port, "/who", sni=name, ctx=ctx)
        assert r.status_code == 200, r.text
        assert r.json()["headers"]["host"] == name
    # what the backend received: X-Forwarded-Proto https (it is http on a plain listener)
    seen = [dict((k.lower(), v) for k, v in req.headers) for b in backends for req in b.requests]
    assert seen and all(h[b"x-forwarded-proto"] == b"https" for h in seen)
    s = parse_samples(scrape(proc).text)
    assert value(s, "fastlb_tls_handshakes_total", listener="secure") >= 7
    expiry = {dict(ls)["name"]: v for (n, ls), v in s.items() if n == "fastlb_tls_certificate_expiry_seconds"}
    assert set(expiry) == {"api.test", "www.test"}
    not_after = x509.load_pem_x509_certificate(open(api[0], "rb").read()).not_valid_after_utc
    assert expiry["api.test"] == not_after.timestamp()
    info = httpx.get("http://127.0.0.1:%d/api/v1/info" % proc.admin_port, timeout=5).json()
    served = info["listeners"][0]["tls"]
    assert [(c["name"], c["key_type"], c["names"]) for c in served["certificates"]] == [
        ("api.test", "ECDSA P-256", ["api.test"]), ("www.test", "RSA 2048", ["www.test", "*.apps.test"])]
    assert served["certificates"][0]["not_after"] == not_after.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert served["handshakes"] >= 7 and served["reloads"] == {"success": 0, "failure": 0}


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
def test_curl_with_sni_for_two_names(fastlb, backends, certs):
    api = certs.issue("api", "api.test")
    www = certs.issue("www", "www.test", key_type=trustme.KeyType.RSA)
    proc = fastlb(tls_doc(backends, {"certificates": [{"cert": api[0], "key": api[1]},
                                                      {"cert": www[0], "key": www[1]}]}))
    for name in ("api.test", "www.test"):
        out = subprocess.run(
            [CURL, "-sS", "-v", "--cacert", certs.ca_path, "--resolve", "%s:%d:127.0.0.1" % (name, proc.port),
             "https://%s:%d/hello" % (name, proc.port)], capture_output=True, text=True, timeout=20)
        assert out.returncode == 0, out.stderr
        assert "subject: " in out.stderr and ("CN=%s" % name in out.stderr or name in out.stderr)
        assert "ALPN: server accepted http/1.1" in out.stderr or "ALPN, server accepted to use http/1.1" in out.stderr
        assert json.loads(out.stdout)["headers"]["host"] == "%s:%d" % (name, proc.port)


@pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed")
def test_tls_1_1_and_plain_http_are_refused_and_counted(fastlb, backends, certs):
    api = certs.issue("api", "api.test")
    proc = fastlb(tls_doc(backends, {"certificates": [{"cert": api[0], "key": api[1]}]}))
    out = subprocess.run([OPENSSL, "s_client", "-connect", "127.0.0.1:%d" % proc.port, "-tls1_1",
                          "-servername", "api.test"], input="", capture_output=True, text=True, timeout=20)
    assert "Cipher is (NONE)" in out.stdout or out.returncode != 0
    assert "BEGIN CERTIFICATE" not in out.stdout
    # TLS 1.2 and 1.3 are offered
    for flag in ("-tls1_2", "-tls1_3"):
        ok = subprocess.run([OPENSSL, "s_client", "-connect", "127.0.0.1:%d" % proc.port, flag,
                             "-servername", "api.test", "-CAfile", certs.ca_path], input="",
                            capture_output=True, text=True, timeout=20)
        assert "Verify return code: 0 (ok)" in ok.stdout, ok.stdout + ok.stderr
    with socket.create_connection(("127.0.0.1", proc.port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(5)
        try:
            while s.recv(4096):
                pass
        except ConnectionResetError:
            pass

    def counted():
        s = parse_samples(scrape(proc).text)
        return (value(s, "fastlb_tls_handshake_failures_total", listener="secure", reason="protocol_version") >= 1
                and value(s, "fastlb_tls_handshake_failures_total", listener="secure", reason="not_tls") >= 1)
    wait_for(counted, timeout=5)
    assert sum(len(b.requests) for b in backends) == 0


def test_min_version_1_3_refuses_a_tls_1_2_client(fastlb, backends, certs):
    api = certs.issue("api", "api.test")
    proc = fastlb(tls_doc(backends, {"certificates": [{"cert": api[0], "key": api[1]}], "min_version": "1.3"}))
    ctx12 = certs.client_context(maximum_version=ssl.TLSVersion.TLSv1_2)
    with pytest.raises(ssl.SSLError):
        peer_cert(proc.port, "api.test", ctx12)
    assert san(peer_cert(proc.port, "api.test", certs.client_context())) == ["api.test"]


def test_alpn_http11_keepalive_and_hsts(fastlb, backends, certs):
    api = certs.issue("api", "api.test")
    proc = fastlb(tls_doc(backends, {"certificates": [{"cert": api[0], "key": api[1]}],
                                     "hsts": "max-age=31536000; includeSubDomains"}))
    ctx = certs.client_context()
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection(("127.0.0.1", proc.port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="api.test") as s:
            assert s.selected_alpn_protocol() == "http/1.1"
            f = s.makefile("rb")
            for i in range(20):  # keep-alive: twenty requests on one TLS connection
                s.sendall(b"GET /k%d HTTP/1.1\r\nHost: api.test\r\n\r\n" % i)
                status = f.readline()
                assert status.startswith(b"HTTP/1.1 200"), status
                headers = {}
                while True:
                    line = f.readline()
                    if line in (b"\r\n", b""):
                        break
                    k, _, v = line.decode().partition(":")
                    headers[k.strip().lower()] = v.strip()
                assert headers["strict-transport-security"] == "max-age=31536000; includeSubDomains"
                f.read(int(headers["content-length"]))
    assert sum(b.connection_count for b in backends) <= 3
    # fastlb's own answers carry HSTS too: a refused request (405 CONNECT) and one too
    # malformed to be an exchange (400, two Content-Lengths)
    for request, status in ((b"CONNECT api.test:443 HTTP/1.1\r\nHost: api.test\r\n\r\n", b"405"),
                            (b"GET / HTTP/1.1\r\nHost: api.test\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                             b"400")):
        with socket.create_connection(("127.0.0.1", proc.port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname="api.test") as s:
                s.sendall(request)
                data = s.recv(65536)
        assert data.startswith(b"HTTP/1.1 " + status), data
        assert b"\r\nStrict-Transport-Security: max-age=31536000; includeSubDomains\r\n" in data


def mtls_doc(backends, certs, mode, header="X-Client-Subject"):
    api = certs.issue("api", "api.test")
    tls = {"certificates": [{"cert": api[0], "key": api[1]}], "client_ca": certs.ca_path, "client_auth": mode,
           "subject_header": header}
    return tls_doc(backends, tls)


def client_with_cert(certs, ca_certs, name):
    """A client context trusting ``certs``' CA, presenting a certificate issued by ``ca_certs``' CA."""
    leaf = ca_certs.ca.issue_cert(name + "@example.test", common_name=name)
    ctx = certs.client_context()
    leaf.configure_cert(ctx)
    return ctx


def request_over(port, ctx, extra=b""):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="api.test") as s:
            s.sendall(b"GET /m HTTP/1.1\r\nHost: api.test\r\n" + extra + b"Connection: close\r\n\r\n")
            out = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    return out
                out += chunk


def test_mtls_required(fastlb, backends, certs, tmp_path):
    proc = fastlb(mtls_doc(backends, certs, "required"))
    good = client_with_cert(certs, certs, "alice")
    out = request_over(proc.port, good, b"X-Client-Subject: CN=mallory\r\n")
    assert out.startswith(b"HTTP/1.1 200"), out
    got = [dict((k.lower(), v) for k, v in r.headers) for b in backends for r in b.requests]
    subjects = [h.get(b"x-client-subject") for h in got]
    assert len(subjects) == 1 and subjects[0].startswith(b"CN=alice,") and b"mallory" not in subjects[0]
    assert all(sum(1 for k, _ in r.headers if k.lower() == b"x-client-subject") == 1
               for b in backends for r in b.requests)
    # no certificate, or one from another CA: refused during the handshake, nothing forwarded
    with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
        out = request_over(proc.port, certs.client_context())
        if not out:
            raise ConnectionResetError("closed without an answer")
    (tmp_path / "other").mkdir()
    other = Certs(tmp_path / "other")
    with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
        out = request_over(proc.port, client_with_cert(certs, other, "eve"))
        if not out:
            raise ConnectionResetError("closed without an answer")
    assert sum(len(b.requests) for b in backends) == 1

    def counted():
        s = parse_samples(scrape(proc).text)
        return (value(s, "fastlb_tls_handshake_failures_total", reason="no_client_certificate") >= 1
                and value(s, "fastlb_tls_handshake_failures_total", reason="bad_client_certificate") >= 1)
    wait_for(counted, timeout=5)


def test_mtls_optional_forwards_the_subject_only_when_verified(fastlb, backends, certs):
    proc = fastlb(mtls_doc(backends, certs, "optional"))
    out = request_over(proc.port, certs.client_context(), b"X-Client-Subject: CN=mallory\r\n")
    assert out.startswith(b"HTTP/1.1 200"), out
    out = request_over(proc.port, client_with_cert(certs, certs, "bob"))
    assert out.startswith(b"HTTP/1.1 200"), out
    got = [dict((k.lower(), v) for k, v in r.headers).get(b"x-client-subject") for b in backends for r in b.requests]
    assert got[0] is None  # no certificate: no header, and the client's own was removed
    assert got[1].startswith(b"CN=bob,") and b"trustme" in got[1]


def serial_seen(port, ctx, name="api.test"):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=name) as s:
            return s.getpeercert()["serialNumber"]


def replace_files(cert_src, key_src, cert_dst, key_dst):
    """Replace the pair the way deploy tools do: write aside, then rename over."""
    for src, dst in ((cert_src, cert_dst), (key_src, key_dst)):
        tmp = dst + ".new"
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)


def test_certificate_replaced_on_disk_under_load(fastlb, backends, certs):
    """New handshakes get the new certificate, established connections go on; zero errors."""
    live_cert, live_key, _ = certs.issue("live", "api.test")
    new_cert, new_key, _ = certs.issue("next", "api.test")
    proc = fastlb(tls_doc(backends, {"certificates": [{"cert": live_cert, "key": live_key}]}))
    ctx = certs.client_context()
    old_serial = serial_seen(proc.port, ctx)
    errors = []
    counts = {"new": 0, "kept": 0}
    stop = threading.Event()

    def new_connections():
        while not stop.is_set() and counts["new"] < 3000:
            try:
                r = https_get(proc.port, "/n", ctx=ctx)
                if r.status_code != 200:
                    errors.append(r.status_code)
                counts["new"] += 1
            except Exception as exc:  # noqa: BLE001 - every failure is what the test counts
                errors.append(repr(exc))

    def kept_alive():
        with httpx.Client(verify=ctx, timeout=5, headers={"Host": "api.test"}) as client:
            while not stop.is_set() and counts["kept"] < 10000:
                try:
                    r = client.get("https://127.0.0.1:%d/k" % proc.port, extensions={"sni_hostname": "api.test"})
                    if r.status_code != 200:
                        errors.append(r.status_code)
                    counts["kept"] += 1
                except Exception as exc:  # noqa: BLE001
                    errors.append(repr(exc))

    threads = [threading.Thread(target=new_connections), threading.Thread(target=kept_alive)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.7)
        replace_files(new_cert, new_key, live_cert, live_key)
        wait_for(lambda: serial_seen(proc.port, ctx) != old_serial, timeout=10)
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(15)
    assert errors == []
    assert counts["new"] > 5 and counts["kept"] > 20
    s = parse_samples(scrape(proc).text)
    assert value(s, "fastlb_tls_certificate_reloads_total", listener="secure", result="success") == 1
    assert "certificates loaded" in proc.read_output()


def test_a_bad_replacement_keeps_the_running_certificate_then_sighup_reloads(fastlb, backends, certs):
    live_cert, live_key, _ = certs.issue("live", "api.test")
    _, other_key, _ = certs.issue("other", "api.test")
    new_cert, new_key, _ = certs.issue("next", "api.test")
    proc = fastlb(tls_doc(backends, {"certificates": [{"cert": live_cert, "key": live_key}], "watch": False}))
    ctx = certs.client_context()
    first = serial_seen(proc.port, ctx)
    # a key that does not match: SIGHUP reports it, the running certificate stays
    shutil.copyfile(other_key, live_key)
    proc.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "does not match the certificate" in proc.read_output(), timeout=5)
    assert serial_seen(proc.port, ctx) == first
    assert https_get(proc.port, ctx=ctx).status_code == 200
    # with watch: false a change is not picked up until SIGHUP
    replace_files(new_cert, new_key, live_cert, live_key)
    time.sleep(2.5)
    assert serial_seen(proc.port, ctx) == first
    proc.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: serial_seen(proc.port, ctx) != first, timeout=5)
    s = parse_samples(scrape(proc).text)
    assert value(s, "fastlb_tls_certificate_reloads_total", result="failure") == 1
    assert value(s, "fastlb_tls_certificate_reloads_total", result="success") == 1


def test_session_tickets_resume_until_rotated(fastlb, backends, certs):
    api = certs.issue("api", "api.test")
    proc = fastlb(tls_doc(backends, {"certificates": [{"cert": api[0], "key": api[1]}], "ticket_rotation": "3s"}))
    ctx = certs.client_context(maximum_version=ssl.TLSVersion.TLSv1_2)

    def handshake(session=None):
        with socket.create_connection(("127.0.0.1", proc.port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname="api.test", session=session) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n")
                while s.recv(65536):
                    pass
                return s.session, s.session_reused

    wait_for(lambda: "session ticket rotation" in proc.read_output(), timeout=6)  # just after a rotation
    session, reused = handshake()
    assert not reused
    _, reused = handshake(session)
    assert reused  # the ticket is accepted while its keys are current
    wait_for(lambda: proc.read_output().count("session ticket rotation") >= 2, timeout=6)
    _, reused = handshake(session)
    assert not reused  # rotated: a full handshake


def test_redirect_listener_sends_308_to_https(fastlb, backends, certs):
    api = certs.issue("api", "api.test")
    doc = tls_doc(backends, {"certificates": [{"cert": api[0], "key": api[1]}]}, admin=False)
    doc["listeners"].append({"name": "plain", "bind": "127.0.0.1:0", "redirect_https": 8443})
    proc = fastlb(doc)
    r = httpx.post("http://127.0.0.1:%d/orders?x=1" % proc.ports["plain"], headers={"Host": "api.test:8080"},
                   content=b"{}", timeout=5)
    assert r.status_code == 308
    assert r.headers["location"] == "https://api.test:8443/orders?x=1"
    assert r.json()["error"].startswith("this service is served over https")
    assert sum(len(b.requests) for b in backends) == 0


def test_handshake_exits_leave_nothing_open(fastlb, backends, certs):
    """Client gone mid-handshake, a client that never starts one (handshake timeout):
    counted by reason, and no connection is left behind."""
    api = certs.issue("api", "api.test")
    proc = fastlb(tls_doc(backends, {"certificates": [{"cert": api[0], "key": api[1]}]},
                          timeouts={"client_header": "1s"}))
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", proc.port), timeout=5) as s:
            s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # the start of a ClientHello
    silent = socket.create_connection(("127.0.0.1", proc.port), timeout=5)
    try:
        silent.settimeout(5)
        assert silent.recv(10) == b""  # closed by fastlb after the handshake timeout
    except ConnectionResetError:
        pass
    finally:
        silent.close()

    def settled():
        s = parse_samples(scrape(proc).text)
        return (value(s, "fastlb_tls_handshake_failures_total", reason="client_closed") >= 5
                and value(s, "fastlb_tls_handshake_failures_total", reason="timeout") >= 1
                and value(s, "fastlb_connections_active", listener="secure") == 0)
    wait_for(settled, timeout=8)
    assert https_get(proc.port, ctx=certs.client_context()).status_code == 200


def cutting_backend():
    """A raw backend: each connection gets a head promising 200000 bytes, 50000 of
    them, then a reset. Returns (address, stop)."""
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(0.2)
    done = threading.Event()

    def serve():
        while not done.is_set():
            try:
                conn, _ = srv.accept()
            except socket.timeout:
                continue
            with conn:
                conn.settimeout(5)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 200000\r\n\r\n" + b"x" * 50000)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        srv.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return "127.0.0.1:%d" % srv.getsockname()[1], done


def test_backend_reset_mid_body_is_not_passed_off_as_complete_over_tls(fastlb, backends, certs):
    api = certs.issue("api", "api.test")
    address, done = cutting_backend()
    try:
        doc = tls_doc(backends, {"certificates": [{"cert": api[0], "key": api[1]}]}, admin=False)
        doc["pools"]["p"]["backends"] = [address]
        proc = fastlb(doc)
        ctx = certs.client_context()
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            https_get(proc.port, "/big", ctx=ctx)
        assert "backend" in proc.read_output()
    finally:
        done.set()


def test_quick_mode_tls_flags(fastlb, backends, certs, tmp_path):
    api = certs.issue("api", "api.test", "127.0.0.1")
    www = certs.issue("www", "www.test", key_type=trustme.KeyType.RSA)
    proc = fastlb(args=["run", "--listen", "127.0.0.1:0", "--backend", backends[0].address,
                        "--tls-cert", api[0], "--tls-key", api[1], "--tls-cert", www[0], "--tls-key", www[1]])
    r = httpx.get("https://127.0.0.1:%d/q" % proc.port, verify=certs.client_context(), timeout=5)
    assert r.status_code == 200
    assert san(peer_cert(proc.port, "www.test", certs.client_context())) == ["www.test"]
    for flags, words in ((["--tls-cert", api[0]], "give one --tls-key for each --tls-cert"),
                         (["--tls-cert", api[0], "--tls-key", www[1]], "does not match the certificate")):
        bad = subprocess.run([sys.executable, "-m", "fastlb", "run", "--listen", "127.0.0.1:0",
                              "--backend", backends[0].address] + flags, capture_output=True, text=True, timeout=30)
        assert bad.returncode == 2
        assert "--tls-key" in bad.stderr and words in bad.stderr, bad.stderr


def test_bad_certificates_stop_the_start_with_the_key_path(backends, certs, tmp_path):
    now = datetime.datetime.now(datetime.timezone.utc)
    expired = certs.issue("old", "api.test", not_before=now - datetime.timedelta(days=30),
                          not_after=now - datetime.timedelta(days=1))
    soon = certs.issue("soon", "api.test", not_after=now + datetime.timedelta(days=3))
    cases = [
        ({"cert": expired[0], "key": expired[1]}, 2, "listeners[0].tls.certificates[0].cert", "expired"),
        ({"cert": expired[1], "key": expired[1]}, 2, "listeners[0].tls.certificates[0].cert", "private key"),
        ({"cert": soon[0], "key": expired[1]}, 2, "listeners[0].tls.certificates[0].key", "does not match"),
    ]
    for entry, code, path, words in cases:
        cfg = tmp_path / "c.yaml"
        cfg.write_text(yaml.safe_dump(tls_doc(backends, {"certificates": [entry]}, admin=False)))
        out = subprocess.run([sys.executable, "-m", "fastlb", "check", "-c", str(cfg)], capture_output=True,
                             text=True, timeout=30)
        assert out.returncode == code, out.stdout + out.stderr
        assert path in out.stderr and words in out.stderr, out.stderr
    cfg.write_text(yaml.safe_dump(tls_doc(backends, {"certificates": [{"cert": soon[0], "key": soon[1]}]},
                                          admin=False)))
    out = subprocess.run([sys.executable, "-m", "fastlb", "check", "-c", str(cfg)], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0
    assert "warning: listeners[0].tls.certificates[0]:" in out.stdout and "expires in 3.0 days" in out.stdout


def test_client_not_reading_over_tls_is_closed_and_nothing_stays_open(fastlb, backends, certs):
    """The send deadline works on a TLS transport: a client that stops reading a large
    response is closed after timeouts.send, and the backend connection with it."""
    api = certs.issue("api", "api.test")
    proc = fastlb(tls_doc(backends, {"certificates": [{"cert": api[0], "key": api[1]}]},
                          timeouts={"send": "1s"}))
    ctx = certs.client_context()
    raw = socket.create_connection(("127.0.0.1", proc.port), timeout=5)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s = ctx.wrap_socket(raw, server_hostname="api.test")
    try:
        s.sendall(b"GET /size?n=%d HTTP/1.1\r\nHost: api.test\r\n\r\n" % (64 * 1024 * 1024))
        s.recv(100)  # the response started; then nothing is read

        def closed():
            samples = parse_samples(scrape(proc).text)
            return value(samples, "fastlb_connections_active", listener="secure") == 0
        wait_for(closed, timeout=10)
        wait_for(lambda: all(c.closed for b in backends for c in b.connections), timeout=10)
    finally:
        s.close()
    assert https_get(proc.port, ctx=ctx).status_code == 200


def test_client_close_notify_mid_request_drops_it_cleanly(fastlb, backends, certs):
    """A client that sends close_notify while its request is at the backend: the
    connection ends, the backend exchange is reset, nothing leaks, no warning."""
    api = certs.issue("api", "api.test")
    proc = fastlb(tls_doc(backends, {"certificates": [{"cert": api[0], "key": api[1]}]}))
    ctx = certs.client_context()
    with socket.create_connection(("127.0.0.1", proc.port), timeout=5) as raw:
        s = ctx.wrap_socket(raw, server_hostname="api.test")
        s.sendall(b"GET /slow?delay=1 HTTP/1.1\r\nHost: api.test\r\n\r\n")
        time.sleep(0.2)
        try:
            s.unwrap()  # close_notify, and wait for fastlb's
        except (ssl.SSLError, OSError):
            pass

    def settled():
        samples = parse_samples(scrape(proc).text)
        return value(samples, "fastlb_connections_active", listener="secure") == 0
    wait_for(settled, timeout=10)
    wait_for(lambda: all(c.closed for b in backends for c in b.connections), timeout=10)
    out = proc.read_output()
    assert "eof_received" not in out and "Traceback" not in out
    assert https_get(proc.port, ctx=ctx).status_code == 200


# ---------------------------------------------------- PROXY protocol before TLS
def tls_after_header(port, ctx, header, request, sni="api.test", timeout=5):
    """A TLS client that sends ``header`` and its ClientHello in one write (one TCP
    segment on loopback), then ``request``; the whole response, or what it got before
    the connection ended. Driven through a MemoryBIO so the coalescing is certain."""
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname=sni)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        s.sendall(header + out.read())
        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                pending = out.read()
                if pending:
                    s.sendall(pending)
                data = s.recv(65536)
                if not data:
                    raise ConnectionError("closed during the handshake")
                inc.write(data)
        s.sendall(out.read())  # the client's Finished (TLS 1.3)
        obj.write(request)
        s.sendall(out.read())
        got = bytearray()
        while True:
            try:
                chunk = obj.read(65536)
                if not chunk:  # close_notify
                    break
                got += chunk
                continue
            except ssl.SSLWantReadError:
                pass
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                break
            data = s.recv(65536)
            if not data:
                break
            inc.write(data)
        return bytes(got)


def open_sockets(pid):
    """How many sockets a process holds open (its /proc fd table)."""
    n = 0
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            n += os.readlink("/proc/%d/fd/%s" % (pid, fd)).startswith("socket:")
        except OSError:
            pass
    return n


def headers_seen(response):
    return dict((n.lower(), v) for n, v in json.loads(response.split(b"\r\n\r\n", 1)[1]))


def test_proxy_protocol_header_before_the_handshake_v1_and_v2(fastlb, backends, certs):
    """proxy_protocol on a TLS listener (an L4 balancer in front, TLS passthrough):
    the header is read in the clear, then the handshake; the ClientHello sent in the
    same segment as the header is not lost, and the header's source is the client."""
    api = certs.issue("api", "api.test")
    proc = fastlb(tls_doc(backends, {"certificates": [{"cert": api[0], "key": api[1]}]}, proxy_protocol=True))
    ctx = certs.client_context()
    req = b"GET /headers HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n"
    out = tls_after_header(proc.port, ctx, b"PROXY TCP4 192.0.2.10 192.0.2.1 56324 443\r\n", req)
    assert out.startswith(b"HTTP/1.1 200 "), out[:300]
    got = headers_seen(out)
    assert got["x-forwarded-for"] == "192.0.2.10" and got["x-forwarded-proto"] == "https"
    out = tls_after_header(proc.port, ctx, proxy_v2("192.0.2.11", 40000), req)
    assert headers_seen(out)["x-forwarded-for"] == "192.0.2.11"
    # the header in a write of its own, then an ordinary TLS client on the same socket
    with socket.create_connection(("127.0.0.1", proc.port), timeout=5) as raw:
        raw.sendall(b"PROXY TCP4 192.0.2.12 192.0.2.1 1234 443\r\n")
        with ctx.wrap_socket(raw, server_hostname="api.test") as s:
            s.sendall(req)
            out = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
    assert headers_seen(out)["x-forwarded-for"] == "192.0.2.12"
    s = parse_samples(scrape(proc).text)
    assert value(s, "fastlb_tls_handshakes_total", listener="secure") == 3


def test_proxy_protocol_tls_listener_refuses_a_connection_without_the_header(fastlb, backends, certs):
    """A TLS client straight to the listener (no PROXY header): counted, logged,
    closed before any handshake; nothing forwarded. A close or silence before the
    header ends the connection too (client_header), and nothing is left open."""
    api = certs.issue("api", "api.test")
    proc = fastlb(tls_doc(backends, {"certificates": [{"cert": api[0], "key": api[1]}]}, proxy_protocol=True,
                          timeouts={"client_header": "1s"}))
    n = sum(len(b.requests) for b in backends)
    baseline = open_sockets(proc.proc.pid)
    with pytest.raises(httpx.ConnectError):  # closed: its ClientHello is no PROXY header
        https_get(proc.port, ctx=certs.client_context())
    assert wait_for(lambda: "PROXY protocol header required on this listener: no PROXY protocol signature"
                    in proc.read_output(), timeout=5)
    # half a header then close; a header cut by silence (client_header)
    with socket.create_connection(("127.0.0.1", proc.port), timeout=5) as s:
        s.sendall(b"PROXY TCP4 192.0.2.")
    silent = socket.create_connection(("127.0.0.1", proc.port), timeout=5)
    try:
        silent.sendall(b"PROXY TCP4 192.0.2.")
        assert silent.recv(10) == b""  # closed after client_header (1 s; the socket gives up at 5)
    finally:
        silent.close()
    assert sum(len(b.requests) for b in backends) == n

    def settled():
        s = parse_samples(scrape(proc).text)
        return (value(s, "fastlb_requests_denied_total", route="", reason="proxy_protocol") == 1
                and value(s, "fastlb_connections_active", listener="secure") == 0)
    assert wait_for(settled, timeout=8)
    # the refused and abandoned connections were never ProxyConnections: their sockets are closed
    assert wait_for(lambda: open_sockets(proc.proc.pid) <= baseline, timeout=5), (open_sockets(proc.proc.pid),
                                                                                  baseline)
    # and the listener still serves a proper client
    req = b"GET /headers HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n"
    out = tls_after_header(proc.port, certs.client_context(), b"PROXY TCP4 192.0.2.13 192.0.2.1 1 443\r\n", req)
    assert headers_seen(out)["x-forwarded-for"] == "192.0.2.13"
    assert "Traceback" not in proc.read_output()
