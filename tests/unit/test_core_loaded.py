"""The compiled core is the one loaded (unless FASTLB_NO_EXTENSIONS asks otherwise).

As aiohttp's test_c_parser_loaded: a build that silently fell back to the pure
twins would pass every other test while shipping the slow path.
"""

import os
import subprocess
import sys

import pytest

import fastlb
from fastlb import _core


@pytest.mark.skipif(bool(os.environ.get("FASTLB_NO_EXTENSIONS")), reason="pure-Python run requested")
def test_compiled_core_is_loaded():
    assert _core.IMPLEMENTATION == "cython", _core.FALLBACK_REASON
    assert fastlb.core_implementation() == "cython"
    for name in ("RequestScanner", "ResponseScanner", "ChunkedDecoder", "SmoothWRR", "RoundRobin",
                 "LoadState", "LeastConnections", "WeightedRandom", "P2C", "PeakEWMA",
                 "KetamaRing", "Maglev", "key_hash", "md5", "json_lines", "json_chars"):
        cls = getattr(_core, name)
        # Extension types are not defined in a .py file.
        assert not getattr(sys.modules[cls.__module__], "__file__", "").endswith(".py"), name



@pytest.mark.skipif(bool(os.environ.get("FASTLB_NO_EXTENSIONS")), reason="pure-Python run requested")
def test_compiled_ratelimit_is_loaded():
    assert "ratelimit" in _core.KERNELS
    cls = _core.TokenBuckets
    assert cls.__module__ == "fastlb._core.ratelimit"
    assert not getattr(sys.modules[cls.__module__], "__file__", "").endswith(".py")

def _run(env_extra):
    env = dict(os.environ)
    env.pop("FASTLB_REQUIRE_EXTENSIONS", None)
    env.pop("FASTLB_NO_EXTENSIONS", None)
    env.update(env_extra)
    return subprocess.run(
        [sys.executable, "-c", "import fastlb._core as c; print(c.IMPLEMENTATION, c.FALLBACK_REASON)"],
        env=env, capture_output=True, text=True, timeout=60,
    )


def test_no_extensions_forces_pure_twins_and_says_why():
    out = _run({"FASTLB_NO_EXTENSIONS": "1"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split(None, 1) == ["python", "FASTLB_NO_EXTENSIONS is set\n"]


def test_require_and_forbid_together_is_an_error():
    out = _run({"FASTLB_NO_EXTENSIONS": "1", "FASTLB_REQUIRE_EXTENSIONS": "1"})
    assert out.returncode != 0
    assert "FASTLB_REQUIRE_EXTENSIONS" in out.stderr


def test_version_names_the_core():
    env = dict(os.environ, FASTLB_NO_EXTENSIONS="1")
    env.pop("FASTLB_REQUIRE_EXTENSIONS", None)
    out = subprocess.run([sys.executable, "-m", "fastlb", "--version"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    assert out.stdout.startswith("fastlb %s (core: python)" % fastlb.__version__)
    assert "pure-Python core in use: FASTLB_NO_EXTENSIONS is set" in out.stdout
