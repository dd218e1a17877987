"""The access log: one line per request, buffered, written by a thread of its own.

On the request path a request becomes a row of plain values (a tuple) appended to
a list: no formatting, no syscall, no ``logging`` call. The server's tick (at least
once a second, or sooner at FLUSH_LINES rows) formats the batch in one call of the
compiled kernel ``_core.json_lines`` and hands the bytes to a writer thread through
a queue; that thread does the blocking ``os.write``. So a
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

from ._core import json_lines
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

FLAG_JSON = (b"[]",) + tuple(b'["%s"]' % name.encode("ascii") for _, name, _ in FLAGS)
FLAG_TEXT = ("-",) + tuple(name for _, name, _ in FLAGS)
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _seconds(value):
    return "null" if value < 0 else "%.6f" % value


def _text(value):
    """Request bytes in a combined-format line: printable ASCII as is, other bytes
    (and '"', '\\') as \\xHH (Apache's escaping), so a line stays one line with
    its quotes balanced."""
    if value.isascii() and b'"' not in value and b"\\" not in value and value.decode("ascii").isprintable():
        return value.decode("ascii")
    return "".join(chr(c) if 0x20 <= c <= 0x7E and c not in (0x22, 0x5C) else "\\x%02x" % c for c in value)


class AccessLog:
    __slots__ = ("spec", "path", "combined", "query", "sample", "_acc", "_ranges", "lines",
                 "queued_bytes", "written_bytes", "lines_total", "dropped_lines", "_q", "_thread", "_fd",
                 "_last_warning", "_sec", "_cstamp", "written_lines", "failed_lines", "filtered", "_names")

    def __init__(self, spec):
        self.spec = spec
        self.path = spec.path
        self.combined = spec.format == "combined"
        self.query = spec.query
        self.sample = spec.sample
        self._acc = 0.0
        self._ranges = spec.statuses
        self.filtered = spec.statuses is not None or spec.sample < 1.0
        self._names = {}  # pools and backends -> their names as bytes (bounded by the config)
        self.lines = []
        self.queued_bytes = 0  # loop thread only
        self.written_bytes = 0  # writer thread only (what it wrote or dropped)
        self.lines_total = 0  # lines handed to the writer
        self.written_lines = 0  # writer thread only
        self.dropped_lines = 0  # loop thread: dropped while the writer was stuck
        self.failed_lines = 0  # writer thread: lost to a write error
        self._sec = -1
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
            self._cstamp = "%02d/%s/%04d:%02d:%02d:%02d +0000" % (
                t.tm_mday, _MONTHS[t.tm_mon - 1], t.tm_year, t.tm_hour, t.tm_min, t.tm_sec)
        return now, sec

    def request(self, conn, ex, status, duration, backend, session, pool):
        """One request that had an exchange (proxy._record): the hot path. A JSON
        line is kept as a row of plain values, formatted with its batch at flush by
        the _core kernel (logline.json_lines) in one buffer."""
        flag = conn.flag
        if self.filtered and not self._wanted(status, flag):
            return
        target = ex.target
        if not self.query:
            target = target.partition(b"?")[0]
        trace = conn.trace
        if backend is not None:
            connect = session.connect_time
            response = session.response_time
        else:
            connect = response = -1.0
        if self.combined:
            self._combined(conn, ex.method, target, ex.minor, status, duration,
                           pool.name if pool is not None else None, backend.address if backend is not None else None,
                           connect, response, session.attempts, ex.request_id, flag)
            return
        names = self._names
        pname = names.get(pool)
        if pname is None and pool is not None:
            pname = names[pool] = pool.name.encode("ascii")
        bname = names.get(backend)
        if bname is None and backend is not None:
            bname = names[backend] = backend.address.encode("ascii")
        # a row of plain values; the batch is formatted at flush (_core.json_lines)
        lines = self.lines
        lines.append((time.time(), conn.addr, ex.method, target, status, conn.req_in, conn.sent - conn.sent0,
                      duration, pname, bname, connect, response, session.attempts, ex.request_id, FLAG_JSON[flag],
                      trace[3:35] if trace is not None else None))
        if len(lines) >= FLUSH_LINES:
            self.flush()

    def rejected(self, conn, status, duration, rid):
        """A request refused before it could be read (no method or path)."""
        if self.combined:
            self._combined(conn, None, None, 1, status, duration, None, None, -1.0, -1.0, 0, rid, conn.flag)
            return
        lines = self.lines
        lines.append((time.time(), conn.client_ip, None, None, status, conn.req_in, conn.sent - conn.sent0, duration,
                      None, None, -1.0, -1.0, 0, rid, FLAG_JSON[conn.flag], None))
        if len(lines) >= FLUSH_LINES:
            self.flush()

    def _combined(self, conn, method, target, minor, status, duration, pool, backend, connect, response, retries,
                  rid, flag):
        self._time()
        line = '%s - - [%s] "%s" %d %d "-" "-" request_id=%s pool=%s backend=%s duration=%.6f ' \
               'connect_time=%s response_time=%s retries=%d bytes_in=%d flags=%s\n' % (
                   conn.client_ip.decode("ascii"), self._cstamp,
                   "%s %s HTTP/1.%d" % (method.decode("ascii"), _text(target), minor) if method is not None else "-",
                   status, conn.sent - conn.sent0, _text(rid), pool or "-", backend or "-", duration,
                   _seconds(connect), _seconds(response), retries, conn.req_in, FLAG_TEXT[flag])
        lines = self.lines
        lines.append(line.encode("ascii"))
        if len(lines) >= FLUSH_LINES:
            self.flush()

    def flush(self):
        """Hand the formatted lines to the writer (the server's tick; no syscall
        here unless the writer sleeps and must be woken)."""
        if not self.lines:
            return
        lines = self.lines
        data = b"".join(lines) if self.combined else json_lines(lines)
        n = len(lines)
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
