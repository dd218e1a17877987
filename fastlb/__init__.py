"""fastlb — an HTTP/1.1 load balancer for REST APIs.

A thin facade: the version and the names a user embedding fastlb needs. The
work happens in the modules below; the per-request kernels live in fastlb._core.
"""

from ._version import __version__

__all__ = ["__version__", "core_implementation"]


def core_implementation():
    """"cython" when the compiled kernels are loaded, "python" for the twins."""
    from . import _core

    return _core.IMPLEMENTATION
