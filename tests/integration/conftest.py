"""Fixtures for integration tests: real backends (tests/support/backend.py) behind a
real fastlb process (python -m fastlb), on 127.0.0.1 only."""

import socket

import pytest

from tests.support.backend import BackendServer
from tests.support.fastlb_proc import FastlbProcess

FAST_TIMEOUTS = {
    "client_header": "2s",
    "client_idle": "5s",
    "connect": "2s",
    "response": "5s",
    "upstream_idle": "30s",
    "drain": "10s",
}


@pytest.fixture
def backends():
    started = []
    try:
        for i in range(3):
            started.append(BackendServer(name="b%d" % (i + 1)).start())
        yield started
    finally:
        for b in started:
            b.stop()


def free_port():
    """A port nothing listens on (bound then released): connecting to it is refused."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def pool_doc(backends, weights=None, timeouts=None, limits=None, admin=False, retries=None, extra_backends=()):
    entries = []
    for i, b in enumerate(backends):
        entries.append({"address": b.address if hasattr(b, "address") else b, "weight": (weights or {}).get(i, 1)})
    entries.extend({"address": a} for a in extra_backends)
    pool = {"algorithm": "round_robin", "backends": entries}
    if retries is not None:
        pool["retries"] = retries
    doc = {
        "listeners": [{"name": "main", "bind": "127.0.0.1:0", "pool": "p"}],
        "pools": {"p": pool},
        "timeouts": dict(FAST_TIMEOUTS, **(timeouts or {})),
    }
    if limits:
        doc["limits"] = limits
    if admin:
        doc["admin"] = {"bind": "127.0.0.1:0"}
    return doc


@pytest.fixture
def fastlb(tmp_path):
    """Factory: fastlb(doc) -> a started FastlbProcess; all are stopped at teardown."""
    procs = []

    def start(doc=None, args=None, env=None):
        proc = FastlbProcess(tmp_path, doc=doc, args=args, env=env).start()
        procs.append(proc)
        return proc

    yield start
    for p in procs:
        p.kill()
