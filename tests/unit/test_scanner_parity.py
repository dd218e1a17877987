"""Parity: the compiled scanner and its pure-Python twin agree on everything.

For arbitrary bytes and for mutated, structurally plausible messages (built from parts,
then bytes injected, replaced or deleted), fed whole and in random splits, both twins must
return the same values, the same facts, the same headers() and rebuilt heads, or raise
ScanError with the same status *and* reason. The whole-vs-split comparison also checks
the split invariance the scanner documents. Bounded: ~300 examples per property.
"""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastlb._core._scanerror import ScanError
from tests.conftest import load_twin

SETTINGS = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

REQ_FACTS = ("method", "target", "http_minor", "host", "content_length", "chunked", "keep_alive",
             "upgrade", "expect_continue", "request_id", "header_count")
RESP_FACTS = ("status", "http_minor", "content_length", "chunked", "keep_alive", "upgrade", "header_count")


def _twins():
    return load_twin("scanner", "python"), load_twin("scanner", "cython")


# ---------------------------------------------------------------------------
# drivers: everything observable, as plain data
# ---------------------------------------------------------------------------

def run_heads(mod, kind, pieces, limits, ip, extra, keep_upgrade):
    """Feed pieces into one growing buffer; after each head, record its facts and
    outputs, remove it and keep scanning what follows (pipelining). Returns the trace."""
    cls = mod.RequestScanner if kind == "request" else mod.ResponseScanner
    facts = REQ_FACTS if kind == "request" else RESP_FACTS
    sc = cls(**limits)
    buf = bytearray()
    trace = []
    for piece in pieces:
        buf += piece
        while True:
            try:
                n = sc.scan(buf)
            except ScanError as exc:
                trace.append(("error", exc.status, exc.reason))
                return trace
            if not n:
                break
            record = [n] + [getattr(sc, f) for f in facts] + [sc.headers(buf)]
            if kind == "request":
                record.append(sc.build_upstream_head(buf, ip, extra, keep_upgrade))
            else:
                record.append(sc.build_downstream_head(buf, extra, keep_upgrade))
            trace.append(tuple(record))
            del buf[:n]
    trace.append(("pending", len(buf)))
    return trace


def run_chunked(mod, pieces, limits):
    dec = mod.ChunkedDecoder(**limits)
    trace = []
    for piece in pieces:
        try:
            out = dec.feed(piece)
        except ScanError as exc:
            trace.append(("error", exc.status, exc.reason))
            return trace
        trace.append((out, dec.done, dec.leftover))
        if dec.done:
            break
    return trace


def cut(raw, points):
    points = sorted({p for p in points if 0 < p < len(raw)})
    bounds = [0] + points + [len(raw)]
    return [raw[a:b] for a, b in zip(bounds, bounds[1:])]


def final_heads(trace):
    """What a split must not change: the heads found and the final verdict."""
    return [t for t in trace if t[0] != "pending"], trace[-1][0]


# ---------------------------------------------------------------------------
# strategies
# ---------------------------------------------------------------------------

INJECT = [b"\r", b"\n", b"\r\n", b" ", b"\t", b"\x00", b":", b",", b";", b"\x7f", b"\x80", b"\xff",
          b"\x0b", b"\r\n ", b"\r\n\r\n", b"=", b'"', b"\\", b"0", b"f", b"-", b"[", b"@", b"/"]


@st.composite
def mutated(draw, base):
    raw = bytearray(draw(base))
    for _ in range(draw(st.integers(0, 3))):
        if not raw:
            raw += draw(st.sampled_from(INJECT))
            continue
        pos = draw(st.integers(0, len(raw)))
        op = draw(st.sampled_from(("insert", "replace", "delete")))
        piece = draw(st.sampled_from(INJECT))
        if op == "insert":
            raw[pos:pos] = piece
        elif op == "replace":
            raw[pos : pos + len(piece)] = piece
        else:
            del raw[pos : pos + draw(st.integers(1, 3))]
    return bytes(raw)


EOL = st.sampled_from([b"\r\n"] * 12 + [b"\n", b"\r", b"\r\r\n", b" \r\n"])
NAMES = st.sampled_from([
    b"Host", b"host", b"Content-Length", b"content-length", b"Transfer-Encoding", b"Connection",
    b"Expect", b"Upgrade", b"X-Request-ID", b"Keep-Alive", b"Proxy-Connection", b"TE", b"Trailer",
    b"X-Forwarded-For", b"X-Forwarded-Proto", b"X-A", b"x-a", b"Close", b"Content-Length ",
    b" Host", b"X_A", b"\xe9",
])
VALUES = st.sampled_from([
    b"", b"h", b"api.example.com:8080", b"[::1]:80", b"a b", b"u@h", b"0", b"5", b"007",
    b"9223372036854775807", b"9223372036854775808", b"-1", b"1,1", b"1, 1", b"chunked", b"Chunked",
    b"gzip, chunked", b"chunked, gzip", b"chunked, chunked", b", chunked", b"identity", b"close",
    b"keep-alive", b"Upgrade", b"X-A, close", b"keep-alive, X-A, Host, Content-Length", b"100-continue",
    b"100-Continue", b"200-ok", b"websocket", b"1.1.1.1", b" 2.2.2.2 , 3.3.3.3", b"\t x \t", b"caf\xc3\xa9",
    b"a\x00b", b"a\tb", b"a\rb",
]) | st.binary(max_size=8)
OWS = st.sampled_from([b"", b" ", b" ", b"\t", b"  \t"])


@st.composite
def fields(draw):
    out = b""
    for _ in range(draw(st.integers(0, 6))):
        out += draw(NAMES) + b":" + draw(OWS) + draw(VALUES) + draw(OWS) + draw(EOL)
    return out


@st.composite
def requests(draw):
    method = draw(st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"CONNECT", b"HEAD",
                                   b"PATCH", b"get", b"M-SEARCH", b"G@T", b""]))
    target = draw(st.sampled_from([b"/", b"/a?b=c#d", b"*", b"http://x.example/y", b"HTTP://X.example", b"x:443",
                                   b"foo", b"/\x80", b"/a b", b"", b"1a:b", b"http://u@x.example?q", b"http:x",
                                   b"http://@x.example", b"http://a@b@x.example/", b"http:///", b"urn:a"]))
    version = draw(st.sampled_from([b"HTTP/1.1"] * 6 + [b"HTTP/1.0"] * 3 + [
        b"HTTP/1.2", b"HTTP/2.0", b"HTTP/0.9", b"http/1.1", b"HTTP/1.1 ", b"HTTP/1", b"HTTP/11.1", b""]))
    lead = draw(st.sampled_from([b"", b"", b"\r\n", b"\r\n\r\n", b"\n"]))
    host = draw(st.sampled_from([b"Host: h\r\n", b"Host: h\r\n", b"", b"Host: h\r\nHost: h\r\n",
                                 b"Host: x.example\r\n", b"Host: X.EXAMPLE\r\n"]))
    tail = draw(st.sampled_from([b"", b"body", b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", b"\r\n"]))
    raw = lead + method + b" " + target + b" " + version + draw(EOL) + host + draw(fields()) + draw(EOL) + tail
    return raw


@st.composite
def responses(draw):
    version = draw(st.sampled_from([b"HTTP/1.1"] * 6 + [b"HTTP/1.0"] * 2 + [b"HTTP/1.2", b"HTTP/2", b"http/1.1", b""]))
    status = draw(st.sampled_from([b"200", b"204", b"101", b"100", b"304", b"599", b"600", b"099", b"20", b"2000", b"abc"]))
    reason = draw(st.sampled_from([b" OK", b" ", b"", b"  Not Found", b" caf\xc3\xa9", b"\tOK", b" a\x00b"]))
    tail = draw(st.sampled_from([b"", b"body", b"HTTP/1.1 200 OK\r\n\r\n"]))
    return version + b" " + status + reason + draw(EOL) + draw(fields()) + draw(EOL) + tail


EXTS = st.sampled_from([b"", b"", b";a", b";a=b", b';a="q \\" ;"', b" ;a", b";", b"; a = b", b";a=", b'"x',
                        b";a b", b";a=b ", b" "])


@st.composite
def chunked_bodies(draw):
    out = b""
    for _ in range(draw(st.integers(0, 3))):
        data = draw(st.binary(max_size=12))
        size = draw(st.sampled_from(["%x", "%X", "00%x", "%x0", "+%x", "0x%x", " %x"]))
        try:
            size_b = (size % len(data)).encode()
        except TypeError:
            size_b = b"0"
        out += size_b + draw(EXTS) + draw(EOL) + data + draw(EOL)
    out += draw(st.sampled_from([b"0", b"000", b"0", b""])) + draw(EXTS) + draw(EOL)
    for _ in range(draw(st.integers(0, 2))):
        out += draw(NAMES) + b":" + draw(OWS) + draw(VALUES) + draw(EOL)
    out += draw(EOL) + draw(st.sampled_from([b"", b"NEXT", b"\r\n"]))
    return out


LIMITS = st.sampled_from([
    {},
    {},
    dict(max_line=16, max_head=64, max_fields=2),
    dict(max_line=40, max_head=4096, max_fields=100),
    dict(max_line=8192, max_head=48, max_fields=100),
    dict(max_line=24, max_head=24, max_fields=0),
])
CHUNK_LIMITS = st.sampled_from([{}, {}, dict(max_line=4, max_trailer=8), dict(max_line=16, max_trailer=64)])
IPS = st.sampled_from([b"10.0.0.1", b"", b"::1"])
EXTRAS = st.sampled_from([b"", b"X-Forwarded-Proto: https\r\n"])


def _check_heads(kind, raw, data):
    py, cy = _twins()
    limits = data.draw(LIMITS, label="limits")
    ip = data.draw(IPS, label="ip")
    extra = data.draw(EXTRAS, label="extra")
    keep_upgrade = data.draw(st.booleans(), label="keep_upgrade")
    whole_py = run_heads(py, kind, [raw], limits, ip, extra, keep_upgrade)
    whole_cy = run_heads(cy, kind, [raw], limits, ip, extra, keep_upgrade)
    assert whole_py == whole_cy
    points = data.draw(st.lists(st.integers(0, len(raw)), max_size=8), label="cuts")
    pieces = cut(raw, points)
    split_py = run_heads(py, kind, pieces, limits, ip, extra, keep_upgrade)
    split_cy = run_heads(cy, kind, pieces, limits, ip, extra, keep_upgrade)
    assert split_py == split_cy
    # a head-by-head scan of the same bytes ends the same however they were split
    assert final_heads(split_py) == final_heads(whole_py)


@SETTINGS
@given(raw=st.binary(max_size=200), data=st.data())
def test_request_parity_arbitrary_bytes(raw, data):
    _check_heads("request", raw, data)


@SETTINGS
@given(raw=mutated(requests()), data=st.data())
def test_request_parity_mutated(raw, data):
    _check_heads("request", raw, data)


@SETTINGS
@given(raw=st.one_of(st.binary(max_size=120), mutated(responses())), data=st.data())
def test_response_parity(raw, data):
    _check_heads("response", raw, data)


@SETTINGS
@given(body=st.one_of(st.binary(max_size=60), mutated(chunked_bodies())), data=st.data())
def test_chunked_parity(body, data):
    py, cy = _twins()
    limits = data.draw(CHUNK_LIMITS, label="limits")
    assert run_chunked(py, [body], limits) == run_chunked(cy, [body], limits)
    points = data.draw(st.lists(st.integers(0, len(body)), max_size=10), label="cuts")
    pieces = cut(body, points)
    split_py = run_chunked(py, pieces, limits)
    assert split_py == run_chunked(cy, pieces, limits)
    # split invariance: same verdict as whole, and the same payload when no error (a
    # feed that raises returns nothing, so with an error the payload depends on the cuts)
    whole = run_chunked(py, [body], limits)
    assert _verdict(split_py) == _verdict(whole)
    if _verdict(whole)[0] != "error":
        assert _payload(split_py) == _payload(whole)


def _payload(trace):
    return b"".join(t[0] for t in trace if t[0] != "error")


def _verdict(trace):
    if trace and trace[-1][0] == "error":
        return trace[-1]
    return ("done",) if trace and trace[-1][1] else ("incomplete",)


@pytest.mark.parametrize("kind", ["request", "response"])
def test_every_single_byte_at_every_position(kind):
    """Exhaustive over one small message: each byte value replacing each position."""
    py, cy = _twins()
    base = (b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\n" if kind == "request"
            else b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n")
    for pos in range(len(base)):
        for value in range(256):
            raw = base[:pos] + bytes((value,)) + base[pos + 1 :]
            assert run_heads(py, kind, [raw], {}, b"1.2.3.4", b"", False) == \
                run_heads(cy, kind, [raw], {}, b"1.2.3.4", b"", False), (pos, value)


@SETTINGS
@given(host=st.one_of(
    st.binary(max_size=12),
    st.lists(st.sampled_from([b"[", b"]", b":", b"%", b"a", b"0", b"-", b".", b"@", b"/", b",", b" ",
                              b"!", b"~", b"_", b"\x80", b"::1", b"80"]), max_size=8).map(b"".join),
))
def test_host_value_parity(host):
    py, cy = _twins()
    for target in (b"/", b"http://x/"):
        raw = b"GET " + target + b" HTTP/1.1\r\nHost: " + host + b"\r\n\r\n"
        assert run_heads(py, "request", [raw], {}, b"", b"", False) == \
            run_heads(cy, "request", [raw], {}, b"", b"", False)


def test_every_single_byte_in_a_chunked_body():
    py, cy = _twins()
    base = b'5;a="b"\r\nhello\r\n0\r\nT: v\r\n\r\n'
    for pos in range(len(base)):
        for value in range(256):
            body = base[:pos] + bytes((value,)) + base[pos + 1 :]
            assert run_chunked(py, [body], {}) == run_chunked(cy, [body], {}), (pos, value)
