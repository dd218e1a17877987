"""Compiled kernels and their pure-Python twins, chosen once, all or nothing.

Each kernel ``<name>`` exists twice: ``<name>.pyx`` (compiled to the extension
``fastlb._core.<name>``) and ``<name>_py.py`` (the executable spec and parity
oracle). This module imports either every compiled kernel or every twin, never
a mix, and records which in ``IMPLEMENTATION`` ("cython" or "python").

Environment:
  FASTLB_NO_EXTENSIONS=1       force the pure-Python twins
  FASTLB_REQUIRE_EXTENSIONS=1  a missing compiled kernel is an ImportError
                               (CI and wheel tests set it)
A fallback is never silent: ``FALLBACK_REASON`` holds why, the CLI warns at
start and prints it in ``fastlb --version``.

Nothing in _core imports from the rest of fastlb, asyncio, ssl or time.
"""

import os

from ._scanerror import ScanError

KERNELS = ("scanner", "selectors", "hashing", "logline", "ratelimit")

IMPLEMENTATION = "python"
FALLBACK_REASON = None


def _truthy(name):
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


if _truthy("FASTLB_NO_EXTENSIONS"):
    if _truthy("FASTLB_REQUIRE_EXTENSIONS"):
        raise ImportError(
            "FASTLB_REQUIRE_EXTENSIONS=1 and FASTLB_NO_EXTENSIONS=1 are both set"
        )
    FALLBACK_REASON = "FASTLB_NO_EXTENSIONS is set"
else:
    try:
        from .scanner import ChunkedDecoder, RequestScanner, ResponseScanner
        from .selectors import (
            P2C, LeastConnections, LoadState, PeakEWMA, RoundRobin, SmoothWRR, WeightedRandom,
        )
        from .hashing import KetamaRing, Maglev, is_prime, key_hash, md5
        from .logline import json_chars, json_lines
        from .ratelimit import TokenBuckets

        IMPLEMENTATION = "cython"
    except ImportError as exc:  # not built (source checkout, pure wheel)
        if _truthy("FASTLB_REQUIRE_EXTENSIONS"):
            raise ImportError(
                "fastlb compiled core is required (FASTLB_REQUIRE_EXTENSIONS=1) "
                "but could not be imported: %s" % exc
            ) from exc
        FALLBACK_REASON = "compiled core not importable: %s" % exc

if IMPLEMENTATION == "python":
    from .scanner_py import ChunkedDecoder, RequestScanner, ResponseScanner
    from .selectors_py import (
        P2C, LeastConnections, LoadState, PeakEWMA, RoundRobin, SmoothWRR, WeightedRandom,
    )
    from .hashing_py import KetamaRing, Maglev, is_prime, key_hash, md5
    from .logline_py import json_chars, json_lines
    from .ratelimit_py import TokenBuckets

__all__ = [
    "IMPLEMENTATION",
    "FALLBACK_REASON",
    "KERNELS",
    "ScanError",
    "RequestScanner",
    "ResponseScanner",
    "ChunkedDecoder",
    "LoadState",
    "RoundRobin",
    "SmoothWRR",
    "LeastConnections",
    "WeightedRandom",
    "P2C",
    "PeakEWMA",
    "KetamaRing",
    "Maglev",
    "key_hash",
    "md5",
    "json_lines",
    "json_chars",
    "is_prime",
    "TokenBuckets",
]
