"""The sans-IO exchange (fastlb/http1.py), without sockets, on both twins of the core.

Each test feeds an Exchange what a proxy would (scanner facts, body bytes split at
arbitrary points, the backend's end of stream) and checks what comes out: the
bytes for each side, and the verdicts (complete / cut / refused, reuse, keep).
Hypothesis varies the split points and the order of events.
"""

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from fastlb import http1
from fastlb.http1 import (
    COMPLETE, CUT, M_CHUNKED, M_CLOSE, M_LENGTH, M_NONE, OPEN, R_BODY, R_HEAD, REFUSED, Exchange,
    accepted_upgrade, error_response, response_body_mode, upgrade_offer,
)
from tests.conftest import load_twin


@pytest.fixture
def core(twin, monkeypatch):
    """The scanner kernel of one twin; the exchange uses that twin's ChunkedDecoder.
    (Stateless, so sharing it across hypothesis examples is safe.)"""
    mod = load_twin("scanner", twin)
    monkeypatch.setattr(http1, "ChunkedDecoder", mod.ChunkedDecoder)
    return mod


def request(core, raw):
    sc = core.RequestScanner()
    n = sc.scan(raw)
    assert n, raw
    ex = Exchange(sc.method, sc.target, sc.http_minor, sc.keep_alive, None, b"rid", sc.chunked, sc.content_length)
    return ex, raw[n:]


def split(data, cuts):
    points = sorted({c % (len(data) + 1) for c in cuts}) if data else []
    out, last = [], 0
    for p in points:
        out.append(data[last:p])
        last = p
    out.append(data[last:])
    return [c for c in out if c]


def feed_request(ex, pieces):
    up = b""
    for piece in pieces:
        assert not ex.req_done
        up += ex.request_body(piece)
    return up


def respond(core, ex, raw_pieces, draining=False):
    """Feed the backend's bytes as they would arrive; returns the client's bytes."""
    rsc = core.ResponseScanner()
    rbuf = bytearray()
    down = b""
    ex.rstate = R_HEAD
    for piece in raw_pieces:
        if ex.rstate == R_HEAD:
            rbuf += piece
            n = rsc.scan(rbuf)
            if n:
                down += ex.response_head(rsc, rbuf, n, draining)
        elif ex.rstate == R_BODY:
            down += ex.response_body(piece)
        else:
            break
    return down


# --------------------------------------------------------------- RFC 9112 §6.3
@pytest.mark.parametrize("is_head, status, chunked, length, mode", [
    (True, 200, False, 10, M_NONE),
    (False, 204, False, 10, M_NONE),
    (False, 304, True, -1, M_NONE),
    (False, 103, False, -1, M_NONE),
    (False, 200, True, -1, M_CHUNKED),
    (False, 200, False, 0, M_LENGTH),
    (False, 500, False, 12, M_LENGTH),
    (False, 200, False, -1, M_CLOSE),
])
def test_response_body_mode(is_head, status, chunked, length, mode):
    assert response_body_mode(is_head, status, chunked, length) == mode


# ------------------------------------------------------------------ request body
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=300), nxt=st.binary(max_size=40), cuts=st.lists(st.integers(0, 400), max_size=8))
def test_content_length_body_and_pipelined_rest_at_any_split(core, body, nxt, cuts):
    raw = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % len(body)
    ex, _ = request(core, raw)
    assert ex.req_done == (len(body) == 0)
    if not body:
        return
    stream = body + nxt
    up = b""
    for piece in split(stream, cuts):
        if ex.req_done:
            break
        up += ex.request_body(piece)
    assert ex.req_done
    assert up == body
    got_rest = (ex.rest or b"")
    consumed = len(up)
    # whatever followed the body in the piece that completed it is kept for the next request
    assert stream[consumed:].startswith(got_rest)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunks=st.lists(st.binary(min_size=1, max_size=50), max_size=5), nxt=st.binary(max_size=20),
       cuts=st.lists(st.integers(0, 400), max_size=8))
def test_chunked_request_body_is_reframed_at_any_split(core, chunks, nxt, cuts):
    raw = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    ex, _ = request(core, raw)
    wire = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    stream = wire + nxt
    up = b""
    for piece in split(stream, cuts):
        if ex.req_done:
            break
        up += ex.request_body(piece)
    assert ex.req_done
    # re-framed: the same payload, a valid chunked stream ending in the last chunk
    dec = core.ChunkedDecoder()
    payload = dec.feed(up)
    assert dec.done and dec.leftover == 0
    assert payload == b"".join(chunks)
    assert up.endswith(b"0\r\n\r\n")


def test_invalid_chunked_request_body_raises(core):
    ex, _ = request(core, b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
    with pytest.raises(core.ScanError):
        ex.request_body(b"zz\r\n")


# ---------------------------------------------------------------------- response
GET11 = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"
GET10 = b"GET / HTTP/1.0\r\n\r\n"


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=300), trailing=st.booleans(), cuts=st.lists(st.integers(0, 500), max_size=8))
def test_length_response_complete_exactly_once_at_any_split(core, body, trailing, cuts):
    ex, _ = request(core, GET11)
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body + (b"X" if trailing else b"")
    pieces = split(raw, cuts)
    down = respond(core, ex, pieces)
    assert ex.outcome == COMPLETE
    assert down.endswith(body) and b"Content-Length: %d" % len(body) in down
    # bytes after the response in the same read: never reuse. (Bytes in a later read
    # reach an idle pooled connection, which upstream.py closes on sight.)
    same_read = trailing and pieces[-1].endswith(b"X") and len(pieces[-1]) > 1
    assert ex.reuse_upstream() == (not same_read)
    assert ex.keep_client(False)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunks=st.lists(st.binary(min_size=1, max_size=40), max_size=5), cuts=st.lists(st.integers(0, 500), max_size=8))
def test_chunked_response_reframed_for_http11(core, chunks, cuts):
    ex, _ = request(core, GET11)
    raw = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
           + b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n")
    down = respond(core, ex, split(raw, cuts))
    assert ex.outcome == COMPLETE and ex.reuse_upstream()
    head, _, body = down.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head
    dec = core.ChunkedDecoder()
    assert dec.feed(body) == b"".join(chunks) and dec.done


def test_close_delimited_response_completes_only_on_a_clean_close(core):
    for clean, outcome in ((True, COMPLETE), (False, CUT)):
        ex, _ = request(core, GET11)
        down = respond(core, ex, [b"HTTP/1.1 200 OK\r\n\r\n", b"part"])
        assert ex.outcome == OPEN and ex.rechunk
        end = ex.upstream_closed(clean)
        assert ex.outcome == outcome
        if clean:
            assert end == b"0\r\n\r\n"
        else:  # cut: nothing may make the client take the truncated body as whole
            assert end == b"" and not (down + end).endswith(b"0\r\n\r\n")
        # the backend closed: never reused; the HTTP/1.1 client is kept only after a clean end
        # (the re-chunked body ended properly), never after a cut
        assert not ex.reuse_upstream()
        assert ex.keep_client(False) is clean
        assert not ex.keep_client(True)  # draining


def test_close_delimited_for_http10_client_closes_the_client(core):
    ex, _ = request(core, GET10)
    down = respond(core, ex, [b"HTTP/1.1 200 OK\r\n\r\nbody"])
    assert b"Connection: close" in down and down.endswith(b"body") and not ex.rechunk
    assert ex.upstream_closed(True) == b""
    assert ex.outcome == COMPLETE and not ex.keep_client(False)


def test_response_cut_mid_length_body_is_cut_not_complete(core):
    ex, _ = request(core, GET11)
    respond(core, ex, [b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"])
    ex.upstream_closed(True)  # a FIN before the length is reached is still a cut
    assert ex.outcome == CUT


def test_failure_before_a_response_is_refused_with_its_status(core):
    ex, _ = request(core, GET11)
    assert ex.fail(504) == REFUSED and ex.status == 504
    assert ex.keep_client(False) and not ex.keep_client(True)  # draining closes
    ex, _ = request(core, GET11)
    respond(core, ex, [b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab"])
    assert ex.fail(504) == CUT


def test_head_request_and_204_304_have_no_body(core):
    ex, _ = request(core, b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n")
    down = respond(core, ex, [b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"])
    assert ex.outcome == COMPLETE and down.endswith(b"\r\n\r\n") and ex.reuse_upstream()
    for status in (204, 304):
        ex, _ = request(core, GET11)
        respond(core, ex, [b"HTTP/1.1 %d X\r\n\r\n" % status])
        assert ex.outcome == COMPLETE


def test_early_response_before_the_request_body_ended_closes_both(core):
    ex, _ = request(core, b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\n")
    ex.request_body(b"x" * 10)
    down = respond(core, ex, [b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n"])
    assert b"Connection: close" in down and ex.outcome == COMPLETE
    assert not ex.reuse_upstream() and not ex.keep_client(False)


def test_keep_alive_tables(core):
    # RFC 9112 §9.3: the client's close, the backend's close, draining
    for req, resp, keep, reuse in [
        (GET11, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", True, True),
        (b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
         False, True),
        (GET11, b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", True, False),
        (GET10, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", False, True),
        (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
         True, True),
    ]:
        ex, _ = request(core, req)
        respond(core, ex, [resp])
        assert (ex.keep_client(False), ex.reuse_upstream()) == (keep, reuse), (req, resp)
    ex, _ = request(core, GET11)
    down = respond(core, ex, [b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"], draining=True)
    assert b"Connection: close" in down and not ex.keep_client(True)


events = st.lists(st.sampled_from(["data", "fin", "reset"]), min_size=1, max_size=12)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mode=st.sampled_from(["length", "chunked", "close"]), body=st.binary(min_size=1, max_size=60),
       order=events, cuts=st.lists(st.integers(0, 200), max_size=6))
def test_any_event_order_never_frames_a_truncated_body_as_complete(core, mode, body, order, cuts):
    """Whatever the order of data, FIN and reset, an exchange ends COMPLETE only when
    the client got the whole body correctly framed; otherwise it is CUT (the proxy
    resets the client) or still OPEN."""
    ex, _ = request(core, GET11)
    if mode == "length":
        raw = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    elif mode == "chunked":
        raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    else:
        raw = b"HTTP/1.1 200 OK\r\n\r\n" + body
    pieces = split(raw, cuts)
    rsc = core.ResponseScanner()
    rbuf = bytearray()
    down = b""
    ex.rstate = R_HEAD
    fed = b""
    for event in order:
        if ex.outcome != OPEN:
            break
        if event == "data":
            if not pieces:
                continue
            piece = pieces.pop(0)
            fed += piece
            if ex.rstate == R_HEAD:
                rbuf += piece
                n = rsc.scan(rbuf)
                if n:
                    down += ex.response_head(rsc, rbuf, n, False)
            else:
                down += ex.response_body(piece)
        else:
            down += ex.upstream_closed(event == "fin")
    if ex.outcome == COMPLETE:
        head, _, got = down.partition(b"\r\n\r\n")
        if mode == "length":
            assert got == body
        else:
            # chunked: the whole body; close-delimited: what arrived before the FIN
            expected = body if mode == "chunked" else fed.partition(b"\r\n\r\n")[2]
            dec = core.ChunkedDecoder()
            assert dec.feed(got) == expected and dec.done
    elif ex.outcome == CUT:
        head, _, got = down.partition(b"\r\n\r\n")
        if mode == "length":
            assert len(got) < len(body)
        else:  # no terminator: a chunked reader sees an incomplete body
            dec = core.ChunkedDecoder()
            dec.feed(got)
            assert not dec.done
    elif ex.outcome == REFUSED:
        assert down == b"" and ex.status == 502


# -------------------------------------------------------------- generated responses
def test_error_response_to_head_has_no_body():
    body = b'{"error": "x"}\n'
    get = error_response(404, b"Not Found", body, b"r1", False, False)
    head = error_response(404, b"Not Found", body, b"r1", True, True)
    assert get.endswith(body) and b"Content-Length: %d" % len(body) in get
    assert head.endswith(b"\r\n\r\n") and body not in head and b"Connection: close" in head
    assert head.split(b"\r\n")[:4] == get.split(b"\r\n")[:4]  # same head as GET (RFC 9110 §9.3.2)


# ------------------------------------------------------------------------- upgrade
def test_upgrade_offer_keeps_only_allowed_protocols():
    allowed = frozenset((b"websocket",))
    assert upgrade_offer(b"h2c", allowed) is None
    assert upgrade_offer(b"WebSocket", allowed) == b"WebSocket"
    assert upgrade_offer(b"h2c, websocket/13 , foo", allowed) == b"websocket/13"
    assert upgrade_offer(b"", allowed) is None
    assert accepted_upgrade(b"websocket", b"WebSocket")
    assert not accepted_upgrade(b"h2c", b"websocket")
    assert not accepted_upgrade(None, b"websocket")
