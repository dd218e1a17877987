"""The one exception type the kernels raise.

Both twins (compiled and pure Python) raise this same class, so callers and tests
never care which twin produced it. ``status`` is the HTTP status a proxy should
answer with when the offending message came from a client (400, 413, 414, 431,
501, 505); for a backend's response any ScanError means 502.
"""


class ScanError(Exception):
    __slots__ = ("status", "reason")

    def __init__(self, status, reason):
        Exception.__init__(self, status, reason)
        self.status = status
        self.reason = reason

    def __str__(self):
        return "%d %s" % (self.status, self.reason)
