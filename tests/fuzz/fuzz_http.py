"""Coverage-guided fuzz target (atheris/libFuzzer): the HTTP head scanners and the
chunked decoder, compiled twin against pure twin. docs/fuzzing.md tells how to run it.

    python tests/fuzz/fuzz_http.py [libFuzzer flags] [CORPUS_DIR ...]
    python tests/fuzz/fuzz_http.py CRASH_FILE          # replay one input

The work is ``tests.fuzz.targets.check_one`` (plain Python, also run by pytest in
tests/unit/test_fuzz_target.py): it decodes the input's mode, limits, flags and split
points from a fixed prefix itself, rather than through atheris.FuzzedDataProvider, so
that a crash file or a seed means the same case with and without atheris.

Coverage comes from the pure twin only: ``fastlb._core.scanner_py`` is imported under
``atheris.instrument_imports`` and its bytecode reports edges and comparisons to
libFuzzer. The compiled twin ``fastlb._core.scanner`` is a C extension built without
``-fsanitize=fuzzer``: atheris cannot instrument it, so it is only checked against the
pure twin on the inputs that the pure twin's coverage selects (the twins implement the
same state machines, so the pure twin's branches are a good proxy for the compiled ones).
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # `python tests/fuzz/fuzz_http.py` from anywhere

import atheris  # noqa: E402

# The package and the compiled core are imported first, uninstrumented; only the pure
# twin is imported inside the hook (include= works by top-level package, so anything
# under fastlb imported inside the block would be instrumented).
import fastlb._core  # noqa: E402,F401
import fastlb._core.scanner  # noqa: E402,F401  (compiled: not instrumentable)

if "fastlb._core.scanner_py" in sys.modules:
    # FASTLB_NO_EXTENSIONS=1 made fastlb._core import the twin already (and the compiled
    # one would not be under test): the run would have no coverage feedback.
    sys.exit("fuzz_http: fastlb._core.scanner_py was imported before instrumentation; "
             "unset FASTLB_NO_EXTENSIONS and build the compiled core")

with atheris.instrument_imports(include=["fastlb"]):
    import fastlb._core.scanner_py  # noqa: E402,F401

from tests.fuzz.targets import check_one  # noqa: E402


def TestOneInput(data):
    check_one(data)


def main():
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
