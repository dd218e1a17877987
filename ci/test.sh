#!/usr/bin/env bash
# The README's test command: install fastlb with its test extras (compiling the
# Cython core) and run the whole suite. CI (.ci/run) runs exactly this.
#   bash ci/test.sh            # everything
#   bash ci/test.sh -k proxy   # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."

# System tools some tests drive (curl as a client). Installed when missing and we are root.
need=()
command -v curl >/dev/null 2>&1 || need+=(curl)
if [ ${#need[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# The plot extra too, so fastlb simulate --plot is tested rather than skipped.
python3 -m pip install --quiet --disable-pip-version-check -e '.[test,plot]'
# The compiled core must be the one under test (tests/unit/test_core_loaded.py checks it too).
export FASTLB_REQUIRE_EXTENSIONS="${FASTLB_REQUIRE_EXTENSIONS:-1}"
python3 -m pytest -p no:cacheprovider "$@"
