#!/usr/bin/env bash
# The README's test command: on a Debian/Ubuntu machine, install what is missing
# (apt-get, as root), create .venv from the system Python, install fastlb into it
# with its test extras (compiling the Cython core) and run the whole suite there.
# CI (.ci/run) runs exactly this.
#   bash ci/test.sh            # everything
#   bash ci/test.sh -k proxy   # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
export FASTLB_TEST_TOOLS=1  # chromium, chromium-driver, promtool (ci/env.sh)
source ci/env.sh

# The plot extra too, so fastlb simulate --plot is tested rather than skipped.
"$py" -m pip install --quiet --disable-pip-version-check -e '.[test,plot]'
# The compiled core must be the one under test (tests/unit/test_core_loaded.py checks it too).
export FASTLB_REQUIRE_EXTENSIONS="${FASTLB_REQUIRE_EXTENSIONS:-1}"
"$py" -m pytest -p no:cacheprovider "$@"
