"""Third-party HTTP/1.1 corpora through a real fastlb process, checked on both sides.

Corpora (../shared/corpora, read in place via tests.conftest.CORPORA; see its README):
http-desync-guardian (every case), Http11Probe (every case that has a request payload,
all categories; the 12 elided payloads rebuilt from their description in
``PROBE_PAYLOADS``, the 15 cases without a payload reported as skipped) and the llhttp
request corpus (every case). Everything runs on both twins of the core: a module-scoped
rig per twin, one fastlb process (the compiled core, or ``FASTLB_NO_EXTENSIONS=1`` for
the pure-Python twin; FastlbProcess checks the core the process reports) and one
recording backend (tests/support/backend.py, httptools based, ``echo_request_id`` on),
reset between cases. ``max_idle_per_backend: 0``: every forwarded request has its own
upstream connection, the n-th upstream connection carries the n-th forwarded request.

How a case runs. A model of the byte stream says which requests it holds: httptools
(llhttp strict) fed one byte at a time, with fastlb's documented semantics on top (an
Upgrade is no tunnel without a 101, which this backend never sends, so a Content-Length
body is the request's and what follows is the next request; CONNECT is answered 405 by
fastlb; nothing after a message that closes the connection is read). The payload goes
on a raw socket. When the model ends between messages (or in an llhttp error), a
unique canary ``GET /canary-N`` with ``Connection: close`` follows on the same
connection; when it ends inside a message, or the payload is empty, the client shuts
down its write side instead, so nothing is waited on. The client reads until EOF,
within ``EOF_BOUND`` (3 s) while ``client_idle`` and ``client_header`` are 30 s: an EOF
seen was fastlb's decision, not an idle timer. Before each case the backend settles
(connections abandoned by the previous case are accepted and recorded before the reset).

What every case asserts:

- Upstream integrity, on every upstream connection the backend accepted (counted, with
  its ``raw_len``, not only complete requests): the bytes parse under h11 and under
  httptools (llhttp strict), both read the same request, exactly one request head and
  nothing after its message; no forwarded request has Content-Length with
  Transfer-Encoding, two Content-Lengths, a Transfer-Encoding other than one
  ``chunked``, or trailer fields. A connection without a byte is allowed only as the
  last one, for a valid head fastlb started to forward and abandoned (a client
  half-close while connecting).
- Pairing: the client's responses from the backend (``X-Backend``) are one per complete
  upstream request, in order, and the n-th carries ``X-Echo-Request-ID`` equal to the
  X-Request-ID of the n-th upstream request (fastlb generates it; it does not echo it in
  backend responses, so the backend does): paired by id, not only in number.
- Interpretation: the client's exchanges, in order, are the model's, each forwarded
  request exactly as the backend must see it (method, target, decoded body, and
  headers modulo the rewriting fastlb documents, ``upstream_view``: hop-by-hop fields
  and the fields Connection names dropped except Host/Content-Length/X-Request-ID,
  values OWS-trimmed, X-Forwarded-For replaced by the client address and the other identity fields (X-Forwarded-*, Forwarded, X-Real-IP) removed, X-Forwarded-Proto, X-Request-ID,
  Transfer-Encoding: chunked, a websocket Upgrade and, for HTTP/1.0, Host added), each
  CONNECT answered 405; then at most one more thing: fastlb's own error
  (400/414/417/431/501/505) or a close. The outcome is ``forward`` (every model
  exchange, then EOF), ``wait`` (every complete exchange, then after the half-close
  either a quiet close or the one 400 that names it; the partial message never
  forwarded complete), ``reject`` (fastlb's error after k exchanges) or ``close``
  (EOF after k exchanges, no answer). Anything else fails: an extra or missing
  response, a request the model does not hold, another interpretation.
- After ``reject``/``close``: EOF within the bound, no reset; of the rejected request at
  most one upstream connection, and none at all (zero bytes) for a head-level reject:
  only a chunked body found malformed after its valid head was streamed
  (docs/http-parsing.md) leaves a connection, closed, with that head (as the model
  reads it) and an incomplete body.
- The outcome is one the case allows, with an allowed status: Http11Probe ``expected``
  strings through ``PROBE_EXPECTED`` (every string classified; an unknown one fails the
  collection); for "must reject" expectations nothing of the payload may be forwarded.
  desync-guardian ``Severe``: rejected with no upstream connection at all (a Host is
  added when the payload has none, so the reject is for the case's own flaw); other
  tiers: any outcome above. llhttp (Host added to HTTP/1.1 heads without one, as in
  tests/unit/test_scanner_corpora.py): strict ``ok``/``incomplete`` accepted, and the
  model's messages equal the corpus's (method, url, headers); ``upgrade`` accepted, or
  rejected only in the bytes after the upgrade request; ``error`` rejected, nothing
  from the refused message on forwarded; lenient-mode cases rejected unless in
  ``LENIENT_ACCEPTED``; ``llhttp_specific`` decided per category in ``LLHTTP_SPECIFIC``.

Explicit lists, each entry with its reason: ``DISAGREEMENTS`` (fastlb decides otherwise
than the corpus, defensibly; a listed case must have exactly that outcome and status),
``UNKNOWN_METHODS`` (token methods llhttp's table lacks: model and upstream httptools
check read a known method of the same length, the backend's own 400 pairs with them),
``MODEL_READS`` (llhttp refuses what fastlb accepts by design: the model reads the
payload as fastlb documents it).
"""

import functools
import itertools
import json
import os
import random
import re
import socket
import struct
import time

import h11
import httptools
import pytest

from tests.conftest import CORPORA, REQUIRE_CORPORA, TWINS
from tests.integration.conftest import pool_doc
from tests.support.backend import BackendServer
from tests.support.fastlb_proc import FastlbProcess

pytestmark = pytest.mark.skipif(not CORPORA.exists(), reason="../shared/corpora not found beside the checkout")

# Reading until EOF after an error: bounded well below client_idle/client_header (30 s),
# so an EOF seen within it was fastlb's decision, not an idle timer. In the normal case
# the EOF arrives within milliseconds; the bound only matters when something is wrong.
EOF_BOUND = 3.0
LONG_TIMEOUT = "30s"
CLIENT_IP = b"127.0.0.1"
HALF_CLOSE_REASON = "client closed the connection before the end of the request body"
# Statuses fastlb answers a client's request with itself (docs/http-parsing.md §1);
# 405 only for CONNECT, which the model predicts.
FASTLB_REJECTS = frozenset((400, 414, 417, 431, 501, 505))
CANARY = b"GET /canary-%d HTTP/1.1\r\nHost: canary.test\r\nConnection: close\r\n\r\n"
HOST_PATCH = b"corpus.test"
ANY_RID = re.compile(rb"[0-9a-f]{32}")
# W3C Trace Context: version 00 (the corpora carry no other), ids not all zeros
VALID_TP = re.compile(rb"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")
NEW_TP = re.compile(rb"00-[0-9a-f]{32}-[0-9a-f]{16}-01")
# Backend endpoints that answer with raw writes, without X-Echo-Request-ID
RAW_ENDPOINTS = ("/hop", "/keepalive-leftover", "/halfhead", "/ws", "/reset", "/expect-reject")


def _load(name):
    path = CORPORA / name
    if not path.exists():
        if REQUIRE_CORPORA:
            raise FileNotFoundError("FASTLB_REQUIRE_CORPORA=1 but %s is missing" % path)
        return []
    data = json.loads(path.read_text())
    return data["cases"] if isinstance(data, dict) else data


# ---------------------------------------------------------------------------
# Allowed outcomes
# ---------------------------------------------------------------------------

FORWARD, WAIT, REJECT, CLOSE = "forward", "wait", "reject", "close"


class Allowed:
    """Outcomes a case allows; ``statuses``: what a reject may answer; ``first``: a reject
    must come before anything is forwarded (the corpus says the payload must be refused)."""

    def __init__(self, outcomes, statuses=FASTLB_REJECTS, first=False, head_level=False, after_upgrade=False):
        self.outcomes = frozenset(outcomes)
        self.statuses = frozenset(statuses)
        self.first = first
        self.head_level = head_level  # a reject must open no upstream connection at all
        # a reject/close only of the bytes after a (non-tunnelled) upgrade request
        self.after_upgrade = after_upgrade

    def __repr__(self):
        return "Allowed(%s, statuses=%s, first=%s)" % (sorted(self.outcomes), sorted(self.statuses), self.first)


ACCEPT = (FORWARD, WAIT)  # WAIT is acceptance of a payload that ends inside a message


def must_reject(statuses=FASTLB_REJECTS, head_level=False):
    return Allowed((REJECT, CLOSE), statuses, first=True, head_level=head_level)


def accept():
    return Allowed(ACCEPT)


def either(statuses=FASTLB_REJECTS):
    return Allowed(ACCEPT + (REJECT, CLOSE), statuses)


def timeout_ok(statuses):
    """"400, close, or timeout": a reject, a close, or waiting for the rest (never a forward
    of something the model calls complete and the probe calls incomplete)."""
    return Allowed((REJECT, CLOSE, WAIT), statuses, first=True)


# Http11Probe ``expected`` -> allowed outcomes, every string classified explicitly (the
# collection fails on one not here). Reading rules: "close" is a silent close; "timeout"
# is waiting for the rest of the message; "Warn" is allowed (it is not "Fail"); a status
# the origin produces (304, 405 for DELETE, 406, 415, 416, 501 for an unknown method) is the
# backend's to send, so forwarding the request is what a proxy does; "2xx without X"
# allows a *repaired* request only, which fastlb never makes (it does not repair), so
# only the reject remains; "normalize (fail)" is what the exact interpretation check
# forbids. No-payload cases are listed too (they are reported as skipped).
S400 = (400,)
PROBE_EXPECTED = {
    "400": must_reject(S400),
    "400 or close": must_reject(S400),
    "400, or connection close": must_reject(S400),
    "400 or connection close": must_reject(S400),
    "400, 431, or close": must_reject((400, 431)),
    "400, 414, 431, or close": must_reject((400, 414, 431)),
    "400/501 or close": must_reject((400, 501)),
    "400, 505, or close": must_reject((400, 505)),
    "400 (rejected) or 2xx without control chars": must_reject(S400),
    "400 (rejected) or 2xx without NUL": must_reject(S400),
    "400, close, or timeout": timeout_ok(S400),
    "400/close/timeout": timeout_ok(S400),
    "400/505, close, or timeout": timeout_ok((400, 505)),
    "2xx": accept(),
    "200": accept(),
    "304": accept(),
    "304 with ETag": accept(),
    "2xx + 2xx": accept(),
    "IMF-fixdate format": accept(),
    "2xx (no crash)": accept(),
    "2xx + connection closed": accept(),
    "2xx with Cookie in body": accept(),
    "2xx with both cookies": accept(),
    "2xx with foo=bar in body": accept(),
    "2xx with a=1, b=2, c=3 in body": accept(),
    "2xx with Content-Type header": accept(),
    "2xx with Date header": accept(),
    "2xx with Allow header": accept(),
    "2xx with no body": accept(),
    "2xx (ignore) or 416": accept(),
    "2xx (Range ignored)": accept(),
    "415 or 2xx": accept(),
    "406 preferred, 2xx acceptable": accept(),
    "204 without Content-Length": accept(),
    "405 with Allow header": accept(),
    "Sensitive headers excluded from echo": accept(),
    "Non-1xx response": accept(),
    "any non-101 response": accept(),
    "Not 101": accept(),
    "426 or non-101": accept(),
    "2xx or close": Allowed(ACCEPT + (CLOSE,)),
    "2xx = Pass, 400 = Warn": either(S400),
    "2xx = Pass, 400 = Warn (unscored)": either(S400),
    "501, 405, or 400": either((400, 405, 501)),
    "400, 405, 501, or close": either((400, 405, 501)),  # CONNECT: the model's 405
    "405 or 501 preferred; 200 is a warning": either((405, 501)),
    "400 or 2xx": either(S400),
    "2xx or 400": either(S400),
    "2xx or 400/431": either((400, 431)),
    "400/405/501 or 2xx": either((400, 405, 501)),
    "400 = Pass, 2xx/404 = Warn": either(S400),
    "400 = Pass; 2xx = Warn": either(S400),
    "200 = Warn, 400 = Pass": either(S400),
    "400/405 = Pass, 200 = Warn": either((400, 405)),
    "400 preferred, 2xx acceptable": either(S400),
    "400 preferred; 2xx is a warning": either(S400),
    "400 or close preferred; 2xx acceptable": either(S400),
    "400 or close (pass), 2xx (warn)": either(S400),
    "400/431 (rejected) or 2xx (survived)": either((400, 431)),
    "400/431 = Pass, 2xx = Warn, close = Pass": either((400, 431)),
    "400 or 2xx + close": either(S400),
    "400, or 2xx + connection close": either(S400),
    "400, or 2xx with connection close": either(S400),
    "400/501, or 2xx with connection close": either((400, 501)),
    "400/close/pass-through; poisoned follow-up = warn": either(S400),
    "400/close preferred; poisoned follow-up = warn": either(S400),
    "417/400/close preferred; poisoned follow-up = warn": either((400, 417)),
    "400/close preferred; extra response on step 2 = warn": either(S400),
    "417; 2xx is a warning": either((417,)),
    "200 or 505 = Warn": either((400, 505)),
    "Reject/drop (pass), normalize (fail), preserve (warn)": either(S400),
    "Reject/drop (pass), normalize casing (fail), preserve (warn)": either(S400),
    "Any response = Warn": either(),
    "Any status except 414": either(FASTLB_REJECTS - {414}),
}


def _probe_payload_builders():
    """Payloads the probe corpus elides (``placeholders``), rebuilt from its description."""
    host = b"Host: localhost:8080\r\n"
    garbage = random.Random(42)  # the probe's own RNG is not Python's: any 256 seeded bytes
    return {
        "MAL-BINARY-GARBAGE": lambda: bytes(garbage.getrandbits(8) for _ in range(256)),
        "MAL-CHUNK-EXT-64K": lambda: b"POST / HTTP/1.1\r\n" + host + b"Transfer-Encoding: chunked\r\n\r\n5;ext="
        + b"a" * 65536 + b"\r\nhello\r\n0\r\n\r\n",
        "MAL-LONG-HEADER-NAME": lambda: b"GET / HTTP/1.1\r\n" + host + b"A" * 100000 + b": val\r\n\r\n",
        "MAL-LONG-HEADER-VALUE": lambda: b"GET / HTTP/1.1\r\n" + host + b"X-Big: " + b"B" * 100000 + b"\r\n\r\n",
        "MAL-LONG-METHOD": lambda: b"A" * 100000 + b" / HTTP/1.1\r\n" + host + b"\r\n",
        "MAL-LONG-URL": lambda: b"GET /" + b"A" * 100000 + b" HTTP/1.1\r\n" + host + b"\r\n",
        "MAL-MANY-HEADERS": lambda: b"GET / HTTP/1.1\r\n" + host
        + b"".join(b"X-H-%d: value\r\n" % i for i in range(10000)) + b"\r\n",
        "MAL-RANGE-OVERLAPPING` (unscored)": lambda: b"GET / HTTP/1.1\r\n" + host + b"Range: bytes="
        + b",".join([b"0-"] * 1000) + b"\r\n\r\n",
        "SMUG-CL-LEADING-ZEROS-OCTAL": lambda: b"POST / HTTP/1.1\r\n" + host + b"Content-Length: 0200\r\n\r\n"
        + b"A" * 200,
        "COOK-MANY-PAIRS": lambda: b"GET /echo HTTP/1.1\r\n" + host + b"Cookie: "
        + b"; ".join(b"k%d=v%d" % (i, i) for i in range(1000)) + b"\r\n\r\n",
        # sizes the probe does not give: a cookie line past fastlb's 8 KiB field limit, and
        # a URL well within its 8 KiB request-line limit ("any status except 414")
        "COOK-OVERSIZED": lambda: b"GET /echo HTTP/1.1\r\n" + host + b"Cookie: big=" + b"A" * 16384 + b"\r\n\r\n",
        "COMP-LONG-URL-OK": lambda: b"GET /" + b"a" * 4000 + b" HTTP/1.1\r\n" + host + b"\r\n",
    }


PROBE_PAYLOADS = _probe_payload_builders()
# Described, not carried: zero bytes on an opened connection.
PROBE_RAW = {"MAL-EMPTY-REQUEST": b""}


# llhttp cases with ``llhttp_specific`` (llhttp's own choices), decided per category
# (prefix of its explanation): "accept", "reject", or "as-model" (the case's own
# expectation is an llhttp API artefact; what fastlb must do is the model's accept).
LLHTTP_SPECIFIC = {
    "pausing API test": "accept",  # the wire bytes are a plain valid request
    "Upgrade handling (llhttp pauses)": "accept",  # not a tunnel without a 101 (docs)
    "CONNECT": "accept",  # the model: fastlb answers 405 itself (proxy.py)
    "llhttp_finish() (EOF) API test": "accept",  # a truncated message at EOF: waits, then closes
    '"Data after Connection: close"': "accept",  # served, then closed; the rest never parsed
    "skipBody API mode": "accept",  # without llhttp's callback the body is awaited
    "RTSP": "reject",  # RTSP/ICE versions are not HTTP (RFC 9112 §2.3)
    "ICE": "reject",
    "error wording about RTSP/ICE": "reject",
    "llhttp rejects RTSP-only method": "accept",  # RFC 9110 §9.1: method = token
    "llhttp rejects unknown method": "accept",
    "SOURCE (Icecast) method": "accept",
    "HTTP/2 prior-knowledge preface (PRI)": "reject",  # "PRI *": asterisk-form is OPTIONS-only
    "HTTP/0.9-style request line": "reject",  # RFC 9112 §2.3
    "llhttp accepts": "accept",  # '|', '"', '\\' are visible ASCII: forwarded (docs §2)
}


def _specific_rule(text):
    for prefix, rule in LLHTTP_SPECIFIC.items():
        if text.startswith(prefix):
            return rule
    raise AssertionError("decide this llhttp_specific category: %r" % text)


# Requests whose method llhttp's table lacks: RFC 9110 §9.1 makes any token a method, and
# fastlb forwards them; llhttp (the model and the test backend) refuses them at the
# method. For these the model and the upstream httptools check read the method as a
# known one of the same length (framing does not depend on it), h11 reads the real bytes,
# and the backend's answer is its own 400 (it cannot parse the method), still paired.
UNKNOWN_METHODS = {
    "COMP-UNKNOWN-METHOD": b"FOOBAR",
    "COMP-METHOD-CASE": b"get",
    "SMUG-CL0-BODY-POISON": b"XGET",  # the request after the empty body: "XGET / HTTP/1.1"
    "request/invalid:66": b"ANNOUNCE",  # RTSP's, with HTTP/1.0
    "request/invalid:356": b"MKCOLA",
    # no tunnel without a 101: after the 4-byte body, "efgh" + the canary is the next request
    "request/connection:713": b"efghGET",
}

# Where llhttp refuses what fastlb accepts by design, the model reads the payload as
# fastlb documents it: id -> (rewrite of the bytes for the model only, reason).
def _drop_trailer(name):
    return lambda raw: re.sub(rb"(\r\n0\r\n)" + name + rb":[^\r\n]*\r\n", rb"\1", raw)


MODEL_READS = {
    "SMUG-TRAILER-CL": (_drop_trailer(b"Content-Length"), "trailer fields are validated and discarded "
                        "(RFC 9112 §7.1.2; docs §11), a trailer Content-Length frames nothing; llhttp refuses it"),
    "SMUG-TRAILER-TE": (_drop_trailer(b"Transfer-Encoding"), "as SMUG-TRAILER-CL, for a trailer Transfer-Encoding"),
}

# llhttp lenient-mode cases a strict proxy handles as the strict reading does, without
# refusing anything: id -> reason. (Every other lenient-mode case must be rejected.)
LENIENT_ACCEPTED = {
    "request/connection:107": "lenient-keep-alive: the bytes after an HTTP/1.0 request without keep-alive are "
                              "never read (RFC 9112 §9.3, §9.6); the request itself is served, then the close",
    "request/connection:392": "lenient-keep-alive: as connection:107, after Connection: close",
}

# Where fastlb deliberately differs from the corpus: id -> (outcome, status or None, reason).
# A listed case must have exactly this outcome.
DISAGREEMENTS = {
    "MAL-LONG-METHOD": (REJECT, 414, "a request-line past max_request_line is 414 whichever part is long "
                                     "(docs/http-parsing.md §3); the probe names 400; rejected and closed either way"),
    "request/method:135": (REJECT, 400, "RFC 9112 §3.2.4: asterisk-form is for OPTIONS only (M-SEARCH * is SSDP "
                                        "over UDP); as in tests/unit/test_scanner_corpora.py"),
    "request/transfer-encoding:751": (REJECT, 501, "RFC 9112 §6.1: 501 for a coding other than chunked "
                                                   "(fastlb never decodes content codings)"),
    "request/transfer-encoding:793": (REJECT, 501, "as transfer-encoding:751, the codings in two fields"),
    "request/uri:222": (REJECT, 400, "RFC 9110 §4.2.4: userinfo in an http(s) URI is an error (it obscures the "
                                     "authority a proxy routes by)"),
}

# Cases that fail because of a product bug (reported; the test stays failing until fixed).
# ---------------------------------------------------------------------------
# The model: what the byte stream holds, read by llhttp strict with fastlb's semantics
# ---------------------------------------------------------------------------

class Msg:
    __slots__ = ("start", "method", "url", "minor", "headers", "body", "headers_complete", "complete",
                 "keep_alive", "upgrade")

    def __init__(self, start):
        self.start = start
        self.method = b""
        self.url = b""
        self.minor = 1
        self.headers = []
        self.body = b""
        self.headers_complete = False
        self.complete = False
        self.keep_alive = True
        self.upgrade = False

    def header(self, name):
        return [v for n, v in self.headers if n.lower() == name]

    @property
    def kind(self):
        return "405" if self.method == b"CONNECT" else "fwd"

    def __repr__(self):
        return "<Msg %s %s HTTP/1.%d %s>" % (self.method, self.url, self.minor,
                                             "complete" if self.complete else "partial")


class _Collector:
    def __init__(self):
        self.pos = 0
        self.msgs = []
        self.cur = None
        self.parser = None

    def on_message_begin(self):
        self.cur = Msg(self.pos)
        self.msgs.append(self.cur)

    def on_url(self, url):
        self.cur.url += url

    def on_header(self, name, value):
        if not self.cur.headers_complete:  # trailer fields are discarded by fastlb
            self.cur.headers.append((bytes(name), bytes(value)))

    def on_headers_complete(self):
        m = self.cur
        p = self.parser
        m.headers_complete = True
        m.method = p.get_method()
        m.minor = 0 if p.get_http_version() == "1.0" else 1
        m.keep_alive = bool(p.should_keep_alive())

    def on_body(self, body):
        self.cur.body += body

    def on_message_complete(self):
        self.cur.complete = True
        self.cur.keep_alive = bool(self.parser.should_keep_alive())
        self.cur = None


class Model:
    def __init__(self, msgs, state, error=None):
        self.msgs = msgs
        self.state = state  # boundary | partial | closed | error
        self.error = error

    @property
    def exchanges(self):
        return [m for m in self.msgs if m.complete]

    @property
    def partial(self):
        return self.msgs[-1] if self.msgs and not self.msgs[-1].complete else None

    def __repr__(self):
        return "Model(%s, %r%s)" % (self.state, self.msgs, ", " + self.error if self.error else "")


def _same_length_method(method):
    known = {3: b"PUT", 4: b"POST", 5: b"PATCH", 6: b"DELETE", 7: b"OPTIONS", 8: b"PROPFIND"}
    return known[len(method)]


@functools.lru_cache(maxsize=1024)
def model(stream, alias=None):
    """Read ``stream`` as fastlb should if it accepts what llhttp strict accepts."""
    aliased = ()
    if alias:  # same length: every offset stays valid
        aliased = {mo.start() for mo in re.finditer(re.escape(alias + b" "), stream)}
        stream = stream.replace(alias + b" ", _same_length_method(alias) + b" ")
    mdl = _model(stream)
    for m in mdl.msgs:
        if m.start in aliased:
            m.method = alias
    return mdl


def _model(stream):
    msgs = []
    pos = 0
    for _ in range(1000):  # one round per non-tunnelled upgrade
        col = _Collector()
        parser = httptools.HttpRequestParser(col)
        col.parser = parser
        i = pos
        upgrade_at = None
        try:
            while i < len(stream):
                col.pos = i
                parser.feed_data(stream[i:i + 1])
                i += 1
                if col.msgs and col.msgs[-1].complete and not col.msgs[-1].keep_alive:
                    msgs.extend(col.msgs)
                    return Model(msgs, "closed")
        except httptools.HttpParserUpgrade as exc:
            upgrade_at = i + (exc.args[0] if exc.args else 1)
        except httptools.HttpParserError as exc:
            msgs.extend(col.msgs)
            return Model(msgs, "error", "%s: %s" % (type(exc).__name__, exc))
        msgs.extend(col.msgs)
        if upgrade_at is None:
            return Model(msgs, "partial" if col.cur is not None else "boundary")
        m = col.msgs[-1]
        m.upgrade = True
        m.complete = True
        if m.method == b"CONNECT":
            # 405 without reading a body; the connection stays only without one
            if m.header(b"content-length") not in ([], [b"0"]) or m.header(b"transfer-encoding") or not m.keep_alive:
                return Model(msgs, "closed")
        else:
            # No tunnel: a body by Content-Length is the request's (llhttp 9 stops at the head)
            assert not m.header(b"transfer-encoding"), "model: a chunked upgrade request is not modelled"
            length = int(m.header(b"content-length")[0]) if m.header(b"content-length") else 0
            m.body = stream[upgrade_at:upgrade_at + length]
            upgrade_at += len(m.body)
            if len(m.body) < length:
                m.complete = False
                return Model(msgs, "partial")
            if not m.keep_alive:
                return Model(msgs, "closed")
        pos = upgrade_at
        if pos >= len(stream):
            return Model(msgs, "boundary")
    raise AssertionError("model: too many upgrades")


def add_host(payload):
    """Insert a Host field into every HTTP/1.1 request head of the payload that has none
    (an HTTP/1.1 request without Host is refused, RFC 9112 §3.2, which would prove nothing
    about the rest of the case). Absolute-form gets its authority."""
    buf = bytearray(payload)
    for m in reversed(model(payload).msgs):
        start = m.start
        eol = buf.find(b"\n", start)
        if eol < 0:
            continue
        line = bytes(buf[start:eol]).rstrip(b"\r")
        if not line.endswith(b" HTTP/1.1"):
            continue
        end = buf.find(b"\r\n\r\n", eol)
        head = bytes(buf[eol + 1:end if end >= 0 else len(buf)])
        if re.search(rb"(?im)^host[ \t]*:", head):
            continue
        host = HOST_PATCH
        target = line.split(b" ")[1] if line.count(b" ") >= 2 else b""
        if b"://" in target:
            authority = re.split(rb"[/?#]", target.split(b"://", 1)[1], maxsplit=1)[0]
            host = authority.rsplit(b"@", 1)[-1]
        buf[eol + 1:eol + 1] = b"Host: " + host + b"\r\n"
    return bytes(buf)


# ---------------------------------------------------------------------------
# What fastlb sends upstream for a model message (docs/operations.md, http-parsing.md §9)
# ---------------------------------------------------------------------------

HOP_BY_HOP = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding",
                        b"http2-settings", b"upgrade", b"x-forwarded-for", b"x-forwarded-proto"))
# identity fields from a client that is not a trusted proxy: removed (docs/security.md)
IDENTITY = frozenset((b"forwarded", b"x-real-ip"))
NOT_DROPPABLE = frozenset((b"host", b"content-length", b"x-request-id"))
UPGRADE_PROTOCOLS = (b"websocket",)  # listeners[i].upgrade_protocols default


def _tokens(values):
    out = []
    for v in values:
        out.extend(t.strip(b" \t") for t in v.split(b","))
    return [t for t in out if t]


def upstream_view(m, pool_host):
    """(method, target, headers, body) the backend must see for model message ``m``;
    ``ANY_RID`` stands for the X-Request-ID fastlb generates."""
    options = {t.lower() for t in _tokens(m.header(b"connection"))}
    drop = HOP_BY_HOP | (options - NOT_DROPPABLE)
    headers, xff = [], []
    for name, value in m.headers:
        value = value.strip(b" \t")
        lname = name.lower()
        if lname == b"x-forwarded-for" or lname in IDENTITY or (
                lname.startswith(b"x-forwarded-") and len(lname) > 12):
            continue  # the test client is not a trusted proxy: never forwarded as sent
        elif lname not in drop:
            headers.append((name, value))
    headers.append((b"X-Forwarded-For", CLIENT_IP))
    headers.append((b"X-Forwarded-Proto", b"http"))
    if not m.header(b"x-request-id"):
        headers.append((b"X-Request-ID", ANY_RID))
    if m.header(b"transfer-encoding"):
        headers.append((b"Transfer-Encoding", b"chunked"))
    if m.minor == 1 and b"upgrade" in options and m.header(b"upgrade"):
        offer = [t for t in _tokens(m.header(b"upgrade")[:1]) if t.partition(b"/")[0].lower() in UPGRADE_PROTOCOLS]
        if offer:
            headers += [(b"Connection", b"upgrade"), (b"Upgrade", b", ".join(offer))]
    if m.minor == 0 and not m.header(b"host"):
        authority = re.match(rb"[a-zA-Z][a-zA-Z0-9+.-]*://([^/?#]*)", m.url)
        headers.append((b"Host", authority.group(1) if authority else pool_host))
    # tracing (default mode start, docs/tracing.md): one valid traceparent goes on as
    # sent; otherwise traceparent and tracestate are dropped and a new one is added last
    tps = [v.strip(b" \t") for n, v in m.headers if n.lower() == b"traceparent"]
    if not (len(tps) == 1 and VALID_TP.fullmatch(tps[0])):
        headers = [(n, v) for n, v in headers if n.lower() not in (b"traceparent", b"tracestate")]
        headers.append((b"traceparent", NEW_TP))
    return m.method, m.url, headers, m.body


def _headers_match(got, want):
    return len(got) == len(want) and all(
        gn == wn and (wv.fullmatch(gv) if hasattr(wv, "fullmatch") else gv == wv)
        for (gn, gv), (wn, wv) in zip(got, want))


# ---------------------------------------------------------------------------
# What the backend got: every upstream connection, parsed by h11 and by httptools
# ---------------------------------------------------------------------------

class Req:
    __slots__ = ("method", "target", "headers", "body", "complete", "trailers")

    def __init__(self):
        self.method = self.target = self.body = b""
        self.headers = []
        self.trailers = []
        self.complete = False

    def key(self):
        return (self.method, self.target, self.headers, self.body, self.complete, self.trailers)

    def header(self, name):
        return [v for n, v in self.headers if n.lower() == name]


class Unit:
    """One upstream connection: its raw bytes and the one request they carry."""

    def __init__(self, rec, alias):
        self.index = rec.index
        self.raw = bytes(rec.raw)
        self.raw_len = rec.raw_len
        self.closed = rec.closed
        self.backend_error = rec.error
        self.req = None
        self.problem = None
        try:
            self._parse(alias)
        except AssertionError as exc:
            self.problem = str(exc)

    def _parse(self, alias):
        assert self.raw_len == len(self.raw), "raw bytes truncated"
        if not self.raw_len:
            return  # connected, then aborted before the head was written (judge decides)
        a = self._h11(self.raw)
        raw = self.raw
        aliased = alias and raw.startswith(alias + b" ")
        if aliased:
            raw = _same_length_method(alias) + raw[len(alias):]
        b = self._httptools(raw)
        if aliased:
            b.method = alias
        assert a.key() == b.key(), "h11 and httptools read the upstream bytes differently: %r / %r" % (
            a.key(), b.key())
        self.req = a
        names = [n.lower() for n, _ in a.headers]
        assert names.count(b"content-length") <= 1, "two Content-Length fields forwarded"
        assert not (b"content-length" in names and b"transfer-encoding" in names), "CL and TE forwarded together"
        assert a.header(b"transfer-encoding") in ([], [b"chunked"]), "Transfer-Encoding forwarded: %r" % (
            a.header(b"transfer-encoding"),)
        assert not a.trailers, "trailer fields forwarded: %r" % (a.trailers,)

    @staticmethod
    def _h11(raw):
        conn = h11.Connection(h11.SERVER)
        conn.receive_data(raw)  # no EOF: a message cut off by an aborted connection stays incomplete
        req = None
        for _ in range(len(raw) + 10):
            try:
                ev = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise AssertionError("h11 rejects the upstream bytes: %s" % exc)
            if ev is h11.NEED_DATA:
                break
            if isinstance(ev, h11.Request):
                assert req is None, "two requests on one upstream connection (no pooling)"
                req = Req()
                req.method, req.target = bytes(ev.method), bytes(ev.target)
                req.headers = [(bytes(n), bytes(v)) for n, v in ev.headers.raw_items()]
            elif isinstance(ev, h11.Data):
                req.body += bytes(ev.data)
            elif isinstance(ev, h11.EndOfMessage):
                req.complete = True
                req.trailers = [(bytes(n), bytes(v)) for n, v in ev.headers.raw_items()]
                assert conn.trailing_data[0] == b"", "bytes after the request on its upstream connection: %r" % (
                    conn.trailing_data[0][:200],)
                break
            else:
                break
        assert req is not None, "upstream bytes without a complete request head: %r" % (raw[:200],)
        return req

    @staticmethod
    def _httptools(raw):
        req = Req()

        class P:
            in_body = False

            def on_url(self, url):
                req.target += url

            def on_header(self, name, value):
                (req.trailers if self.in_body else req.headers).append((bytes(name), bytes(value).strip(b" \t")))

            def on_headers_complete(self):
                self.in_body = True
                req.method = parser.get_method()

            def on_body(self, body):
                req.body += body

            def on_message_complete(self):
                req.complete = True

        parser = httptools.HttpRequestParser(P())
        try:
            parser.feed_data(raw)
        except httptools.HttpParserUpgrade:
            pass  # fastlb forwarded an allowed Upgrade; the backend did not switch
        except httptools.HttpParserError as exc:
            raise AssertionError("httptools (llhttp strict) rejects the upstream bytes: %s" % exc)
        return req

    def __repr__(self):
        r = self.req
        return "<Unit #%d %s %s %s%s>" % (self.index, r.method if r else "-", r.target if r else "-",
                                          "complete" if r and r.complete else "incomplete",
                                          " PROBLEM " + self.problem if self.problem else "")


# ---------------------------------------------------------------------------
# What the client got
# ---------------------------------------------------------------------------

class Resp:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body
        self.from_backend = bool(self.header(b"x-backend"))

    def header(self, name):
        return [v for n, v in self.headers if n == name]

    @property
    def echo(self):
        values = self.header(b"x-echo-request-id")
        return values[0] if values else None

    @property
    def reason(self):
        try:
            return json.loads(self.body).get("error")
        except (ValueError, AttributeError):
            return None

    def __repr__(self):
        return "<Resp %d %s%s>" % (self.status, "backend" if self.from_backend else "fastlb",
                                   " " + repr(self.reason) if not self.from_backend else "")


def client_responses(data, units):
    """Split the client's bytes into final responses (1xx skipped). A backend response to
    the n-th upstream request is framed by that request's method (HEAD has no body)."""
    out = []
    pos = 0
    n_backend = 0
    while pos < len(data):
        end = data.find(b"\r\n\r\n", pos)
        assert end >= 0, "the client got bytes that are not a response head: %r" % (data[pos:pos + 300],)
        lines = data[pos:end].split(b"\r\n")
        m = re.fullmatch(rb"HTTP/1\.1 (\d{3}) [^\r\n]*", lines[0])
        assert m, "bad status-line: %r" % (lines[0],)
        status = int(m.group(1))
        headers = []
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            assert colon and name == name.strip(), "bad response field line %r" % (line,)
            headers.append((name.lower(), value.strip(b" \t")))
        pos = end + 4
        if 100 <= status < 200:
            continue
        resp = Resp(status, headers, b"")
        method = None
        if resp.from_backend:
            if n_backend < len(units) and units[n_backend].req is not None:
                method = units[n_backend].req.method
            n_backend += 1
        length = resp.header(b"content-length")
        if method == b"HEAD" or status in (204, 304):
            pass
        elif resp.header(b"transfer-encoding") == [b"chunked"]:
            body = bytearray()
            for _ in range(len(data)):
                eol = data.find(b"\r\n", pos)
                assert eol >= 0, "chunked response cut off"
                size = int(data[pos:eol], 16)
                body += data[eol + 2:eol + 2 + size]
                pos = eol + 2 + size + 2
                if size == 0:
                    break
            resp.body = bytes(body)
        elif length:
            n = int(length[0])
            if not resp.from_backend and pos == len(data):
                pass  # fastlb's own answer to a HEAD request: the head only
            else:
                resp.body = data[pos:pos + n]
                assert len(resp.body) == n, "response body cut off: %r" % (data[pos - 200:],)
                pos += n
        else:
            resp.body = data[pos:]
            pos = len(data)
        out.append(resp)
    return out


# ---------------------------------------------------------------------------
# The rig: one backend and one fastlb per twin
# ---------------------------------------------------------------------------

class Rig:
    def __init__(self, twin, backend, proc):
        self.twin = twin
        self.backend = backend
        self.proc = proc
        self.canaries = itertools.count(1)


@pytest.fixture(scope="module", params=TWINS)
def rig(request, tmp_path_factory):
    twin = request.param
    env = {"FASTLB_NO_EXTENSIONS": "1", "FASTLB_REQUIRE_EXTENSIONS": ""} if twin == "python" else {}
    if twin == "cython" and os.environ.get("FASTLB_NO_EXTENSIONS"):
        pytest.skip("FASTLB_NO_EXTENSIONS is set: compiled twin not under test")
    backend = BackendServer(name="sm").start()
    backend.echo_request_id = True
    doc = pool_doc([backend], timeouts={"client_header": LONG_TIMEOUT, "client_idle": LONG_TIMEOUT},
                   limits={"max_idle_per_backend": 0})
    proc = FastlbProcess(tmp_path_factory.mktemp("smuggling-" + twin), doc=doc, env=env).start()
    yield Rig(twin, backend, proc)
    proc.kill()
    backend.stop()


class Observation:
    def __init__(self, payload, stream, half_closed, data, eof, reset, elapsed, units, responses):
        self.payload = payload
        self.stream = stream
        self.half_closed = half_closed
        self.data = data
        self.eof = eof
        self.reset = reset
        self.elapsed = elapsed
        self.units = units
        self.responses = responses

    def __repr__(self):
        return ("\n  sent %r%s\n  client got %r\n  eof=%s reset=%s after %.2fs\n  responses %r\n  upstream %r" % (
            self.stream[:400], " + half-close" if self.half_closed else "", self.data[:600], self.eof, self.reset,
            self.elapsed, self.responses, self.units))


def exchange(rig, payload, alias=None, read=None):
    """Send ``payload`` (+ a canary, or a half-close when it ends inside a message or holds
    no byte), read to EOF, and collect what the backend got. Returns (model, observation)."""
    backend = rig.backend
    # connections of the previous case (an abandoned connect is accepted late) are counted
    # before the reset, never in this case
    backend.settle()
    backend.wait_until(lambda b: all(c.closed for c in b.connections), timeout=EOF_BOUND)
    backend.reset()
    read = read or (lambda raw: raw)
    mdl = model(read(payload), alias)
    stream = payload
    half_close = mdl.state == "partial" or not payload
    if not half_close and mdl.state in ("boundary", "error"):
        stream = payload + CANARY % next(rig.canaries)
        mdl = model(read(stream), alias)
    s = rig.proc.connect()
    data = bytearray()
    eof = reset = False
    start = time.monotonic()
    try:
        s.settimeout(EOF_BOUND)
        try:
            s.sendall(stream)
            if half_close:
                s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # already answered and closed (a reject before the end of a long payload)
        deadline = start + EOF_BOUND
        while time.monotonic() < deadline and len(data) < 1 << 22:
            s.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                reset = True
                break
            if not chunk:
                eof = True
                break
            data += chunk
    finally:
        if not eof:  # a reset ends fastlb's side too, so no later case waits on it
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    elapsed = time.monotonic() - start
    # fastlb closes each upstream connection when its exchange ends (no pooling)
    backend.settle()
    backend.wait_until(lambda b: all(c.closed for c in b.connections), timeout=EOF_BOUND)
    units = [Unit(rec, alias) for rec in backend.connections]
    data = bytes(data)
    obs = Observation(payload, stream, half_close, data, eof, reset, elapsed, units, None)
    try:
        obs.responses = client_responses(data, units)
    except AssertionError as exc:
        pytest.fail("%s%r" % (exc, obs))
    return mdl, obs


def judge(mdl, obs, allowed, pool_host, alias=None):
    """Every invariant of the module docstring; returns (outcome, k, status)."""
    def fail(msg):
        pytest.fail("%s\n  model %r\n  allowed %r%r" % (msg, mdl, allowed, obs), pytrace=False)

    units = obs.units
    for u in units:
        if u.problem:
            fail("upstream connection #%d: %s" % (u.index, u.problem))
    if any(u.req is None for u in units[:-1]):
        fail("an upstream connection without a byte before another one: %r" % (units,))
    # responses from the backend pair, in order and by request id, with the upstream requests
    from_backend = [r for r in obs.responses if r.from_backend]
    answered = [u for u in units if u.req is not None and u.req.complete]
    if len(from_backend) != len(answered):
        fail("%d backend responses for %d complete upstream requests" % (len(from_backend), len(answered)))
    if answered != units[:len(answered)]:
        fail("an incomplete upstream request before a complete one")
    for n, (resp, unit) in enumerate(zip(from_backend, answered)):
        if unit.backend_error:
            if not (alias and unit.req.method == alias and resp.status == 400 and resp.echo is None):
                fail("the backend could not parse upstream request %d: %s" % (n, unit.backend_error))
            continue
        rid = unit.req.header(b"x-request-id")
        if not rid or resp.echo != rid[0]:
            fail("response %d echoes request id %r, upstream request %d has %r" % (n, resp.echo, n, rid))
    # the client's exchanges against the model's
    expected = mdl.exchanges
    k = 0
    units_iter = iter(answered)
    rest = []
    for i, resp in enumerate(obs.responses):
        want = expected[k] if k < len(expected) else None
        if resp.from_backend:
            unit = next(units_iter)
            if want is None or want.kind != "fwd":
                fail("a backend response where the model has %r" % (want,))
            method, target, headers, body = upstream_view(want, pool_host)
            got = unit.req
            if (got.method, got.target, got.body) != (method, target, body) or not _headers_match(got.headers, headers):
                fail("upstream request %d is not the model's interpretation:\n    got  %r\n    want %r" % (
                    k, (got.method, got.target, got.headers, got.body), (method, target, headers, body)))
            k += 1
        elif want is not None and want.kind == "405" and resp.status == 405:
            k += 1
        else:
            rest = obs.responses[i:]
            break
    extra_units = units[len(answered):]
    if len(rest) > 1 or (rest and (rest[0].from_backend or rest[0].status not in FASTLB_REJECTS)):
        fail("responses after %d model exchanges that are neither the model's nor one rejection: %r" % (k, rest))
    status = rest[0].status if rest else None
    if rest:
        if obs.half_closed and k == len(expected) and status == 400 and _names_half_close(rest[0]):
            outcome = WAIT
        else:
            outcome = REJECT
    elif k == len(expected) and obs.half_closed:
        outcome = WAIT
    elif k == len(expected) and mdl.state in ("boundary", "closed"):
        outcome = FORWARD
    else:
        outcome = CLOSE
    if not obs.eof or obs.reset:
        fail("the connection did not end with an EOF within %.0fs (outcome %s)" % (EOF_BOUND, outcome))
    # upstream bytes of the message that was not answered
    if outcome == FORWARD and extra_units:
        fail("forwarded everything, yet more upstream connections: %r" % (extra_units,))
    if extra_units:
        if len(extra_units) > 1:
            fail("more than one unanswered upstream connection: %r" % (extra_units,))
        unit = extra_units[0]
        want = expected[k] if k < len(expected) else mdl.partial
        if want is None or not want.headers_complete or want.kind != "fwd":
            fail("a head reached the backend that the model never completed: %r" % (unit,))
        method, target, headers, _ = upstream_view(want, pool_host)
        got = unit.req  # None: connected for this valid head, aborted before writing it
        if got is not None and ((got.method, got.target) != (method, target)
                                or not _headers_match(got.headers, headers)):
            fail("the unanswered upstream head is not the model's: %r / %r" % ((got.method, got.target, got.headers),
                                                                                (method, target, headers)))
        if not unit.closed:
            fail("the upstream connection of a cut request stayed open")
        if outcome != WAIT and not want.header(b"transfer-encoding"):
            fail("a head-level reject sent bytes upstream (only a chunked body can fail after its head): %r" % unit)
    if outcome in (REJECT, CLOSE):
        if allowed.after_upgrade and not any(m.upgrade for m in expected[:k]):
            fail("rejected before the upgrade request was forwarded (k=%d)" % k)
        if allowed.first and k:
            fail("the case must be refused, but %d of its requests were forwarded" % k)
        if allowed.head_level and units:
            fail("a head-level reject must open no upstream connection: %r" % (units,))
    return outcome, k, status


def _names_half_close(resp):
    """fastlb's 400 for a request body the client's half-close cut short; for a HEAD request
    the error has no body, so its Content-Length must be that of the JSON naming it."""
    if resp.reason is not None:
        return resp.reason == HALF_CLOSE_REASON
    rid = resp.header(b"x-request-id")
    body = json.dumps({"error": HALF_CLOSE_REASON, "request_id": rid[0].decode("latin-1") if rid else ""})
    return not resp.body and resp.header(b"content-length") == [b"%d" % (len(body) + 1)]


def check(rig, case_id, payload, allowed, alias=None):
    _check(rig, case_id, payload, allowed, alias)


def _check(rig, case_id, payload, allowed, alias=None):
    read = MODEL_READS[case_id][0] if case_id in MODEL_READS else None
    mdl, obs = exchange(rig, payload, alias, read)
    if case_id in LLHTTP_MESSAGES:
        # the model is llhttp's reading: the same messages as the corpus records
        for ours, theirs in zip(mdl.msgs, LLHTTP_MESSAGES[case_id]):
            headers = [(n, v.rstrip(b" \t")) for n, v in ours.headers]
            if headers[:1] and headers[0][0] == b"Host" and not any(
                    n.lower() == "host" for n, _ in theirs["headers"]):
                headers = headers[1:]  # the Host field add_host inserted
            want = [(n.encode("latin-1"), v.encode("latin-1").rstrip(b" \t")) for n, v in theirs["headers"]]
            assert (ours.method, ours.url, headers) == (theirs["method"].encode("latin-1"),
                                                        theirs["url"].encode("latin-1"), want), (ours, theirs)
    pool_host = rig.backend.address.encode()
    outcome, k, status = judge(mdl, obs, allowed, pool_host, alias)
    if case_id in DISAGREEMENTS:
        want_outcome, want_status, reason = DISAGREEMENTS[case_id]
        assert (outcome, status) == (want_outcome, want_status), (
            "listed difference no longer holds (%s): %s %s%r" % (reason, outcome, status, obs))
        return
    assert outcome in allowed.outcomes, "outcome %s (status %s) not allowed: %r\n  model %r%r" % (
        outcome, status, allowed, mdl, obs)
    if outcome == REJECT:
        assert status in allowed.statuses, "rejected with %d, the case allows %r%r" % (status, allowed, obs)


# ---------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------

def desync_cases():
    out = []
    for c in _load("http_desync_guardian_cases.json"):
        raw = add_host(c["raw_headers_only"].encode("latin-1"))
        allowed = must_reject(head_level=True) if c["tier"] == "Severe" else either()
        out.append(pytest.param(c["id"], raw, allowed, None, id=c["id"]))
    return out


def probe_cases():
    cases = _load("http11probe_cases.json")
    unknown = sorted({c["expected"] for c in cases} - set(PROBE_EXPECTED))
    if unknown:  # fails the collection, loudly
        raise AssertionError("classify these Http11Probe expectations in PROBE_EXPECTED: %r" % unknown)
    out = []
    for c in cases:
        cid = c["id"]
        allowed = PROBE_EXPECTED[c["expected"]]
        if cid in PROBE_RAW:
            raw = PROBE_RAW[cid]
        elif c.get("placeholders"):
            if cid not in PROBE_PAYLOADS:
                raise AssertionError("Http11Probe case %s elides its payload: rebuild it in PROBE_PAYLOADS" % cid)
            raw = PROBE_PAYLOADS[cid]()
        elif "raw" in c:
            raw = c["raw"].encode("latin-1")
        else:
            out.append(pytest.param(cid, None, None, None, id=cid, marks=pytest.mark.skip(
                reason="no request payload in the corpus (a multi-step or response-side check)")))
            continue
        out.append(pytest.param(cid, raw, allowed, UNKNOWN_METHODS.get(cid), id=cid))
    return out


# llhttp strict ``ok`` cases: the messages the corpus records (method, url, headers)
LLHTTP_MESSAGES = {}


def llhttp_cases():
    out = []
    for c in _load("llhttp_requests.json"):
        raw = add_host(c["raw"].encode("latin-1"))
        # a reject need not be of the first request: of the one llhttp refuses (the model
        # stops there, so nothing from it on can be forwarded)
        refuse = Allowed((REJECT, CLOSE))
        if c["mode"] != "strict":
            # llhttp accepts these only with a leniency flag
            allowed = accept() if c["id"] in LENIENT_ACCEPTED else refuse
        elif c.get("llhttp_specific") and _specific_rule(c["llhttp_specific"]) == "reject":
            allowed = refuse
        elif c["expect"] == "upgrade":
            # forwarded without a tunnel (no 101); what follows is HTTP, maybe not valid HTTP
            allowed = Allowed(ACCEPT + (REJECT, CLOSE), after_upgrade=True)
        elif c.get("llhttp_specific"):
            allowed = accept()
        elif c["expect"] in ("error", "error_at_eof"):
            allowed = refuse
        else:
            assert c["expect"] in ("ok", "incomplete"), c["expect"]
            allowed = accept()
            if c["expect"] == "ok":
                LLHTTP_MESSAGES[c["id"]] = [m for m in c["messages"] if m.get("headers_complete")]
        out.append(pytest.param(c["id"], raw, allowed, UNKNOWN_METHODS.get(c["id"]), id=c["id"]))
    return out


@pytest.mark.parametrize("case_id, payload, allowed, alias", desync_cases())
def test_desync_guardian(rig, case_id, payload, allowed, alias):
    check(rig, case_id, payload, allowed, alias)


@pytest.mark.parametrize("case_id, payload, allowed, alias", probe_cases())
def test_http11probe(rig, case_id, payload, allowed, alias):
    check(rig, case_id, payload, allowed, alias)


@pytest.mark.parametrize("case_id, payload, allowed, alias", llhttp_cases())
def test_llhttp_requests(rig, case_id, payload, allowed, alias):
    check(rig, case_id, payload, allowed, alias)
