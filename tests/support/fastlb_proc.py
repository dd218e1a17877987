"""Run a real fastlb process for tests: config file in, ready port out, SIGTERM at the end."""

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import yaml

READY = re.compile(r"listening on (\S+):(\d+) \[(\S+)\]")
ADMIN = re.compile(r"admin API listening on (\S+):(\d+)")
CORE = re.compile(r"^fastlb \S+ \(core: (\w+)\)")


def expected_core(env):
    """The core a fastlb started with ``env`` must run: the pure twin only when asked."""
    value = env.get("FASTLB_NO_EXTENSIONS", "").strip().lower()
    return "python" if value not in ("", "0", "false", "no") else "cython"


class FastlbProcess:
    """``python -m fastlb run -c FILE`` with listeners on port 0; ports read from its ready lines.

    Every process reports its core on start (``fastlb VERSION (core: NAME)``); ``start``
    fails unless it is the expected one (``core``): the compiled core, or the pure-Python
    twin when ``FASTLB_NO_EXTENSIONS`` is set in the process's environment. The test
    process's own FASTLB_NO_EXTENSIONS (a run without a build) is honoured the same way.
    """

    def __init__(self, tmp_path, doc=None, args=None, env=None):
        self.tmp_path = tmp_path
        self.doc = doc
        self.args = args
        self.env = env
        self.proc = None
        self.ports = {}  # listener name -> port
        self.admin_port = None
        self.output = []
        self.core = None  # as reported by the process

    @property
    def port(self):
        return next(iter(self.ports.values()))

    def start(self, timeout=20.0):
        if self.args is None:
            path = self.tmp_path / "fastlb.yaml"
            path.write_text(yaml.safe_dump(self.doc))
            args = ["run", "-c", str(path)]
        else:
            args = self.args
        env = dict(os.environ)
        env.update(self.env or {})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fastlb"] + args,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True, bufsize=1,
        )
        # A thread drains the pipe into a queue: select() on a buffered text pipe misses
        # lines already read into the buffer, and an undrained pipe could block fastlb.
        self._lines = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        n_listeners = len(self.doc["listeners"]) if self.doc else 1
        want_admin = bool(self.doc and self.doc.get("admin")) or (self.args and "--admin" in self.args)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.ports) == n_listeners and (not want_admin or self.admin_port):
                want = expected_core(env)
                if self.core != want:
                    self.kill()
                    raise RuntimeError("fastlb runs core %r, expected %r:\n%s" % (
                        self.core, want, "".join(self.output)))
                return self
            line = self._readline(deadline - time.monotonic())
            if line is None:
                break
            m = READY.search(line)
            if m:
                self.ports[m.group(3)] = int(m.group(2))
            m = CORE.search(line)
            if m:
                self.core = m.group(1)
            m = ADMIN.search(line)
            if m:
                self.admin_port = int(m.group(2))
        self.kill()
        raise RuntimeError("fastlb did not become ready:\n" + "".join(self.output))

    def _pump(self):
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _readline(self, timeout):
        if timeout <= 0:
            return None
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            return None
        if line is None:
            self._lines.put(None)  # EOF stays visible to later reads
            return None
        self.output.append(line)
        return line

    def read_output(self, timeout=0.2):
        """Collect what the process printed so far (log lines go to the same pipe)."""
        end = time.monotonic() + timeout
        while self._readline(end - time.monotonic()) is not None:
            pass
        return "".join(self.output)

    def url(self, path="/", listener=None):
        port = self.ports[listener] if listener else self.port
        return "http://127.0.0.1:%d%s" % (port, path)

    def connect(self, listener=None):
        port = self.ports[listener] if listener else self.port
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        return s

    def terminate(self, timeout=30.0):
        """SIGTERM and wait; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        self.read_output(0.1)
        return code

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def recv_until_closed(sock, timeout=10.0, limit=1 << 24):
    """Read until the peer closes (or timeout); returns the bytes."""
    sock.settimeout(timeout)
    out = bytearray()
    end = time.monotonic() + timeout
    while len(out) < limit and time.monotonic() < end:
        try:
            data = sock.recv(65536)
        except socket.timeout:
            break
        except ConnectionResetError:
            break
        if not data:
            break
        out += data
    return bytes(out)


class ResponseReader:
    """Reads successive responses from a raw socket with h11 (an independent parser).

    ``next(method)`` must be called once per request written on the socket, in order
    (the method matters: a HEAD response has no body).
    """

    def __init__(self, sock, timeout=10.0):
        import h11

        self.h11 = h11
        self.sock = sock
        self.conn = h11.Connection(h11.CLIENT)
        self.interim = []
        sock.settimeout(timeout)

    def next(self, method="GET"):
        h11 = self.h11
        conn = self.conn
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        # h11 tracks request/response pairs: tell it which request this answers.
        conn.send(h11.Request(method=method, target="/", headers=[("Host", "x")]))
        conn.send(h11.EndOfMessage())
        response, body, interim = None, bytearray(), []
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                conn.receive_data(self.sock.recv(65536))
                continue
            if isinstance(ev, h11.InformationalResponse):
                interim.append(ev)
            elif isinstance(ev, h11.Response):
                response = ev
            elif isinstance(ev, h11.Data):
                body += ev.data
            elif isinstance(ev, h11.EndOfMessage):
                self.interim = interim  # 1xx responses seen before this one
                return response, bytes(body)
            elif isinstance(ev, h11.ConnectionClosed):
                raise ConnectionError("connection closed before a complete response")


def read_response(sock, method="GET", timeout=10.0):
    """One response from a raw socket (see ResponseReader)."""
    return ResponseReader(sock, timeout).next(method)
