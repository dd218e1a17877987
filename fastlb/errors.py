"""One error taxonomy for fastlb.

Local errors (bad configuration, bad command line) stop fastlb before it serves.
Remote errors are caused by a peer: a client that sent something we reject
(``ClientError``, its ``status`` is what the client is answered) or a backend
that failed (``UpstreamError``, answered 502/503/504). Every error that can reach
a client carries the HTTP status it is answered with, as h11's ProtocolError
carries its error_status_hint.

The kernels in fastlb._core raise ``ScanError`` (status + reason); it is re-exported
here so callers catch one family.
"""

from ._core._scanerror import ScanError

__all__ = [
    "FastlbError",
    "ConfigError",
    "ClientError",
    "UpstreamError",
    "ScanError",
    "REASONS",
]


class FastlbError(Exception):
    """Base of every error fastlb raises on purpose."""


class ConfigError(FastlbError):
    """Invalid configuration. ``problems`` is a list of (key_path, message)."""

    def __init__(self, problems):
        if isinstance(problems, tuple):
            problems = [problems]
        self.problems = list(problems)
        FastlbError.__init__(self, "\n".join(self.lines()))

    def lines(self):
        return ["%s: %s" % (path, msg) if path else msg for path, msg in self.problems]


class ClientError(FastlbError):
    """A request fastlb refuses; answered with ``status`` and the connection closed."""

    def __init__(self, status, reason):
        FastlbError.__init__(self, status, reason)
        self.status = status
        self.reason = reason


class UpstreamError(FastlbError):
    """A backend failure, answered with ``status`` (502, 503 or 504)."""

    def __init__(self, status, reason):
        FastlbError.__init__(self, status, reason)
        self.status = status
        self.reason = reason


# Reason phrases for the statuses fastlb itself produces (RFC 9110 §15).
REASONS = {
    100: "Continue",
    200: "OK",
    308: "Permanent Redirect",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    414: "URI Too Long",
    415: "Unsupported Media Type",
    417: "Expectation Failed",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}
