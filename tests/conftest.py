"""Shared fixtures.

Twins: every _core kernel test takes the ``twin`` fixture ("cython" or "python")
and loads the kernel module through ``load_twin``; the compiled twin is skipped
only when FASTLB_NO_EXTENSIONS is set (tests/unit/test_core_loaded.py fails
otherwise, so a missing build can never pass silently).

Corpora: ``../shared/corpora`` beside the checkout (see its README), or
``$FASTLB_CORPORA``; tests that read it skip with a reason when it is absent,
unless ``FASTLB_REQUIRE_CORPORA=1`` (CI sets it): then a missing corpus fails the
run, so ~1,300 cases cannot quietly turn into a few skips.
"""

import importlib
import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
# FASTLB_CORPORA points elsewhere when the tests run from a copy (ci/test-wheel.sh).
CORPORA = pathlib.Path(os.environ.get("FASTLB_CORPORA") or ROOT.parent / "shared" / "corpora")

REQUIRE_CORPORA = os.environ.get("FASTLB_REQUIRE_CORPORA") == "1"

TWINS = ("cython", "python")


def pytest_configure(config):
    if REQUIRE_CORPORA and not CORPORA.is_dir():
        raise pytest.UsageError(
            "FASTLB_REQUIRE_CORPORA=1 but the shared corpora are not at %s "
            "(check out ../shared beside the project, or set FASTLB_CORPORA)" % CORPORA)


def load_twin(kernel, twin):
    """Import fastlb._core.<kernel> (compiled) or fastlb._core.<kernel>_py (pure)."""
    if twin == "python":
        return importlib.import_module("fastlb._core.%s_py" % kernel)
    if os.environ.get("FASTLB_NO_EXTENSIONS"):
        pytest.skip("FASTLB_NO_EXTENSIONS is set: compiled twin not under test")
    return importlib.import_module("fastlb._core.%s" % kernel)


@pytest.fixture(params=TWINS)
def twin(request):
    return request.param


def corpus_path(name):
    """Path of a shared corpus file, or skip the test with the reason (fail when
    FASTLB_REQUIRE_CORPORA=1)."""
    path = CORPORA / name
    if not path.exists():
        if REQUIRE_CORPORA:
            pytest.fail("shared corpus %s not found (%s) and FASTLB_REQUIRE_CORPORA=1" % (name, CORPORA))
        pytest.skip("shared corpus %s not found beside the checkout (%s)" % (name, CORPORA))
    return path
