#!/usr/bin/env bash
# What can be checked here of the release pipeline that only runs on GitHub:
# the cibuildwheel matrix from pyproject.toml, and the workflow file's shape.
set -euo pipefail
cd "$(dirname "$0")/.."
source ci/env.sh
"$py" -m pip install --quiet --disable-pip-version-check cibuildwheel pyyaml

ids=$( (cibuildwheel --platform linux --print-build-identifiers; cibuildwheel --platform macos --print-build-identifiers) | sort)
echo "$ids"
for cpy in cp310 cp311 cp312 cp313; do
  for plat in manylinux_x86_64 manylinux_aarch64 macosx_x86_64 macosx_arm64; do
    grep -qx "$cpy-$plat" <<<"$ids" || { echo "missing build identifier $cpy-$plat" >&2; exit 1; }
  done
done
[ "$(wc -l <<<"$ids")" -eq 16 ] || { echo "unexpected extra build identifiers" >&2; exit 1; }

"$py" - <<'PY'
import yaml
wf = yaml.safe_load(open(".github/workflows/wheels.yml"))
on = wf.get(True, wf.get("on"))  # YAML 1.1 reads the key `on` as True
assert on["push"]["tags"] == ["v*"], on
jobs = wf["jobs"]
steps = jobs["build_wheels"]["steps"]
assert any(s.get("uses", "").startswith("pypa/cibuildwheel@") for s in steps), steps
assert any(s.get("uses", "").startswith("actions/upload-artifact@") for s in steps), steps
oses = jobs["build_wheels"]["strategy"]["matrix"]["os"]
assert any("arm" in o for o in oses) and any(o.startswith("macos") for o in oses), oses
assert "build_sdist" in jobs
print("wheels.yml OK:", ", ".join(oses))
PY
