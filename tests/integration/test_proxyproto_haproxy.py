"""fastlb.proxyproto against what a real HAProxy sends: HAProxy (tcp mode) forwards
client connections to a small asyncio server in this test with ``send-proxy`` (v1)
and ``send-proxy-v2`` (with TLVs), and its health checks with ``check-send-proxy``
(v2 LOCAL). parse() of the recorded first bytes must give the client's address and
port and leave the client's data untouched. Then HAProxy passing TLS through in
front of a real fastlb TLS listener with ``proxy_protocol``. Skipped when haproxy is
not installed."""

import asyncio
import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile

import httpx
import pytest
import trustme

from fastlb.proxyproto import parse
from tests.integration.conftest import FAST_TIMEOUTS
from tests.support.scrape import parse_samples, scrape, value
from tests.support.wait import stop_process, wait_for

HAPROXY = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.access("/usr/sbin/haproxy", os.X_OK) else None)
pytestmark = [pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed (apt-get install haproxy)"),
              pytest.mark.timeout(60)]

PAYLOAD = b"GET / HTTP/1.1\r\nHost: example\r\n\r\n"


def _has_ipv6_loopback():
    try:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.bind(("::1", 0))
        s.close()
        return True
    except OSError:
        return False


IPV6 = _has_ipv6_loopback()


def _free_port(host="127.0.0.1"):
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.bind((host, 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Recorder:
    """Records each accepted connection's bytes until EOF (or a short idle time)."""

    def __init__(self):
        self.conns = []  # bytes per finished connection
        self.event = asyncio.Event()

    async def handle(self, reader, writer):
        data = bytearray()
        try:
            while len(data) < 65536:
                chunk = await asyncio.wait_for(reader.read(4096), 2.0)
                if not chunk:
                    break
                data += chunk
        except (asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
        self.conns.append(bytes(data))
        self.event.set()

    async def wait_for(self, pred, timeout=5.0):
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while True:
            for c in self.conns:
                if pred(c):
                    return c
            left = end - loop.time()
            if left <= 0:
                raise AssertionError("no matching connection recorded; got %r" % [c[:40] for c in self.conns])
            self.event.clear()
            try:
                await asyncio.wait_for(self.event.wait(), left)
            except asyncio.TimeoutError:
                pass


HAPROXY_HEAD = """
global
    log stderr format raw local0 err

defaults
    mode tcp
    timeout connect 2s
    timeout client 5s
    timeout server 5s
"""

CONFIG = HAPROXY_HEAD + """
frontend fe_v1_4
    bind 127.0.0.1:{p_v1_4}
    default_backend be_v1
frontend fe_v2_4
    bind 127.0.0.1:{p_v2_4}
    unique-id-format conn-%{{+X}}o%ci:%cp
    default_backend be_v2
{v6_frontends}
backend be_v1
    server s 127.0.0.1:{upstream} send-proxy
backend be_v2
    server s 127.0.0.1:{upstream} send-proxy-v2 proxy-v2-options crc32c,unique-id
backend be_check
    server s 127.0.0.1:{upstream} send-proxy-v2 check check-send-proxy inter 300ms
"""

V6_FRONTENDS = """
frontend fe_v1_6
    bind [::1]:{p_v1_6}
    default_backend be_v1
frontend fe_v2_6
    bind [::1]:{p_v2_6}
    default_backend be_v2
"""


async def _wait_listening(host, port, proc, timeout=10.0):
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        if proc.poll() is not None:
            raise AssertionError("haproxy exited: %s" % proc.stderr.read().decode(errors="replace"))
        try:
            _, w = await asyncio.open_connection(host, port)
            w.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise AssertionError("haproxy did not listen on %s:%d" % (host, port))


async def _client(host, port):
    """Connect through haproxy, send PAYLOAD, close; the client's own address/port."""
    r, w = await asyncio.open_connection(host, port)
    local = w.get_extra_info("sockname")
    w.write(PAYLOAD)
    await w.drain()
    w.write_eof()
    try:
        await asyncio.wait_for(r.read(), 5.0)
    except (asyncio.TimeoutError, ConnectionError):
        pass
    w.close()
    return local[0], local[1]


def _check_forwarded(data, client_host, client_port, fe_host, fe_port):
    got = parse(data)
    assert got is not None, data[:120]
    consumed, src, sport, dst, dport = got
    assert (src, sport) == (client_host.encode(), client_port)
    assert (dst, dport) == (fe_host.encode(), fe_port)
    assert data[consumed:] == PAYLOAD
    for k in range(consumed):  # what haproxy sent, cut anywhere, needs more
        assert parse(data[:k]) is None
    return consumed


def test_haproxy_send_proxy_v1_and_v2():
    asyncio.run(asyncio.wait_for(_scenario(), 45))


async def _scenario():
    rec = Recorder()
    server = await asyncio.start_server(rec.handle, "127.0.0.1", 0)
    upstream = server.sockets[0].getsockname()[1]
    ports = {"p_v1_4": _free_port(), "p_v2_4": _free_port(), "upstream": upstream}
    if IPV6:
        ports.update(p_v1_6=_free_port("::1"), p_v2_6=_free_port("::1"))
        ports["v6_frontends"] = V6_FRONTENDS.format(**ports)
    else:
        ports["v6_frontends"] = ""
    with tempfile.TemporaryDirectory(prefix="fastlb-pp-") as tmp:
        cfg = os.path.join(tmp, "haproxy.cfg")
        with open(cfg, "w") as f:
            f.write(CONFIG.format(**ports))
        check = subprocess.run([HAPROXY, "-c", "-q", "-f", cfg], capture_output=True, timeout=10)
        assert check.returncode == 0, check.stderr.decode(errors="replace")
        proc = subprocess.Popen([HAPROXY, "-db", "-f", cfg], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            await _wait_listening("127.0.0.1", ports["p_v1_4"], proc)
            await _wait_listening("127.0.0.1", ports["p_v2_4"], proc)

            # health check over send-proxy-v2: the LOCAL command, no addresses
            local = await rec.wait_for(lambda c: c[12:13] == b"\x20")
            assert parse(local) == (16 + int.from_bytes(local[14:16], "big"), None, 0, None, 0)

            cases = [("127.0.0.1", ports["p_v1_4"], b"PROXY TCP4 "), ("127.0.0.1", ports["p_v2_4"], b"\r\n\r\n")]
            if IPV6:
                await _wait_listening("::1", ports["p_v1_6"], proc)
                await _wait_listening("::1", ports["p_v2_6"], proc)
                cases += [("::1", ports["p_v1_6"], b"PROXY TCP6 "), ("::1", ports["p_v2_6"], b"\r\n\r\n")]
            for host, port, start in cases:
                chost, cport = await _client(host, port)
                data = await rec.wait_for(lambda c: c.startswith(start) and c.endswith(PAYLOAD)
                                          and parse(c)[1:3] == (chost.encode(), cport))
                consumed = _check_forwarded(data, chost, cport, host, port)
                if start == b"\r\n\r\n":
                    # crc32c (3 + 4) and unique-id TLVs: more than the bare address block
                    assert consumed > 16 + (12 if ":" not in host else 36) + 7
        finally:
            stop_process(proc)
            server.close()
            await server.wait_closed()


TLS_PASSTHROUGH = HAPROXY_HEAD + """
frontend fe_v{version}
    bind 127.0.0.1:{port}
    default_backend be
backend be
    server s 127.0.0.1:{fastlb} {send} source 127.0.0.5 check check-send-proxy inter 300ms
"""


@pytest.mark.parametrize("version", [1, 2])
def test_haproxy_in_front_of_a_tls_listener_with_proxy_protocol(fastlb, backends, tmp_path, version):
    """The L4 deployment: HAProxy passes TLS through (mode tcp) with send-proxy(-v2)
    from its own address (127.0.0.5); fastlb reads the header, terminates TLS, and
    the backend sees the client's address (127.0.0.9) in X-Forwarded-For. HAProxy's
    health checks (a PROXY header, then a close) are no errors."""
    ca = trustme.CA()
    leaf = ca.issue_cert("api.test")
    cert, key = tmp_path / "api.pem", tmp_path / "api.key"
    cert.write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    proc = fastlb({
        "listeners": [{"name": "secure", "bind": "127.0.0.1:0", "pool": "p", "proxy_protocol": True,
                       "tls": {"certificates": [{"cert": str(cert), "key": str(key)}]}}],
        "pools": {"p": {"backends": [b.address for b in backends]}},
        "timeouts": dict(FAST_TIMEOUTS),
        "admin": {"bind": "127.0.0.1:0"},
    })
    port = _free_port()
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(TLS_PASSTHROUGH.format(version=version, port=port, fastlb=proc.port,
                                          send="send-proxy" if version == 1 else "send-proxy-v2"))
    check = subprocess.run([HAPROXY, "-c", "-q", "-f", str(cfg)], capture_output=True, timeout=10)
    assert check.returncode == 0, check.stderr.decode(errors="replace")
    hap = subprocess.Popen([HAPROXY, "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        asyncio.run(_wait_listening("127.0.0.1", port, hap))
        ctx = ssl.create_default_context()
        ca.configure_trust(ctx)
        transport = httpx.HTTPTransport(verify=ctx, local_address="127.0.0.9")
        with httpx.Client(transport=transport, timeout=10) as client:
            for i in range(3):  # keep-alive through the passthrough: one TLS connection
                r = client.get("https://127.0.0.1:%d/headers" % port, extensions={"sni_hostname": "api.test"},
                               headers={"Host": "api.test"})
                assert r.status_code == 200, r.text
                got = dict((n.lower(), v) for n, v in json.loads(r.text))
                assert got["x-forwarded-for"] == "127.0.0.9", got
                assert got["x-forwarded-proto"] == "https"
        # HAProxy's checks (every 300 ms: connect, the header, close) reach the TLS layer
        # and end there as handshakes the client closed; nothing else is counted
        def checks_seen():
            s = parse_samples(scrape(proc).text)
            return value(s, "fastlb_tls_handshake_failures_total", listener="secure", reason="client_closed") >= 2
        assert wait_for(checks_seen, timeout=5)
        s = parse_samples(scrape(proc).text)
        assert value(s, "fastlb_tls_handshakes_total", listener="secure") == 1
        assert value(s, "fastlb_requests_denied_total", route="", reason="proxy_protocol") == 0
    finally:
        stop_process(hap)
    out = proc.read_output()
    assert "Traceback" not in out and "PROXY protocol header required" not in out, out
