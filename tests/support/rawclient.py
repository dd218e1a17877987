"""A raw-socket HTTP client for tests: bytes out, everything until the close back."""

import socket
import struct


def send_raw(port, data, source="127.0.0.1", read=True, timeout=5.0):
    """Send ``data`` on a new connection from ``source`` (any 127.0.0.0/8 address is
    local on Linux) to 127.0.0.1:``port``; return what arrives until the server closes
    (or resets, or ``timeout`` passes between reads). ``read=False``: send and close."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))
    try:
        s.sendall(data)
        out = b""
        while read:
            try:
                chunk = s.recv(65536)
            except (socket.timeout, ConnectionResetError):
                break
            if not chunk:
                break
            out += chunk
        return out
    finally:
        s.close()


def proxy_v2(src, sport, dst="192.0.2.1", dport=443):
    """A PROXY protocol v2 header (PROXY command, TCP over IPv4), spelled out from
    HAProxy's proxy-protocol.txt rather than taken from fastlb.proxyproto."""
    addrs = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)
    return b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack("!H", len(addrs)) + addrs
