"""Health checks, failover and resilience against real processes (step 4).

Real fastlb processes in front of real backends on 127.0.0.1: subprocess backends
(tests.support.backend, SIGKILLed and restarted on the same port), in-process
BackendServers, and raw socket backends written here (one that hangs, one that
answers 503 to everything, one that resets after reading the request). What fastlb
decided is read from the admin API (GET /api/v1/pools/p), what happened from the
clients' responses and from the backends' own records.

Every load is bounded in requests and seconds; every wait polls with a deadline.
Timing assertions are upper bounds with a generous margin over what the feature's
own settings imply (checks every 0.1-0.2 s, timeouts of 0.3-1 s).
"""

import itertools
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import httpx
import pytest

from tests.integration.conftest import FAST_TIMEOUTS, free_port, pool_doc
from tests.support.backend import BackendServer
from tests.support.wait import wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROBE_UA = b"fastlb-health"
MARGIN = 3.0  # seconds added to every timing bound (a loaded 2-core machine)
# connect 1s makes fastlb's tick 0.25 s (a quarter of the shortest timeout): slow start
# ramps and ejection ends are applied that often.
TIMEOUTS = dict(FAST_TIMEOUTS, connect="1s")


# ------------------------------------------------------------------------ helpers

def admin_pool(proc, pool="p"):
    r = httpx.get("http://127.0.0.1:%d/api/v1/pools/%s" % (proc.admin_port, pool), timeout=5)
    r.raise_for_status()
    return r.json()


def admin_backend(proc, address, pool="p"):
    for b in admin_pool(proc, pool)["backends"]:
        if b["address"] == address:
            return b
    raise AssertionError("no backend %s in the admin API" % address)


def admin_post(proc, address, action, pool="p"):
    return httpx.post("http://127.0.0.1:%d/api/v1/pools/%s/backends/%s/%s" % (
        proc.admin_port, pool, address, action), headers={"Content-Type": "application/json"}, timeout=5)


def states(proc, pool="p"):
    return {b["address"]: b["state"] for b in admin_pool(proc, pool)["backends"]}


def wait_states(proc, want, timeout=10.0, pool="p"):
    """Wait until every address in ``want`` has its state (a state or a set of them)."""
    def ok():
        s = states(proc, pool)
        return all(s[a] == w if isinstance(w, str) else s[a] in w for a, w in want.items()) and s
    got = wait_for(ok, timeout)
    assert got, "states did not become %r within %gs: %r" % (want, timeout, states(proc, pool))
    return got


def fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def doc_with(addresses, admin=True, timeouts=None, **pool):
    """pool_doc over ``addresses`` plus pool keys (health_check, outlier_detection, ...)."""
    doc = pool_doc(addresses, admin=admin, timeouts=dict(TIMEOUTS, **(timeouts or {})))
    doc["pools"]["p"].update(pool)
    return doc


class ProcBackend:
    """``python -m tests.support.backend`` as a subprocess: SIGKILL it, start it again on its port."""

    def __init__(self, name, port=0):
        self.name = name
        self.port = port
        self.proc = None

    @property
    def address(self):
        return "127.0.0.1:%d" % self.port

    def start(self, timeout=20.0):
        for _ in range(20):  # the port may still be held for a moment after a kill
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.support.backend", "--name", self.name, "--port", str(self.port),
                 "--print-port"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT, text=True)
            guard = threading.Timer(timeout, self.proc.kill)  # a backend that never prints cannot hang us
            guard.start()
            try:
                line = self.proc.stdout.readline()
            finally:
                guard.cancel()
            if line.strip().isdigit():
                self.port = int(line)
                return self
            self.proc.kill()
            self.proc.wait(5)
            time.sleep(0.1)
        raise RuntimeError("backend %s did not start on port %d" % (self.name, self.port))

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def proc_backends():
    started = []
    try:
        for i in range(3):
            started.append(ProcBackend("b%d" % (i + 1)).start())
        yield started
    finally:
        for b in started:
            b.stop()


def read_request(sock, buf):
    """One HTTP/1.1 request from a raw socket: (method, target, headers {lower: bytes}, body, rest)
    or None at EOF. Content-Length bodies only (all fastlb sends here)."""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            return None
        buf += data
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    method, target, _ = lines[0].split(b" ", 2)
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        headers[k.strip().lower()] = v.strip()
    n = int(headers.get(b"content-length", b"0"))
    while len(rest) < n:
        data = sock.recv(65536)
        if not data:
            return None
        rest += data
    return method.decode(), target.decode(), headers, rest[:n], rest[n:]


class RawServer:
    """A raw TCP backend: ``handler(server, sock)`` runs in a thread per connection.
    ``requests`` is a list of dicts the handlers append (method, target, ua, body_len)."""

    def __init__(self, name, handler):
        self.name = name
        self.handler = handler
        self.ls = socket.socket()
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(128)
        self.ls.settimeout(0.2)
        self.address = "127.0.0.1:%d" % self.ls.getsockname()[1]
        self.lock = threading.Lock()
        self.requests = []
        self.socks = []
        self.connections = 0
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
            with self.lock:
                self.socks.append(s)
                self.connections += 1
            threading.Thread(target=self._run, args=(s,), daemon=True).start()

    def _run(self, s):
        s.settimeout(30)
        try:
            self.handler(self, s)
        except OSError:
            pass
        finally:
            try:
                s.close()
            except OSError:
                pass

    def record(self, method, target, headers, body):
        with self.lock:
            self.requests.append({"method": method, "target": target, "ua": headers.get(b"user-agent", b""),
                                  "body_len": len(body)})

    def seen(self, probes=False):
        """Requests received (without the health probes unless ``probes``)."""
        with self.lock:
            return [r for r in self.requests if probes or r["ua"] != PROBE_UA]

    def stop(self):
        self.stopped = True
        self.ls.close()
        with self.lock:
            for s in self.socks:
                try:
                    s.close()
                except OSError:
                    pass


def hang_handler(server, s):
    """Accept and read, never answer (until fastlb gives up and closes)."""
    buf = bytearray()
    req = read_request(s, buf)
    if req is None:
        return
    server.record(*req[:4])
    while s.recv(65536):
        pass


def status503_handler(server, s):
    """503 to every request, keep-alive, Content-Length framed; the body names the backend."""
    buf = bytearray()
    while True:
        req = read_request(s, buf)
        if req is None:
            return
        method, target, headers, body, rest = req
        buf = bytearray(rest)
        server.record(method, target, headers, body)
        payload = b"503 from %s\n" % server.name.encode()
        s.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nX-Backend: %s\r\n"
                  b"Content-Length: %d\r\n\r\n%s" % (server.name.encode(), len(payload),
                                                     b"" if method == "HEAD" else payload))


def slow503_handler(server, s):
    """Like status503_handler, but every answer takes 0.8 s."""
    buf = bytearray()
    while True:
        req = read_request(s, buf)
        if req is None:
            return
        method, target, headers, body, rest = req
        buf = bytearray(rest)
        server.record(method, target, headers, body)
        time.sleep(0.8)
        s.sendall(b"HTTP/1.1 503 Service Unavailable\r\nX-Backend: %s\r\nContent-Length: 0\r\n\r\n"
                  % server.name.encode())


def reset_handler(server, s):
    """Read the whole request (head and body), then reset the connection without a response."""
    req = read_request(s, bytearray())
    if req is None:
        return
    server.record(*req[:4])
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


@pytest.fixture
def raw_servers():
    made = []

    def make(name, handler):
        srv = RawServer(name, handler)
        made.append(srv)
        return srv

    yield make
    for srv in made:
        srv.stop()


class Load:
    """``clients`` keep-alive httpx clients in threads, each paced to ``rate`` requests a second,
    until ``stop()``, ``max_requests`` in all or ``max_seconds``. ``results`` rows:
    (t_start, t_end, status or None, X-Backend or None, error or None, body unless 200), monotonic times."""

    def __init__(self, url, clients=8, method="GET", rate=100.0, max_requests=8000, max_seconds=15.0):
        self.url = url
        self.clients = clients
        self.method = method
        self.interval = 1.0 / rate
        self.max_requests = max_requests
        self.max_seconds = max_seconds
        self.counter = itertools.count()
        self.done = threading.Event()
        self.rows = [[] for _ in range(clients)]
        self.threads = []

    def start(self):
        self.t0 = time.monotonic()
        for c in range(self.clients):
            t = threading.Thread(target=self._run, args=(c,), daemon=True)
            t.start()
            self.threads.append(t)
        return self

    def _run(self, c):
        rows = self.rows[c]
        deadline = self.t0 + self.max_seconds
        with httpx.Client(timeout=10.0) as client:
            nxt = time.monotonic()
            while not self.done.is_set() and time.monotonic() < deadline:
                i = next(self.counter)
                if i >= self.max_requests:
                    break
                t0 = time.monotonic()
                try:
                    if self.method == "POST":
                        body = json.dumps({"client": c, "i": i}).encode()
                        r = client.post(self.url, content=body, headers={"Content-Type": "application/json"})
                        err = None if r.status_code != 200 or r.content == body else "echo mismatch"
                    else:
                        r = client.get(self.url)
                        err = None
                    rows.append((t0, time.monotonic(), r.status_code, r.headers.get("x-backend"), err,
                                 None if r.status_code == 200 else r.content[:300]))
                except httpx.HTTPError as exc:
                    rows.append((t0, time.monotonic(), None, None, repr(exc), None))
                nxt += self.interval
                pause = nxt - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                else:
                    nxt = time.monotonic()

    def wait(self):
        """Let the load run to its own bound (max_requests or max_seconds)."""
        for t in self.threads:
            t.join(self.max_seconds + 20)
        return self.stop()

    def stop(self):
        self.done.set()
        for t in self.threads:
            t.join(20)
        assert not any(t.is_alive() for t in self.threads), "a client thread hung"
        return self.results

    @property
    def results(self):
        return sorted(r for rows in self.rows for r in rows)


# --------------------------------------------------------- 1. kill under GET load
def test_sigkill_under_get_load_no_client_error_down_back_and_slow_start_ramp(fastlb, proc_backends):
    interval, fall, rise, timeout, slow = 0.2, 2, 2, 0.2, 3.0
    addrs = [b.address for b in proc_backends]
    doc = doc_with(addrs, health_check={"path": "/", "interval": interval, "timeout": timeout, "rise": rise,
                                        "fall": fall},
                   slow_start="%gs" % slow,
                   # every request that meets the dead backend may be retried at once (8 clients):
                   # the budget itself is test_retry_budget_*'s subject
                   retry_budget={"percent": 100, "min_concurrent": 8})
    lb = fastlb(doc)
    wait_states(lb, {a: {"up", "slow_start"} for a in addrs})
    wait_states(lb, {a: "up" for a in addrs}, timeout=slow + MARGIN)
    victim = proc_backends[1]

    load = Load(lb.url("/"), clients=8, rate=100, max_requests=12000, max_seconds=25).start()
    # three more clients keep a 0.5 s request in flight at all times: some are on the victim when it dies
    slow_load = Load(lb.url("/slow?delay=0.5"), clients=3, rate=100, max_requests=200, max_seconds=25).start()
    try:
        time.sleep(1.0)
        assert wait_for(lambda: admin_backend(lb, victim.address)["in_flight"] >= 1, 5, 0.01)
        t_kill = time.monotonic()
        victim.kill()
        down = wait_for(lambda: admin_backend(lb, victim.address)["state"] == "down" and time.monotonic(),
                        fall * interval * 1.1 + timeout + MARGIN, 0.02)
        assert down, "killed backend not marked down: %r" % admin_backend(lb, victim.address)
        slow_load.done.set()  # the slow requests did their part
        time.sleep(0.5)  # down, with nothing listening: no request can reach it
        victim.start()
        t_restart = time.monotonic()
        back = wait_for(lambda: admin_backend(lb, victim.address)["state"] in ("slow_start", "up") and
                        admin_backend(lb, victim.address), rise * interval * 1.1 + timeout + MARGIN, 0.02)
        assert back, "restarted backend not back: %r" % admin_backend(lb, victim.address)
        t_back = time.monotonic()
        assert back["state"] == "slow_start", back  # a recovered backend ramps too
        ramp_start = time.monotonic() - back["state_for_seconds"]
        samples = []
        while time.monotonic() < ramp_start + slow + MARGIN:
            b = admin_backend(lb, victim.address)
            if b["state"] == "up":
                break
            samples.append(b["effective_weight"])
            time.sleep(0.1)
        up = admin_backend(lb, victim.address)
        assert up["state"] == "up", up
        ramp_end = time.monotonic() - up["state_for_seconds"]
        time.sleep(1.2)
    finally:
        rows = load.stop()
        slow_rows = slow_load.stop()

    assert len(rows) >= 1000, len(rows)
    assert down - t_kill <= fall * interval * 1.1 + timeout + MARGIN
    assert t_back - t_restart <= rise * interval * 1.1 + timeout + MARGIN
    # while down (killed, then listening again but not yet passing rise checks): no traffic
    name = victim.name
    early = [r for r in rows if r[3] == name and t_kill + 0.2 < r[0] and r[1] < ramp_start - 0.1]
    assert not early, "requests reached the backend while it was down: %r" % early[:5]

    def share(lo, hi):
        sel = [r for r in rows if lo <= r[1] < hi]
        return sum(1 for r in sel if r[3] == name) / max(1, len(sel)), len(sel)

    first, n_first = share(ramp_start, ramp_start + slow / 3)
    middle, n_middle = share(ramp_start + slow / 2, ramp_end)
    after, n_after = share(ramp_end + 0.1, ramp_end + 1.1)
    assert min(n_first, n_middle, n_after) >= 100, (n_first, n_middle, n_after)
    # weight w*t/slow against two backends at 1: ~8% in the first third, ~25% late, 1/3 after
    assert 0 < first < 0.6 * after, (first, middle, after, samples)
    assert first < middle, (first, middle, after, samples)
    assert after > 0.2, (first, middle, after, samples)
    # No client-visible error, the GETs in flight on it when it died included. (They were on
    # reused keep-alive connections: resent through the keep-alive race path, refused, then
    # moved on. One on a fresh connection goes through retry().)
    bad = [r for r in rows + slow_rows if r[2] != 200 or r[4] is not None]
    assert not bad, "client-visible errors: %r" % bad[:10]


# -------------------------------------------------------- 2. kill under POST load
def test_sigkill_under_post_load_only_in_flight_posts_fail_with_502_503(fastlb, proc_backends):
    interval, fall, rise, timeout = 0.2, 2, 2, 0.2
    addrs = [b.address for b in proc_backends]
    doc = doc_with(addrs, health_check={"path": "/", "interval": interval, "timeout": timeout, "rise": rise,
                                        "fall": fall},
                   retry_budget={"percent": 100, "min_concurrent": 8})
    lb = fastlb(doc)
    wait_states(lb, {a: "up" for a in addrs})
    victim = proc_backends[0]
    clients = 8
    load = Load(lb.url("/echo"), clients=clients, method="POST", rate=100, max_requests=8000,
                max_seconds=20).start()
    try:
        time.sleep(1.0)
        t_kill = time.monotonic()
        victim.kill()
        out = wait_for(lambda: admin_backend(lb, victim.address)["state"] not in ("up", "slow_start")
                       and time.monotonic(), fall * interval * 1.1 + timeout + MARGIN, 0.02)
        assert out, admin_backend(lb, victim.address)
        wait_states(lb, {victim.address: "down"}, timeout=fall * interval * 1.1 + timeout + MARGIN)
        victim.start()
        wait_states(lb, {victim.address: "up"}, timeout=rise * interval * 1.1 + timeout + MARGIN)
        t_back = time.monotonic()
        time.sleep(1.0)
    finally:
        rows = load.stop()

    assert len(rows) >= 500, len(rows)
    failed = [r for r in rows if r[2] != 200 or r[4] is not None]
    assert all(r[2] in (502, 503) and r[4] is None for r in failed), failed[:10]  # no hang, no other status
    assert len(failed) <= clients, failed  # at most the POSTs in flight on it when it died
    # ... and for that reason: a refused connect is retried whatever the method
    assert all(b"connect to" not in r[5] for r in failed), failed
    # every failure is a request that started before fastlb had taken it out of rotation
    assert all(r[1] >= t_kill and r[0] <= out for r in failed), (t_kill, out, failed)
    assert any(r[3] == victim.name and r[0] > t_back for r in rows)  # it serves again


# ------------------------------------------------------ 3. a backend that hangs
def test_hanging_backend_gets_504_within_response_timeout_and_is_ejected(fastlb, backends, raw_servers):
    hang = raw_servers("hang", hang_handler)
    good = backends[:2]
    addrs = [b.address for b in good] + [hang.address]
    doc = doc_with(addrs, timeouts={"response": "1s"},
                   outlier_detection={"consecutive_failures": 2, "base_ejection_time": "30s"})
    lb = fastlb(doc)
    results = []
    with httpx.Client(timeout=10.0) as client:
        for i in range(9):
            t0 = time.monotonic()
            r = client.get(lb.url("/h/%d" % i))
            results.append((r.status_code, r.headers.get("x-backend"), time.monotonic() - t0))
        timed_out = [x for x in results if x[0] == 504]
        assert len(timed_out) == 2, results  # consecutive_failures: 2, then ejected
        assert all(0.9 <= x[2] <= 1.0 + MARGIN for x in timed_out), results
        assert all(x[0] == 200 and x[1] in ("b1", "b2") for x in results if x[0] != 504), results
        assert len(hang.seen()) == 2
        b = admin_backend(lb, hang.address)
        assert b["state"] == "ejected" and b["ejected_for_seconds"] > 0, b
        assert b["failures_total"] == 2, b
        later = [client.get(lb.url("/later/%d" % i)) for i in range(12)]
    assert [r.status_code for r in later] == [200] * 12
    assert {r.headers["x-backend"] for r in later} == {"b1", "b2"}
    assert len(hang.seen()) == 2  # nothing more went to it


def test_per_try_timeout_retries_a_get_elsewhere_not_a_post(fastlb, backends, raw_servers):
    hang = raw_servers("hang", hang_handler)
    good = backends[:2]
    addrs = [b.address for b in good] + [hang.address]
    per_try = 0.4
    doc = doc_with(addrs, timeouts={"response": "5s"}, per_try_timeout="%gs" % per_try, outlier_detection=False)
    lb = fastlb(doc)
    results = []
    with httpx.Client(timeout=10.0) as client:
        for i in range(9):
            t0 = time.monotonic()
            r = client.get(lb.url("/g/%d" % i))
            results.append((i, r.status_code, r.headers.get("x-backend"), time.monotonic() - t0))
        retries = admin_pool(lb)["retries"]
        # a POST is not idempotent: the hanging try ends in 504 after per_try_timeout, sent once
        posted = []
        for i in range(6):
            t0 = time.monotonic()
            r = client.post(lb.url("/p/%d" % i), content=b"x" * 10)
            posted.append((i, r.status_code, time.monotonic() - t0))
            if r.status_code != 200:
                break
    at_hang = [r["target"] for r in hang.seen()]
    gets_at_hang = [t for t in at_hang if t.startswith("/g/")]
    assert len(gets_at_hang) >= 2, at_hang  # round robin sent a third of them there first
    assert len(gets_at_hang) == len(set(gets_at_hang)), at_hang  # each at most once
    assert posted[-1][1] == 504 and per_try * 0.9 <= posted[-1][2] <= per_try + MARGIN, posted
    assert at_hang.count("/p/%d" % posted[-1][0]) == 1
    assert not any(r.target == "/p/%d" % posted[-1][0] for b in good for r in b.requests)
    # (a retry that lands on an idle pooled connection attaches at once: its response must
    # still be read; it once was dropped and the request ended in 504)
    # the other backends saw every GET (the ones that hung included), each once
    served = sorted(r.target for b in good for r in b.requests if r.target.startswith("/g/"))
    assert served == sorted("/g/%d" % i for i in range(9)), served
    assert all(x[1] == 200 and x[2] in ("b1", "b2") for x in results), results
    slow = [x for x in results if "/g/%d" % x[0] in gets_at_hang]
    assert all(per_try * 0.9 <= x[3] <= per_try + MARGIN for x in slow), results
    assert retries["total"]["per_try_timeout"] == len(gets_at_hang), retries


# ------------------------------------------------------ 4. a backend that 503s
def test_backend_answering_503_is_ejected_and_its_503s_pass_through(fastlb, backends, raw_servers):
    bad = raw_servers("bad", status503_handler)
    addrs = [b.address for b in backends[:2]] + [bad.address]
    doc = doc_with(addrs, outlier_detection={"consecutive_failures": 3, "base_ejection_time": "30s"})
    lb = fastlb(doc)
    with httpx.Client(timeout=10.0) as client:
        first = [client.get(lb.url("/a/%d" % i)) for i in range(12)]
        passed = [r for r in first if r.status_code == 503]
        assert len(passed) == 3, [(r.status_code, r.headers.get("x-backend")) for r in first]
        # the backend's own response, not fastlb's JSON error
        assert all(r.headers.get("x-backend") == "bad" and r.content == b"503 from bad\n" for r in passed)
        b = admin_backend(lb, bad.address)
        assert b["state"] == "ejected" and b["ejected_for_seconds"] > 0, b
        assert 20 <= b["ejected_for_seconds"] <= 30, b
        later = [client.get(lb.url("/b/%d" % i)) for i in range(12)]
    assert all(r.status_code == 200 and r.headers["x-backend"] in ("b1", "b2") for r in later)
    assert len(bad.seen()) == 3  # exactly consecutive_failures, then nothing more


def test_max_ejection_percent_holds_when_every_backend_answers_503(fastlb, raw_servers):
    bad = [raw_servers("bad%d" % i, status503_handler) for i in range(3)]
    doc = doc_with([b.address for b in bad],
                   outlier_detection={"consecutive_failures": 2, "base_ejection_time": "30s"})
    lb = fastlb(doc)
    with httpx.Client(timeout=10.0) as client:
        rs = [client.get(lb.url("/x/%d" % i)) for i in range(12)]
        ejected = [b for b in admin_pool(lb)["backends"] if b["state"] == "ejected"]
        assert len(ejected) == 1, admin_pool(lb)["backends"]  # floor(50% x 3) = 1
        counts = {b.name: len(b.seen()) for b in bad}
        rs += [client.get(lb.url("/y/%d" % i)) for i in range(12)]
    # every response is the backend's own 503 (never fastlb's "no backend available")
    assert all(r.status_code == 503 and r.content == b"503 from %s\n" % r.headers["x-backend"].encode()
               for r in rs), [(r.status_code, r.content) for r in rs]
    states_now = admin_pool(lb)["backends"]
    assert sum(1 for b in states_now if b["state"] == "ejected") == 1, states_now
    assert sum(1 for b in states_now if b["state"] == "up") == 2, states_now
    out = next(b for b in bad if b.address == ejected[0]["address"])
    stay = [b for b in bad if b is not out]
    assert len(out.seen()) == counts[out.name]  # the ejected one got nothing more
    assert all(len(b.seen()) >= counts[b.name] + 5 for b in stay), {b.name: len(b.seen()) for b in bad}


# ---------------------------------------------------------- 5. the retry budget
def _budget_run(lb, clients, per_client):
    """``clients`` threads x ``per_client`` GETs; samples the admin retries.in_flight meanwhile."""
    statuses = []
    lock = threading.Lock()
    stop = threading.Event()
    in_flight = []

    def run():
        with httpx.Client(timeout=10.0) as client:
            for _ in range(per_client):
                r = client.get(lb.url("/"))
                with lock:
                    statuses.append((r.status_code, r.content))

    def sample():
        while not stop.is_set():
            in_flight.append(admin_pool(lb)["retries"]["in_flight"])
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    threads = [threading.Thread(target=run, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    stop.set()
    sampler.join(10)
    assert not any(t.is_alive() for t in threads)
    return statuses, in_flight


def test_retry_budget_exhausted_refuses_retries_with_502(fastlb, backends):
    refusing = "127.0.0.1:%d" % free_port()
    for b in backends[:2]:
        b.delay = 0.03  # a retry holds its budget slot while the other backend answers
    doc = doc_with([b.address for b in backends[:2]] + [refusing], outlier_detection=False,
                   retry_budget={"percent": 0, "min_concurrent": 1})
    lb = fastlb(doc)
    statuses, in_flight = _budget_run(lb, clients=12, per_client=30)
    pool = admin_pool(lb)
    refused = pool["retries"]["budget_refused"]
    codes = [s for s, _ in statuses]
    assert len(codes) == 360
    assert set(codes) <= {200, 502}, set(codes)
    assert refused > 0 and codes.count(502) == refused, (refused, codes.count(502))
    assert all(b"connect to %s failed" % refusing.encode() in body for s, body in statuses if s == 502)
    assert max(in_flight) <= 1, max(in_flight)  # never more than min_concurrent retries at once
    ref = next(b for b in pool["backends"] if b["address"] == refusing)
    # every connection attempt at the refusing backend was either retried or refused by the budget
    assert ref["requests_total"] == ref["failures_total"] == pool["retries"]["total"]["connect_failed"] + refused
    assert pool["retries"]["in_flight"] == 0


def test_retry_budget_default_no_client_error_with_one_of_three_refusing(fastlb, backends):
    refusing = "127.0.0.1:%d" % free_port()
    for b in backends[:2]:
        b.delay = 0.01
    doc = doc_with([b.address for b in backends[:2]] + [refusing], outlier_detection=False)
    lb = fastlb(doc)
    # default budget: 20% of active requests, at least 3 retries in flight: 3 clients never exceed it
    statuses, in_flight = _budget_run(lb, clients=3, per_client=60)
    pool = admin_pool(lb)
    assert [s for s, _ in statuses] == [200] * 180
    assert pool["retries"]["budget"] == {"percent": 20, "min_concurrent": 3}
    assert pool["retries"]["budget_refused"] == 0
    ref = next(b for b in pool["backends"] if b["address"] == refusing)
    assert pool["retries"]["total"]["connect_failed"] == ref["failures_total"] == ref["requests_total"] >= 30
    assert max(in_flight) <= 3


# ------------------------------------------------------ 6. retries after a reset
def test_reset_retries_get_not_post_unless_allowed_and_never_a_large_body(fastlb, backends, raw_servers):
    rst = raw_servers("rst", reset_handler)
    good = backends[:2]
    addrs = [b.address for b in good] + [rst.address]

    def good_seen(target):
        return sum(1 for b in good for r in b.requests if r.target == target)

    def rst_seen(target):
        return sum(1 for r in rst.seen() if r["target"] == target)

    lb = fastlb(doc_with(addrs, outlier_detection=False, timeouts={"response": "1s"}))
    with httpx.Client(timeout=10.0) as client:
        gets = {"/g?i=%d" % i: client.get(lb.url("/g?i=%d" % i)) for i in range(9)}
        posts = {}
        for i in range(9):
            t = "/echo?p=%d" % i
            posts[t] = client.post(lb.url(t), content=b"small body %d" % i)
    lb2 = fastlb(doc_with(addrs, outlier_detection=False, retry_non_idempotent=True, timeouts={"response": "1s"}))
    big = 100 * 1024  # > RETRY_BODY_LIMIT (64 KiB): not held, so not resendable
    with httpx.Client(timeout=10.0) as client:
        posts2 = {}
        for i in range(9):
            t = "/echo?q=%d" % i
            posts2[t] = client.post(lb2.url(t), content=b"retry me %d" % i)
        bigs = {}
        for i in range(9):
            t = "/sink?big=%d" % i
            bigs[t] = client.post(lb2.url(t), content=b"B" * big)

    # GET: the reset backend saw it once, another backend once more (the retry)
    get_hit = [t for t in gets if rst_seen(t)]
    assert len(get_hit) >= 2, rst.seen()
    for t in gets:
        assert rst_seen(t) <= 1 and good_seen(t) == 1, t
    # POST (default): reset after the request was read: not idempotent, not sent again
    post_hit = [t for t in posts if rst_seen(t)]
    assert len(post_hit) >= 2, rst.seen()
    for t, r in posts.items():
        if t in post_hit:
            assert r.status_code == 502 and r.json()["error"].startswith("backend reset"), (t, r.content)
            assert rst_seen(t) == 1 and good_seen(t) == 0, t
        else:
            assert r.status_code == 200 and r.content == b"small body %s" % t[-1].encode(), (t, r.content)
    # POST with retry_non_idempotent: sent again, once
    post2_hit = [t for t in posts2 if rst_seen(t)]
    assert len(post2_hit) >= 2, rst.seen()
    for t in posts2:
        assert rst_seen(t) <= 1 and good_seen(t) == 1, t
    # a body over 64 KiB is not held: 502, never resent (not a byte at the other backends)
    big_hit = [t for t in bigs if rst_seen(t)]
    assert len(big_hit) >= 2, rst.seen()
    for t, r in bigs.items():
        if t in big_hit:
            assert r.status_code == 502, (t, r.status_code)
            assert [x["body_len"] for x in rst.seen() if x["target"] == t] == [big]  # sent once, whole
            assert good_seen(t) == 0, t
        else:
            assert r.status_code == 200 and r.json()["received"] == big, (t, r.content)
    # the retried GET / POST reaches the other backend over an idle pooled connection: its
    # response is relayed (once it was dropped, and the client got a 504)
    for t, r in gets.items():
        assert r.status_code == 200 and r.headers["x-backend"] in ("b1", "b2"), (t, r.status_code)
    for t, r in posts2.items():
        assert r.status_code == 200 and r.content == b"retry me %s" % t[-1].encode(), (t, r.status_code)


# --------------------------------------- 7. consistent hashing with checks on
def test_consistent_hash_with_checks_moves_only_the_stopped_backends_keys(fastlb):
    servers = [BackendServer(name="b%d" % (i + 1), record=False).start() for i in range(3)]
    try:
        args = ["run", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--algorithm", "consistent_hash",
                "--hash-key", "header:X-Key", "--health-path", "/", "--health-interval", "0.5"]
        for s in servers:
            args += ["--backend", s.address]
        lb = fastlb(args=args)
        addrs = [s.address for s in servers]
        wait_states(lb, {a: "up" for a in addrs}, pool="default")
        keys = ["key-%d" % i for i in range(200)]

        def mapping():
            out = {}
            with httpx.Client(timeout=10.0) as client:
                for k in keys:
                    r = client.get(lb.url("/"), headers={"X-Key": k})
                    assert r.status_code == 200, (k, r.status_code)
                    out[k] = r.headers["x-backend"]
            return out

        before = mapping()
        assert set(before.values()) == {"b1", "b2", "b3"}
        victim = servers[1]
        port = victim.port
        victim.stop()
        # fall 3 (default) x 0.5 s, probe timeout 0.5 s
        wait_states(lb, {victim.address: "down"}, timeout=3 * 0.55 + 0.5 + MARGIN, pool="default")
        during = mapping()
        moved = {k for k in keys if during[k] != before[k]}
        assert moved == {k for k in keys if before[k] == "b2"}, "keys of other backends moved"
        assert "b2" not in during.values()
        servers[1] = BackendServer(name="b2", port=port, record=False).start()
        wait_states(lb, {servers[1].address: "up"}, timeout=2 * 0.55 + 0.5 + MARGIN, pool="default")
        after = mapping()
        assert after == before  # its keys came back to it, the others never moved
    finally:
        for s in servers:
            s.stop()


# ----------------------------------------------------------- 8. admin drain
def _open_pooled(srv):
    """The backend's open connections that carried a proxied request (probes excluded)."""
    return [c for c in srv.connections if not c.closed and c.requests
            and c.requests[0].header("user-agent") != PROBE_UA]


def test_drain_finishes_in_flight_sends_nothing_new_closes_idle_then_undrain(fastlb, backends):
    doc = doc_with([b.address for b in backends], timeouts={"upstream_idle": "30s"},
                   health_check={"path": "/", "interval": 0.2, "timeout": 0.2, "rise": 2, "fall": 2})
    lb = fastlb(doc)
    addrs = [b.address for b in backends]
    wait_states(lb, {a: "up" for a in addrs})
    b1 = backends[0]

    def burst(n, path="/"):
        out = [None] * n

        def one(i):
            with httpx.Client(timeout=10.0) as c:
                out[i] = c.get(lb.url(path))

        ts = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(15)
        return out

    burst(9, "/slow?delay=0.3")  # 9 at once: several pooled idle connections to every backend
    assert wait_for(lambda: len(_open_pooled(b1)) >= 3, 2), b1.connections
    assert admin_backend(lb, b1.address)["idle_connections"] >= 3
    slow_results = [None] * 3

    def slow(i):
        with httpx.Client(timeout=15.0) as c:
            slow_results[i] = c.get(lb.url("/slow?delay=3"))

    slow_threads = [threading.Thread(target=slow, args=(i,)) for i in range(3)]
    for t in slow_threads:
        t.start()
    # round robin: one slow request on each backend
    assert wait_for(lambda: all(any(r.target == "/slow?delay=3" for r in b.requests) for b in backends), 5)
    assert len(_open_pooled(b1)) >= 3  # the one serving /slow and idle ones
    r = admin_post(lb, b1.address, "drain")
    assert r.status_code == 200 and r.json()["state"] == "draining", r.content
    # its idle pooled connections are closed at once; the one serving /slow stays
    assert wait_for(lambda: len(_open_pooled(b1)) == 1, 2), _open_pooled(b1)
    def proxied(srv):
        return [r for r in srv.requests if r.header("user-agent") != PROBE_UA]

    n_b1 = len(proxied(b1))
    quick = [httpx.get(lb.url("/q/%d" % i), timeout=10) for i in range(12)]
    assert all(q.status_code == 200 and q.headers["x-backend"] in ("b2", "b3") for q in quick)
    assert admin_backend(lb, b1.address)["in_flight"] == 1  # its slow request still runs meanwhile
    for t in slow_threads:
        t.join(15)
    assert all(x is not None and x.status_code == 200 for x in slow_results), slow_results
    assert sorted(x.headers["x-backend"] for x in slow_results) == ["b1", "b2", "b3"]  # it finished
    assert len(proxied(b1)) == n_b1  # nothing new went to it
    assert admin_backend(lb, b1.address)["state"] == "draining"
    # the connection of the request that finished while draining is closed, not pooled
    gone = wait_for(lambda: not _open_pooled(b1) and admin_backend(lb, b1.address)["idle_connections"] == 0, 2)
    drained = admin_backend(lb, b1.address)

    r = admin_post(lb, b1.address, "undrain")
    assert r.status_code == 200 and r.json()["state"] == "checking", r.content  # needs a passing check
    wait_states(lb, {b1.address: "up"}, timeout=0.2 * 1.1 + 0.2 + MARGIN)
    trans = admin_backend(lb, b1.address)["transitions"]
    assert [(t["from"], t["to"]) for t in trans[:2]] == [("checking", "up"), ("draining", "checking")], trans
    again = [httpx.get(lb.url("/again/%d" % i), timeout=10) for i in range(9)]
    assert all(a.status_code == 200 for a in again)
    assert any(a.headers["x-backend"] == "b1" for a in again)
    assert gone, "draining backend kept pooled connections: %r" % drained


# ------------------------------------- 9. no traffic before a first passing check
def test_no_traffic_before_a_first_passing_check(fastlb, backends, raw_servers):
    # its health path fails from the start, but slowly (0.8 s, under the 0.9 s probe timeout):
    # for that long after the start fastlb does not know yet, and must still send it nothing
    bad = raw_servers("bad", slow503_handler)
    good = backends[:2]
    doc = doc_with([b.address for b in good] + [bad.address],
                   health_check={"path": "/", "interval": 1.0, "timeout": 0.9, "rise": 2, "fall": 1})
    lb = fastlb(doc)
    load = Load(lb.url("/"), clients=4, rate=50, max_requests=400, max_seconds=2.5).start()
    rows = load.wait()
    assert len(rows) >= 100, len(rows)
    assert {r[2] for r in rows} <= {200, 503}, {r[2] for r in rows}
    late = [r for r in rows if r[0] > rows[0][0] + 1.5]
    assert late and all(r[2] == 200 and r[3] in ("b1", "b2") for r in late), late[:5]
    assert len(bad.seen(probes=True)) >= 1  # it was checked, and failed
    assert bad.seen() == [], bad.seen()[:5]  # and never got a client request
    assert admin_backend(lb, bad.address)["state"] == "down"
    for b in good:  # a good backend's first request was a probe: no traffic before it passed
        reqs = b.requests
        assert reqs and reqs[0].header("user-agent") == PROBE_UA, reqs[:2]
        assert any(r.header("user-agent") != PROBE_UA for r in reqs)
    # a 503 from fastlb itself (no usable backend yet) is its JSON error, never a backend's
    assert all(r[3] is None for r in rows if r[2] == 503)


# ---------------------------------------------------------- 10. no fd leak
def test_no_fd_leak_after_a_run_with_failures(fastlb, backends, raw_servers):
    hang = raw_servers("hang", hang_handler)
    rst = raw_servers("rst", reset_handler)
    refusing = "127.0.0.1:%d" % free_port()
    addrs = [b.address for b in backends[:2]] + [hang.address, rst.address, refusing]
    doc = doc_with(addrs, timeouts={"response": "0.6s", "upstream_idle": "1s"}, per_try_timeout="0.3s",
                   outlier_detection=False, retry_budget={"percent": 100, "min_concurrent": 10})
    lb = fastlb(doc)
    pid = lb.proc.pid
    with httpx.Client(timeout=10.0) as c:
        for i in range(10):
            c.get(lb.url("/warm"))
    time.sleep(0.3)

    def settled():
        pool = admin_pool(lb)
        return all(b["connections_open"] == 0 and b["in_flight"] == 0 for b in pool["backends"]) and pool

    assert wait_for(settled, 1.0 + 1.0 + MARGIN, 0.1)  # upstream_idle 1 s + a tick
    baseline = min(fd_count(pid) for _ in range(5) if time.sleep(0.1) is None)

    codes = []
    lock = threading.Lock()

    def run(k):
        with httpx.Client(timeout=10.0) as client:
            for i in range(30):
                try:
                    if i % 3 == 2:
                        r = client.post(lb.url("/echo?c=%d&i=%d" % (k, i)), content=b"p" * 100)
                    else:
                        r = client.get(lb.url("/?c=%d&i=%d" % (k, i)))
                    code = r.status_code
                except httpx.HTTPError as exc:
                    code = repr(exc)
                with lock:
                    codes.append(code)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(codes) == 120
    assert set(codes) <= {200, 502, 504}, set(codes)
    assert codes.count(200) >= 60 and (502 in codes or 504 in codes), codes  # failures did happen
    assert len(hang.seen()) > 0 and len(rst.seen()) > 0
    pool = wait_for(settled, 1.0 + 1.0 + MARGIN, 0.1)
    assert pool, admin_pool(lb)["backends"]
    assert pool["retries"]["in_flight"] == 0 and all(b["idle_connections"] == 0 for b in pool["backends"])
    assert wait_for(lambda: fd_count(pid) <= baseline, 5), (fd_count(pid), baseline, os.listdir("/proc/%d/fd" % pid))
