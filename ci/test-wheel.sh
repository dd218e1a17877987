#!/usr/bin/env bash
# Install the built wheel the way a user does — a fresh virtual environment
# outside the source tree — with FASTLB_REQUIRE_EXTENSIONS=1, then run the unit
# tests against it and an end-to-end smoke: fastlb in front of a real backend.
#   bash ci/test-wheel.sh [WHEEL]     (default: the one in wheelhouse/)
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
wheel=${1:-$(ls "$src"/wheelhouse/fastlb-*.whl | head -n 1)}
work=$(mktemp -d /tmp/fastlb-wheel-test.XXXXXX)
cleanup() { [ -n "${lb_pid:-}" ] && kill "$lb_pid" 2>/dev/null; [ -n "${be_pid:-}" ] && kill "$be_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
export FASTLB_TEST_TOOLS=1  # chromium, chromium-driver, promtool (ci/env.sh)
cd "$src" && source ci/env.sh && cd - >/dev/null  # system packages; $base_python as everywhere

"$base_python" -m venv "$work/venv"
py="$work/venv/bin/python"
"$py" -m pip install --quiet --disable-pip-version-check "$wheel[test]"
export FASTLB_REQUIRE_EXTENSIONS=1
# The corpora stay where the checkout has them (tests skip with a reason when absent,
# fail when FASTLB_REQUIRE_CORPORA=1, as .ci/run sets).
export FASTLB_CORPORA="$src/../shared/corpora"

cd "$work"
# Tests are copied out of the checkout so its fastlb/ cannot shadow the installed one.
cp -r "$src/tests" "$work/tests"
installed=$("$py" -c 'import fastlb, os; print(os.path.dirname(fastlb.__file__))')
case "$installed" in "$work/venv/"*) ;; *) echo "fastlb imported from $installed, not the venv" >&2; exit 1;; esac
echo "== fastlb imported from $installed"

version=$("$work/venv/bin/fastlb" --version)
echo "$version"
grep -q "(core: cython)" <<<"$version" || { echo "the wheel did not load its compiled core" >&2; exit 1; }
meta=$("$py" -c 'from importlib.metadata import version; print(version("fastlb"))')
grep -q "^fastlb $meta " <<<"$version" || { echo "--version does not match the metadata ($meta)" >&2; exit 1; }

"$py" -m pytest -q -p no:cacheprovider tests/unit

echo "== smoke: fastlb run in front of a backend"
"$py" -m tests.support.backend --name smoke --port 0 --print-port > "$work/be.port" &
be_pid=$!
for _ in $(seq 100); do [ -s "$work/be.port" ] && break; sleep 0.1; done
be_port=$(head -n 1 "$work/be.port")
"$work/venv/bin/fastlb" run --listen 127.0.0.1:0 --backend "127.0.0.1:$be_port" --admin 127.0.0.1:0 \
  --access-log "$work/access.log" > "$work/lb.out" 2>&1 &
lb_pid=$!
for _ in $(seq 100); do grep -q "admin API listening on" "$work/lb.out" && break; sleep 0.1; done
lb_port=$(sed -n 's/^listening on 127.0.0.1:\([0-9]*\).*/\1/p' "$work/lb.out")
admin_port=$(sed -n 's/^admin API listening on 127.0.0.1:\([0-9]*\).*/\1/p' "$work/lb.out")
[ -n "$lb_port" ] && [ -n "$admin_port" ] || { cat "$work/lb.out" >&2; exit 1; }
for i in 1 2 3; do
  body=$(curl -fsS "http://127.0.0.1:$lb_port/smoke-$i")
  grep -q "\"path\": \"/smoke-$i\"" <<<"$body" || { echo "unexpected answer: $body" >&2; exit 1; }
done
# the installed wheel serves its metrics and its dashboard page (package data), and logs
curl -fsS "http://127.0.0.1:$admin_port/metrics" | grep -q '^fastlb_requests_total{.*code_class="2xx".*} 3.0$' \
  || { echo "/metrics does not count the 3 requests" >&2; exit 1; }
curl -fsS "http://127.0.0.1:$admin_port/dashboard" | grep -q 'data-backend' \
  || { echo "/dashboard is not the dashboard page" >&2; exit 1; }
for _ in $(seq 30); do [ "$(grep -c '"path":"/smoke-' "$work/access.log" 2>/dev/null)" = 3 ] && break; sleep 0.1; done
[ "$(grep -c '"path":"/smoke-' "$work/access.log")" = 3 ] || { echo "access log lacks the 3 requests" >&2; exit 1; }
kill -TERM "$lb_pid"; wait "$lb_pid"; lb_pid=
if grep -q "pure-Python core" "$work/lb.out"; then echo "fastlb fell back to the pure core" >&2; exit 1; fi
echo "wheel OK: $(basename "$wheel")"
