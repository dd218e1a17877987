"""Build script for the compiled kernels in fastlb/_core.

Metadata lives in pyproject.toml; this file only declares the Cython extensions.
Every ``fastlb/_core/<name>.pyx`` (with its ``<name>.pxd``) becomes the extension
``fastlb._core.<name>``; its pure-Python twin is ``fastlb/_core/<name>_py.py``.

Build knobs (environment):
  FASTLB_NO_EXTENSIONS=1   build without compiling (pure-Python package)
  FASTLB_CYTHON_ANNOTATE=1 write cython -a HTML next to each .pyx (never committed)
  FASTLB_CYTHON_TRACE=1    compile with line tracing (profiling/coverage builds)
"""

import glob
import os

from setuptools import setup


def _extensions():
    if os.environ.get("FASTLB_NO_EXTENSIONS"):
        return []
    from Cython.Build import cythonize
    from setuptools import Extension

    trace = bool(os.environ.get("FASTLB_CYTHON_TRACE"))
    macros = [("CYTHON_TRACE", "1")] if trace else []
    exts = []
    for pyx in sorted(glob.glob(os.path.join("fastlb", "_core", "*.pyx"))):
        name = os.path.splitext(pyx)[0].replace(os.sep, ".")
        exts.append(
            Extension(
                name,
                [pyx],
                define_macros=macros,
                extra_compile_args=["-O3"] if os.name != "nt" else [],
            )
        )
    return cythonize(
        exts,
        language_level=3,
        annotate=bool(os.environ.get("FASTLB_CYTHON_ANNOTATE")),
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
            "linetrace": trace,
        },
    )


setup(ext_modules=_extensions())
