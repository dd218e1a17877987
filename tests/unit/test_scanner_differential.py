"""Differential test: fastlb (both twins) against httptools (llhttp) and h11.

CASES is a corpus written for fastlb: valid REST requests, malformed messages and
request-smuggling attempts, each a whole message (head and body). fastlb's verdict is
asserted per case. httptools and h11 are run on the same bytes; wherever either one's
verdict differs from fastlb's, the case must be in KNOWN_DIFFERENCES with the RFC section
that decides it (docs/http-parsing.md tells the story). The test fails on a new,
undocumented disagreement, and on a listed one that no longer happens.

Verdicts: "ok" (a complete message), "error" (rejected), "incomplete" (waits for bytes).
For fastlb an error also carries the status it would answer with.
"""

import h11
import httptools
import pytest

from fastlb._core._scanerror import ScanError
from tests.conftest import load_twin

H = b"Host: api.example.com\r\n"

# id -> (raw message, fastlb verdict: "ok" or the status of the rejection)
CASES = {
    # --- valid REST traffic -------------------------------------------------------------
    "get-simple": (b"GET /users/42 HTTP/1.1\r\n" + H + b"Accept: application/json\r\n\r\n", "ok"),
    "get-query": (b"GET /search?q=a%20b&page=2&sort=-date HTTP/1.1\r\n" + H + b"\r\n", "ok"),
    "post-json": (b"POST /orders HTTP/1.1\r\n" + H + b"Content-Type: application/json\r\n"
                  b"Content-Length: 24\r\n\r\n{\"sku\": \"A-1\", \"qty\": 3}", "ok"),
    "put-chunked": (b"PUT /files/a HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
                    b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", "ok"),
    "chunked-ext-trailer": (b"POST /up HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
                            b"5;sig=\"a b\"\r\nhello\r\n0\r\nX-Checksum: abc\r\n\r\n", "ok"),
    "chunked-uppercase": (b"POST /up HTTP/1.1\r\n" + H + b"Transfer-Encoding: Chunked\r\n\r\n"
                          b"A\r\n0123456789\r\n0\r\n\r\n", "ok"),
    "delete": (b"DELETE /items/7 HTTP/1.1\r\n" + H + b"Authorization: Bearer t0k.en\r\n\r\n", "ok"),
    "patch-empty-body": (b"PATCH /items/7 HTTP/1.1\r\n" + H + b"Content-Length: 0\r\n\r\n", "ok"),
    "options-star": (b"OPTIONS * HTTP/1.1\r\n" + H + b"\r\n", "ok"),
    "absolute-form": (b"GET http://api.example.com/v1 HTTP/1.1\r\n" + H + b"\r\n", "ok"),
    "absolute-form-host-mismatch": (b"GET http://admin.internal/v1 HTTP/1.1\r\n" + H + b"\r\n", 400),
    "http10-no-host": (b"GET / HTTP/1.0\r\n\r\n", "ok"),
    "http10-keep-alive": (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", "ok"),
    "leading-crlf": (b"\r\nGET / HTTP/1.1\r\n" + H + b"\r\n", "ok"),
    "obs-text-value": (b"GET / HTTP/1.1\r\n" + H + b"X-Name: D\xc3\xbcsseldorf\r\n\r\n", "ok"),
    "empty-value": (b"GET / HTTP/1.1\r\n" + H + b"X-Empty:\r\n\r\n", "ok"),
    "tab-in-value": (b"GET / HTTP/1.1\r\n" + H + b"X-A: a\tb\r\n\r\n", "ok"),
    "expect-100": (b"POST /big HTTP/1.1\r\n" + H + b"Expect: 100-continue\r\nContent-Length: 2\r\n\r\nok", "ok"),
    "websocket-upgrade": (b"GET /ws HTTP/1.1\r\n" + H + b"Connection: Upgrade\r\nUpgrade: websocket\r\n"
                          b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", "ok"),
    "cl-leading-zeros": (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 005\r\n\r\nhello", "ok"),
    "te-tab-before-value": (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding:\tchunked\r\n\r\n0\r\n\r\n", "ok"),
    "ipv6-host": (b"GET / HTTP/1.1\r\nHost: [2001:db8::1]:8443\r\n\r\n", "ok"),
    "unknown-method": (b"PURGE /cache/x HTTP/1.1\r\n" + H + b"\r\n", "ok"),
    # --- malformed ----------------------------------------------------------------------
    "bare-lf": (b"GET / HTTP/1.1\n" + H.replace(b"\r\n", b"\n") + b"\n", 400),
    "bare-lf-one-field": (b"GET / HTTP/1.1\r\nHost: a\nX-A: 1\r\n\r\n", 400),
    "bare-cr-in-value": (b"GET / HTTP/1.1\r\n" + H + b"X-A: a\rb\r\n\r\n", 400),
    "obs-fold": (b"GET / HTTP/1.1\r\n" + H + b"X-A: one\r\n two\r\n\r\n", 400),
    "space-before-colon": (b"GET / HTTP/1.1\r\n" + H + b"X-A : 1\r\n\r\n", 400),
    "space-in-name": (b"GET / HTTP/1.1\r\n" + H + b"X A: 1\r\n\r\n", 400),
    "empty-name": (b"GET / HTTP/1.1\r\n" + H + b": 1\r\n\r\n", 400),
    "bad-name-char": (b"GET / HTTP/1.1\r\n" + H + b"X[A]: 1\r\n\r\n", 400),
    "nul-in-value": (b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x00b\r\n\r\n", 400),
    "ctl-in-value": (b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x01b\r\n\r\n", 400),
    "del-in-value": (b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x7fb\r\n\r\n", 400),
    "non-ascii-target": (b"GET /caf\xc3\xa9 HTTP/1.1\r\n" + H + b"\r\n", 400),
    "space-in-target": (b"GET /a b HTTP/1.1\r\n" + H + b"\r\n", 400),
    "double-sp": (b"GET  / HTTP/1.1\r\n" + H + b"\r\n", 400),
    "lowercase-version": (b"GET / http/1.1\r\n" + H + b"\r\n", 400),
    "http09": (b"GET /\r\n\r\n", 400),
    "http12": (b"GET / HTTP/1.2\r\n" + H + b"\r\n", 505),
    "http20": (b"GET / HTTP/2.0\r\n" + H + b"\r\n", 505),
    "missing-host": (b"GET / HTTP/1.1\r\n\r\n", 400),
    "two-hosts": (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    "empty-host": (b"GET / HTTP/1.1\r\nHost:\r\n\r\n", 400),
    "host-with-space": (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
    "host-userinfo": (b"GET / HTTP/1.1\r\nHost: user@a\r\n\r\n", 400),
    "asterisk-get": (b"GET * HTTP/1.1\r\n" + H + b"\r\n", 400),
    "relative-target": (b"GET users HTTP/1.1\r\n" + H + b"\r\n", 400),
    "expect-unknown": (b"POST / HTTP/1.1\r\n" + H + b"Expect: 200-ok\r\nContent-Length: 0\r\n\r\n", 417),
    # --- smuggling (RFC 9112 §6.1, §6.3, §7.1; RFC 9110 §8.6) ---------------------------
    "cl-te": (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n"
              b"0\r\n\r\nX", 400),
    "te-cl": (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
              b"8\r\nSMUGGLED\r\n0\r\n\r\n", 400),
    "cl-duplicate-same": (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello", 400),
    "cl-duplicate-different": (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nContent-Length: 0\r\n\r\nhello", 400),
    "cl-list": (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5, 5\r\n\r\nhello", 400),
    "cl-plus": (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: +5\r\n\r\nhello", 400),
    "cl-negative": (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: -1\r\n\r\n", 400),
    "cl-hex": (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 0x5\r\n\r\nhello", 400),
    "cl-inner-space": (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 1 0\r\n\r\nhelloworld", 400),
    "cl-2-pow-63": (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 9223372036854775808\r\n\r\n", 400),
    "te-gzip-chunked": (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    "te-chunked-gzip": (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n", 400),
    "te-identity": (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: identity\r\n\r\n", 400),
    "te-chunked-twice": (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", 400),
    "te-two-fields": (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"0\r\n\r\n", 400),
    "te-http10": (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "te-xchunked": (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 400),
    "te-leading-comma": (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: , chunked\r\n\r\n0\r\n\r\n", 400),
    "te-vtab": (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: \x0bchunked\r\n\r\n0\r\n\r\n", 400),
    "te-obs-fold": (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n", 400),
    "te-space-before-colon": (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400),
    "chunk-size-plus": (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n+5\r\nhello\r\n0\r\n\r\n", 400),
    "chunk-size-0x": (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n", 400),
    "chunk-size-trailing-sp": (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n", 400),
    "chunk-size-bare-lf": (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n", 400),
    "chunk-size-overflow": (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
                            b"FFFFFFFFFFFFFFFF0\r\nhello\r\n0\r\n\r\n", 400),
    "chunk-data-no-crlf": (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello0\r\n\r\n", 400),
    "chunk-data-bare-lf": (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\n0\r\n\r\n", 400),
    "chunk-ext-bare-semicolon": (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5;\r\nhello\r\n0\r\n\r\n", 400),
    "chunk-last-bare-lf": (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\n", 400),
    "trailer-obs-fold": (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0\r\nX-A: 1\r\n 2\r\n\r\n", 400),
}

# Where httptools 0.9 (llhttp 9, strict) or h11 0.16 reach another verdict than fastlb.
# id -> {"httptools": verdict, "h11": verdict, "why": rule}; a parser not named agrees.
BARE_LF = ("RFC 9112 §2.2: a recipient MAY accept a bare LF; a proxy must not be more lenient than the "
           "next hop (desync), so fastlb refuses it like llhttp strict")
OBS_FOLD = "RFC 9112 §5.2: obs-fold is rejected with 400 (h11 unfolds it)"
TE_CL = ("RFC 9112 §6.3 (3): TE with CL ought to be an error and a proxy MUST NOT forward both; "
         "h11 lets Transfer-Encoding win")
CL_STRICT = ("RFC 9110 §8.6 / RFC 9112 §6.3 (5): Content-Length = 1*DIGIT; fastlb refuses lists and "
             "repeated fields, even identical ones (h11 merges them)")
HOST_SYNTAX = "RFC 9110 §7.2: Host = uri-host [ \":\" port ] (parsers leave Host to the application)"
KNOWN_DIFFERENCES = {
    "leading-crlf": {"h11": "error", "why": "RFC 9112 §2.2: a server SHOULD ignore an empty line "
                                            "before the request-line"},
    "bare-lf": {"h11": "ok", "why": BARE_LF},
    "bare-lf-one-field": {"h11": "ok", "why": BARE_LF},
    "obs-fold": {"h11": "ok", "why": OBS_FOLD},
    "te-obs-fold": {"h11": "ok", "why": OBS_FOLD},
    "trailer-obs-fold": {"h11": "ok", "why": "RFC 9112 §7.1.2 and §5.2: trailer fields follow the "
                                             "field-line rules, no obs-fold"},
    "ctl-in-value": {"h11": "ok", "why": "RFC 9110 §5.5: field values exclude CTLs"},
    "del-in-value": {"h11": "ok", "why": "RFC 9110 §5.5: field values exclude DEL (not a VCHAR)"},
    "double-sp": {"httptools": "ok", "why": "RFC 9112 §3: exactly one SP between method, target, version"},
    "http09": {"httptools": "ok", "why": "RFC 9112 §2.3: HTTP/0.9 (no version) is refused"},
    "http12": {"h11": "ok", "why": "RFC 9110 §15.6.6: 505 for versions other than 1.0/1.1"},
    "http20": {"httptools": "ok", "h11": "ok", "why": "RFC 9110 §15.6.6: 505 for HTTP/2.0 over HTTP/1.1 framing"},
    "missing-host": {"httptools": "ok", "why": "RFC 9112 §3.2: 400 for HTTP/1.1 without Host"},
    "two-hosts": {"httptools": "ok", "why": "RFC 9112 §3.2: 400 for more than one Host"},
    "empty-host": {"httptools": "ok", "h11": "ok", "why": "RFC 9112 §3.2, RFC 9110 §4.2.1: empty Host only "
                                                          "for a target without authority; http(s) always has one"},
    "absolute-form-host-mismatch": {"httptools": "ok", "h11": "ok",
                                    "why": "RFC 9112 §3.2: Host MUST equal the target's authority; the origin "
                                           "uses the target (§3.2.2), the proxy routes on Host"},
    "host-with-space": {"httptools": "ok", "h11": "ok", "why": HOST_SYNTAX},
    "host-userinfo": {"httptools": "ok", "h11": "ok", "why": HOST_SYNTAX + "; no userinfo (RFC 9110 §4.2.4)"},
    "asterisk-get": {"httptools": "ok", "h11": "ok", "why": "RFC 9112 §3.2.4: asterisk-form only for OPTIONS"},
    "relative-target": {"h11": "ok", "why": "RFC 9112 §3.2: origin-form starts with \"/\"; else absolute-, "
                                            "authority- (CONNECT) or asterisk-form"},
    "expect-unknown": {"httptools": "ok", "h11": "ok", "why": "RFC 9110 §10.1.1: 417 for an unsupported expectation"},
    "cl-te": {"h11": "ok", "why": TE_CL},
    "te-cl": {"h11": "ok", "why": TE_CL},
    "cl-duplicate-same": {"h11": "ok", "why": CL_STRICT},
    "cl-list": {"h11": "ok", "why": CL_STRICT},
    "cl-2-pow-63": {"httptools": "incomplete", "h11": "incomplete",
                    "why": "RFC 9110 §8.6: guard against overflow; fastlb bounds lengths below 2**63"},
    "te-gzip-chunked": {"httptools": "ok", "why": "RFC 9112 §6.1: 501 for a transfer coding fastlb does not "
                                                  "implement (it never decodes gzip)"},
    "te-http10": {"httptools": "ok", "h11": "ok", "why": "RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 is "
                                                         "faulty framing"},
    "te-leading-comma": {"httptools": "ok", "why": "RFC 9112 §6.1 with RFC 9110 §5.6.1: no empty list elements "
                                                   "in Transfer-Encoding (framing must be unambiguous)"},
    "chunk-size-trailing-sp": {"h11": "ok", "why": "RFC 9112 §7.1.1: BWS is only allowed before \";\""},
    "chunk-size-overflow": {"h11": "incomplete", "why": "RFC 9112 §7.1: chunk-size overflow; fastlb takes at "
                                                        "most 16 hex digits below 2**63"},
    "chunk-ext-bare-semicolon": {"h11": "ok", "why": "RFC 9112 §7.1.1: chunk-ext-name is a token"},
    "chunk-last-bare-lf": {"h11": "ok", "why": "RFC 9112 §7.1 and §2.2: the chunked body ends in CRLF"},
}


def fastlb_verdict(mod, raw):
    sc = mod.RequestScanner()
    try:
        n = sc.scan(raw)
        if not n:
            return "incomplete"
        rest = raw[n:]
        if sc.chunked:
            dec = mod.ChunkedDecoder()
            dec.feed(rest)
            return "ok" if dec.done else "incomplete"
        return "ok" if len(rest) >= max(sc.content_length, 0) else "incomplete"
    except ScanError as exc:
        return exc.status


class _Proto:
    __slots__ = ("complete",)

    def __init__(self):
        self.complete = False

    def on_message_complete(self):
        self.complete = True


def httptools_verdict(raw):
    proto = _Proto()
    parser = httptools.HttpRequestParser(proto)
    try:
        parser.feed_data(raw)
    except httptools.HttpParserUpgrade:
        return "ok"
    except httptools.HttpParserError:
        return "error"
    return "ok" if proto.complete else "incomplete"


def h11_verdict(raw):
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(raw)
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                return "incomplete"
            if isinstance(event, h11.EndOfMessage):
                return "ok"
            if event is h11.PAUSED:
                return "ok"
    except h11.RemoteProtocolError:
        return "error"


def _simple(verdict):
    return "error" if isinstance(verdict, int) else verdict


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_fastlb_verdict(twin, case_id):
    mod = load_twin("scanner", twin)
    raw, expected = CASES[case_id]
    assert fastlb_verdict(mod, raw) == expected


def test_corpus_size():
    assert len(CASES) >= 40
    valid = [c for c, (_, v) in CASES.items() if v == "ok"]
    assert len(valid) >= 15 and len(CASES) - len(valid) >= 40


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_other_parsers_agree_or_the_difference_is_known(case_id):
    raw, expected = CASES[case_id]
    ours = _simple(expected)
    observed = {"httptools": httptools_verdict(raw), "h11": h11_verdict(raw)}
    known = KNOWN_DIFFERENCES.get(case_id, {})
    for parser, verdict in observed.items():
        if parser in known:
            assert verdict == known[parser], (
                "%s no longer answers %r to %s: update KNOWN_DIFFERENCES" % (parser, known[parser], case_id))
            assert verdict != ours
        else:
            assert verdict == ours, (
                "new difference: %s says %r, fastlb %r (%s); document it in KNOWN_DIFFERENCES"
                % (parser, verdict, expected, case_id))


def test_known_differences_are_documented():
    for case_id, entry in KNOWN_DIFFERENCES.items():
        assert case_id in CASES
        assert set(entry) <= {"httptools", "h11", "why"} and "why" in entry
        assert "RFC" in entry["why"], case_id
