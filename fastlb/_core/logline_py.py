"""Pure-Python twin of logline.pyx: access-log JSON lines (the executable spec).

``json_lines(rows)`` formats a batch of requests, one row each, into JSON lines with
the fixed fields of docs/access-log.md, as one bytes object. The access log keeps
rows (tuples of plain values) on the request path and formats a batch at once
when it hands it to its writer, so the per-request cost is a tuple.

A row is ``(time, client, method, path, status, bytes_in, bytes_out, duration,
pool, backend, connect_time, response_time, retries, request_id, flags, trace_id)``:
``time`` in Unix seconds (printed as RFC 3339 UTC with milliseconds, truncated);
``flags`` the JSON array as bytes; strings as bytes, or None for null; seconds
negative for null. Request bytes are JSON string contents: printable ASCII is
copied, ``"`` and ``\\`` are backslash-escaped, any other byte is ``\\u00XX`` (the
byte read as Latin-1), so a line is valid JSON and ASCII whatever a client sent.
Seconds are printed with 6 decimals (microseconds).
"""

__all__ = ["json_lines", "json_chars", "rfc3339"]


def json_chars(value):
    """The inside of a JSON string literal for request bytes."""
    out = bytearray()
    for c in value:
        if c == 0x22 or c == 0x5C:
            out.append(0x5C)
            out.append(c)
        elif 0x20 <= c <= 0x7E:
            out.append(c)
        else:
            out += b"\\u%04x" % c
    return bytes(out)


def rfc3339(t):
    """Unix seconds -> b"YYYY-MM-DDTHH:MM:SS.mmmZ" (UTC, milliseconds truncated).
    The civil date from the day number by H. Hinnant's days_from_civil inverse
    (no time module in _core: the twins compute the same integers)."""
    ms_total = int(t * 1000)
    secs, ms = divmod(ms_total, 1000)
    days, rem = divmod(secs, 86400)
    hh, rem = divmod(rem, 3600)
    mm, ss = divmod(rem, 60)
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    if m <= 2:
        y += 1
    return b"%04d-%02d-%02dT%02d:%02d:%02d.%03dZ" % (y, m, d, hh, mm, ss, ms)


def _str(value):
    return b"null" if value is None else b'"' + json_chars(value) + b'"'


def _sec(value):
    return b"null" if value < 0 else b"%.6f" % value


_LINE = (b'{"time":"%s","client":%s,"method":%s,"path":%s,"status":%d,"bytes_in":%d,"bytes_out":%d,'
         b'"duration":%s,"pool":%s,"backend":%s,"connect_time":%s,"response_time":%s,"retries":%d,'
         b'"request_id":%s,"flags":%s,"trace_id":%s}\n')


def json_lines(rows):
    out = []
    for (t, client, method, path, status, bytes_in, bytes_out, duration, pool, backend, connect, response,
         retries, request_id, flags, trace_id) in rows:
        if not isinstance(flags, bytes):
            raise TypeError("flags must be bytes")
        out.append(_LINE % (rfc3339(t), _str(client), _str(method), _str(path), status, bytes_in, bytes_out,
                            _sec(duration), _str(pool), _str(backend), _sec(connect), _sec(response), retries,
                            _str(request_id), flags, _str(trace_id)))
    return b"".join(out)
