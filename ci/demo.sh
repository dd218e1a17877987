#!/usr/bin/env bash
# The README's first command: on a Debian/Ubuntu machine, install what is missing
# (apt-get, as root), create .venv from the system Python (PEP 668: nothing goes
# into the system's site-packages), install fastlb into it and run `fastlb demo`.
#   bash ci/demo.sh              # three built-in backends, balancer on :8080, admin/dashboard on :8081
#   bash ci/demo.sh --port 9000  # extra arguments go to fastlb demo
set -euo pipefail
cd "$(dirname "$0")/.."
source ci/env.sh
"$py" -m pip install --quiet --disable-pip-version-check .
exec "$venv/bin/fastlb" demo "$@"
