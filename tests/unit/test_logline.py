"""The access-log lines kernel (fastlb._core.logline and its pure twin logline_py):
every line is valid JSON with the fixed fields, request bytes are escaped so that any
client input stays one ASCII line, and the twins agree byte for byte."""

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import load_twin

FIELDS = ["time", "client", "method", "path", "status", "bytes_in", "bytes_out", "duration", "pool", "backend",
          "connect_time", "response_time", "retries", "request_id", "flags", "trace_id"]
T = 1796301512.0075  # 2026-12-03T12:38:32.007Z
ARGS = [T, b"127.0.0.1", b"GET", b"/api/v1/users", 200, 100, 500, 0.0021, b"default",
        b"127.0.0.1:9001", 0.0, 0.00123, 1, b"abc", b'["upstream_reset"]', b"0af7651916cd43dd8448eb211c80319c"]
# indexes in a row
PATH, DURATION, POOL, BACKEND, CONNECT, RESPONSE, RID, TRACE, METHOD = 3, 7, 8, 9, 10, 11, 13, 15, 2


def one(mod, args):
    return mod.json_lines([tuple(args)])


@pytest.fixture
def mod(twin):
    return load_twin("logline", twin)


def test_a_line_has_the_fixed_fields_in_order(mod):
    line = one(mod, ARGS)
    assert line.endswith(b"}\n") and line.count(b"\n") == 1
    doc = json.loads(line)
    assert list(doc) == FIELDS
    assert doc["time"] == "2026-12-03T12:38:32.007Z"
    assert doc["duration"] == 0.0021 and doc["connect_time"] == 0.0 and doc["response_time"] == 0.00123
    assert doc["flags"] == ["upstream_reset"] and doc["retries"] == 1 and doc["status"] == 200
    assert b'"duration":0.002100,' in line  # microseconds, always 6 decimals


def test_nulls(mod):
    args = list(ARGS)
    args[METHOD] = args[PATH] = args[POOL] = args[BACKEND] = args[TRACE] = None
    args[CONNECT] = args[RESPONSE] = -1.0
    doc = json.loads(one(mod, args))
    for k in ("method", "path", "pool", "backend", "trace_id", "connect_time", "response_time"):
        assert doc[k] is None, k


@pytest.mark.parametrize("raw", [b"/a", b'/a"b', b"/a\\b", b"/\xe9\x80", b"/\x7f", b"\x00\x1f\r\n", b""])
def test_request_bytes_are_escaped_into_ascii_json(mod, raw):
    args = list(ARGS)
    args[PATH] = args[RID] = raw
    line = one(mod, args)
    assert line.isascii() and line.count(b"\n") == 1
    doc = json.loads(line)
    assert doc["path"] == doc["request_id"] == raw.decode("latin-1")
    assert json.loads(b'"' + mod.json_chars(raw) + b'"') == raw.decode("latin-1")


_bytes = st.binary(max_size=40)
_secs = st.one_of(st.just(-1.0), st.floats(min_value=0, max_value=1e6, allow_nan=False))


@settings(max_examples=300, deadline=None)
@given(t=st.floats(min_value=0, max_value=5e9, allow_nan=False), client=_bytes,
       method=st.one_of(st.none(), _bytes), path=st.one_of(st.none(), _bytes),
       status=st.integers(0, 599), bi=st.integers(0, 1 << 50), bo=st.integers(0, 1 << 50), dur=_secs,
       pool=st.one_of(st.none(), _bytes), backend=st.one_of(st.none(), _bytes), conn=_secs, resp=_secs,
       retries=st.integers(0, 10), rid=_bytes, trace=st.one_of(st.none(), _bytes), n=st.integers(0, 3))
def test_twins_agree_byte_for_byte(t, client, method, path, status, bi, bo, dur, pool, backend, conn, resp,
                                   retries, rid, trace, n):
    import os

    if os.environ.get("FASTLB_NO_EXTENSIONS"):
        pytest.skip("FASTLB_NO_EXTENSIONS is set: compiled twin not under test")
    from fastlb._core import logline, logline_py

    rows = [(t, client, method, path, status, bi, bo, dur, pool, backend, conn, resp, retries, rid, b"[]", trace)] * n
    assert logline.json_lines(rows) == logline_py.json_lines(rows)
    for line in logline.json_lines(rows).splitlines():
        json.loads(line)
    assert logline.rfc3339(t) == logline_py.rfc3339(t)


def test_time_is_rfc3339_utc_with_milliseconds(mod):
    import time

    rnd = random.Random(9)
    for _ in range(3000):
        t = rnd.uniform(0, 4.2e9)
        got = mod.rfc3339(t).decode()
        assert got[:19] == time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(t)))
        assert got[19:] == ".%03dZ" % (int(t * 1000) % 1000)


def test_seconds_round_like_python(mod):
    rnd = random.Random(5)
    for _ in range(2000):
        x = rnd.choice([rnd.random(), rnd.expovariate(1000), 0.0000005, 0.0000015, 2.5e-6, 1e-7, 123456.7891235])
        args = list(ARGS)
        args[DURATION] = x
        assert b'"duration":%s,' % (b"%.6f" % x) in one(mod, args)


def test_wrong_types_are_refused(mod):
    args = list(ARGS)
    args[POOL] = "default"  # str, not bytes
    with pytest.raises(TypeError):
        one(mod, args)
    args = list(ARGS)
    args[14] = "[]"
    with pytest.raises(TypeError):
        one(mod, args)


def test_a_batch_is_the_lines_in_order(mod):
    rows = []
    for i in range(50):
        args = list(ARGS)
        args[PATH] = b"/r%d" % i
        rows.append(tuple(args))
    out = mod.json_lines(rows)
    assert [json.loads(x)["path"] for x in out.splitlines()] == ["/r%d" % i for i in range(50)]
    assert mod.json_lines([]) == b""
