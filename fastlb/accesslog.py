"""The access log: one line per request, buffered, written by a thread of its own.

On the request path a line is formatted and appended to a list: no syscall, no
``logging`` call. The server's tick (at least once a second) hands the batch to a
writer thread through a queue; that thread does the blocking ``os.write``. So a
slow disk, a full disk or a stdout nobody reads never blocks serving: while the
writer is stuck, batches wait up to MAX_BACKLOG bytes, then new ones are dropped
and counted (fastlb_access_log_dropped_lines_total);
a write error (ENOSPC, EPIPE, a closed stdout) drops that batch, counts it and logs
one warning a minute. SIGUSR1 reopens the file (logrotate's ``postrotate``).

Formats (docs/access-log.md): ``json`` (JSON lines with fixed field names) and
``combined`` (the NCSA combined format, then fastlb's fields as key=value).
"""

import errno
import logging
import os
import queue
import threading
import time

from .counters import FLAGS

__all__ = ["AccessLog", "MAX_BACKLOG", "FLUSH_LINES"]

log = logging.getLogger("fastlb.accesslog")

# Bytes formatted but not yet written that may wait for a stuck writer; beyond it
# new batches are dropped (and counted).
MAX_BACKLOG = 16 * 1024 * 1024
# The loop hands its batch over early when it holds this many lines (between ticks).
FLUSH_LINES = 1000

_REOPEN = object()
_STOP = object()

FLAG_JSON = ("[]",) + tuple('["%s"]' % name for _, name, _ in FLAGS)
FLAG_TEXT = ("-",) + tuple(name for _, name, _ in FLAGS)
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _json_str(value):
    """A JSON string literal for request bytes (the scanner allows '"', '\\' and
    obs-text in targets and field values: those are escaped, the rest is copied)."""
    if value.isascii() and b'"' not in value and b"\\" not in value:
        return '"%s"' % value.decode("ascii")
    out = ['"']
    for c in value.decode("latin-1"):
        if c == '"' or c == "\\":
            out.append("\\" + c)
        elif ord(c) < 0x20 or ord(c) > 0x7E:
            out.append("\\u%04x" % ord(c))
        else:
            out.append(c)
    out.append('"')
    return "".join(out)


def _seconds(value):
    return "null" if value < 0 else "%.6f" % value


# The request path's line, in one bytes % (each field's formatting inline, request
# bytes copied as they are when they need no escape: this runs per request)
_JSON_LINE = (b'{"time":"%s.%03dZ","client":"%s","method":"%s","path":"%s","status":%d,"bytes_in":%d,'
              b'"bytes_out":%d,"duration":%.6f,"pool":%s,"backend":%s,"connect_time":%s,"response_time":%s,'
              b'"retries":%d,"request_id":"%s","flags":%s,"trace_id":%s}\n')
_JSON_FAST = _JSON_LINE.replace(b'"connect_time":%s,"response_time":%s', b'"connect_time":%.6f,"response_time":%.6f'
                                ).replace(b'"trace_id":%s}', b'"trace_id":"%s"}')
_FLAG_JSON_B = tuple(f.encode() for f in FLAG_JSON)
_NULL = b"null"


def _inner_b(value):
    """The inside of a JSON string literal for request bytes that need escaping."""
    return _json_str(value)[1:-1].encode("ascii")


class AccessLog:
    __slots__ = ("spec", "path", "combined", "query", "sample", "_acc", "_ranges", "lines",
                 "queued_bytes", "written_bytes", "lines_total", "dropped_lines", "_q", "_thread", "_fd",
                 "_last_warning", "_sec", "_stamp", "_cstamp", "written_lines", "failed_lines",
                 "filtered", "_quoted", "_bstamp")

    def __init__(self, spec):
        self.spec = spec
        self.path = spec.path
        self.combined = spec.format == "combined"
        self.query = spec.query
        self.sample = spec.sample
        self._acc = 0.0
        self._ranges = spec.statuses
        self.filtered = spec.statuses is not None or spec.sample < 1.0
        self._quoted = {None: b"null"}  # pools and backends -> their JSON strings (bounded by the config)
        self.lines = []
        self.queued_bytes = 0  # loop thread only
        self.written_bytes = 0  # writer thread only (what it wrote or dropped)
        self.lines_total = 0  # lines handed to the writer
        self.written_lines = 0  # writer thread only
        self.dropped_lines = 0  # loop thread: dropped while the writer was stuck
        self.failed_lines = 0  # writer thread: lost to a write error
        self._sec = -1
        self._stamp = ""
        self._bstamp = b""
        self._cstamp = ""
        self._last_warning = 0.0
        self._fd = None
        self._open()  # in the caller: a path that cannot be opened fails at start
        self._q = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._writer, name="fastlb-access-log", daemon=True)
        self._thread.start()

    # ----------------------------------------------------------- loop side
    def _wanted(self, status, flag):
        """Flagged and 5xx requests are always logged; others when their status is
        in ``statuses`` (all when unset), then ``sample`` of them."""
        if flag or status >= 500:
            return True
        ranges = self._ranges
        if ranges is not None:
            for lo, hi in ranges:
                if lo <= status <= hi:
                    break
            else:
                return False
        if self.sample < 1.0:
            self._acc += self.sample
            if self._acc < 1.0:
                return False
            self._acc -= 1.0
        return True

    def _time(self):
        now = time.time()
        sec = int(now)
        if sec != self._sec:
            self._sec = sec
            t = time.gmtime(sec)
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", t)
            self._bstamp = self._stamp.encode("ascii")
            self._cstamp = "%02d/%s/%04d:%02d:%02d:%02d +0000" % (
                t.tm_mday, _MONTHS[t.tm_mon - 1], t.tm_year, t.tm_hour, t.tm_min, t.tm_sec)
        return now, sec

    def request(self, conn, ex, status, duration, backend, session, pool):
        """One request that had an exchange (proxy._record): the hot path, formatted
        in one go (the combined format and rejected requests take _add)."""
        flag = conn.flag
        if self.filtered and not self._wanted(status, flag):
            return
        target = ex.target
        if not self.query:
            target = target.partition(b"?")[0]
        trace = conn.trace
        if self.combined:
            self._add(conn, ex.method, target, ex.minor, status, duration, pool.name if pool is not None else None,
                      backend.address if backend is not None else None,
                      session.connect_time if backend is not None else -1.0,
                      session.response_time if backend is not None else -1.0,
                      session.attempts, ex.request_id, flag, trace[3:35] if trace is not None else None)
            return
        now = time.time()
        sec = int(now)
        if sec != self._sec:
            self._time()
        quoted = self._quoted
        qpool = quoted.get(pool)
        if qpool is None:
            qpool = quoted[pool] = b'"%s"' % pool.name.encode("ascii")
        if b'"' in target or b"\\" in target or not target.isascii():
            target = _inner_b(target)
        rid = ex.request_id
        if b'"' in rid or b"\\" in rid or not rid.isascii():
            rid = _inner_b(rid)
        connect = session.connect_time
        response = session.response_time
        lines = self.lines
        if backend is not None and connect >= 0 and response >= 0 and trace is not None:
            # the common case in one format: a response from a backend, tracing on
            qbackend = quoted.get(backend)
            if qbackend is None:
                qbackend = quoted[backend] = b'"%s"' % backend.address.encode("ascii")
            lines.append(_JSON_FAST % (
                self._bstamp, int((now - sec) * 1000), conn.client_ip, ex.method, target, status, conn.req_in,
                conn.sent - conn.sent0, duration, qpool, qbackend, connect, response, session.attempts, rid,
                _FLAG_JSON_B[flag], trace[3:35]))
        else:
            if backend is not None:
                qbackend = quoted.get(backend)
                if qbackend is None:
                    qbackend = quoted[backend] = b'"%s"' % backend.address.encode("ascii")
                connect = b"%.6f" % connect if connect >= 0 else _NULL
                response = b"%.6f" % response if response >= 0 else _NULL
            else:
                qbackend = connect = response = _NULL
            lines.append(_JSON_LINE % (
                self._bstamp, int((now - sec) * 1000), conn.client_ip, ex.method, target, status, conn.req_in,
                conn.sent - conn.sent0, duration, qpool, qbackend, connect, response, session.attempts, rid,
                _FLAG_JSON_B[flag], b'"%s"' % trace[3:35] if trace is not None else _NULL))
        if len(lines) >= FLUSH_LINES:
            self.flush()

    def rejected(self, conn, status, duration, rid):
        """A request refused before it could be read (no method or path)."""
        self._add(conn, None, None, 1, status, duration, None, None, -1.0, -1.0, 0, rid, conn.flag, None)

    def _add(self, conn, method, target, minor, status, duration, pool, backend, connect, response, retries,
             rid, flag, trace_id):
        now, sec = self._time()
        bytes_in = conn.req_in
        bytes_out = conn.sent - conn.sent0
        client = conn.client_ip.decode("ascii")
        if self.combined:
            line = '%s - - [%s] "%s" %d %d "-" "-" request_id=%s pool=%s backend=%s duration=%.6f ' \
                   'connect_time=%s response_time=%s retries=%d bytes_in=%d flags=%s\n' % (
                       client, self._cstamp,
                       "%s %s HTTP/1.%d" % (method.decode("ascii"), target.decode("latin-1"), minor)
                       if method is not None else "-",
                       status, bytes_out, rid.decode("latin-1"), pool or "-", backend or "-", duration,
                       _seconds(connect), _seconds(response), retries, bytes_in, FLAG_TEXT[flag])
        else:
            line = '{"time":"%s.%03dZ","client":"%s","method":%s,"path":%s,"status":%d,"bytes_in":%d,' \
                   '"bytes_out":%d,"duration":%.6f,"pool":%s,"backend":%s,"connect_time":%s,' \
                   '"response_time":%s,"retries":%d,"request_id":%s,"flags":%s,"trace_id":%s}\n' % (
                       self._stamp, int((now - sec) * 1000), client,
                       '"%s"' % method.decode("ascii") if method is not None else "null",
                       _json_str(target) if target is not None else "null",
                       status, bytes_in, bytes_out, duration,
                       '"%s"' % pool if pool is not None else "null",
                       '"%s"' % backend if backend is not None else "null",
                       _seconds(connect), _seconds(response), retries, _json_str(rid), FLAG_JSON[flag],
                       '"%s"' % trace_id.decode("ascii") if trace_id is not None else "null")
        lines = self.lines
        lines.append(line.encode("utf-8", "replace"))
        if len(lines) >= FLUSH_LINES:
            self.flush()

    def flush(self):
        """Hand the formatted lines to the writer (the server's tick; no syscall
        here unless the writer sleeps and must be woken)."""
        if not self.lines:
            return
        data = b"".join(self.lines)
        n = len(self.lines)
        self.lines = []
        self.lines_total += n
        if self.queued_bytes - self.written_bytes + len(data) > MAX_BACKLOG:
            self.dropped_lines += n  # the writer is stuck: never let memory grow without bound
            return
        self.queued_bytes += len(data)
        self._q.put((data, n))

    @property
    def lost_lines(self):
        return self.dropped_lines + self.failed_lines

    def reopen(self):
        """SIGUSR1: the writer reopens the file before its next write (logrotate)."""
        self.flush()
        self._q.put(_REOPEN)

    def close(self, timeout=2.0):
        """Flush, then wait (bounded) for the writer to finish."""
        self.flush()
        self._q.put(_STOP)
        self._thread.join(timeout)

    # --------------------------------------------------------- writer side
    def _open(self):
        if self.path == "-":
            self._fd = 1
            return
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def _writer(self):
        while True:
            item = self._q.get()
            if item is _STOP:
                if self._fd is not None and self._fd != 1:
                    os.close(self._fd)
                    self._fd = None
                return
            if item is _REOPEN:
                if self.path != "-":
                    old = self._fd
                    try:
                        self._open()
                    except OSError as exc:
                        self._fd = old
                        self._warn("cannot reopen %s: %s (still writing to the old file)" % (self.path, exc))
                    else:
                        if old is not None:
                            os.close(old)
                        log.info("access log %s reopened", self.path)
                continue
            data, n = item
            try:
                view = memoryview(data)
                while view:
                    k = os.write(self._fd, view)
                    view = view[k:]
                self.written_lines += n
            except OSError as exc:
                self.failed_lines += n
                self._warn("access log %s: %s: %d line(s) dropped" % (
                    self.path if self.path != "-" else "stdout", errno.errorcode.get(exc.errno, exc), n))
            finally:
                self.written_bytes += len(data)

    def _warn(self, message):
        now = time.monotonic()
        if now - self._last_warning >= 60.0:
            self._last_warning = now
            log.warning("%s", message)
