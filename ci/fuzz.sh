#!/usr/bin/env bash
# A short, bounded coverage-guided fuzz run (atheris/libFuzzer) of the HTTP head scanners
# and the chunked decoder, compiled twin against pure twin (tests/fuzz/, docs/fuzzing.md).
# Exits non-zero when the fuzzer finds a crash (a disagreement between the twins, a split
# that changes the outcome, an exception other than ScanError, a hang, a leak past the
# RSS limit); the input is written to build/fuzz/crashes/ (build/ is gitignored).
#   bash ci/fuzz.sh                          # 60 s, one job
#   FASTLB_FUZZ_SECONDS=300 bash ci/fuzz.sh  # longer
#   FASTLB_FUZZ_CORPUS=~/.cache/fastlb-fuzz/corpus bash ci/fuzz.sh  # keep the corpus
#                     (outside the repository: it grows from the third-party corpora)
#   FASTLB_FUZZ_REINSTALL=1 bash ci/fuzz.sh  # pip install -e '.[fuzz]' even when built
set -euo pipefail
cd "$(dirname "$0")/.."
source ci/env.sh

# The fuzz extra (atheris) on top of fastlb itself, compiled: the fuzzer compares the
# compiled core with its pure twin, so the compiled one must be there. After ci/test.sh
# (same venv, core just built in place, nothing newer in a .pyx/.pxd) only the extra's
# requirements are installed, read from pyproject.toml: rebuilding the core costs ~1 min.
fuzz_reqs=$("$py" - <<'PY' 2>/dev/null || true
import glob, os, tomllib
import fastlb._core.scanner  # the compiled core, importable from this checkout
for src in glob.glob("fastlb/_core/*.pyx") + glob.glob("fastlb/_core/*.pxd"):
    built = glob.glob(os.path.splitext(src)[0] + ".*.so")
    if not built or os.path.getmtime(src) > min(map(os.path.getmtime, built)):
        raise SystemExit(1)  # not built, or stale: reinstall
with open("pyproject.toml", "rb") as f:
    print("\n".join(tomllib.load(f)["project"]["optional-dependencies"]["fuzz"]))
PY
)
if [ -n "$fuzz_reqs" ] && [ "${FASTLB_FUZZ_REINSTALL:-0}" != 1 ]; then
  # shellcheck disable=SC2086
  "$py" -m pip install --quiet --disable-pip-version-check $fuzz_reqs
else
  "$py" -m pip install --quiet --disable-pip-version-check -e '.[fuzz]'
fi
unset FASTLB_NO_EXTENSIONS
export FASTLB_REQUIRE_EXTENSIONS=1

out=build/fuzz
mkdir -p "$out/crashes"
work=$(mktemp -d "${TMPDIR:-/tmp}/fastlb-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT
# Seeds made at run time from the unit tests' vectors and ../shared/corpora (read in
# place: nothing of the corpora is copied into the checkout), plus tests/fuzz/seeds/.
"$py" -m tests.fuzz.targets write-seeds "$work/seeds"
corpus=${FASTLB_FUZZ_CORPUS:-$work/corpus}
mkdir -p "$corpus"

# libFuzzer: the first directory receives new inputs, the others are read-only seeds.
# One process (2 shared cores); -timeout: one input taking 10 s is a hang.
echo "== fuzzing for ${FASTLB_FUZZ_SECONDS:-60} s (crashes go to $out/crashes/)"
"$py" tests/fuzz/fuzz_http.py "$corpus" tests/fuzz/seeds "$work/seeds" \
  -max_total_time="${FASTLB_FUZZ_SECONDS:-60}" \
  -timeout=10 -rss_limit_mb=2048 -max_len=8192 \
  -artifact_prefix="$out/crashes/" -print_final_stats=1
