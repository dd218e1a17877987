"""Shared fixtures.

Twins: every _core kernel test takes the ``twin`` fixture ("cython" or "python")
and loads the kernel module through ``load_twin``; the compiled twin is skipped
only when FASTLB_NO_EXTENSIONS is set (tests/unit/test_core_loaded.py fails
otherwise, so a missing build can never pass silently).

Corpora: ``../shared/corpora`` beside the checkout (see its README), or
``$FASTLB_CORPORA``; tests that read it skip with a reason when it is absent.
"""

import importlib
import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
# FASTLB_CORPORA points elsewhere when the tests run from a copy (ci/test-wheel.sh).
CORPORA = pathlib.Path(os.environ.get("FASTLB_CORPORA") or ROOT.parent / "shared" / "corpora")

TWINS = ("cython", "python")


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
    """Path of a shared corpus file, or skip the test with the reason."""
    path = CORPORA / name
    if not path.exists():
        pytest.skip("shared corpus %s not found beside the checkout (%s)" % (name, CORPORA))
    return path
