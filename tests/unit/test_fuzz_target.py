"""The fuzz target (tests/fuzz/targets.py: check_one) in the normal suite, without atheris.

check_one runs one input on both scanner twins and raises AssertionError when they
disagree, when a split changes the outcome, or when anything but ScanError escapes.
Here it runs over every seed (the hand-written ones in tests/fuzz/seeds/, the unit
tests' vectors, the shared corpora when present: read in place, never copied) and over
a few thousand hypothesis inputs, so a regression the fuzzer would find quickly is
found here too, and the target itself is shown to catch a disagreement. docs/fuzzing.md.
"""

import os
import random
import subprocess
import sys
import types

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastlb._core._scanerror import ScanError
from tests.conftest import ROOT, corpus_path, load_twin
from tests.fuzz import targets
from tests.fuzz.targets import check_one, make_input
from tests.unit.test_scanner_parity import chunked_bodies, mutated, requests, responses


@pytest.fixture(autouse=True)
def compiled_twin():
    # check_one needs the compiled twin; skipped (with the reason) only when
    # FASTLB_NO_EXTENSIONS is set, as every twin test (tests/conftest.py)
    return load_twin("scanner", "cython")


def variants(mode, raw, seed):
    """The payload fed whole, byte by byte, and in two seeded splits with other options."""
    rng = random.Random(seed)
    yield make_input(mode, raw)
    yield make_input(mode, raw, bytewise=True, flags=0x08)
    for _ in range(2):
        cuts = sorted(rng.randrange(len(raw) + 1) for _ in range(rng.randint(1, 6)))
        yield make_input(mode, raw, head_limits=rng.randrange(16), chunk_limits=rng.randrange(16),
                         p2=rng.randrange(256), p3=rng.randrange(256), flags=rng.randrange(256), cuts=cuts)


@pytest.mark.parametrize("name,data", targets.own_seeds(), ids=[n for n, _ in targets.own_seeds()])
def test_own_seeds(name, data):
    check_one(data)
    case = targets.decode(data)
    for variant in variants(case.mode, case.payload, name):
        check_one(variant)


def test_there_are_own_seeds_for_every_mode():
    modes = {targets.decode(d).mode for _, d in targets.own_seeds()}
    assert modes == set(targets.MODES)


def test_project_vectors():
    payloads, missing = targets.project_payloads()
    assert not missing, missing  # under pytest every source module imports
    assert len(payloads) > 200
    for i, (mode, raw) in enumerate(payloads):
        for data in variants(mode, raw, i):
            check_one(data)


@pytest.mark.parametrize("name,mode,field", targets.CORPUS_FILES, ids=[c[0] for c in targets.CORPUS_FILES])
def test_corpora(name, mode, field):
    path = corpus_path(name)  # skips with the reason when ../shared/corpora is absent
    payloads = targets.corpus_payloads(name, field, path.parent)
    assert payloads
    for i, raw in enumerate(payloads):
        for data in variants(mode, raw, i):
            check_one(data)


SETTINGS = dict(deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@settings(max_examples=1500, **SETTINGS)
@given(data=st.binary(max_size=400))
def test_arbitrary_inputs(data):
    check_one(data)


@st.composite
def structured(draw):
    mode = draw(st.sampled_from(targets.MODES))
    base = {"request": requests(), "response": responses(), "chunked": chunked_bodies()}[mode]
    payload = draw(mutated(base))
    # pipelined: sometimes two messages back to back
    if draw(st.booleans()):
        payload += draw(mutated(base))
    cuts = draw(st.lists(st.integers(0, len(payload)), max_size=15))
    return make_input(mode, payload, head_limits=draw(st.integers(0, 15)), chunk_limits=draw(st.integers(0, 15)),
                      p2=draw(st.integers(0, 255)), p3=draw(st.integers(0, 255)), flags=draw(st.integers(0, 255)),
                      cuts=cuts, bytewise=draw(st.booleans()))


@settings(max_examples=1000, **SETTINGS)
@given(data=structured())
def test_structured_inputs(data):
    check_one(data)


# ---------------------------------------------------------------------------
# the target itself
# ---------------------------------------------------------------------------

def test_decode_make_input_round_trip():
    data = make_input("response", b"HTTP/1.1 200 OK\r\n\r\n", head_limits=6, chunk_limits=4, p2=3, p3=5,
                      flags=0b1011110, cuts=(4, 9), bytewise=True)
    case = targets.decode(data)
    assert case.mode == "response" and case.payload == b"HTTP/1.1 200 OK\r\n\r\n"
    assert case.head_limits == dict(max_line=13, max_head=81, max_fields=3)
    assert case.chunk_limits == dict(max_line=4, max_trailer=21)
    assert (case.client_ip, case.extra, case.keep_upgrade, case.drop_trace, case.buffer) == \
        (b"::1", b"X-Forwarded-Proto: https\r\n", True, True, "memoryview")
    assert case.cuts == (4, 9) and case.bytewise
    assert targets.decode(b"").mode == "request"  # short inputs: missing prefix bytes are 0
    big = targets.decode(make_input("chunked", b"x" * (targets.MAX_PAYLOAD + 10)))
    assert len(big.payload) == targets.MAX_PAYLOAD


def test_pieces_cover_the_payload():
    raw = bytes(range(50)) * 30
    for data in (make_input("request", raw, cuts=(5, 5, 0, 1500, 3000, 7)), make_input("request", raw, bytewise=True)):
        case = targets.decode(data)
        pieces = targets.pieces_of(case)
        assert b"".join(pieces) == raw and all(pieces)


def _fake(mod, **overrides):
    """A 'compiled twin' that is the pure one with some classes replaced."""
    ns = types.SimpleNamespace(RequestScanner=mod.RequestScanner, ResponseScanner=mod.ResponseScanner,
                               ChunkedDecoder=mod.ChunkedDecoder)
    for name, cls in overrides.items():
        setattr(ns, name, cls)
    return ns


@pytest.fixture
def swap_compiled(monkeypatch):
    py = load_twin("scanner", "python")

    def swap(**overrides):
        monkeypatch.setattr(targets, "_TWINS", (py, _fake(py, **overrides)))
    return py, swap


def test_a_disagreement_is_a_crash(swap_compiled):
    py, swap = swap_compiled

    class Built(py.RequestScanner):
        def build_upstream_head(self, buf, client_ip, extra, keep_upgrade, drop_trace=False):
            return super().build_upstream_head(buf, client_ip, extra, keep_upgrade, drop_trace) + b"!"

    class Reason(py.ChunkedDecoder):
        def feed(self, data):
            try:
                return super().feed(data)
            except ScanError as exc:
                raise ScanError(exc.status, exc.reason + "!") from None

    class Typed(py.ResponseScanner):
        @property
        def status(self):
            return float(self.__dict__.get("status", 0))

        @status.setter
        def status(self, value):
            self.__dict__["status"] = value

    swap(RequestScanner=Built)
    check_one(make_input("request", b"GET / HTTP/1.1\r\n"))  # no head: nothing built, agrees
    with pytest.raises(AssertionError, match="twins disagree"):
        check_one(make_input("request", b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"))
    swap(ChunkedDecoder=Reason)
    with pytest.raises(AssertionError, match="twins disagree"):
        check_one(make_input("chunked", b"zz\r\n"))
    swap(ResponseScanner=Typed)  # 200 == 200.0, but the types differ
    with pytest.raises(AssertionError, match="twins disagree"):
        check_one(make_input("response", b"HTTP/1.1 200 OK\r\n\r\n"))


def test_other_exceptions_escape(swap_compiled):
    py, swap = swap_compiled

    class Boom(py.ChunkedDecoder):
        def feed(self, data):
            raise IndexError("boom")

    swap(ChunkedDecoder=Boom)
    with pytest.raises(IndexError) as info:
        check_one(make_input("chunked", b"0\r\n\r\n"))
    assert any("cython twin" in note for note in info.value.__notes__)


def test_an_undocumented_status_is_a_crash(swap_compiled):
    py, swap = swap_compiled

    class Status(py.RequestScanner):
        def scan(self, buf):
            try:
                return super().scan(buf)
            except ScanError as exc:
                raise ScanError(500, exc.reason) from None

    swap(RequestScanner=Status)
    with pytest.raises(AssertionError, match="documented statuses"):
        check_one(make_input("request", b"GET  / HTTP/1.1\r\n\r\n"))


@pytest.mark.skipif(sys.platform != "linux", reason="atheris wheels are Linux-only")
def test_the_atheris_entry_point_runs(tmp_path):
    pytest.importorskip("atheris", reason="atheris not installed (pip install -e '.[fuzz]')")
    env = dict(os.environ)
    env.pop("FASTLB_NO_EXTENSIONS", None)
    corpus = tmp_path / "corpus"  # libFuzzer writes new inputs into the first directory
    corpus.mkdir()
    seeds = ROOT / "tests" / "fuzz" / "seeds"
    before = sorted(p.name for p in seeds.iterdir())
    r = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "fuzz" / "fuzz_http.py"), "-runs=300", "-seed=1",
         "-artifact_prefix=%s/" % tmp_path, str(corpus), str(seeds)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Done 300 runs" in r.stderr
    assert "Instrumenting fastlb._core.scanner_py" in r.stderr  # coverage comes from the pure twin
    assert sorted(p.name for p in seeds.iterdir()) == before
