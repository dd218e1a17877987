# Sourced by the ci/ scripts: make sure this machine can build and test fastlb,
# then put the project's virtual environment first on PATH.
#
# - Python is Debian's /usr/bin/python3 (or $FASTLB_PYTHON), never whatever python3
#   happens to be first on PATH. It is EXTERNALLY-MANAGED (PEP 668), so nothing is
#   pip-installed into it: everything goes into a venv ($FASTLB_VENV, default .venv).
# - What the build and the tests need from the system (venv/ensurepip, the Python
#   headers, a C compiler, curl as a test client, Chromium and its driver for the
#   dashboard test, promtool for the metrics tests) is installed with apt-get when it
#   is missing and we are root; otherwise the missing pieces are named and we stop.

base_python=${FASTLB_PYTHON:-/usr/bin/python3}
if [ ! -x "$base_python" ]; then
  base_python=$(command -v python3 || true)
fi

missing_system_packages() {
  local need=()
  if [ -z "$base_python" ] || [ ! -x "$base_python" ]; then
    need+=(python3)
  else
    "$base_python" -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
    "$base_python" -c 'import os, sysconfig; raise SystemExit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
      >/dev/null 2>&1 || need+=(python3-dev)
  fi
  command -v gcc >/dev/null 2>&1 || need+=(build-essential)
  command -v curl >/dev/null 2>&1 || need+=(curl)
  echo "${need[@]}"
}

# Test tools: headless Chromium for the dashboard test, promtool (Debian's prometheus
# package) to lint /metrics and the alert rules, openssl's s_client for the TLS tests,
# HAProxy as a real PROXY-protocol sender for the interop test. Installed (when FASTLB_TEST_TOOLS=1,
# as the test scripts set it) when we are root; without them those tests skip, naming
# the package.
missing_test_tools() {
  local need=()
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
  command -v promtool >/dev/null 2>&1 || need+=(prometheus)
  command -v openssl >/dev/null 2>&1 || need+=(openssl)
  command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
  echo "${need[@]}"
}

need=$(missing_system_packages)
if [ -n "$need" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== apt-get install $need"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $need >/dev/null
    base_python=${FASTLB_PYTHON:-/usr/bin/python3}
  else
    echo "fastlb CI needs these Debian packages: $need (run as root, or install them: sudo apt-get install $need)" >&2
    exit 1
  fi
fi

tools=
if [ "${FASTLB_TEST_TOOLS:-0}" = 1 ]; then  # ci/test.sh and ci/test-wheel.sh, not the demo
  tools=$(missing_test_tools)
fi
if [ -n "$tools" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== apt-get install $tools (test tools)"
    export DEBIAN_FRONTEND=noninteractive
    [ -n "$need" ] || apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $tools >/dev/null \
      || echo "could not install $tools: the tests that need them will skip" >&2
  else
    echo "note: $tools not installed: the dashboard, promtool, openssl and haproxy tests will skip (sudo apt-get install $tools)" >&2
  fi
fi

venv=${FASTLB_VENV:-$PWD/.venv}
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
  echo "== creating the virtual environment $venv from $base_python"
  rm -rf "$venv"
  "$base_python" -m venv "$venv"
fi
export VIRTUAL_ENV="$venv"
export PATH="$venv/bin:$PATH"
py="$venv/bin/python"
