"""The client connection: transport, flow control, deadlines and every way it closes.

``ClientConnection`` knows nothing about HTTP (proxy.py subclasses it with the
request lifecycle). It owns:

- ``ReadFlow``: reading backpressure as a set of reasons (bit flags). Reading is
  paused while any reason holds and resumed when the last one clears, so
  independent causes never resume each other's pause. The reasons an exchange
  sets (``EXCHANGE_PAUSES``) are released in one call when it ends, whatever the
  exit, so no exit path can leave a reader paused.
- writing backpressure: while the client leaves fastlb's writes unread (the
  transport above its high-water mark) the *send* deadline runs
  (``timeouts.send``, as nginx's send_timeout); the subclass stops reading the
  backend meanwhile.
- one ``Timer`` on the listener's wheel (timers.py), whose kind says which
  deadline it is; the subclass handles the HTTP kinds, this class the closing ones.
- closing. A connection leaves its listener's set (which graceful drain waits on)
  only in ``connection_lost``, after the transport flushed or was aborted, never
  when fastlb merely decided to close. Two ways to close:
    * after the client's FIN: ``transport.close()`` flushes and closes;
    * otherwise a *lingering close* (nginx's lingering_close): shut down the write
      side once the buffer is flushed (FIN), keep reading and discarding what the
      client still sends for up to ``timeouts.linger``, then close. Closing with
      unread bytes in the receive buffer makes the kernel send an RST, which can
      destroy the response before the client has read it.
  Flushing is bounded too: a closing connection whose buffer makes no progress for
  ``timeouts.send`` is aborted.
"""

import asyncio

from .timers import Timer
from .upstream import WRITE_HIGH_WATER

__all__ = [
    "ClientConnection", "ReadFlow", "PAUSE_UPSTREAM", "PAUSE_PENDING", "PAUSE_PIPELINE", "EXCHANGE_PAUSES",
    "OPEN", "CLOSING", "LINGER", "CLOSED",
]

# Why the client's reader is paused (ReadFlow bits).
PAUSE_UPSTREAM = 1  # the backend connection's write buffer is full
PAUSE_PENDING = 2  # body bytes queued while the backend connection is being set up
PAUSE_PIPELINE = 4  # pipelined bytes buffered while a response is in progress
EXCHANGE_PAUSES = PAUSE_UPSTREAM | PAUSE_PENDING  # released when the exchange ends

# Connection phases (self.phase).
OPEN = 0  # reading requests, writing responses
CLOSING = 1  # transport.close() issued: flushing, then connection_lost
LINGER = 2  # write side shut down (or about to be): discarding what the client sends
CLOSED = 3  # aborted or lost

# Client timer kinds handled here; proxy.py numbers its own from 1 to 9.
T_SEND = 10  # the client has not drained our writes for timeouts.send
T_FLUSH = 11  # closing: the write buffer must make progress within timeouts.send
T_LINGER = 12  # lingering close: how long we keep discarding the client's bytes


class ReadFlow:
    """Reading backpressure of one transport, as a set of reasons."""

    __slots__ = ("transport", "reasons")

    def __init__(self, transport):
        self.transport = transport
        self.reasons = 0

    def pause(self, reason):
        if not self.reasons and not self.transport.is_closing():
            self.transport.pause_reading()
        self.reasons |= reason

    def resume(self, reasons):
        """Clear ``reasons`` (one bit or a mask); reading resumes when none is left."""
        if self.reasons & reasons:
            self.reasons &= ~reasons
            if not self.reasons and not self.transport.is_closing():
                self.transport.resume_reading()


class ClientConnection(asyncio.Protocol):
    __slots__ = ("listener", "transport", "client_ip", "flow", "timer", "phase", "write_paused",
                 "client_eof", "flush_mark", "received", "sent")

    def __init__(self, listener):
        self.listener = listener
        self.transport = None
        self.client_ip = b""
        self.flow = None
        self.timer = Timer(self)
        self.phase = OPEN
        self.write_paused = False
        self.client_eof = False
        self.flush_mark = 0
        # bytes from and to the client (the subclass counts them as it reads and
        # writes); added to the listener's totals when the connection ends
        self.received = 0
        self.sent = 0

    def connection_made(self, transport):
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        self.flow = ReadFlow(transport)
        peer = transport.get_extra_info("peername")
        if peer:
            self.client_ip = peer[0].encode("ascii")
        listener = self.listener
        listener.connections.add(self)
        listener.connections_total += 1
        self.on_connect()

    def connection_lost(self, exc):
        self.phase = CLOSED
        self.listener.wheel.cancel(self.timer)
        listener = self.listener
        listener.connections.discard(self)
        self.on_disconnect()
        listener.bytes_received += self.received
        listener.bytes_sent += self.sent

    # -- writing backpressure -------------------------------------------------
    def pause_writing(self):
        self.write_paused = True
        if self.phase == OPEN:
            self.on_client_pause()
            listener = self.listener
            listener.wheel.arm(self.timer, T_SEND, listener.loop.time() + listener.timeouts.send)

    def resume_writing(self):
        self.write_paused = False
        if self.phase == OPEN:
            self.on_client_resume()
            self.rearm()
        elif self.phase == LINGER:
            # the write buffer is empty (close_client set the low-water mark to 0):
            # the FIN is out, linger from now
            listener = self.listener
            listener.wheel.arm(self.timer, T_LINGER, listener.loop.time() + listener.timeouts.linger)

    # -- deadlines --------------------------------------------------------------
    def on_timer(self, timer, kind, now):
        if self.phase == CLOSED:
            return
        if kind == T_SEND:
            if self.phase == OPEN and self.write_paused:
                self.on_send_timeout()
        elif kind == T_FLUSH:
            size = self.transport.get_write_buffer_size()
            if size == 0:
                if self.phase == LINGER:
                    self.listener.wheel.arm(self.timer, T_LINGER, now + self.listener.timeouts.linger)
                else:
                    self.transport.abort()
            elif size < self.flush_mark:  # draining, slowly: another period
                self.flush_mark = size
                self.listener.wheel.arm(self.timer, T_FLUSH, now + self.listener.timeouts.send)
            else:
                self.transport.abort()  # the client stopped reading a closing connection
        elif kind == T_LINGER:
            self.transport.abort()
        else:
            self.on_client_timer(kind, now)

    def rearm(self):
        """Arm the timer for the state the connection is in (subclass)."""

    # -- closing ----------------------------------------------------------------
    def close_client(self, linger=True):
        """Close once everything written has reached the client (see module doc).
        ``linger=False`` for a connection idle between requests: nothing of the
        client's is expected, so a plain close (as nginx closes idle keep-alives)."""
        if self.phase != OPEN:
            return
        transport = self.transport
        listener = self.listener
        self.flow.reasons = 0
        if self.client_eof or not linger or not transport.can_write_eof():
            self.phase = CLOSING
            pending = transport.get_write_buffer_size()
            transport.close()
            if pending:
                self.flush_mark = pending
                listener.wheel.arm(self.timer, T_FLUSH, listener.loop.time() + listener.timeouts.send)
            else:
                listener.wheel.cancel(self.timer)
            return
        self.phase = LINGER
        transport.write_eof()  # FIN after the buffered bytes
        transport.resume_reading()  # read and discard until the client's FIN
        pending = transport.get_write_buffer_size()
        now = listener.loop.time()
        if pending:
            # resume_writing then comes when the buffer is empty, not at the usual
            # low-water mark: that is when lingering starts. Until then T_FLUSH
            # checks for progress once per send period.
            transport.set_write_buffer_limits(high=0, low=0)
            self.flush_mark = pending
            listener.wheel.arm(self.timer, T_FLUSH, now + listener.timeouts.send)
        else:
            listener.wheel.arm(self.timer, T_LINGER, now + listener.timeouts.linger)

    def abort_client(self):
        """Reset the connection now (a response cut short must not look complete)."""
        if self.phase != CLOSED:
            self.phase = CLOSED
            self.listener.wheel.cancel(self.timer)
            self.transport.abort()

    # -- for the subclass ---------------------------------------------------------
    def on_connect(self):
        pass

    def on_disconnect(self):
        pass

    def on_client_pause(self):
        pass

    def on_client_resume(self):
        pass

    def on_client_timer(self, kind, now):
        pass

    def on_send_timeout(self):
        self.abort_client()
