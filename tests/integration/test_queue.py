"""Per-backend capacity, the pool's queue and panic mode, through a real fastlb.

A backend at ``max_in_flight`` (or ``max_connections``) is skipped by selection;
when every usable backend is full the request waits in the pool's FIFO queue for
up to ``queue_timeout``; a full queue or an expired wait is a 503 with
Retry-After. Counted at the backend (its open connections, the requests it saw)
and through the admin API.
"""

import json
import os
import socket
import threading
import time

import httpx
import pytest

from tests.integration.conftest import pool_doc


def _lb(fastlb, backends, **pool):
    doc = pool_doc(backends, admin=True)
    doc["pools"]["p"].update(pool)
    return fastlb(doc)


def _pool_state(proc):
    return httpx.get("http://127.0.0.1:%d/api/v1/pools/p" % proc.admin_port, timeout=5).json()


def _get_all(proc, paths, stagger=0.0, timeout=15):
    """One request per path, each on its own connection, started ``stagger`` s apart;
    returns [(status, headers, body, seconds)] in start order."""
    out = [None] * len(paths)

    def one(i, path):
        t = time.monotonic()
        try:
            r = httpx.get(proc.url(path), timeout=timeout)
            out[i] = (r.status_code, r.headers, r.content, time.monotonic() - t)
        except Exception as exc:  # asserted by the caller
            out[i] = ("error", repr(exc), b"", time.monotonic() - t)

    threads = []
    for i, path in enumerate(paths):
        t = threading.Thread(target=one, args=(i, path), daemon=True)
        t.start()
        threads.append(t)
        if stagger:
            time.sleep(stagger)
    for t in threads:
        t.join(timeout + 5)
    return out


class Peak:
    """Polls a value in a thread and keeps its maximum (bounded in time)."""

    def __init__(self, fn, interval=0.005):
        self.fn = fn
        self.max = 0
        self.stop = threading.Event()
        self.interval = interval
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        end = time.monotonic() + 30
        while not self.stop.is_set() and time.monotonic() < end:
            self.max = max(self.max, self.fn())
            time.sleep(self.interval)

    def done(self):
        self.stop.set()
        self.thread.join(5)
        return self.max


def _assert_503_retry_after(result, why):
    status, headers, body, _ = result
    assert status == 503, result
    assert headers["retry-after"] == "1", headers
    err = json.loads(body)
    assert why in err["error"] and err["request_id"] == headers["x-request-id"], err


def test_full_backend_queues_then_503_with_retry_after(fastlb, backends):
    b = backends[0]
    proc = _lb(fastlb, [b], max_in_flight=2, queue_size=3, queue_timeout="1s")
    peak = Peak(lambda: b.open_connection_count)
    # 7 requests that each hold the backend 2.5 s: 2 run, 3 wait and time out, 2 find the queue full
    results = _get_all(proc, ["/slow?delay=2.5"] * 7, stagger=0.05)
    assert peak.done() <= 2, "the backend had more than max_in_flight requests at once"
    statuses = [r[0] for r in results]
    assert statuses.count(200) == 2, results
    full = [r for r in results if r[0] == 503 and r[3] < 0.9]
    waited = [r for r in results if r[0] == 503 and r[3] >= 0.9]
    assert len(full) == 2 and len(waited) == 3, [(r[0], round(r[3], 2)) for r in results]
    for r in full:
        _assert_503_retry_after(r, "queue is full")
    for r in waited:
        _assert_503_retry_after(r, "within the queue timeout")
        assert r[3] < 2.4, "a queued request waited past queue_timeout until a backend freed up"
    assert b.request_count == 2  # the refused ones never reached it
    state = _pool_state(proc)
    q = state["queue"]
    wait = q.pop("wait_seconds_total")
    assert q == {"size": 3, "timeout": 1.0, "waiting": 0, "queued_total": 3, "full_total": 2,
                 "timeouts_total": 3}, q
    assert 3 * 0.9 <= wait < 3 * 2.4, wait  # three requests waited about a queue timeout each
    assert state["unavailable_total"] == 0  # a full pool is not an unavailable one


def test_queued_requests_are_served_in_arrival_order_when_capacity_frees(fastlb, backends):
    b = backends[0]
    proc = _lb(fastlb, [b], max_in_flight=1, queue_size=10, queue_timeout="10s")
    paths = ["/slow?delay=0.3&n=%d" % i for i in range(5)]
    results = _get_all(proc, paths, stagger=0.1)
    assert [r[0] for r in results] == [200] * 5, results
    # one at a time, in the order the clients asked
    assert [r.query.get("n") for r in b.requests] == [str(i) for i in range(5)]
    assert len({r.conn for r in b.requests}) == 1  # one connection, reused: never more than 1 open
    assert _pool_state(proc)["queue"]["queued_total"] == 4


def test_max_connections_bounds_upstream_sockets(fastlb, backends):
    b = backends[0]
    proc = _lb(fastlb, [b], max_connections=3, queue_size=50, queue_timeout="10s")
    pid = proc.proc.pid
    assert httpx.get(proc.url("/"), timeout=5).status_code == 200
    time.sleep(0.2)
    fds_before = len(os.listdir("/proc/%d/fd" % pid))
    peak = Peak(lambda: b.open_connection_count)
    results = _get_all(proc, ["/slow?delay=0.2"] * 12 + ["/"] * 12)
    assert peak.done() <= 3, "more than max_connections sockets open at the backend"
    assert [r[0] for r in results] == [200] * 24, [r[:2] for r in results if r[0] != 200]
    assert b.connection_count <= 3, b.connections  # reused, never more than 3 made
    state = _pool_state(proc)
    assert state["backends"][0]["connections_open"] <= 3
    # no descriptor leak once the clients are gone
    deadline = time.monotonic() + 5
    while len(os.listdir("/proc/%d/fd" % pid)) > fds_before + 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(os.listdir("/proc/%d/fd" % pid)) <= fds_before + 2


def test_per_backend_override_and_spill_to_the_other_backend(fastlb, backends):
    b1, b2 = backends[:2]
    doc = pool_doc([b1, b2], admin=True)
    doc["pools"]["p"]["backends"][0]["max_in_flight"] = 1  # b1 takes one at a time, b2 unlimited
    doc["pools"]["p"]["queue_size"] = 0
    proc = fastlb(doc)
    peak = Peak(lambda: b1.open_connection_count)
    results = _get_all(proc, ["/slow?delay=0.5"] * 6, stagger=0.02)
    assert peak.done() <= 1
    assert [r[0] for r in results] == [200] * 6  # never full overall: nothing queued or refused
    assert b1.request_count == 1 and b2.request_count == 5, (b1.request_count, b2.request_count)


def test_client_gone_while_queued_leaves_the_queue_and_never_reaches_a_backend(fastlb, backends):
    b = backends[0]
    proc = _lb(fastlb, [b], max_in_flight=1, queue_size=5, queue_timeout="10s")
    holder = threading.Thread(target=lambda: httpx.get(proc.url("/slow?delay=1.5"), timeout=10), daemon=True)
    holder.start()
    assert b.wait_until(lambda srv: srv.request_count == 1, timeout=5)
    s = socket.create_connection(("127.0.0.1", proc.port), timeout=5)
    s.sendall(b"GET /queued-then-gone HTTP/1.1\r\nHost: h\r\n\r\n")
    deadline = time.monotonic() + 5
    while _pool_state(proc)["queue"]["waiting"] != 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _pool_state(proc)["queue"]["waiting"] == 1
    s.close()
    deadline = time.monotonic() + 5
    while _pool_state(proc)["queue"]["waiting"] != 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _pool_state(proc)["queue"]["waiting"] == 0
    holder.join(10)
    # the freed slot serves the next request; the abandoned one never went upstream
    assert httpx.get(proc.url("/after"), timeout=5).status_code == 200
    assert [r.path for r in b.requests] == ["/slow", "/after"]


@pytest.mark.parametrize("panic", [False, True])
def test_panic_tries_every_backend_when_none_is_healthy(fastlb, backends, panic):
    # every backend fails its check (the path answers 500) but serves requests
    proc = _lb(fastlb, backends[:2], panic=panic,
               health_check={"path": "/status?code=500", "interval": "100ms", "timeout": "100ms", "fall": 1})
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        states = [b["state"] for b in _pool_state(proc)["backends"]]
        if states == ["down", "down"]:
            break
        time.sleep(0.05)
    assert states == ["down", "down"], states
    r = httpx.get(proc.url("/work"), timeout=5)
    if panic:
        assert r.status_code == 200 and r.headers["x-backend"] in ("b1", "b2")
        assert _pool_state(proc)["panic_total"] == 1
    else:
        assert r.status_code == 503
        assert _pool_state(proc)["unavailable_total"] == 1
        assert all(b.request_count == 0 or all(q.path == "/status" for q in b.requests) for b in backends[:2])
