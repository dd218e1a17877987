"""FASTLB_REQUIRE_CORPORA=1 (set by .ci/run) turns missing corpora into a failed run;
without it a user's clone skips the corpus tests with the reason."""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def run_pytest(tmp_path, require):
    env = dict(os.environ, FASTLB_CORPORA=str(tmp_path / "no-corpora"))
    env.pop("FASTLB_REQUIRE_CORPORA", None)
    if require:
        env["FASTLB_REQUIRE_CORPORA"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs",
         "tests/unit/test_scanner_corpora.py"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_missing_corpora_fail_the_run_when_required(tmp_path):
    r = run_pytest(tmp_path, require=True)
    assert r.returncode != 0
    assert "FASTLB_REQUIRE_CORPORA=1 but the shared corpora are not at" in r.stdout + r.stderr
    assert "passed" not in r.stdout


def test_missing_corpora_skip_with_a_reason_otherwise(tmp_path):
    r = run_pytest(tmp_path, require=False)
    assert r.returncode == 0, r.stdout[-2000:]
    assert "skipped" in r.stdout and "not found" in r.stdout
    assert "failed" not in r.stdout
