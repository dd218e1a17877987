"""Client-side asyncio protocol: connection bookkeeping and flow control only.

``DownstreamProtocol`` knows nothing about HTTP or balancing (proxy.py
subclasses it with the request lifecycle). It owns:
- the transport, its write-buffer limits and the client's address as bytes;
- reading backpressure as a set of reasons (bit flags): reading is paused while
  any reason holds and resumed when the last one clears, so independent causes
  (backend not draining our writes, a body queued while connecting, pipelined
  bytes piling up) never resume each other's pause by mistake;
- writing backpressure: ``pause_writing``/``resume_writing`` from the transport
  are turned into ``on_client_pause``/``on_client_resume`` calls, which the
  subclass maps onto the backend connection (stop reading the backend while the
  client is slow);
- membership in its listener's connection set, used by the timer tick
  (deadlines) and by graceful drain.
"""

import asyncio

from .upstream import WRITE_HIGH_WATER

__all__ = ["DownstreamProtocol", "BLOCK_UPSTREAM", "BLOCK_PENDING", "BLOCK_PIPELINE"]

BLOCK_UPSTREAM = 1  # the backend connection's write buffer is full
BLOCK_PENDING = 2  # body bytes queued while the backend connection is being set up
BLOCK_PIPELINE = 4  # pipelined bytes buffered while a response is in progress


class DownstreamProtocol(asyncio.Protocol):
    __slots__ = ("transport", "listener", "client_ip", "read_block", "write_paused", "closed")

    def __init__(self, listener):
        self.listener = listener
        self.transport = None
        self.client_ip = b""
        self.read_block = 0
        self.write_paused = False
        self.closed = False

    def connection_made(self, transport):
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        peer = transport.get_extra_info("peername")
        if peer:
            self.client_ip = peer[0].encode("ascii")
        self.listener.connections.add(self)
        self.on_connect()

    def connection_lost(self, exc):
        self.closed = True
        self.listener.connections.discard(self)
        self.on_disconnect()

    # -- reading backpressure -------------------------------------------------
    def block_reading(self, reason):
        if not self.read_block and not self.closed:
            self.transport.pause_reading()
        self.read_block |= reason

    def unblock_reading(self, reason):
        if self.read_block & reason:
            self.read_block &= ~reason
            if not self.read_block and not self.closed:
                self.transport.resume_reading()

    # -- writing backpressure -------------------------------------------------
    def pause_writing(self):
        self.write_paused = True
        self.on_client_pause()

    def resume_writing(self):
        self.write_paused = False
        self.on_client_resume()

    # -- for the subclass ---------------------------------------------------------
    def on_connect(self):
        pass

    def on_disconnect(self):
        pass

    def on_client_pause(self):
        pass

    def on_client_resume(self):
        pass

    def close(self):
        """Close after flushing what was written (transport.close semantics)."""
        if not self.closed:
            self.closed = True
            self.listener.connections.discard(self)
            self.transport.close()

    def abort(self):
        if not self.closed:
            self.closed = True
            self.listener.connections.discard(self)
            self.transport.abort()
