"""Third-party HTTP/1.1 corpora (read in place from ../shared/corpora, never copied).

What each corpus may assert is written in its README; this module states, per corpus,
how a case's expectation maps onto fastlb's scanner, and lists by id the few cases where
fastlb deliberately decides otherwise, each with its reason (docs/http-parsing.md has
the full argument). A case that changes verdict without being listed fails the test.

The drivers below process a byte stream the way the proxy does (fastlb/proxy.py): scan
a head, frame its body (Content-Length, chunked through ChunkedDecoder, or none), then
the next head; stop at an upgrade/CONNECT (tunnel) and after a message that closes the
connection (the bytes after it are never parsed, never forwarded).
"""

import json

import pytest

from fastlb._core._scanerror import ScanError
from tests.conftest import corpus_path, load_twin


@pytest.fixture
def mod(twin):
    return load_twin("scanner", twin)


def load(name):
    with open(corpus_path(name), encoding="utf-8") as f:
        data = json.load(f)
    return data["cases"] if isinstance(data, dict) else data


def wire(case):
    return case["raw"].encode("latin-1")


# ---------------------------------------------------------------------------
# drivers
# ---------------------------------------------------------------------------

class Outcome:
    """verdict: "ok" (everything consumed), "incomplete" (waiting for more bytes),
    "error" (ScanError), "closed" (bytes after a message that ends the connection),
    "tunnel" (upgrade/CONNECT: the rest is not HTTP)."""

    def __init__(self, verdict, messages, error=None):
        self.verdict = verdict
        self.messages = messages
        self.error = error

    def __repr__(self):
        return "Outcome(%s, %d messages, %r)" % (self.verdict, len(self.messages), self.error)


HOST_PATCH = b"Host: corpus.test\r\n"


def _insert_host(buf):
    """Insert a Host field into the HTTP/1.1 request head at the start of buf when it has
    none (RFC 9112 §3.2 makes fastlb reject such heads; the patched run then shows that
    everything else in the case is judged as the corpus expects)."""
    start = 0
    while buf[start : start + 2] == b"\r\n":
        start += 2
    eol = buf.find(b"\n", start)
    line = bytes(buf[start:eol]).rstrip(b"\r")
    if eol < 0 or not line.endswith(b" HTTP/1.1"):
        return False
    end = buf.find(b"\r\n\r\n", eol)
    head = bytes(buf[eol + 1 : end if end >= 0 else len(buf)]).lower()
    if head.startswith(b"host:") or b"\nhost:" in head:
        return False
    patch = HOST_PATCH
    target = line.split(b" ")[1] if line.count(b" ") >= 2 else b""
    if b"://" in target:
        # absolute-form: Host must be the target's authority (RFC 9112 §3.2)
        authority = target.split(b"://", 1)[1]
        for stop in b"/?#":
            authority = authority.split(bytes((stop,)), 1)[0]
        patch = b"Host: " + authority.rsplit(b"@", 1)[-1] + b"\r\n"
    buf[eol + 1 : eol + 1] = patch
    return True


def drive_requests(mod, raw, add_host=False):
    sc = mod.RequestScanner()
    buf = bytearray(raw)
    messages = []
    while True:
        patched = _insert_host(buf) if add_host else False
        try:
            n = sc.scan(buf)
        except ScanError as exc:
            return Outcome("error", messages, exc)
        if not n:
            return Outcome("incomplete" if buf or not messages else "ok", messages)
        headers = sc.headers(buf)[1:] if patched else sc.headers(buf)  # the patch is first
        msg = dict(method=sc.method, url=sc.target, headers=headers, complete=False, body=b"")
        messages.append(msg)
        del buf[:n]
        if sc.upgrade or sc.method == b"CONNECT":
            return Outcome("tunnel", messages)
        verdict = _body(mod, sc.chunked, sc.content_length, buf, msg)
        if verdict:
            return Outcome(verdict[0], messages, verdict[1])
        if not sc.keep_alive:
            return Outcome("closed" if buf else "ok", messages)


def drive_responses(mod, raw):
    """Responses to GET requests: 1xx/204/304 have no body, 101 starts a tunnel, a body
    without length runs to the end of the connection (RFC 9112 §6.3)."""
    sc = mod.ResponseScanner()
    buf = bytearray(raw)
    messages = []
    while True:
        try:
            n = sc.scan(buf)
        except ScanError as exc:
            return Outcome("error", messages, exc)
        if not n:
            return Outcome("incomplete" if buf or not messages else "ok", messages)
        msg = dict(status=sc.status, headers=sc.headers(buf), complete=False, body=b"")
        messages.append(msg)
        del buf[:n]
        status = sc.status
        if status == 101:
            return Outcome("tunnel", messages)
        if status < 200 or status in (204, 304):
            msg["complete"] = True  # RFC 9112 §6.3 (1): no body, whatever the framing fields say
        elif not sc.chunked and sc.content_length < 0:
            msg["body"] = bytes(buf)  # close-delimited
            msg["complete"] = True
            return Outcome("ok", messages)
        else:
            verdict = _body(mod, sc.chunked, sc.content_length, buf, msg)
            if verdict:
                return Outcome(verdict[0], messages, verdict[1])
        if not sc.keep_alive:
            return Outcome("closed" if buf else "ok", messages)


def _body(mod, chunked, length, buf, msg):
    """Consume the body from buf into msg; a (verdict, error) pair stops the stream."""
    if chunked:
        dec = mod.ChunkedDecoder()
        try:
            msg["body"] = dec.feed(bytes(buf))
        except ScanError as exc:
            return ("error", exc)
        if not dec.done:
            del buf[:]
            return ("incomplete", None)
        del buf[: len(buf) - dec.leftover]
    elif length > 0:
        if len(buf) < length:
            msg["body"] = bytes(buf)
            del buf[:]
            return ("incomplete", None)
        msg["body"] = bytes(buf[:length])
        del buf[:length]
    msg["complete"] = True
    return None


def rejected(outcome):
    """Refused: a ScanError, or bytes after a closing message that are never parsed."""
    return outcome.verdict in ("error", "closed")


# ---------------------------------------------------------------------------
# llhttp requests
# ---------------------------------------------------------------------------

# Cases fastlb decides differently on purpose (reasons in docs/http-parsing.md).
WAITS_FOR_LF = "fastlb judges a start-line only once its LF arrives (split invariance); " \
               "the incomplete head is never forwarded and max_line bounds the wait"
LLHTTP_REQUEST_DIFFERENCES = {
    "request/invalid:490": ("incomplete", WAITS_FOR_LF),
    "request/uri:222": ("error", "RFC 9110 §4.2.4: userinfo in an http(s) URI is treated as an error "
                                 "(it obscures the authority a proxy routes by)"),
    "request/method:135": ("error", "RFC 9112 §3.2.4: asterisk-form is for OPTIONS only "
                                    "(SSDP M-SEARCH * is UDP multicast, not HTTP/1.1 over TCP)"),
    "request/transfer-encoding:751": ("error", "RFC 9112 §6.1: 501 for codings other than chunked "
                                               "(fastlb never decodes or forwards them)"),
    "request/transfer-encoding:793": ("error", "RFC 9112 §6.1: 501, as transfer-encoding:751"),
}


# llhttp's own choices (``llhttp_specific``), decided per category of its explanation:
# "accept" = not refused and the messages match llhttp's; "reject" = refused;
# otherwise the driver verdict fastlb must reach.
LLHTTP_SPECIFIC = {
    "pausing API test": "accept",  # the wire outcome is a plain valid request
    "Upgrade handling (llhttp pauses)": "tunnel",
    "CONNECT": "tunnel",  # the scanner accepts; the proxy answers 405 (proxy.py)
    "llhttp_finish() (EOF) API test": "not-refused",  # a truncated message is dropped at EOF
    '"Data after Connection: close"': "closed",  # the proxy never parses those bytes
    "skipBody API mode": "incomplete",  # without llhttp's callback the body is awaited
    "RTSP": "reject",  # RTSP/ICE versions: not HTTP (RFC 9112 §2.3)
    "ICE": "reject",
    "error wording about RTSP/ICE": "reject",
    "llhttp rejects RTSP-only method": "accept",  # RFC 9110 §9.1: method = token
    "llhttp rejects unknown method": "accept",
    "SOURCE (Icecast) method": "accept",
    "HTTP/2 prior-knowledge preface (PRI)": "reject",  # "PRI *": asterisk-form is OPTIONS-only
    "HTTP/0.9-style request line": "reject",  # RFC 9112 §2.3: no HTTP/0.9
    "llhttp accepts": "accept",  # '|', '"', '\\' are visible ASCII: accepted, see docs
}


def _specific_rule(text):
    for prefix, rule in LLHTTP_SPECIFIC.items():
        if text.startswith(prefix):
            return rule
    raise AssertionError("decide this llhttp_specific category: %r" % text)


def _llhttp_headers(message):
    # llhttp keeps trailing whitespace in values; RFC 9110 §5.5 excludes OWS from them
    return [(n.encode("latin-1"), v.encode("latin-1").rstrip(b" \t")) for n, v in message["headers"]]


def _check_request_messages(outcome, case):
    expected = [m for m in case["messages"] if m.get("headers_complete")]
    assert len(outcome.messages) >= len(expected), (outcome, expected)
    for ours, theirs in zip(outcome.messages, expected):
        assert ours["method"] == theirs["method"].encode("latin-1")
        assert ours["url"] == theirs["url"].encode("latin-1")
        assert ours["headers"] == _llhttp_headers(theirs)
        if theirs.get("complete") and "body" in theirs:
            assert ours["body"] == theirs["body"].encode("latin-1")


def _lacks_host_only(outcome):
    return outcome.verdict == "error" and outcome.error.reason == "missing Host"


def llhttp_request_cases():
    try:
        return [pytest.param(c, id=c["id"]) for c in load("llhttp_requests.json")]
    except pytest.skip.Exception:
        return [pytest.param(None, marks=pytest.mark.skip(reason="corpus not found"))]


@pytest.mark.parametrize("case", llhttp_request_cases())
def test_llhttp_requests(mod, case):
    raw = wire(case)
    plain = drive_requests(mod, raw)
    patched = drive_requests(mod, raw, add_host=True)
    if case["id"] in LLHTTP_REQUEST_DIFFERENCES:
        verdict, reason = LLHTTP_REQUEST_DIFFERENCES[case["id"]]
        assert patched.verdict == verdict, (patched, reason)
        return
    if case["mode"] != "strict":
        # accepted by llhttp only with a leniency flag: a strict proxy refuses them
        assert rejected(plain) and rejected(patched), (plain, patched)
        return
    if case.get("llhttp_specific"):
        rule = _specific_rule(case["llhttp_specific"])
        if rule == "accept":
            assert patched.verdict in ("ok", "incomplete"), patched
            _check_request_messages(patched, case)
        elif rule == "reject":
            assert rejected(patched), patched
        elif rule == "not-refused":
            assert not rejected(patched), patched
        else:
            assert patched.verdict == rule, patched
        return
    expect = case["expect_simple"]
    if expect == "ok":
        # HTTP/1.1 without Host: 400 (RFC 9112 §3.2); with one, the rest must match llhttp
        assert plain.verdict not in ("error", "closed") or _lacks_host_only(plain), plain
        assert patched.verdict not in ("error", "closed"), patched
        _check_request_messages(patched, case)
    elif expect == "error":
        assert rejected(plain), plain
        assert rejected(patched), patched  # refused for the case's own flaw, not for Host
    else:
        assert expect == "incomplete"
        assert patched.verdict == "incomplete", patched


# ---------------------------------------------------------------------------
# llhttp responses
# ---------------------------------------------------------------------------

NO_LEADING_CRLF = "no empty lines before a status-line: RFC 9112 §2.2 lets only servers skip " \
                  "them before a request-line; a stray CRLF after a response is a framing error"
LLHTTP_RESPONSE_DIFFERENCES = {
    "response/connection:492": ("error", NO_LEADING_CRLF),
    "response/connection:586": ("error", NO_LEADING_CRLF),
    "response/pipelining:4": ("error", NO_LEADING_CRLF),
    "response/sample:695": ("error", NO_LEADING_CRLF),
    "response/sample:40": ("error", "RTSP/1.1 is not HTTP: the status-line must be HTTP/1.x (RFC 9112 §4)"),
    "response/sample:60": ("error", "ICE/1.1 is not HTTP: the status-line must be HTTP/1.x (RFC 9112 §4)"),
    "response/sample:645": ("error", "HTTP/0.9 has no status-line; fastlb speaks HTTP/1.x to backends"),
    "response/transfer-encoding:43": ("error", "Transfer-Encoding other than exactly chunked: "
                                               "502 instead of reading until close (RFC 9112 §6.3 (4))"),
    "response/transfer-encoding:74": ("error", "as transfer-encoding:43"),
    "response/transfer-encoding:110": ("error", "as transfer-encoding:43"),
    "response/content-length:123": ("incomplete", "llhttp skipBody API (the response to a HEAD "
                                                  "request); the driver assumes GET and waits for the body"),
    "response/finish:6": ("ok", "llhttp_finish() API test (EOF after a body read until close); "
                                "the wire bytes are a valid response"),
}


def llhttp_response_cases():
    try:
        return [pytest.param(c, id=c["id"]) for c in load("llhttp_responses.json")]
    except pytest.skip.Exception:
        return [pytest.param(None, marks=pytest.mark.skip(reason="corpus not found"))]


@pytest.mark.parametrize("case", llhttp_response_cases())
def test_llhttp_responses(mod, case):
    outcome = drive_responses(mod, wire(case))
    if case["id"] in LLHTTP_RESPONSE_DIFFERENCES:
        verdict, reason = LLHTTP_RESPONSE_DIFFERENCES[case["id"]]
        assert outcome.verdict == verdict, (outcome, reason)
        if verdict == "error":
            assert outcome.error.status == 502
        return
    if case["mode"] != "strict":
        assert rejected(outcome), outcome
        return
    if case.get("llhttp_specific"):
        pytest.skip("llhttp's own choice: %s" % case["llhttp_specific"])
    if case["expect_simple"] == "ok":
        assert not rejected(outcome), outcome
        expected = [m for m in case["messages"] if m.get("headers_complete")]
        assert len(outcome.messages) >= len(expected)
        for ours, theirs in zip(outcome.messages, expected):
            assert ours["headers"] == _llhttp_headers(theirs)
            if theirs.get("complete") and "body" in theirs:
                assert ours["body"] == theirs["body"].encode("latin-1")
    else:
        assert rejected(outcome), outcome
        if outcome.verdict == "error" and outcome.error.status != 400:
            assert outcome.error.status == 502  # response heads; 400 comes from the chunked body


# ---------------------------------------------------------------------------
# Http11Probe
# ---------------------------------------------------------------------------

# The probe's "expected" column, read as what the scanner must do. "reject": a ScanError
# (or bytes never parsed after a closing message); "wait": incomplete is also fine (the
# probe's "timeout"); "accept": no error; "either": the probe allows both. Statuses the
# scanner cannot produce (405, 501 for methods, 304, 416, ...) are the origin's to send:
# the scanner must accept the head.
PROBE_EXPECTED = {
    "400": "reject",
    "400 or close": "reject",
    "400, or connection close": "reject",
    "400 or connection close": "reject",
    "400, 431, or close": "reject",
    "400, 414, 431, or close": "reject",
    "400/501 or close": "reject",
    "400, 505, or close": "reject",
    "400, close, or timeout": "wait",
    "400/close/timeout": "wait",
    "400/505, close, or timeout": "wait",
    "2xx": "accept",
    "200": "accept",
    "304": "accept",
    "2xx or close": "accept",
    "2xx (no crash)": "accept",
    "2xx + connection closed": "accept",
    "2xx with Cookie in body": "accept",
    "2xx with both cookies": "accept",
    "2xx with foo=bar in body": "accept",
    "2xx with a=1, b=2, c=3 in body": "accept",
    "2xx with Content-Type header": "accept",
    "2xx with Date header": "accept",
    "2xx with Allow header": "accept",
    "2xx with no body": "accept",
    "2xx (ignore) or 416": "accept",
    "2xx (Range ignored)": "accept",
    "415 or 2xx": "accept",
    "406 preferred, 2xx acceptable": "accept",
    "204 without Content-Length": "accept",
    "405 with Allow header": "accept",
    "Sensitive headers excluded from echo": "accept",
    "Non-1xx response": "accept",
    "any non-101 response": "accept",
    "Not 101": "accept",
    "426 or non-101": "accept",
    "2xx = Pass, 400 = Warn": "accept",
    "2xx = Pass, 400 = Warn (unscored)": "accept",
    "501, 405, or 400": "accept",  # unknown method: RFC 9110 §9.1, the origin answers 501
    "400, 405, 501, or close": "accept",  # CONNECT: the proxy answers 405, not the scanner
    "405 or 501 preferred; 200 is a warning": "accept",  # TRACE: the proxy/origin decides
    "400 or 2xx": "either",
    "2xx or 400": "either",
    "2xx or 400/431": "either",
    "400/405/501 or 2xx": "either",
    "400 = Pass, 2xx/404 = Warn": "either",
    "400 = Pass; 2xx = Warn": "either",
    "200 = Warn, 400 = Pass": "either",
    "400/405 = Pass, 200 = Warn": "either",
    "400 preferred, 2xx acceptable": "either",
    "400 preferred; 2xx is a warning": "either",
    "400 or close preferred; 2xx acceptable": "either",
    "400 or close (pass), 2xx (warn)": "either",
    "400 (rejected) or 2xx without control chars": "either",
    "400 (rejected) or 2xx without NUL": "either",
    "400/431 (rejected) or 2xx (survived)": "either",
    "400/431 = Pass, 2xx = Warn, close = Pass": "either",
    "400 or 2xx + close": "either",
    "400, or 2xx + connection close": "either",
    "400, or 2xx with connection close": "either",
    "400/501, or 2xx with connection close": "either",
    "400/close/pass-through; poisoned follow-up = warn": "either",
    "400/close preferred; poisoned follow-up = warn": "either",
    "417/400/close preferred; poisoned follow-up = warn": "either",
    "400/close preferred; extra response on step 2 = warn": "either",
    "417; 2xx is a warning": "either",
    "200 or 505 = Warn": "either",
    "Reject/drop (pass), normalize (fail), preserve (warn)": "either",
    "Reject/drop (pass), normalize casing (fail), preserve (warn)": "either",
    "Any response = Warn": "either",
    "Any status except 414": "either",
    "2xx + 2xx": "either",
    "304 with ETag": "either",
    "IMF-fixdate format": "either",
}
# The corpus describes this payload instead of carrying it (zero bytes).
PROBE_RAW = {"MAL-EMPTY-REQUEST": b""}
# Where fastlb is stricter than "either" or where the probe's status hint is checked.
PROBE_STATUS = {
    "COMP-EXPECT-UNKNOWN": 417,  # RFC 9110 §10.1.1
    "MAL-H2-PREFACE": 505,  # well-formed HTTP/2.0 version: RFC 9110 §15.6.6
    "RFC9112-2.3-INVALID-VERSION": 505,
    "COMP-UNKNOWN-TE-501": 400,  # gzip alone: chunked is not final (RFC 9112 §6.3 (4))
}
PROBE_FACTS = {
    "COMP-CONNECTION-CLOSE": dict(keep_alive=False),
    "COMP-HTTP10-DEFAULT-CLOSE": dict(keep_alive=False, http_minor=0),
    "COMP-NO-1XX-HTTP10": dict(expect_continue=False),  # RFC 9110 §10.1.1: ignored in 1.0
    "COMP-UPGRADE-HTTP10": dict(upgrade=False),  # RFC 9110 §7.8: ignored in 1.0
    "COMP-UPGRADE-MISSING-CONN": dict(upgrade=False),
    "COMP-UPGRADE-POST": dict(upgrade=True),
    "SMUG-EXPECT-100-CL": dict(expect_continue=True, content_length=5),
    "COMP-ABSOLUTE-FORM": dict(target=b"http://localhost:8080/"),
}


def probe_cases():
    try:
        return [pytest.param(c, id=c["id"]) for c in load("http11probe_cases.json")]
    except pytest.skip.Exception:
        return [pytest.param(None, marks=pytest.mark.skip(reason="corpus not found"))]


def test_probe_expectations_are_all_classified():
    try:
        cases = load("http11probe_cases.json")
    except pytest.skip.Exception:
        raise
    unknown = {c["expected"] for c in cases} - set(PROBE_EXPECTED)
    assert not unknown, "classify these probe expectations: %r" % sorted(unknown)


@pytest.mark.parametrize("case", probe_cases())
def test_http11probe(mod, case):
    if "raw" not in case:
        pytest.skip("no request payload (a response-side or multi-step check)")
    if case["id"] in PROBE_RAW:
        raw = PROBE_RAW[case["id"]]
    elif case.get("placeholders"):
        pytest.skip("payload elided in the corpus (%s); the same limits are unit-tested" % case["raw"][:40])
    else:
        raw = wire(case)
    outcome = drive_requests(mod, raw)
    rule = PROBE_EXPECTED[case["expected"]]
    if rule == "reject":
        assert rejected(outcome), outcome
    elif rule == "wait":
        assert rejected(outcome) or outcome.verdict == "incomplete", outcome
    elif rule == "accept":
        assert not rejected(outcome), outcome
    if case["id"] in PROBE_STATUS:
        assert outcome.verdict == "error" and outcome.error.status == PROBE_STATUS[case["id"]], outcome
    if case["id"] in PROBE_FACTS:
        sc = mod.RequestScanner()
        assert sc.scan(raw) > 0
        for name, value in PROBE_FACTS[case["id"]].items():
            assert getattr(sc, name) == value, name


# ---------------------------------------------------------------------------
# http-desync-guardian
# ---------------------------------------------------------------------------

def desync_cases():
    try:
        return [pytest.param(c, id=c["id"]) for c in load("http_desync_guardian_cases.json") if c["tier"] == "Severe"]
    except pytest.skip.Exception:
        return [pytest.param(None, marks=pytest.mark.skip(reason="corpus not found"))]


@pytest.mark.parametrize("case", desync_cases())
def test_desync_guardian_severe_is_rejected(mod, case):
    raw = case["raw_headers_only"].encode("latin-1")
    # Refused as it is, and still refused once a Host field rules out the easy reason.
    plain = drive_requests(mod, raw)
    patched = drive_requests(mod, raw, add_host=True)
    assert plain.verdict == "error" and plain.messages == [], plain
    assert patched.verdict == "error" and patched.messages == [], patched
    assert patched.error.reason != "missing Host"
