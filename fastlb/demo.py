"""``fastlb demo``: three built-in backends, the balancer and the admin API, in one process.

The demo backends are tiny h11 servers answering JSON that names the backend, so
``curl`` shows round robin at work. Ctrl-C (SIGINT) or SIGTERM stops everything.
"""

import asyncio
import json
import logging

import h11

from . import config as configmod

log = logging.getLogger("fastlb.demo")

__all__ = ["run_demo", "DemoBackend"]


class DemoBackend:
    """A minimal JSON backend: GET/POST anything, answers who it is and what it saw."""

    def __init__(self, name):
        self.name = name
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
                writer.write(conn.send(h11.Response(status_code=200, headers=[
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


def demo_config(port, admin_port, backend_port):
    return configmod.from_dict({
        "listeners": [{"name": "demo", "bind": "127.0.0.1:%d" % port, "pool": "demo"}],
        "pools": {"demo": {"algorithm": "round_robin", "backends": [
            {"address": "127.0.0.1:%d" % (backend_port + i), "weight": w} for i, w in enumerate((2, 1, 1))]}},
        "admin": {"bind": "127.0.0.1:%d" % admin_port},
    })


def run_demo(port=8080, admin_port=8081, backend_port=9001):
    from .server import run

    cfg = demo_config(port, admin_port, backend_port)
    backends = []
    failed = []

    def ready(server):
        async def start_backends():
            for i in range(3):
                b = DemoBackend("demo-%d" % (i + 1))
                try:
                    await b.start("127.0.0.1", backend_port + i)
                except OSError as exc:
                    print("fastlb demo: cannot start demo backend on 127.0.0.1:%d: %s (use --backend-port)"
                          % (backend_port + i, exc.strerror or exc), flush=True)
                    failed.append(exc)
                    server.begin_drain("demo backends failed")
                    return
                backends.append(b)
            print("demo backends: %s (weights 2, 1, 1)" % ", ".join(
                "demo-%d on 127.0.0.1:%d" % (i + 1, backend_port + i) for i in range(3)), flush=True)
            print("try:\n"
                  "  curl -s http://127.0.0.1:%d/hello\n"
                  "  for i in 1 2 3 4; do curl -s http://127.0.0.1:%d/; done\n"
                  "  curl -s -X POST -d '{\"x\": 1}' http://127.0.0.1:%d/orders\n"
                  "  curl -s http://127.0.0.1:%d/api/v1/pools\n"
                  "Ctrl-C stops everything." % (port, port, port, admin_port), flush=True)

        server.loop.create_task(start_backends())

    try:
        code = run(cfg, ready=ready)
        return 1 if failed else code
    except OSError as exc:
        print("fastlb demo: cannot start: %s (use --port/--admin-port/--backend-port)" % exc)
        return 1
    finally:
        for b in backends:
            b.close()
