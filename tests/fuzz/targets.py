"""The fuzz target's body, importable without atheris: ``check_one(data)``.

One input drives one of three modes over both scanner twins, the compiled
``fastlb._core.scanner`` and the pure ``fastlb._core.scanner_py`` (the spec):

* ``request``: a client byte stream, fed in pieces to one growing ``bytearray``
  and scanned after each piece, as ``proxy.ProxyConnection._read_heads`` does; each
  complete head is recorded (consumed length, facts, ``headers()``,
  ``header_value()``, ``build_upstream_head()`` bytes), removed, its body framed
  (Content-Length skipped, chunked decoded by ``ChunkedDecoder``), then the next head.
* ``response``: the same over ``ResponseScanner`` (``build_downstream_head()``;
  1xx/204/304 have no body, a body without framing runs to the end: scanning stops).
* ``chunked``: ``ChunkedDecoder.feed`` over the pieces (output, ``done``,
  ``leftover`` after each feed; a failed decoder is fed once more: errors are sticky).

It is a crash (``AssertionError``, both results in the message) when

* the twins disagree on anything recorded, types included (a ``ScanError`` is
  recorded with its status *and* reason, as tests/unit/test_scanner_parity.py compares);
* splitting the input changes the outcome (the scanner's documented split invariance,
  checked on both twins against the whole input fed at once);
* a documented invariant breaks: a request error's status is one of 400/414/417/431/
  501/505, a response error is 502, a chunked error 400; a head ends in CRLF CRLF;
* anything but ``ScanError`` is raised (it propagates, with a note naming the twin).

Input layout (fixed, so the same bytes mean the same case with or without atheris;
``make_input`` writes it)::

    byte 0   mode: % 3 -> request, response, chunked
    byte 1   limits: low nibble picks HEAD_LIMITS, high nibble CHUNK_LIMITS
    byte 2,3 parameters of the "derived" limits (read always, used by those entries)
    byte 4   flags: bits 0-1 client_ip, bit 2 extra, bit 3 keep_upgrade,
             bit 4 drop_trace, bits 5-6 buffer type (bytearray/bytes/memoryview)
    byte 5   feeding: bits 0-3 number of cut points k, bit 7 byte by byte
             (the first BYTEWISE_MAX bytes one at a time, the rest in one piece)
    2*k      cut points, big-endian uint16 each, modulo len(payload) + 1
    rest     the payload, at most MAX_PAYLOAD bytes (the rest is ignored)

Short inputs read missing prefix bytes as 0 (request, default limits, one piece).
"""

import importlib

from fastlb._core._scanerror import ScanError

MAX_PAYLOAD = 64 * 1024  # one input's work stays bounded
BYTEWISE_MAX = 1024
PREFIX_LEN = 6

MODES = ("request", "response", "chunked")

# None: derived from bytes 2 and 3 (see _head_limits)
HEAD_LIMITS = (
    {},  # the defaults: 8192 / 65536 / 100
    dict(max_line=16, max_head=64, max_fields=2),
    dict(max_line=40, max_head=4096, max_fields=100),
    dict(max_line=8192, max_head=48, max_fields=100),
    dict(max_line=24, max_head=24, max_fields=0),
    dict(max_line=1, max_head=1, max_fields=0),
    None,
)
CHUNK_LIMITS = (
    {},  # the defaults: 4096 / 65536
    dict(max_line=4, max_trailer=8),
    dict(max_line=16, max_trailer=64),
    dict(max_line=1, max_trailer=1),
    None,
)
CLIENT_IPS = (b"10.0.0.1", b"", b"::1", b"2001:db8::7")
EXTRAS = (b"", b"X-Forwarded-Proto: https\r\n")
BUFFERS = ("bytearray", "bytes", "memoryview", "bytearray")
# header_value() lookups the proxy makes (upgrade, host) and a few more
LOOKUPS = (b"host", b"upgrade", b"X-Request-ID", b"content-length", b"transfer-encoding", b"connection")

REQUEST_STATUSES = frozenset((400, 414, 417, 431, 501, 505))  # docs/http-parsing.md §1
RESPONSE_STATUSES = frozenset((502,))
CHUNKED_STATUSES = frozenset((400,))

REQ_FACTS = ("method", "target", "http_minor", "host", "content_length", "chunked", "keep_alive",
             "upgrade", "expect_continue", "request_id", "traceparent", "header_count")
RESP_FACTS = ("status", "http_minor", "content_length", "chunked", "keep_alive", "upgrade", "header_count")

_TWINS = None


def twins():
    """(pure, compiled) scanner modules. The pure one is imported by name, so a fuzzer
    that instrumented its import (tests/fuzz/fuzz_http.py) gets the instrumented one."""
    global _TWINS
    if _TWINS is None:
        _TWINS = (importlib.import_module("fastlb._core.scanner_py"),
                  importlib.import_module("fastlb._core.scanner"))
    return _TWINS


# ---------------------------------------------------------------------------
# decoding the input
# ---------------------------------------------------------------------------

class Case:
    """What one input asks for (decoded by ``decode``)."""

    __slots__ = ("mode", "head_limits", "chunk_limits", "client_ip", "extra", "keep_upgrade",
                 "drop_trace", "buffer", "bytewise", "cuts", "payload")

    def __repr__(self):
        return "Case(%s)" % ", ".join("%s=%r" % (k, getattr(self, k)) for k in self.__slots__
                                      if k != "payload")


def _head_limits(index, p2, p3):
    limits = HEAD_LIMITS[index % len(HEAD_LIMITS)]
    if limits is None:
        limits = dict(max_line=1 + p2 * 4, max_head=1 + p3 * 16, max_fields=p2 % 12)
    return limits


def _chunk_limits(index, p2, p3):
    limits = CHUNK_LIMITS[index % len(CHUNK_LIMITS)]
    if limits is None:
        limits = dict(max_line=1 + p2 % 64, max_trailer=1 + p3 * 4)
    return limits


def decode(data):
    data = bytes(data)
    head = data[:PREFIX_LEN].ljust(PREFIX_LEN, b"\0")
    b0, b1, p2, p3, flags, feed = head
    case = Case()
    case.mode = MODES[b0 % 3]
    case.head_limits = _head_limits(b1 & 0x0F, p2, p3)
    case.chunk_limits = _chunk_limits(b1 >> 4, p2, p3)
    case.client_ip = CLIENT_IPS[flags & 3]
    case.extra = EXTRAS[(flags >> 2) & 1]
    case.keep_upgrade = bool(flags & 0x08)
    case.drop_trace = bool(flags & 0x10)
    case.buffer = BUFFERS[(flags >> 5) & 3]
    case.bytewise = bool(feed & 0x80)
    k = feed & 0x0F
    raw_cuts = data[PREFIX_LEN : PREFIX_LEN + 2 * k]
    case.payload = data[PREFIX_LEN + 2 * k :][:MAX_PAYLOAD]
    m = len(case.payload) + 1
    case.cuts = tuple(int.from_bytes(raw_cuts[i : i + 2], "big") % m for i in range(0, len(raw_cuts) - 1, 2))
    return case


def make_input(mode, payload, head_limits=0, chunk_limits=0, p2=0, p3=0, flags=0, cuts=(), bytewise=False):
    """The input bytes that ``decode`` turns into this case (seeds, tests)."""
    cuts = list(cuts)[:15]
    feed = len(cuts) | (0x80 if bytewise else 0)
    out = bytes((MODES.index(mode), (head_limits & 0x0F) | ((chunk_limits & 0x0F) << 4), p2, p3, flags, feed))
    for c in cuts:
        out += int(c).to_bytes(2, "big")
    return out + bytes(payload)


def pieces_of(case):
    payload = case.payload
    if case.bytewise:
        head = [payload[i : i + 1] for i in range(min(len(payload), BYTEWISE_MAX))]
        rest = payload[BYTEWISE_MAX:]
        return head + ([rest] if rest else [])
    points = sorted({c for c in case.cuts if 0 < c < len(payload)})
    bounds = [0] + points + [len(payload)]
    return [payload[a:b] for a, b in zip(bounds, bounds[1:])]


# ---------------------------------------------------------------------------
# drivers: everything observable, as plain data (values with their types)
# ---------------------------------------------------------------------------

def _typed(value):
    return (type(value).__name__, value)


def _error(exc, allowed, where):
    status, reason = exc.status, exc.reason
    if status not in allowed or not isinstance(reason, str) or not reason:
        raise AssertionError("%s: ScanError(%r, %r) breaks the documented statuses %s"
                             % (where, status, reason, sorted(allowed)))
    return ("error", _typed(status), _typed(reason))


class _View:
    """The buffer handed to the scanner: the bytearray itself, a bytes copy, or a
    memoryview released before the bytearray is resized."""

    def __init__(self, kind, buf):
        self.kind = kind
        self.buf = buf
        self.obj = None

    def __enter__(self):
        if self.kind == "bytes":
            self.obj = bytes(self.buf)
        elif self.kind == "memoryview":
            self.obj = memoryview(self.buf)
        else:
            self.obj = self.buf
        return self.obj

    def __exit__(self, *exc):
        if self.kind == "memoryview":
            self.obj.release()
        self.obj = None
        return False


def run_stream(mod, case, pieces):
    """Drive a request or response byte stream; return the trace (a list)."""
    request = case.mode == "request"
    cls = mod.RequestScanner if request else mod.ResponseScanner
    facts = REQ_FACTS if request else RESP_FACTS
    allowed = REQUEST_STATUSES if request else RESPONSE_STATUSES
    sc = cls(**case.head_limits)
    buf = bytearray()
    trace = []
    state = "head"
    remaining = 0
    dec = None
    body = []
    for piece in pieces:
        buf += piece
        while buf:
            if state == "head":
                with _View(case.buffer, buf) as view:
                    try:
                        n = sc.scan(view)
                    except ScanError as exc:
                        trace.append(_error(exc, allowed, "scan"))
                        return trace
                    if not n:
                        break
                    if not (type(n) is int and 0 < n <= len(buf)) or buf[n - 4 : n] != b"\r\n\r\n":
                        raise AssertionError("scan returned %r for a buffer of %d bytes: %r"
                                             % (n, len(buf), bytes(buf[:200])))
                    record = [("n", n)]
                    record += [(f, _typed(getattr(sc, f))) for f in facts]
                    record.append(("headers", [tuple(map(_typed, h)) for h in sc.headers(view)]))
                    record.append(("lookups", [_typed(sc.header_value(view, name)) for name in LOOKUPS]))
                    if request:
                        out = sc.build_upstream_head(view, case.client_ip, case.extra, case.keep_upgrade,
                                                     case.drop_trace)
                    else:
                        out = sc.build_downstream_head(view, case.extra, case.keep_upgrade)
                    record.append(("built", _typed(out)))
                trace.append(("head", record))
                del buf[:n]
                if not request and (sc.status < 200 or sc.status in (204, 304)):
                    continue  # RFC 9112 §6.3 (1): no body
                if sc.chunked:
                    dec = mod.ChunkedDecoder(**case.chunk_limits)
                    body = []
                    state = "chunked"
                elif sc.content_length > 0:
                    remaining = sc.content_length
                    state = "length"
                elif not request and sc.content_length < 0:
                    trace.append(("close-delimited",))  # RFC 9112 §6.3 (8): the rest is body
                    return trace
            elif state == "length":
                take = min(remaining, len(buf))
                del buf[:take]
                remaining -= take
                if not remaining:
                    state = "head"
            else:  # chunked
                try:
                    out = dec.feed(bytes(buf))
                except ScanError as exc:
                    trace.append(_error(exc, CHUNKED_STATUSES, "chunked body"))
                    return trace
                if type(out) is not bytes:
                    raise AssertionError("ChunkedDecoder.feed returned %r" % type(out))
                body.append(out)
                if dec.done:
                    used = len(buf) - dec.leftover
                    if not 0 <= used <= len(buf):
                        raise AssertionError("leftover %r of %d bytes" % (dec.leftover, len(buf)))
                    del buf[:used]
                    trace.append(("body", b"".join(body)))
                    state = "head"
                else:
                    buf.clear()
    trace.append(("pending", state, len(buf) if state == "head" else remaining if state == "length" else
                  b"".join(body)))
    return trace


def run_chunked(mod, case, pieces):
    """Feed the pieces to one decoder; return (trace per feed, split-invariant summary)."""
    dec = mod.ChunkedDecoder(**case.chunk_limits)
    trace = []
    payload = []
    consumed = 0
    summary = None
    for piece in pieces:
        try:
            out = dec.feed(piece)
        except ScanError as exc:
            err = _error(exc, CHUNKED_STATUSES, "feed")
            trace.append(err)
            try:  # errors are sticky: the next feed raises the same again
                dec.feed(b"0\r\n\r\n")
            except ScanError as again:
                trace.append(_error(again, CHUNKED_STATUSES, "feed after an error"))
            else:
                trace.append(("no error after an error",))
            return trace, err
        trace.append((_typed(out), _typed(dec.done), _typed(dec.leftover)))
        if summary is None:
            payload.append(out)
            if dec.done:
                summary = ("done", b"".join(payload), consumed + len(piece) - dec.leftover)
        consumed += len(piece)
    if summary is None:
        summary = ("incomplete", b"".join(payload))
    return trace, summary


def _run(mod, name, case, pieces):
    try:
        if case.mode == "chunked":
            return run_chunked(mod, case, pieces)
        trace = run_stream(mod, case, pieces)
        return trace, trace
    except AssertionError:
        raise
    except Exception as exc:
        # anything but ScanError is a crash; say which twin, which case
        exc.add_note("raised by the %s twin, %r, %d pieces" % (name, case, len(pieces)))
        raise


def _disagree(what, a_name, a, b_name, b, case):
    def show(x):
        text = repr(x)
        return text if len(text) < 4000 else text[:4000] + "...(%d chars)" % len(text)
    return AssertionError("%s\n%r, payload %r\n%s: %s\n%s: %s"
                          % (what, case, case.payload[:300], a_name, show(a), b_name, show(b)))


def check_one(data):
    """Run one fuzz input on both twins; raise AssertionError on any disagreement."""
    case = decode(data)
    py, cy = twins()
    pieces = pieces_of(case)
    split_py, sum_py = _run(py, "python", case, pieces)
    split_cy, sum_cy = _run(cy, "cython", case, pieces)
    if split_py != split_cy:
        raise _disagree("the twins disagree", "python", split_py, "cython", split_cy, case)
    if len(pieces) > 1:
        whole = [case.payload]
        whole_py, wsum_py = _run(py, "python", case, whole)
        if wsum_py != sum_py:
            raise _disagree("splitting changes the outcome (python twin)", "whole", wsum_py, "split", sum_py, case)
        whole_cy, wsum_cy = _run(cy, "cython", case, whole)
        if whole_cy != whole_py:
            raise _disagree("the twins disagree on the whole input", "python", whole_py, "cython", whole_cy, case)


# ---------------------------------------------------------------------------
# seeds: the project's own vectors and the shared corpora, made at run time
# ---------------------------------------------------------------------------

def corpora_dir():
    import os
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[2]
    return pathlib.Path(os.environ.get("FASTLB_CORPORA") or root.parent / "shared" / "corpora")


# corpus file -> (mode, the field holding the wire bytes); README: raw.encode("latin-1")
CORPUS_FILES = (
    ("llhttp_requests.json", "request", "raw"),
    ("llhttp_responses.json", "response", "raw"),
    ("http11probe_cases.json", "request", "raw"),
    ("http_desync_guardian_cases.json", "request", "raw_headers_only"),
)


def corpus_payloads(name, field, directory=None):
    """Wire bytes of every case in one shared corpus file (read in place, never copied)."""
    import json

    path = (directory or corpora_dir()) / name
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    cases = data["cases"] if isinstance(data, dict) else data
    out = []
    for c in cases:
        raw = c.get(field)
        if not isinstance(raw, str) or c.get("placeholders"):
            continue  # no wire bytes, or elided ones ("<N bytes>" written in their place)
        try:
            out.append(raw.encode("latin-1"))
        except UnicodeEncodeError:
            continue  # prose, not wire bytes
    return out


def project_payloads():
    """(mode, payload) from the unit tests' vectors; the modules that cannot be imported
    here (they need pytest, httptools) are left out, named in the second list."""
    out = []
    missing = []
    sources = (
        ("tests.unit.test_scanner", ("VALID_REQUESTS", "REJECTED_REQUESTS"), "request"),
        ("tests.unit.test_scanner", ("VALID_RESPONSES", "REJECTED_RESPONSES"), "response"),
        ("tests.unit.test_scanner_differential", ("CASES",), "request"),
        ("tests.unit.test_chunked", ("VALID", "INVALID"), "chunked"),
    )
    for module, names, mode in sources:
        try:
            mod = importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - any reason: skip that source
            note = "%s (%s)" % (module, exc)
            if note not in missing:
                missing.append(note)
            continue
        for name in names:
            vectors = getattr(mod, name, ())
            if isinstance(vectors, dict):
                vectors = vectors.values()
            for v in vectors:
                raw = v if isinstance(v, bytes) else next((x for x in v if isinstance(x, bytes)), None)
                if raw is not None:
                    out.append((mode, raw))
    return out, missing


def seed_inputs(with_corpora=True, with_project=True):
    """(label, input bytes) for every generated seed."""
    seeds = []
    notes = []
    if with_project:
        payloads, missing = project_payloads()
        notes += ["project vectors not used: %s" % m for m in missing]
        for i, (mode, raw) in enumerate(payloads):
            seeds.append(("project-%s-%d" % (mode, i), make_input(mode, raw)))
    if with_corpora:
        directory = corpora_dir()
        for name, mode, field in CORPUS_FILES:
            if not (directory / name).exists():
                notes.append("shared corpus %s not found (%s)" % (name, directory))
                continue
            for i, raw in enumerate(corpus_payloads(name, field, directory)):
                seeds.append(("%s-%d" % (name.split(".")[0], i), make_input(mode, raw)))
    return seeds, notes


def own_seeds():
    """(name, input bytes) of the hand-written seeds in tests/fuzz/seeds/."""
    import pathlib

    d = pathlib.Path(__file__).resolve().parent / "seeds"
    return [(p.name, p.read_bytes()) for p in sorted(d.iterdir()) if p.is_file() and p.suffix == ".bin"]


def replay(paths):
    """Run check_one on each file (a crash artifact, a seed); print the case and verdict."""
    failed = 0
    for path in paths:
        with open(path, "rb") as f:
            data = f.read()
        case = decode(data)
        print("%s: %r\n  payload %r" % (path, case, case.payload[:2000]))
        try:
            check_one(data)
        except Exception as exc:  # noqa: BLE001 - reported, then the exit status says it
            failed += 1
            print("  CRASH %s: %s" % (type(exc).__name__, exc))
            for note in getattr(exc, "__notes__", ()):
                print("  " + note)
        else:
            print("  ok: the twins agree")
    return 1 if failed else 0


USAGE = """usage: python -m tests.fuzz.targets write-seeds DIR
       write the seeds made from the unit tests' vectors and ../shared/corpora into DIR
       (keep DIR outside the checkout: those inputs are not the project's files)
   or: python -m tests.fuzz.targets replay FILE...
       run check_one on crash artifacts or seeds, without atheris"""


def _main(argv):
    import os
    import pathlib
    import sys

    if len(argv) >= 2 and argv[0] == "replay":
        return replay(argv[1:])
    if len(argv) != 2 or argv[0] != "write-seeds":
        print(USAGE, file=sys.stderr)
        return 2
    out = pathlib.Path(argv[1])
    out.mkdir(parents=True, exist_ok=True)
    seeds, notes = seed_inputs()
    for label, data in seeds:
        (out / label).write_bytes(data)
    for note in notes:
        print("note: " + note, file=sys.stderr)
    print("%d seeds written to %s" % (len(seeds), out))
    if os.environ.get("FASTLB_REQUIRE_CORPORA") == "1" and any("shared corpus" in n for n in notes):
        # as in tests/conftest.py: CI (.ci/run) wants the corpora, not a quiet skip
        print("FASTLB_REQUIRE_CORPORA=1 but the shared corpora are not at %s" % corpora_dir(), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(_main(sys.argv[1:]))
