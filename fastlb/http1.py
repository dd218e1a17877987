"""Sans-IO HTTP/1.1 helpers above the scanner: request-target forms and request keys.

No asyncio, no clock, no per-request state: functions of bytes the scanner
already validated (RFC 9112 §3.2 target forms; RFC 6265 §4.2 Cookie syntax;
RFC 3986 §3.4 query).
"""

__all__ = ["authority_of", "path_of", "split_host", "query_param", "cookie_value"]


def authority_of(target):
    """Absolute-form target (RFC 9112 §3.2.2) -> its authority ``host[:port]``, else b""."""
    if target[:1] == b"/":
        return b""
    scheme_end = target.find(b"://")
    if scheme_end <= 0:
        return b""
    start = scheme_end + 3
    end = len(target)
    for sep in (b"/", b"?", b"#"):
        i = target.find(sep, start)
        if 0 <= i < end:
            end = i
    return target[start:end]


def path_of(target):
    """Request target -> its path with query (origin-form as is; absolute-form's path;
    asterisk-form as "/")."""
    if target[:1] == b"/":
        return target
    if target == b"*":
        return b"/"  # OPTIONS *: only routes for "/" match
    scheme_end = target.find(b"://")
    if scheme_end > 0:
        slash = target.find(b"/", scheme_end + 3)
        return target[slash:] if slash > 0 else b"/"
    return target


def split_host(host):
    """Host header value -> lowercase host without port (IPv6 literals keep their brackets)."""
    if host.startswith(b"["):
        end = host.find(b"]")
        return host[: end + 1].lower() if end > 0 else host.lower()
    i = host.rfind(b":")
    return (host[:i] if i >= 0 else host).lower()


def query_param(target, name):
    """First value of query parameter ``name`` (bytes, not percent-decoded), or None."""
    q = target.find(b"?")
    if q < 0:
        return None
    query = target[q + 1:]
    h = query.find(b"#")
    if h >= 0:
        query = query[:h]
    for part in query.split(b"&"):
        key, sep, value = part.partition(b"=")
        if key == name:
            return value
    return None


def cookie_value(cookie_header, name):
    """Value of cookie ``name`` in a Cookie header value (``a=1; b=2``), or None."""
    for part in cookie_header.split(b";"):
        key, sep, value = part.strip().partition(b"=")
        if sep and key == name:
            return value.strip(b'"') if len(value) >= 2 and value[:1] == value[-1:] == b'"' else value
    return None
