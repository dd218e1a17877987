"""Request-smuggling corpora of other projects, through a real fastlb, checked at the backend.

For each case (../shared/corpora, see its README): the payload goes on a raw
socket, followed by a normal ``GET /canary`` on the same connection. The
backend records the raw bytes of every upstream connection. We assert:

- what reached the backend parses cleanly under a strict independent parser
  (h11), and no forwarded request carries both Content-Length and
  Transfer-Encoding;
- the backend's complete requests match one to one the backend responses the
  client got (nothing hidden inside another request);
- cases the corpus says must be rejected (desync-guardian tier ``Severe``;
  Http11Probe "400 or close"-style expectations) get a 4xx or a close, and no
  complete request of them reaches the backend.

A chunked body that turns out malformed after its valid head was streamed is
cut off: the backend sees an incomplete request on an aborted connection,
never a complete one (docs/http-parsing.md).
"""

import json
import re

import h11
import pytest

from tests.conftest import CORPORA, REQUIRE_CORPORA
from tests.integration.conftest import pool_doc
from tests.support.backend import BackendServer
from tests.support.fastlb_proc import FastlbProcess, recv_until_closed

pytestmark = pytest.mark.skipif(not CORPORA.exists(), reason="../shared/corpora not found beside the checkout")

CANARY = b"GET /canary HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"

# Http11Probe expectations that leave no room for acceptance.
MUST_REJECT = {
    "400", "400 or close", "400, or connection close", "400 or connection close", "400/501 or close",
    "400, 431, or close", "400, close, or timeout", "400/close/timeout", "400/505, close, or timeout",
    "400, 414, 431, or close", "400, 505, or close", "400, 405, 501, or close",
}


def _load(name):
    path = CORPORA / name
    if not path.exists():
        if REQUIRE_CORPORA:
            raise FileNotFoundError("FASTLB_REQUIRE_CORPORA=1 but %s is missing" % path)
        return []
    return json.loads(path.read_text())


def _with_host(raw):
    """desync-guardian payloads often omit Host; add one so the case tests what it names
    (an HTTP/1.1 request without Host is rejected anyway, which would prove nothing)."""
    head, sep, rest = raw.partition(b"\r\n")
    if not sep or re.search(rb"(?im)^host\s*:", raw.split(b"\r\n\r\n", 1)[0]):
        return raw
    return head + b"\r\nHost: h" + sep + rest


def _cases():
    out = []
    for c in _load("http_desync_guardian_cases.json"):
        raw = _with_host(c["raw_headers_only"].encode("latin-1"))
        out.append(pytest.param(raw, c["tier"] == "Severe", id=c["id"]))
    probe = _load("http11probe_cases.json")
    for c in (probe["cases"] if probe else []):
        if c["category"] not in ("Smuggling", "Malformed Input") or c.get("placeholders") or "raw" not in c:
            continue  # multi-step or generated cases carry no single raw payload
        try:
            raw = c["raw"].encode("latin-1")
        except UnicodeEncodeError:
            continue  # a description ("zero bytes ..."), not wire bytes
        out.append(pytest.param(raw, c["expected"] in MUST_REJECT, id=c["id"]))
    return out


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    backend = BackendServer(name="sm").start()
    doc = pool_doc([backend], timeouts={"client_header": "1s", "client_idle": "1s"},
                   limits={"max_idle_per_backend": 0})
    proc = FastlbProcess(tmp_path_factory.mktemp("smuggling"), doc=doc).start()
    yield backend, proc
    proc.kill()
    backend.stop()


def client_view(data):
    """(first status or None, number of responses that came from the backend).

    Responses are counted by the backend's own ``X-Backend`` header line rather than
    parsed, since the client side of a smuggling case may itself be ambiguous
    (e.g. a HEAD whose response carries a Content-Length).
    """
    first = int(data[9:12]) if re.match(rb"HTTP/1\.[01] \d{3}", data) else None
    return first, data.count(b"\r\nX-Backend: ")


def upstream_requests(raw):
    """Complete requests in one upstream connection's raw bytes; raises on any parse error."""
    conn = h11.Connection(h11.SERVER)
    # No EOF is fed: a request cut off by an aborted connection (a body that never
    # completed) is incomplete, not unclean, and is not counted.
    conn.receive_data(bytes(raw))
    requests = []
    current = None
    while True:
        ev = conn.next_event()  # raises RemoteProtocolError on anything unclean
        if ev is h11.NEED_DATA or ev is h11.PAUSED or isinstance(ev, h11.ConnectionClosed):
            if ev is h11.PAUSED:
                # a complete request; answer it so the next one can be parsed
                conn.send(h11.Response(status_code=200, headers=[("Content-Length", "0")]))
                conn.send(h11.EndOfMessage())
                conn.start_next_cycle()
                continue
            return requests
        if isinstance(ev, h11.Request):
            current = ev
        elif isinstance(ev, h11.EndOfMessage):
            requests.append(current)


@pytest.mark.parametrize("payload, must_reject", _cases())
def test_smuggling_case_through_proxy(rig, payload, must_reject):
    backend, proc = rig
    backend.reset()
    s = proc.connect()
    try:
        s.sendall(payload)
        try:
            s.sendall(CANARY)
        except OSError:
            pass  # already rejected and closed
        data = recv_until_closed(s, timeout=4)
    finally:
        s.close()
    first_status, from_backend = client_view(data)
    # Let the backend finish recording what it got before we read it.
    backend.wait_until(lambda b: all(c.closed for c in b.connections), timeout=3)
    seen = []
    for conn in backend.connections:
        try:
            reqs = upstream_requests(conn.raw)
        except h11.RemoteProtocolError as exc:  # pragma: no cover - the failure we guard against
            pytest.fail("upstream bytes do not parse cleanly (%s): %r" % (exc, bytes(conn.raw[:300])))
        for r in reqs:
            names = {n.lower() for n, _ in r.headers}
            assert not {b"content-length", b"transfer-encoding"} <= names, "CL and TE forwarded together"
        seen.extend(reqs)
    assert len(seen) == from_backend, (data[:500], seen)
    if must_reject:
        assert not seen, "a must-reject payload reached the backend: %r" % (seen,)
        # a 4xx, or 501/505 for codings/versions it does not implement, or just a close
        assert first_status is None or 400 <= first_status < 500 or first_status in (501, 505), data[:300]
