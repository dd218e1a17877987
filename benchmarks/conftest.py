"""Benchmarks are collected from ``bench_*.py`` (kept out of the default test run, whose
testpaths is tests/). Run them with:

    python -m pytest benchmarks/ --benchmark-only --benchmark-group-by=group,param:case
"""

import pytest


def pytest_collect_file(file_path, parent):
    # A bench file named on the command line is collected by pytest itself.
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
    return None
