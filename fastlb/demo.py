"""``fastlb demo``: three built-in backends, the balancer and the admin API, in one process.

The demo backends are tiny h11 servers answering JSON that names the backend, so
``curl`` shows round robin at work; each takes a little longer than the one before
(about 1, 5 and 15 ms), so the dashboard shows different latencies. The demo sends
a little traffic of its own through the balancer (DEMO_RATE requests a second, one
in fifty to an endpoint that answers 500), so the dashboard moves the moment it
opens; ``--no-traffic`` turns it off. Ctrl-C (SIGINT) or SIGTERM stops everything.

``--tls`` serves the balancer over HTTPS with a certificate for localhost and
127.0.0.1 from the local development CA (devcert.py, ``fastlb cert``), its own
traffic going through TLS too, HSTS on, and a plain-HTTP listener on
``--redirect-port`` (8080) answering with a redirect to it.
"""

import asyncio
import json
import logging
import random

import h11

from . import config as configmod

log = logging.getLogger("fastlb.demo")

__all__ = ["run_demo", "DemoBackend"]


class DemoBackend:
    """A minimal JSON backend: GET/POST anything, answers who it is and what it saw."""

    def __init__(self, name, delay=0.0):
        self.name = name
        self.delay = delay  # seconds each answer takes (jittered), so backends differ
        self.served = 0
        self._srv = None

    async def start(self, host, port):
        self._srv = await asyncio.start_server(self._handle, host, port, reuse_address=True)

    def close(self):
        if self._srv is not None:
            self._srv.close()

    async def _handle(self, reader, writer):
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await reader.read(65536)
                    conn.receive_data(data)
                    continue
                if isinstance(event, h11.ConnectionClosed):
                    break
                if not isinstance(event, h11.Request):
                    continue
                request = event
                size = 0
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        conn.receive_data(await reader.read(65536))
                    elif isinstance(event, h11.Data):
                        size += len(event.data)
                    else:
                        break
                self.served += 1
                if self.delay:
                    await asyncio.sleep(self.delay * random.uniform(0.5, 1.5))
                status = 500 if request.target.startswith(b"/error") else 200
                headers = {k.decode(): v.decode("latin-1") for k, v in request.headers}
                payload = json.dumps({
                    "backend": self.name,
                    "method": request.method.decode(),
                    "path": request.target.decode("latin-1"),
                    "body_bytes": size,
                    "request_id": headers.get("x-request-id"),
                    "x_forwarded_for": headers.get("x-forwarded-for"),
                    "served": self.served,
                }).encode() + b"\n"
                writer.write(conn.send(h11.Response(status_code=status, headers=[
                    ("Content-Type", "application/json"), ("Content-Length", str(len(payload)))])))
                writer.write(conn.send(h11.Data(data=payload)))
                writer.write(conn.send(h11.EndOfMessage()))
                await writer.drain()
                if conn.our_state is h11.MUST_CLOSE:
                    break
                conn.start_next_cycle()
        except (h11.RemoteProtocolError, ConnectionError):
            pass
        finally:
            writer.close()


DEMO_DELAYS = (0.001, 0.005, 0.015)  # seconds, per demo backend
DEMO_RATE = 20  # requests a second the demo sends itself


def demo_config(port, admin_port, backend_port, tls=None, redirect_port=None):
    """``tls``: (cert, key) files: the balancer speaks HTTPS, and ``redirect_port``
    (when given) answers plain HTTP with a redirect to it."""
    listener = {"name": "demo", "bind": "127.0.0.1:%d" % port, "pool": "demo"}
    listeners = [listener]
    if tls is not None:
        listener["tls"] = {"certificates": [{"cert": tls[0], "key": tls[1]}], "hsts": "max-age=300"}
        if redirect_port is not None:
            listeners.append({"name": "demo-redirect", "bind": "127.0.0.1:%d" % redirect_port,
                              "redirect_https": port})
    return configmod.from_dict({
        "listeners": listeners,
        "pools": {"demo": {"algorithm": "round_robin", "backends": [
            {"address": "127.0.0.1:%d" % (backend_port + i), "weight": w} for i, w in enumerate((2, 1, 1))],
            "health_check": {"path": "/healthz", "interval": "1s", "rise": 2, "fall": 2}}},
        "admin": {"bind": "127.0.0.1:%d" % admin_port},
    })


async def demo_traffic(port, pool, rate=DEMO_RATE, ssl_context=None):
    """A few requests a second through the balancer on one kept-alive connection
    (reconnecting after any error), so the dashboard has something to show; from
    the moment the pool's first backend passed its check."""
    while not pool.healthy():
        await asyncio.sleep(0.1)
    n = 0
    while True:
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=ssl_context, server_hostname="localhost" if ssl_context else None)
        except OSError:
            await asyncio.sleep(1)
            continue
        conn = h11.Connection(h11.CLIENT)
        try:
            while True:
                n += 1
                target = "/error" if n % 50 == 0 else "/orders/%d" % (n % 1000)
                writer.write(conn.send(h11.Request(method="GET", target=target, headers=[
                    ("Host", "demo"), ("User-Agent", "fastlb-demo-traffic")])))
                writer.write(conn.send(h11.EndOfMessage()))
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        data = await asyncio.wait_for(reader.read(65536), 10)
                        conn.receive_data(data)
                    elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                        break
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    break
                conn.start_next_cycle()
                await asyncio.sleep(random.expovariate(rate))
        except (OSError, h11.ProtocolError, asyncio.TimeoutError):
            await asyncio.sleep(0.5)
        finally:
            writer.close()


def _bindable(port):
    import socket

    s = socket.socket()
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def run_demo(port=8080, admin_port=8081, backend_port=9001, traffic=True, tls=False, redirect_port=8080):
    from .server import run

    client_tls = None
    scheme = "http"
    curl = "curl -s"
    if tls:
        import ssl

        from . import devcert

        directory = devcert.default_directory()
        try:
            ca, _, created = devcert.ensure_ca(directory)
            cert, key = devcert.issue(directory, ["localhost", "127.0.0.1"])
        except OSError as exc:
            print("fastlb demo: cannot write the development certificate in %s: %s (set FASTLB_CERT_DIR)"
                  % (directory, exc.strerror or exc), flush=True)
            return 1
        print("%s %s; certificate for localhost and 127.0.0.1: %s" % (
            "created a local development CA:" if created else "local development CA:", ca, cert), flush=True)
        client_tls = ssl.create_default_context(cafile=ca)
        scheme = "https"
        curl = "curl -s --cacert %s" % ca
        # http://...:8080 answers with a redirect to the HTTPS port, unless that port is
        # one of the demo's own or already taken (then there is no redirect listener)
        if not redirect_port or redirect_port in (port, admin_port, backend_port, backend_port + 1,
                                                  backend_port + 2) or not _bindable(redirect_port):
            redirect_port = None
        cfg = demo_config(port, admin_port, backend_port, (cert, key), redirect_port)
    else:
        redirect_port = None
        cfg = demo_config(port, admin_port, backend_port)
    host = "localhost" if tls else "127.0.0.1"
    backends = []
    failed = []
    tasks = []

    def ready(server):
        async def start_backends():
            for i in range(3):
                b = DemoBackend("demo-%d" % (i + 1), DEMO_DELAYS[i])
                try:
                    await b.start("127.0.0.1", backend_port + i)
                except OSError as exc:
                    print("fastlb demo: cannot start demo backend on 127.0.0.1:%d: %s (use --backend-port)"
                          % (backend_port + i, exc.strerror or exc), flush=True)
                    failed.append(exc)
                    server.begin_drain("demo backends failed")
                    return
                backends.append(b)
            pool = server.pools["demo"]
            for _ in range(50):  # the first health checks (usually a few ms): curl then gets answers at once
                if pool.healthy() == len(pool.backends):
                    break
                await asyncio.sleep(0.1)
            print("demo backends: %s (weights 2, 1, 1)" % ", ".join(
                "demo-%d on 127.0.0.1:%d" % (i + 1, backend_port + i) for i in range(3)), flush=True)
            print("dashboard: http://127.0.0.1:%d/dashboard  (open it in a browser)" % admin_port, flush=True)
            if traffic:
                print("the demo sends about %d requests a second of its own through the balancer (one in 50 "
                      "answers 500), so the dashboard moves at once; --no-traffic turns that off" % DEMO_RATE,
                      flush=True)
                tasks.append(server.loop.create_task(demo_traffic(port, server.pools["demo"], ssl_context=client_tls)))
            base = "%s://%s:%d" % (scheme, host, port)
            print("try:\n"
                  "  %s %s/hello\n"
                  "  for i in 1 2 3 4; do %s %s/; done\n"
                  "  %s -X POST -d '{\"x\": 1}' %s/orders\n"
                  "  curl -s http://127.0.0.1:%d/api/v1/pools\n"
                  "  curl -s http://127.0.0.1:%d/metrics" % (curl, base, curl, base, curl, base, admin_port, admin_port),
                  flush=True)
            if redirect_port is not None:
                print("  curl -si http://localhost:%d/hello   (308 to %s/hello)" % (redirect_port, base), flush=True)
            print("Ctrl-C stops everything.", flush=True)

        server.loop.create_task(start_backends())

    try:
        code = run(cfg, ready=ready)
        return 1 if failed else code
    except OSError as exc:
        print("fastlb demo: cannot start: %s (use --port/--admin-port/--backend-port)" % exc)
        return 1
    finally:
        for t in tasks:
            t.cancel()
        for b in backends:
            b.close()
