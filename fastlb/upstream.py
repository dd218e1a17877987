"""Backend-side protocol and keep-alive connection pools.

``UpstreamConnection`` is a thin asyncio protocol: it owns a transport and hands
every event to its current ``peer`` (the client-side connection being served,
proxy.ProxyConnection) through fixed method names: ``on_upstream_data``,
``on_upstream_lost``, ``on_upstream_pause``, ``on_upstream_resume``. It does
no parsing.

Pooling (per backend, ``Backend.idle``, most recently used last): a connection is
released to the pool only after a complete response with no leftover bytes and
a complete request body (proxy.py decides that). An idle connection that
receives bytes or is closed by the backend is dropped at once. At most
``max_idle`` per backend are kept; ``sweep_idle`` closes those idle longer than
the idle timeout (called from the server's timer tick, so no timer per
connection).
"""

import asyncio

__all__ = ["UpstreamConnection", "acquire", "release", "sweep_idle", "WRITE_HIGH_WATER"]

# Transport write-buffer high-water mark (bytes) for both sides: above it the
# other side stops reading (backpressure); the low mark is a quarter of it.
WRITE_HIGH_WATER = 256 * 1024


class UpstreamConnection(asyncio.Protocol):
    __slots__ = ("transport", "backend", "peer", "idle_since", "closed", "reused")

    def __init__(self, backend):
        self.backend = backend
        self.transport = None
        self.peer = None
        self.idle_since = 0.0
        self.closed = False
        self.reused = False

    def connection_made(self, transport):
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)

    def data_received(self, data):
        peer = self.peer
        if peer is not None:
            peer.on_upstream_data(data)
        else:
            # Bytes on an idle connection: the backend broke framing. Never reuse.
            self.close()

    def eof_received(self):
        return False  # close our side too; the peer sees connection_lost

    def connection_lost(self, exc):
        self.closed = True
        peer = self.peer
        if peer is not None:
            self.peer = None
            peer.on_upstream_lost(self, exc)
        else:
            idle = self.backend.idle
            if self in idle:
                idle.remove(self)

    def pause_writing(self):
        if self.peer is not None:
            self.peer.on_upstream_pause()

    def resume_writing(self):
        if self.peer is not None:
            self.peer.on_upstream_resume()

    def close(self):
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self):
        self.closed = True
        self.peer = None
        if self.transport is not None:
            self.transport.abort()


def acquire(backend):
    """An idle pooled connection to ``backend``, or None."""
    idle = backend.idle
    while idle:
        conn = idle.pop()
        if not conn.closed and not conn.transport.is_closing():
            conn.reused = True
            return conn
    return None


def release(conn, now, max_idle):
    """Return a connection after a clean exchange; closes it when the pool is full."""
    conn.peer = None
    if conn.closed or max_idle <= 0:
        conn.close()
        return
    idle = conn.backend.idle
    if len(idle) >= max_idle:
        conn.close()
        return
    conn.idle_since = now
    conn.transport.resume_reading()
    idle.append(conn)


def sweep_idle(backends, now, idle_timeout):
    """Close pooled connections idle for longer than ``idle_timeout`` seconds."""
    limit = now - idle_timeout
    for backend in backends:
        idle = backend.idle
        # Oldest first: the list is ordered by release time.
        while idle and idle[0].idle_since <= limit:
            idle.pop(0).close()
