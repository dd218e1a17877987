"""Unit tests for the head scanners (fastlb._core.scanner and its pure twin).

Every test runs on both twins (``twin`` fixture). Every verdict is checked three ways:
the head fed whole, byte by byte, and in seeded random splits, since a split must never
change the outcome (see the invariants in scanner_py.py).
"""

import os
import random

import pytest

from fastlb._core._scanerror import ScanError
from tests.conftest import load_twin


@pytest.fixture
def mod(twin):
    return load_twin("scanner", twin)


REQ_FACTS = (
    "method",
    "target",
    "http_minor",
    "host",
    "content_length",
    "chunked",
    "keep_alive",
    "upgrade",
    "expect_continue",
    "request_id",
    "traceparent",
    "header_count",
)
RESP_FACTS = ("status", "http_minor", "content_length", "chunked", "keep_alive", "upgrade", "header_count")


def _facts(scanner, names):
    return {name: getattr(scanner, name) for name in names}


def _feed(scanner, raw, chunks):
    """Append the pieces to one bytearray, scanning after each; return the outcome."""
    buf = bytearray()
    for piece in chunks:
        buf += piece
        try:
            n = scanner.scan(buf)
        except ScanError as exc:
            return ("error", exc.status, exc.reason)
        if n:
            return ("ok", n)
    return ("incomplete",)


def _splits(raw, seed):
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(raw)), min(len(raw) - 1, rng.randint(1, 6)))) if len(raw) > 1 else []
    bounds = [0] + cuts + [len(raw)]
    return [raw[a:b] for a, b in zip(bounds, bounds[1:])]


def outcomes(cls, raw, **limits):
    """(whole, byte-by-byte, three random splits) outcomes with their facts."""
    names = REQ_FACTS if cls.__name__ == "RequestScanner" else RESP_FACTS
    results = []
    feeds = [[raw], [raw[i : i + 1] for i in range(len(raw))]]
    feeds += [_splits(raw, seed) for seed in (1, 2, 3)]
    for chunks in feeds:
        scanner = cls(**limits)
        result = _feed(scanner, raw, chunks)
        if result[0] == "ok":
            result = result + (_facts(scanner, names),)
        results.append(result)
    return results


def scan_ok(cls, raw, **limits):
    """Scan raw (every way), assert it is accepted identically; return (n, scanner)."""
    results = outcomes(cls, raw, **limits)
    assert results[0][0] == "ok", results[0]
    assert all(r == results[0] for r in results), results
    scanner = cls(**limits)
    n = scanner.scan(raw)
    return n, scanner


def scan_error(cls, raw, **limits):
    """Assert raw is rejected the same way however it is split; return (status, reason)."""
    results = outcomes(cls, raw, **limits)
    assert results[0][0] == "error", results[0]
    assert all(r == results[0] for r in results), results
    return results[0][1], results[0][2]


def scan_incomplete(cls, raw, **limits):
    results = outcomes(cls, raw, **limits)
    assert all(r == ("incomplete",) for r in results), results


# ---------------------------------------------------------------------------
# valid requests
# ---------------------------------------------------------------------------

VALID_REQUESTS = [
    (
        b"GET /users/42?expand=roles HTTP/1.1\r\nHost: api.example.com\r\nAccept: application/json\r\n\r\n",
        dict(method=b"GET", target=b"/users/42?expand=roles", http_minor=1, host=b"api.example.com",
             content_length=-1, chunked=False, keep_alive=True, upgrade=False, expect_continue=False,
             request_id=None, header_count=2),
    ),
    (
        b"POST /orders HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\nContent-Length: 17\r\n"
        b"X-Request-ID: req-1\r\n\r\n",
        dict(method=b"POST", target=b"/orders", content_length=17, request_id=b"req-1", header_count=4),
    ),
    (
        b"PUT /files/a.txt HTTP/1.1\r\nHost: files\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n",
        dict(method=b"PUT", chunked=True, content_length=-1, expect_continue=True),
    ),
    (
        b"DELETE /items/7 HTTP/1.1\r\nHost: h:8080\r\nConnection: close\r\n\r\n",
        dict(method=b"DELETE", host=b"h:8080", keep_alive=False),
    ),
    (
        b"PATCH /a HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
        dict(method=b"PATCH", content_length=0),
    ),
    (b"HEAD / HTTP/1.0\r\n\r\n", dict(method=b"HEAD", http_minor=0, host=b"", keep_alive=False)),
    (b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", dict(http_minor=0, keep_alive=True)),
    (b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n", dict(keep_alive=False)),
    (b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n", dict(method=b"OPTIONS", target=b"*")),
    # absolute-form: Host must equal the target's authority (RFC 9112 §3.2), any case;
    # the absolute-form authority stands in for a missing Host (RFC 9112 §3.2.2)
    (b"GET http://example.com/x?y HTTP/1.1\r\nHost: example.com\r\n\r\n", dict(target=b"http://example.com/x?y")),
    (b"GET HTTPS://Example.COM:8443?q HTTP/1.1\r\nHost: example.com:8443\r\n\r\n", dict(host=b"example.com:8443")),
    (b"GET http://example.com:8080/ HTTP/1.0\r\n\r\n", dict(host=b"example.com:8080", http_minor=0)),
    (b"CONNECT db.internal:5432 HTTP/1.1\r\nHost: db.internal:5432\r\n\r\n",
     dict(method=b"CONNECT", target=b"db.internal:5432")),
    # any token is a method (RFC 9110 §9.1); case matters but lowercase is still a token
    (b"get / HTTP/1.1\r\nHost: h\r\n\r\n", dict(method=b"get")),
    (b"M-SEARCH / HTTP/1.1\r\nHost: h\r\n\r\n", dict(method=b"M-SEARCH")),
    # the target may use every visible ASCII octet
    (b"GET /a%20b/\"q\"/{x}|^`\\~ HTTP/1.1\r\nHost: h\r\n\r\n", dict(target=b"/a%20b/\"q\"/{x}|^`\\~")),
    # OWS around values, HTAB in values, obs-text, empty values, names as sent
    (b"GET / HTTP/1.1\r\nhOsT: \t h \t\r\nX-Empty:\r\nX-Tab: a\tb\r\nX-Obs: caf\xc3\xa9\xff\r\n\r\n",
     dict(host=b"h", header_count=4)),
    # Content-Length: leading zeros, OWS, the largest value
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: \t0005 \r\n\r\n", dict(content_length=5)),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 9223372036854775807\r\n\r\n",
     dict(content_length=9223372036854775807)),
    # Transfer-Encoding matched case-insensitively, OWS allowed
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:  Chunked \r\n\r\n", dict(chunked=True)),
    # upgrade: needs the Connection option and the field, HTTP/1.1 only (RFC 9110 §7.8)
    (b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", dict(upgrade=True)),
    (b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n", dict(upgrade=False)),
    (b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\n\r\n", dict(upgrade=False)),
    (b"GET /ws HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n", dict(upgrade=False)),
    # Expect: case-insensitive; ignored in HTTP/1.0 (RFC 9110 §10.1.1)
    (b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n", dict(expect_continue=True)),
    (b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n", dict(expect_continue=False)),
    # X-Request-ID: the first one wins, empty allowed
    (b"GET / HTTP/1.1\r\nHost: h\r\nx-request-id: a\r\nX-Request-Id: b\r\n\r\n", dict(request_id=b"a")),
    (b"GET / HTTP/1.1\r\nHost: h\r\nX-Request-ID:\r\n\r\n", dict(request_id=b"")),
    # Host forms (RFC 9110 §7.2 / RFC 3986 §3.2.2)
    (b"GET / HTTP/1.1\r\nHost: [2001:db8::1]:8443\r\n\r\n", dict(host=b"[2001:db8::1]:8443")),
    (b"GET / HTTP/1.1\r\nHost: 10.0.0.1\r\n\r\n", dict(host=b"10.0.0.1")),
    (b"GET / HTTP/1.1\r\nHost: example.com:\r\n\r\n", dict(host=b"example.com:")),
    (b"GET / HTTP/1.1\r\nHost: xn--caf-dma.example_1~x%41\r\n\r\n", dict(host=b"xn--caf-dma.example_1~x%41")),
]


@pytest.mark.parametrize("raw,expected", VALID_REQUESTS)
def test_valid_requests(mod, raw, expected):
    n, sc = scan_ok(mod.RequestScanner, raw)
    assert n == len(raw)
    for name, value in expected.items():
        assert getattr(sc, name) == value, name


def test_full_facts_of_a_simple_get(mod):
    raw = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"
    n, sc = scan_ok(mod.RequestScanner, raw)
    assert _facts(sc, REQ_FACTS) == dict(
        method=b"GET", target=b"/", http_minor=1, host=b"h", content_length=-1, chunked=False,
        keep_alive=True, upgrade=False, expect_continue=False, request_id=None, traceparent=None, header_count=1,
    )
    assert isinstance(sc.method, bytes) and isinstance(sc.target, bytes) and isinstance(sc.host, bytes)


def test_leading_empty_lines_are_skipped_and_counted(mod):
    # RFC 9112 §2.2: a server SHOULD ignore at least one empty line before the request-line
    raw = b"\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n"
    n, sc = scan_ok(mod.RequestScanner, raw)
    assert n == len(raw)
    assert sc.method == b"GET"
    assert sc.headers(raw) == [(b"Host", b"h")]
    # a bare LF is not an empty line
    assert scan_error(mod.RequestScanner, b"\nGET / HTTP/1.1\r\nHost: h\r\n\r\n")[0] == 400
    # only empty lines may come first
    assert scan_error(mod.RequestScanner, b" \r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n")[0] == 400


def test_pipelined_data_after_the_head(mod):
    first = b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\n"
    second = b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n"
    buf = bytearray(first + b"abc" + second)
    sc = mod.RequestScanner()
    assert sc.scan(buf) == len(first)
    assert (sc.target, sc.content_length) == (b"/a", 3)
    del buf[: len(first) + 3]
    assert sc.scan(buf) == len(second)
    assert (sc.target, sc.content_length) == (b"/b", -1)


def test_garbage_after_the_head_is_not_looked_at(mod):
    raw = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n\x00\x01 not http"
    sc = mod.RequestScanner()
    assert sc.scan(raw) == raw.index(b"\r\n\r\n") + 4


def test_incomplete_heads(mod):
    for raw in (b"", b"G", b"GET / HTTP/1.1", b"GET / HTTP/1.1\r", b"GET / HTTP/1.1\r\n",
                b"GET / HTTP/1.1\r\nHost: h\r\n", b"GET / HTTP/1.1\r\nHost: h\r\n\r", b"\r\n\r\n",
                b"GET / HTTP/1.1\r\nX-Bad: \x00 but no LF yet"):
        scan_incomplete(mod.RequestScanner, raw)


def test_memoryview_and_bytes_subclass_buffers(mod):
    raw = b"GET /m HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n\r\n"
    sc = mod.RequestScanner()
    assert sc.scan(memoryview(raw)) == len(raw)
    assert sc.target == b"/m"
    assert sc.headers(memoryview(raw)) == [(b"Host", b"h"), (b"X-A", b"1")]
    assert sc.build_upstream_head(memoryview(raw), b"", b"", False) == b"GET /m HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n\r\n"

    class B(bytes):
        pass

    assert sc.scan(B(raw)) == len(raw)


def test_reset_forgets_partial_state(mod):
    sc = mod.RequestScanner()
    assert sc.scan(b"GET /partial HTTP/1.1\r\nHost: h\r\n") == 0
    sc.reset()
    raw = b"POST /other HTTP/1.1\r\nHost: h\r\n\r\n"
    assert sc.scan(raw) == len(raw)
    assert sc.target == b"/other"


def test_a_shrunk_buffer_restarts_the_search(mod):
    sc = mod.RequestScanner()
    assert sc.scan(b"GET /a HTTP/1.1\r\nHost: h\r\nX-Long: aaaa") == 0
    raw = b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n"
    assert sc.scan(raw) == len(raw)
    assert sc.target == b"/b"


def test_scanner_is_reusable_after_an_error(mod):
    sc = mod.RequestScanner()
    with pytest.raises(ScanError):
        sc.scan(b"GET / HTTP/1.1\r\nHost : h\r\n\r\n")
    raw = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"
    assert sc.scan(raw) == len(raw)


def test_outputs_need_a_complete_head(mod):
    sc = mod.RequestScanner()
    with pytest.raises(RuntimeError):
        sc.headers(b"")
    assert sc.scan(b"GET / HTTP/1.1\r\n") == 0
    with pytest.raises(RuntimeError):
        sc.build_upstream_head(b"GET / HTTP/1.1\r\n", b"", b"", False)
    raw = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"
    assert sc.scan(raw)
    with pytest.raises(ValueError):
        sc.headers(raw[:5])


def test_invalid_limits(mod):
    for cls in (mod.RequestScanner, mod.ResponseScanner):
        with pytest.raises(ValueError):
            cls(max_line=0)
        with pytest.raises(ValueError):
            cls(max_head=0)


def test_compiled_twin_is_compiled(twin):
    module = load_twin("scanner", twin)
    if twin == "cython":
        assert not module.__file__.endswith(".py"), module.__file__
        assert module.ScanError is ScanError
    else:
        assert module.__file__.endswith("scanner_py.py")


# ---------------------------------------------------------------------------
# rejected requests
# ---------------------------------------------------------------------------

H = b"Host: h\r\n"

REJECTED_REQUESTS = [
    # request-line (RFC 9112 §3)
    ("double SP", b"GET  / HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("HTAB separator", b"GET\t/ HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("leading SP", b" GET / HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("trailing SP", b"GET / HTTP/1.1 \r\n" + H + b"\r\n", 400),
    ("SP in target", b"GET /a b HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("bad method char", b"G@T / HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("empty method", b" / HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("NUL in target", b"GET /\x00 HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("DEL in target", b"GET /\x7f HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("HTAB in target", b"GET /a\tb HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("non-ASCII target", b"GET /caf\xc3\xa9 HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("HTTP/0.9", b"GET /\r\n\r\n", 400),
    ("missing target", b"GET HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("lowercase version", b"GET / http/1.1\r\n" + H + b"\r\n", 400),
    ("version missing minor", b"GET / HTTP/1\r\n" + H + b"\r\n", 400),
    ("version leading zero", b"GET / HTTP/01.1\r\n" + H + b"\r\n", 400),
    ("version two-digit minor", b"GET / HTTP/1.10\r\n" + H + b"\r\n", 400),
    ("version with SP", b"GET / HTTP/ 1.1\r\n" + H + b"\r\n", 400),
    ("garbage version", b"GET / HTTX/1.1\r\n" + H + b"\r\n", 400),
    ("HTTP/1.2", b"GET / HTTP/1.2\r\n" + H + b"\r\n", 505),
    ("HTTP/2.0", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
    ("HTTP/0.9 spelled out", b"GET / HTTP/0.9\r\n" + H + b"\r\n", 505),
    ("HTTP/9.9", b"GET / HTTP/9.9\r\n" + H + b"\r\n", 505),
    ("asterisk without OPTIONS", b"GET * HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("relative target", b"GET foo HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("scheme starting with digit", b"GET 1http://x/ HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("bare CR after request-line", b"GET / HTTP/1.1\r" + H + b"\r\n", 400),
    ("bare LF after request-line", b"GET / HTTP/1.1\n" + H + b"\r\n", 400),
    # field lines (RFC 9112 §5, RFC 9110 §5.5)
    ("SP before colon", b"GET / HTTP/1.1\r\nHost : h\r\n\r\n", 400),
    ("HTAB before colon", b"GET / HTTP/1.1\r\n" + H + b"X-A\t: 1\r\n\r\n", 400),
    ("obs-fold", b"GET / HTTP/1.1\r\n" + H + b"X-A: 1\r\n 2\r\n\r\n", 400),
    ("obs-fold with HTAB", b"GET / HTTP/1.1\r\n" + H + b"X-A: 1\r\n\t2\r\n\r\n", 400),
    ("whitespace before first field", b"GET / HTTP/1.1\r\n Host: h\r\n\r\n", 400),
    ("whitespace-only line", b"GET / HTTP/1.1\r\n" + H + b" \r\n\r\n", 400),
    ("empty field name", b"GET / HTTP/1.1\r\n" + H + b": x\r\n\r\n", 400),
    ("no colon", b"GET / HTTP/1.1\r\n" + H + b"NoColon\r\n\r\n", 400),
    ("bad name char", b"GET / HTTP/1.1\r\n" + H + b"Fo@: x\r\n\r\n", 400),
    ("bracket in name", b"GET / HTTP/1.1\r\n" + H + b"Bad[Name: x\r\n\r\n", 400),
    ("non-ASCII name", b"GET / HTTP/1.1\r\n" + H + b"X-T\xc3\xabst: x\r\n\r\n", 400),
    ("NUL in name", b"GET / HTTP/1.1\r\n" + H + b"X\x00A: x\r\n\r\n", 400),
    ("NUL in value", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x00b\r\n\r\n", 400),
    ("CTL in value", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x01b\r\n\r\n", 400),
    ("VT in value", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x0bb\r\n\r\n", 400),
    ("FF in value", b"GET / HTTP/1.1\r\n" + H + b"X-A: \x0c\r\n\r\n", 400),
    ("DEL in value", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x7fb\r\n\r\n", 400),
    ("bare CR in value", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\rb\r\n\r\n", 400),
    ("bare CR ends field", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\rX-B: b\r\n\r\n", 400),
    ("bare LF ends field", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\nX-B: b\r\n\r\n", 400),
    ("bare LF ends head", b"GET / HTTP/1.1\r\n" + H + b"\n", 400),
    ("bare CR before empty line", b"GET / HTTP/1.1\r\n" + H + b"\r\r\n", 400),
    ("all bare LF", b"GET / HTTP/1.1\nHost: h\n\n", 400),
    # Content-Length (RFC 9110 §8.6, RFC 9112 §6.3)
    ("CL negative", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: -1\r\n\r\n", 400),
    ("CL plus", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: +5\r\n\r\n", 400),
    ("CL hex", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 0x5\r\n\r\n", 400),
    ("CL inner space", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 1 0\r\n\r\n", 400),
    ("CL list", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5, 5\r\n\r\n", 400),
    ("CL list no space", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5,5\r\n\r\n", 400),
    ("CL empty", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: \r\n\r\n", 400),
    ("CL letters", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: abc\r\n\r\n", 400),
    ("CL underscore", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 1_0\r\n\r\n", 400),
    ("CL decimal", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 1.0\r\n\r\n", 400),
    ("CL 2**63", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 9223372036854775808\r\n\r\n", 400),
    ("CL huge", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 99999999999999999999\r\n\r\n", 400),
    ("CL obs-text", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5\xa0\r\n\r\n", 400),
    ("CL duplicate same", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\n", 400),
    ("CL duplicate different", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5\r\ncontent-length: 6\r\n\r\n", 400),
    ("CL and TE", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    ("TE and CL", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n", 400),
    # Transfer-Encoding (RFC 9112 §6.1, §6.3, §7.1)
    ("TE gzip only", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip\r\n\r\n", 400),
    ("TE identity", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: identity\r\n\r\n", 400),
    ("TE chunked not last", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, gzip\r\n\r\n", 400),
    ("TE chunked twice", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, chunked\r\n\r\n", 400),
    ("TE chunked twice in two fields",
     b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    ("TE chunked then other field",
     b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n", 400),
    ("TE gzip then chunked", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip, chunked\r\n\r\n", 501),
    ("TE gzip then chunked in two fields",
     b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
    ("TE leading comma", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: , chunked\r\n\r\n", 400),
    ("TE trailing comma", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked,\r\n\r\n", 400),
    ("TE empty", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: \r\n\r\n", 400),
    ("TE with parameter", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked;q=1\r\n\r\n", 400),
    ("TE xchunked", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: xchunked\r\n\r\n", 400),
    ("TE chunkedchunked", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunkedchunked\r\n\r\n", 400),
    ("TE obs-text", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: \xa0chunked\r\n\r\n", 400),
    ("TE in HTTP/1.0", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    # Host (RFC 9112 §3.2, RFC 9110 §7.2)
    ("missing Host", b"GET / HTTP/1.1\r\n\r\n", 400),
    ("two Host", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    ("two identical Host", b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n", 400),
    ("empty Host origin-form", b"GET / HTTP/1.1\r\nHost: \r\n\r\n", 400),
    ("empty Host absolute-form", b"GET http://example.com/ HTTP/1.1\r\nHost:\r\n\r\n", 400),
    ("Host differs from absolute-form", b"GET http://admin.internal/ HTTP/1.1\r\nHost: api.example.com\r\n\r\n", 400),
    ("Host with port differs", b"GET http://a:8080/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("absolute-form without authority", b"GET urn:isbn:1 HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("absolute-form empty authority", b"GET http:///x HTTP/1.0\r\n\r\n", 400),
    ("absolute-form two userinfo", b"GET http://a@b@c/ HTTP/1.1\r\nHost: c\r\n\r\n", 400),
    # RFC 9110 §4.2.4: userinfo is treated as an error (it obscures the authority)
    ("absolute-form userinfo", b"GET http://u:p@example.com#f HTTP/1.1\r\nHost: example.com\r\n\r\n", 400),
    ("HTTP/1.0 userinfo without Host", b"GET http://a.example:x@b.internal/p HTTP/1.0\r\n\r\n", 400),
    ("absolute-form bad port", b"GET http://b.internal:x/p HTTP/1.0\r\n\r\n", 400),
    ("empty Host asterisk-form", b"OPTIONS * HTTP/1.1\r\nHost:\r\n\r\n", 400),
    ("empty Host HTTP/1.0", b"GET / HTTP/1.0\r\nHost:\r\n\r\n", 400),
    ("Host with SP", b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
    ("Host list", b"GET / HTTP/1.1\r\nHost: a, b\r\n\r\n", 400),
    ("Host userinfo", b"GET / HTTP/1.1\r\nHost: user@a\r\n\r\n", 400),
    ("Host path", b"GET / HTTP/1.1\r\nHost: a/path\r\n\r\n", 400),
    ("Host bad port", b"GET / HTTP/1.1\r\nHost: a:8x\r\n\r\n", 400),
    ("Host two ports", b"GET / HTTP/1.1\r\nHost: a:1:2\r\n\r\n", 400),
    ("Host port only", b"GET / HTTP/1.1\r\nHost: :80\r\n\r\n", 400),
    ("Host empty brackets", b"GET / HTTP/1.1\r\nHost: []\r\n\r\n", 400),
    ("Host unclosed bracket", b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n", 400),
    ("Host obs-text", b"GET / HTTP/1.1\r\nHost: caf\xc3\xa9\r\n\r\n", 400),
    # Expect (RFC 9110 §10.1.1)
    ("Expect unknown", b"POST / HTTP/1.1\r\n" + H + b"Expect: 200-ok\r\n\r\n", 417),
    ("Expect empty", b"POST / HTTP/1.1\r\n" + H + b"Expect:\r\n\r\n", 417),
    ("Expect list", b"POST / HTTP/1.1\r\n" + H + b"Expect: 100-continue, x\r\n\r\n", 417),
    ("Expect unknown in HTTP/1.0", b"POST / HTTP/1.0\r\nExpect: foo\r\n\r\n", 417),
]


@pytest.mark.parametrize("name,raw,status", REJECTED_REQUESTS, ids=[c[0] for c in REJECTED_REQUESTS])
def test_rejected_requests(mod, name, raw, status):
    assert scan_error(mod.RequestScanner, raw)[0] == status


def test_error_reasons_name_the_rule(mod):
    cases = {
        b"GET / HTTP/1.1\r\nHost : h\r\n\r\n": "whitespace between field name and colon",
        b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n": "obs-fold or line starting with whitespace",
        b"GET / HTTP/1.1\r\nHost: h\nX: 1\r\n\r\n": "bare LF line ending",
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n": "duplicate Content-Length",
        b"GET / HTTP/1.1\r\n\r\n": "missing Host",
    }
    for raw, reason in cases.items():
        assert scan_error(mod.RequestScanner, raw)[1] == reason


# ---------------------------------------------------------------------------
# limits (RFC 9112 §3 -> 414, RFC 6585 §5 -> 431), also on partial input
# ---------------------------------------------------------------------------

def test_request_line_limit(mod):
    line = b"GET /" + b"a" * 95 + b" HTTP/1.1"  # 109 bytes
    raw = line + b"\r\nHost: h\r\n\r\n"
    scan_ok(mod.RequestScanner, raw, max_line=len(line))
    assert scan_error(mod.RequestScanner, raw, max_line=len(line) - 1)[0] == 414


def test_request_line_limit_on_partial_input(mod):
    sc = mod.RequestScanner(max_line=100)
    buf = bytearray(b"GET /")
    assert sc.scan(buf) == 0
    buf += b"a" * 95  # 100 bytes, no CRLF yet: still possible
    assert sc.scan(buf) == 0
    buf += b"\r"  # could be the CR of the CRLF ending a 100-byte line
    assert sc.scan(buf) == 0
    buf += b"a"  # now certainly longer than 100
    with pytest.raises(ScanError) as exc:
        sc.scan(buf)
    assert exc.value.status == 414


def test_request_line_limit_without_any_crlf(mod):
    sc = mod.RequestScanner(max_line=8192)
    with pytest.raises(ScanError) as exc:
        sc.scan(b"GET /" + b"a" * 9000)
    assert exc.value.status == 414


def test_garbage_is_refused_at_its_first_byte(mod):
    # The line-start rule runs before the line is complete: a TLS ClientHello sent to a
    # plaintext port (first byte 0x16) is refused at once instead of waiting for an LF.
    for first in (b"\x16", b"\x00", b"\x80", b" ", b"\t", b"(", b"@"):
        sc = mod.RequestScanner()
        with pytest.raises(ScanError) as exc:
            sc.scan(first)
        assert exc.value.status == 400
    sc = mod.ResponseScanner()
    with pytest.raises(ScanError) as exc:
        sc.scan(b"\x16\x03\x03")
    assert exc.value.status == 502


def test_line_start_rule_on_partial_lines(mod):
    for raw, status in (
        (b"GET / HTTP/1.1\r\nHost: h\r\n Host: x", 400),  # obs-fold, line still open
        (b"GET / HTTP/1.1\r\nHost: h\r\n\tx", 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\n\rX", 400),  # bare CR where the empty line goes
        (b"GET / HTTP/1.1\r\n:x", 400),  # empty field name
        (b"GET / HTTP/1.1\r\n{", 400),
        (b"\r\n\rGET", 400),
        (b"\r\n GET", 400),
    ):
        assert scan_error(mod.RequestScanner, raw)[0] == status, raw
    for raw in (b"GET / HTTP/1.1\r\nHost: h\r\n\r", b"\r", b"\r\n\r", b"GET / HTTP/1.1\r\nX"):
        scan_incomplete(mod.RequestScanner, raw)
    assert scan_error(mod.ResponseScanner, b"HTTP/1.1 200 OK\r\n Host: foo")[0] == 502
    assert scan_error(mod.ResponseScanner, b"\rHTTP/1.1 200 OK")[0] == 502


def test_a_lone_cr_at_the_limit_waits_for_the_next_byte(mod):
    # "\r" may start the CRLF that ends the head (then the head limit decides) or be a
    # bare CR (400): the scanner must not decide before the next byte, or the verdict
    # would depend on how the bytes were split.
    head = b"GET / HTTP/1.1\r\nHost: h\r\n"
    sc = mod.RequestScanner(max_head=len(head))
    assert sc.scan(head + b"\r") == 0
    with pytest.raises(ScanError) as exc:
        sc.scan(head + b"\rX")
    assert exc.value.status == 400
    assert scan_error(mod.RequestScanner, head + b"\r\n", max_head=len(head))[0] == 431


def test_leading_empty_lines_share_the_request_line_budget(mod):
    scan_ok(mod.RequestScanner, b"\r\n" * 10 + b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", max_line=40)
    assert scan_error(mod.RequestScanner, b"\r\n" * 30, max_line=40)[0] == 414


def test_header_section_limit(mod):
    raw = b"GET / HTTP/1.1\r\nHost: h\r\nX-A: " + b"a" * 100 + b"\r\n\r\n"
    scan_ok(mod.RequestScanner, raw, max_head=len(raw))
    assert scan_error(mod.RequestScanner, raw, max_head=len(raw) - 1)[0] == 431


def test_header_section_limit_on_partial_input(mod):
    sc = mod.RequestScanner(max_head=200)
    buf = bytearray(b"GET / HTTP/1.1\r\nHost: h\r\nX-A: ")
    assert sc.scan(buf) == 0
    buf += b"a" * 150
    assert sc.scan(buf) == 0
    buf += b"a" * 100
    with pytest.raises(ScanError) as exc:
        sc.scan(buf)
    assert exc.value.status == 431


def test_endless_fields_hit_the_head_limit(mod):
    sc = mod.RequestScanner(max_head=1000, max_fields=10000)
    buf = bytearray(b"GET / HTTP/1.1\r\nHost: h\r\n")
    with pytest.raises(ScanError) as exc:
        for _ in range(200):
            buf += b"X-A: 1\r\n"
            assert sc.scan(buf) == 0
    assert exc.value.status == 431


def test_field_line_limit(mod):
    field = b"X-A: " + b"a" * 95  # 100 bytes
    raw = b"GET / HTTP/1.1\r\nHost: h\r\n" + field + b"\r\n\r\n"
    scan_ok(mod.RequestScanner, raw, max_line=100)
    assert scan_error(mod.RequestScanner, raw, max_line=99)[0] == 431


def test_field_count_limit(mod):
    fields = b"".join(b"X-%d: v\r\n" % i for i in range(9))
    raw = b"GET / HTTP/1.1\r\nHost: h\r\n" + fields + b"\r\n"
    n, sc = scan_ok(mod.RequestScanner, raw, max_fields=10)
    assert sc.header_count == 10
    assert scan_error(mod.RequestScanner, raw, max_fields=9)[0] == 431


def test_default_limits(mod):
    sc = mod.RequestScanner()
    assert (sc.max_line, sc.max_head, sc.max_fields) == (8192, 65536, 100)
    long_target = b"/" + b"a" * 8000
    scan_ok(mod.RequestScanner, b"GET " + long_target + b" HTTP/1.1\r\nHost: h\r\n\r\n")
    many = b"".join(b"X-%d: v\r\n" % i for i in range(100))
    assert scan_error(mod.RequestScanner, b"GET / HTTP/1.1\r\nHost: h\r\n" + many + b"\r\n")[0] == 431


# ---------------------------------------------------------------------------
# splits: the same verdict however the bytes arrive
# ---------------------------------------------------------------------------

def test_random_splits_agree_with_whole(mod):
    rng = random.Random(int(os.environ.get("FASTLB_TEST_SEED", "20240611")))
    corpus = [raw for raw, _ in VALID_REQUESTS] + [raw for _, raw, _ in REJECTED_REQUESTS]
    for raw in corpus:
        whole = _feed(mod.RequestScanner(), raw, [raw])
        for _ in range(5):
            cuts = sorted(rng.sample(range(1, len(raw)), rng.randint(1, min(8, len(raw) - 1))))
            bounds = [0] + cuts + [len(raw)]
            pieces = [raw[a:b] for a, b in zip(bounds, bounds[1:])]
            assert _feed(mod.RequestScanner(), raw, pieces) == whole, (raw, cuts)


def test_byte_by_byte_feeding_is_linear(mod):
    # Each call resumes the LF search where the previous stopped: feeding a 60 KB head one
    # byte at a time must cost about as much as scanning it whole, times the call overhead.
    import time

    raw = b"GET / HTTP/1.1\r\nHost: h\r\n" + b"X-A: " + b"a" * 6000 + b"\r\n\r\n"
    sc = mod.RequestScanner()
    buf = bytearray()
    t0 = time.perf_counter()
    for i in range(len(raw)):
        buf.append(raw[i])
        n = sc.scan(buf)
    elapsed = time.perf_counter() - t0
    assert n == len(raw)
    # quadratic work (6000 calls x 3000 bytes) would take seconds in the pure twin
    assert elapsed < 2.0


# ---------------------------------------------------------------------------
# headers() and build_upstream_head()
# ---------------------------------------------------------------------------

def test_headers_keep_names_as_sent_and_trim_values(mod):
    raw = b"GET / HTTP/1.1\r\nHOST:h\r\nx-A:  \t1 2\t \r\nX-Empty: \r\nX-Obs: \xe9\r\n\r\n"
    n, sc = scan_ok(mod.RequestScanner, raw)
    assert sc.headers(raw) == [(b"HOST", b"h"), (b"x-A", b"1 2"), (b"X-Empty", b""), (b"X-Obs", b"\xe9")]
    assert sc.headers(bytearray(raw)) == sc.headers(raw)


def _build(mod, raw, client_ip=b"10.0.0.9", extra=b"", keep_upgrade=False):
    sc = mod.RequestScanner()
    assert sc.scan(raw) == len(raw)
    return sc.build_upstream_head(raw, client_ip, extra, keep_upgrade)


TP = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.mark.parametrize("fields, want", [
    (b"", None),
    (b"traceparent: " + TP + b"\r\n", TP),
    (b"TraceParent:  " + TP + b" \r\n", TP),  # any case, OWS trimmed
    (b"traceparent: " + TP + b"\r\ntraceparent: " + TP + b"\r\n", b""),  # repeated: invalid
    (b"traceparent:\r\n", b""),
])
def test_traceparent_fact(mod, fields, want):
    raw = b"GET / HTTP/1.1\r\nHost: a\r\n" + fields + b"\r\n"
    sc = mod.RequestScanner()
    assert sc.scan(bytearray(raw)) == len(raw)
    assert sc.traceparent == want


def test_build_upstream_head_drop_trace_removes_traceparent_and_tracestate(mod):
    raw = (b"GET / HTTP/1.1\r\nHost: a\r\ntraceparent: bad\r\nTraceState: k=v\r\n"
           b"tracestate: k2=v2\r\nX-Keep: 1\r\n\r\n")
    sc = mod.RequestScanner()
    buf = bytearray(raw)
    assert sc.scan(buf) == len(raw)
    assert sc.build_upstream_head(buf, b"10.0.0.9", b"traceparent: " + TP + b"\r\n", False, True) == (
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Keep: 1\r\nX-Forwarded-For: 10.0.0.9\r\ntraceparent: " + TP + b"\r\n\r\n")
    # without drop_trace (valid, or tracing off) they go on as sent
    assert b"traceparent: bad\r\nTraceState: k=v\r\ntracestate: k2=v2\r\n" in sc.build_upstream_head(
        buf, b"10.0.0.9", b"", False)


def test_build_upstream_head_plain(mod):
    raw = b"GET /a?b HTTP/1.1\r\nHost: api\r\nAccept:  */* \r\n\r\n"
    assert _build(mod, raw) == (
        b"GET /a?b HTTP/1.1\r\nHost: api\r\nAccept: */*\r\nX-Forwarded-For: 10.0.0.9\r\n\r\n"
    )


def test_build_upstream_head_drops_hop_by_hop(mod):
    raw = (
        b"POST /p HTTP/1.1\r\nHost: api\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n"
        b"Proxy-Connection: keep-alive\r\nTE: trailers\r\nTrailer: X-Sum\r\nTransfer-Encoding: chunked\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"
        b"X-Forwarded-Proto: https\r\nContent-Type: text/plain\r\n\r\n"
    )
    # HTTP2-Settings is dropped even when Connection does not list it (h2c smuggling)
    assert _build(mod, raw, extra=b"X-Forwarded-Proto: http\r\nTransfer-Encoding: chunked\r\n") == (
        b"POST /p HTTP/1.1\r\nHost: api\r\nContent-Type: text/plain\r\nX-Forwarded-For: 10.0.0.9\r\n"
        b"X-Forwarded-Proto: http\r\nTransfer-Encoding: chunked\r\n\r\n"
    )


def test_build_upstream_head_drops_connection_listed_fields(mod):
    raw = (
        b"GET / HTTP/1.1\r\nHost: api\r\nConnection: X-Secret, x-internal , close\r\n"
        b"X-Secret: 1\r\nX-Internal: 2\r\nX-Kept: 3\r\nx-secret: again\r\n\r\n"
    )
    assert _build(mod, raw, client_ip=b"") == b"GET / HTTP/1.1\r\nHost: api\r\nX-Kept: 3\r\n\r\n"


def test_build_upstream_head_protects_host_length_and_request_id(mod):
    # A client must not strip the fields that route and frame the request (smuggling) or
    # trace it, by listing them as connection options.
    raw = (
        b"POST / HTTP/1.1\r\nHost: api\r\nContent-Length: 3\r\nX-Request-ID: r1\r\n"
        b"Connection: Host, Content-Length, X-Request-ID, Keep-Alive, Transfer-Encoding\r\n\r\n"
    )
    assert _build(mod, raw, client_ip=b"") == (
        b"POST / HTTP/1.1\r\nHost: api\r\nContent-Length: 3\r\nX-Request-ID: r1\r\n\r\n"
    )


def test_build_upstream_head_merges_x_forwarded_for_from_a_trusted_peer(mod):
    raw = (
        b"GET / HTTP/1.1\r\nX-Forwarded-For: 1.1.1.1\r\nHost: api\r\nx-forwarded-for:  2.2.2.2, 3.3.3.3 \r\n"
        b"X-Forwarded-For:\r\n\r\n"
    )
    sc = mod.RequestScanner()
    assert sc.scan(raw) == len(raw)
    assert sc.build_upstream_head(raw, b"4.4.4.4", b"", False, False, True) == (
        b"GET / HTTP/1.1\r\nHost: api\r\nX-Forwarded-For: 1.1.1.1, 2.2.2.2, 3.3.3.3, 4.4.4.4\r\n\r\n"
    )
    # from a peer that is not trusted, the client's values are replaced by its address
    assert _build(mod, raw, client_ip=b"4.4.4.4") == b"GET / HTTP/1.1\r\nHost: api\r\nX-Forwarded-For: 4.4.4.4\r\n\r\n"
    # without a client address the line is omitted, and client-sent values are not trusted
    assert _build(mod, raw, client_ip=b"") == b"GET / HTTP/1.1\r\nHost: api\r\n\r\n"


IDENTITY_RAW = (
    b"GET / HTTP/1.1\r\nHost: api\r\nForwarded: for=1.1.1.1\r\nX-Real-IP: 9.9.9.9\r\n"
    b"X-Forwarded-Host: evil\r\nx-forwarded-proto: https\r\nX-FORWARDED-PORT: 1\r\nX-Forwarded-: 2\r\n"
    b"Authorization: Bearer t\r\nX-User-Id: root\r\nX-Other: y\r\n\r\n"
)


def test_identity_fields_from_an_untrusted_peer_are_removed(mod):
    assert _build(mod, IDENTITY_RAW, client_ip=b"10.0.0.1") == (
        b"GET / HTTP/1.1\r\nHost: api\r\nX-Forwarded-: 2\r\nAuthorization: Bearer t\r\nX-User-Id: root\r\n"
        b"X-Other: y\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n"
    )


def test_identity_fields_from_a_trusted_peer_are_kept(mod):
    sc = mod.RequestScanner()
    assert sc.scan(IDENTITY_RAW) == len(IDENTITY_RAW)
    out = sc.build_upstream_head(IDENTITY_RAW, b"10.0.0.1", b"", False, False, True)
    assert out == IDENTITY_RAW[:-2] + b"X-Forwarded-For: 10.0.0.1\r\n\r\n"


@pytest.mark.parametrize("trusted", [False, True])
def test_drop_names_remove_credentials_and_claim_headers(mod, trusted):
    sc = mod.RequestScanner()
    assert sc.scan(IDENTITY_RAW) == len(IDENTITY_RAW)
    out = sc.build_upstream_head(IDENTITY_RAW, b"10.0.0.1", b"", False, False, trusted,
                                 (b"authorization", b"x-user-id", b"x-forwarded-host", b"host"))
    assert b"Authorization" not in out and b"X-User-Id" not in out and b"X-Forwarded-Host" not in out
    assert b"Host: api\r\n" in out  # only ordinary fields (and X-Forwarded-*) are removed by name
    assert b"X-Other: y\r\n" in out


def test_build_upstream_head_keep_upgrade(mod):
    raw = b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: k\r\n\r\n"
    assert _build(mod, raw, client_ip=b"", extra=b"Connection: upgrade\r\n", keep_upgrade=True) == (
        b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nSec-WebSocket-Key: k\r\nConnection: upgrade\r\n\r\n"
    )
    assert _build(mod, raw, client_ip=b"") == b"GET /ws HTTP/1.1\r\nHost: h\r\nSec-WebSocket-Key: k\r\n\r\n"


def test_build_upstream_head_http10_becomes_http11(mod):
    raw = b"GET /old HTTP/1.0\r\nConnection: keep-alive\r\nUser-Agent: x\r\n\r\n"
    assert _build(mod, raw, extra=b"Host: backend\r\n") == (
        b"GET /old HTTP/1.1\r\nUser-Agent: x\r\nX-Forwarded-For: 10.0.0.9\r\nHost: backend\r\n\r\n"
    )


def test_build_upstream_head_after_leading_crlf_and_with_pipelined_data(mod):
    raw = b"\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n"
    buf = bytearray(raw + b"GET /next HTTP/1.1\r\n")
    sc = mod.RequestScanner()
    assert sc.scan(buf) == len(raw)
    assert sc.build_upstream_head(buf, b"", b"", False) == b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"


# ---------------------------------------------------------------------------
# responses
# ---------------------------------------------------------------------------

VALID_RESPONSES = [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n",
     dict(status=200, http_minor=1, content_length=2, chunked=False, keep_alive=True, upgrade=False, header_count=1)),
    (b"HTTP/1.0 404 Not Found\r\n\r\n", dict(status=404, http_minor=0, keep_alive=False, header_count=0)),
    (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\n", dict(keep_alive=True)),
    (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", dict(keep_alive=False)),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", dict(chunked=True, content_length=-1)),
    (b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
     dict(status=101, upgrade=True)),
    (b"HTTP/1.1 200 OK\r\nUpgrade: h2c\r\n\r\n", dict(upgrade=True)),
    (b"HTTP/1.1 204 \r\n\r\n", dict(status=204)),
    (b"HTTP/1.1 301\r\nLocation: /x\r\n\r\n", dict(status=301)),
    (b"HTTP/1.1 599 Whatever\tyou say \xe9\r\n\r\n", dict(status=599)),
    (b"HTTP/1.1 100 Continue\r\n\r\n", dict(status=100)),
    (b"HTTP/1.1 200  OK\r\n\r\n", dict(status=200)),
    (b"HTTP/1.1 200 OK\r\nContent-Length-X: 0\r\nX-Forwarded-For: a\r\n\r\n", dict(content_length=-1)),
]


@pytest.mark.parametrize("raw,expected", VALID_RESPONSES)
def test_valid_responses(mod, raw, expected):
    n, sc = scan_ok(mod.ResponseScanner, raw)
    assert n == len(raw)
    for name, value in expected.items():
        assert getattr(sc, name) == value, name


REJECTED_RESPONSES = [
    b"\r\nHTTP/1.1 200 OK\r\n\r\n",  # no empty lines before a status-line
    b"HTTP/1.1 099 Low\r\n\r\n",
    b"HTTP/1.1 600 High\r\n\r\n",
    b"HTTP/1.1 2000 OK\r\n\r\n",
    b"HTTP/1.1 20 OK\r\n\r\n",
    b"HTTP/1.1 2x0 OK\r\n\r\n",
    b"HTTP/1.1  200 OK\r\n\r\n",
    b"HTTP/1.1\t200 OK\r\n\r\n",
    b"HTTP/1.1 200\tOK\r\n\r\n",
    b"HTTP/1.1 200 O\x00K\r\n\r\n",
    b"HTTP/1.1 200 O\x7fK\r\n\r\n",
    b"HTTP/1.2 200 OK\r\n\r\n",
    b"HTTP/2 200 OK\r\n\r\n",
    b"HTTP/0.9 200 OK\r\n\r\n",
    b"http/1.1 200 OK\r\n\r\n",
    b"HTTP/1.1\r\n\r\n",
    b"RTSP/1.0 200 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\rContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-A : 1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-A: \x01\r\n\r\n",
]


@pytest.mark.parametrize("raw", REJECTED_RESPONSES)
def test_rejected_responses_are_502(mod, raw):
    assert scan_error(mod.ResponseScanner, raw)[0] == 502


def test_response_limits_are_502(mod):
    assert scan_error(mod.ResponseScanner, b"HTTP/1.1 200 " + b"x" * 100 + b"\r\n\r\n", max_line=50)[0] == 502
    raw = b"HTTP/1.1 200 OK\r\n" + b"X-A: 1\r\n" * 5 + b"\r\n"
    assert scan_error(mod.ResponseScanner, raw, max_fields=4)[0] == 502
    assert scan_error(mod.ResponseScanner, raw, max_head=30)[0] == 502
    sc = mod.ResponseScanner(max_line=50)
    with pytest.raises(ScanError) as exc:
        sc.scan(b"HTTP/1.1 200 " + b"x" * 60)
    assert exc.value.status == 502


def test_response_pipelined_heads(mod):
    interim = b"HTTP/1.1 100 Continue\r\n\r\n"
    final = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    buf = bytearray(interim + final)
    sc = mod.ResponseScanner()
    assert sc.scan(buf) == len(interim)
    assert sc.status == 100
    del buf[: len(interim)]
    assert sc.scan(buf) == len(final)
    assert sc.status == 200


def test_response_headers(mod):
    raw = b"HTTP/1.1 200 OK\r\nContent-Type:  text/plain \r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\n"
    n, sc = scan_ok(mod.ResponseScanner, raw)
    assert sc.headers(raw) == [(b"Content-Type", b"text/plain"), (b"Set-Cookie", b"a=1"), (b"Set-Cookie", b"b=2")]


def _build_down(mod, raw, extra=b"", keep_upgrade=False):
    sc = mod.ResponseScanner()
    assert sc.scan(raw) == len(raw)
    return sc.build_downstream_head(raw, extra, keep_upgrade)


def test_build_downstream_head(mod):
    raw = (
        b"HTTP/1.0 200 Fine Thanks\r\nConnection: keep-alive, X-Hop\r\nKeep-Alive: timeout=5\r\n"
        b"Content-Length: 5\r\nX-Hop: 1\r\nX-Forwarded-For: kept\r\nX-Forwarded-Proto: kept\r\n"
        b"Proxy-Connection: x\r\nTrailer: y\r\nTE: z\r\nUpgrade: h2c\r\nServer: s\r\n\r\n"
    )
    assert _build_down(mod, raw, extra=b"Connection: close\r\n") == (
        b"HTTP/1.1 200 Fine Thanks\r\nContent-Length: 5\r\nX-Forwarded-For: kept\r\n"
        b"X-Forwarded-Proto: kept\r\nServer: s\r\nConnection: close\r\n\r\n"
    )


def test_build_downstream_head_protects_content_length_only(mod):
    raw = b"HTTP/1.1 200 OK\r\nConnection: Content-Length, Server\r\nContent-Length: 5\r\nServer: s\r\n\r\n"
    assert _build_down(mod, raw) == b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"


def test_build_downstream_head_without_reason_and_chunked(mod):
    raw = b"HTTP/1.1 201\r\nTransfer-Encoding: chunked\r\nLocation: /x\r\n\r\n"
    assert _build_down(mod, raw, extra=b"Transfer-Encoding: chunked\r\n") == (
        b"HTTP/1.1 201 \r\nLocation: /x\r\nTransfer-Encoding: chunked\r\n\r\n"
    )


def test_build_downstream_head_upgrade(mod):
    raw = b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: a\r\n\r\n"
    assert _build_down(mod, raw, extra=b"Connection: upgrade\r\n", keep_upgrade=True) == (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: a\r\n"
        b"Connection: upgrade\r\n\r\n"
    )
    assert _build_down(mod, raw) == b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: a\r\n\r\n"


def test_header_value_first_match_any_case(twin):
    sc = load_twin("scanner", twin)
    req = sc.RequestScanner()
    buf = bytearray(b"GET / HTTP/1.1\r\nHost: h\r\nX-User:  alice \r\nx-user: bob\r\nCookie: a=1\r\n\r\n")
    assert req.scan(buf) == len(buf)
    assert req.header_value(buf, b"X-USER") == b"alice"
    assert req.header_value(buf, b"cookie") == b"a=1"
    assert req.header_value(buf, b"x-missing") is None
    assert req.header_value(buf, b"x-use") is None
    resp = sc.ResponseScanner()
    rbuf = b"HTTP/1.1 200 OK\r\nSet-Cookie: s=1\r\nContent-Length: 0\r\n\r\n"
    assert resp.scan(rbuf) == len(rbuf)
    assert resp.header_value(rbuf, b"set-cookie") == b"s=1"
