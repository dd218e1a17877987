"""PROXY protocol v1 and v2 receiver (HAProxy's proxy-protocol.txt, versions 1 and 2).

Sans-IO and standard library only: parse() is given the first bytes of a connection
and answers "need more", "here is the header" or raises ProxyProtocolError. The
caller calls it again with the longer buffer after each read, until it returns a
tuple or raises; then it drops ``consumed`` bytes and the rest is the client's data.

Invariants:
- Every prefix of a valid header returns None, and a prefix that cannot start a valid
  header raises as soon as that is certain (spec §2.1: "abort the connection as soon
  as possible"): a plain HTTP request on a proxy_protocol listener fails on its first
  byte, a v2 header with an unknown version, command or family on byte 13 or 14, and a
  length above the bound on byte 16, before anything is buffered.
- Nothing after the header is ever read: ``consumed`` is exactly the header's length.
- v1 lines are at most MAX_V1 = 107 bytes, CRLF included (§2.1's worst case); v2
  headers at most MAX_V2 = 16 + MAX_V2_LEN bytes (the bound is fastlb's, below).
- Addresses come back as ASCII bytes in ipaddress's form (lowercase, compressed IPv6).
  None for an address means "use the socket's peer": v1 UNKNOWN, v2 LOCAL, and v2
  families/transports fastlb does not use (AF_UNSPEC, AF_UNIX, datagrams: §2.2 lets a
  receiver fall back to UNSPEC for valid combinations it does not support).
"""

import ipaddress
import struct

__all__ = ["ProxyProtocolError", "parse", "MAX_V1", "MAX_V2", "MAX_V2_LEN", "V2_SIGNATURE"]

MAX_V1 = 107  # "PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n" (§2.1)

# v2's length field (address block + TLVs) may say up to 65535. fastlb refuses more
# than 4096: the largest address block is 216 bytes (AF_UNIX) and the TLVs senders
# emit (ALPN, authority/SNI, unique id ≤ 128, SSL version/CN/cipher, AWS/GCP/Azure
# endpoint ids, CRC32C, NOOP padding) add a few hundred at most; 4096 leaves room for
# long certificate CNs while bounding what a connection can make fastlb buffer before
# it is known to be valid.
MAX_V2_LEN = 4096
MAX_V2 = 16 + MAX_V2_LEN

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"  # §2.2, 12 bytes
_V1_SIGNATURE = b"PROXY "
_V1_PROTOS = (b"TCP4", b"TCP6", b"UNKNOWN")
# v2 address block per family/transport byte (§2.2: TCP/UDP over IPv4 12, over IPv6 36,
# UNIX stream/datagram 216). Other valid bytes (AF_UNSPEC, transport UNSPEC) have no
# defined block: it is ignored whole.
_ADDR_LEN = {0x11: 12, 0x12: 12, 0x21: 36, 0x22: 36, 0x31: 216, 0x32: 216}
_U16 = struct.Struct("!H")
_H8 = struct.Struct("!8H")
_V4_BLOCK = struct.Struct("!4s4sHH")
_V6_BLOCK = struct.Struct("!16s16sHH")
_HEX6 = frozenset(b"0123456789abcdefABCDEF:.")  # IPv6 text, with an embedded IPv4 tail
_DIGITS_DOTS = frozenset(b"0123456789.")
_DIGITS = frozenset(b"0123456789")
_OCTETS = frozenset(b"%d" % i for i in range(256))  # the valid spellings of an IPv4 octet


class ProxyProtocolError(Exception):
    """The connection's first bytes are not a valid PROXY protocol header.
    ``reason`` is short text for the log line; the connection is to be closed."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


def parse(buf):
    """buf (bytes or bytearray, the connection's first bytes) ->
    None (a valid start; read more) or (consumed, src_ip, src_port, dst_ip, dst_port);
    raises ProxyProtocolError. See the module's invariants."""
    if not buf:
        return None
    first = buf[0]
    if first == 0x50:  # "P"
        return _parse_v1(buf)
    if first == 0x0D:  # "\r"
        return _parse_v2(buf)
    raise ProxyProtocolError("no PROXY protocol signature")


# --- v1: one text line ---------------------------------------------------------------

def _parse_v1(buf):
    end = buf.find(b"\r\n", 0, MAX_V1)
    if end < 0:
        _check_v1_prefix(buf)
        return None
    line = buf[6:end]
    if type(line) is not bytes:
        line = bytes(line)
    if buf[:6] != _V1_SIGNATURE:
        raise ProxyProtocolError("no PROXY protocol signature")
    _check_no_ctl(line)
    consumed = end + 2
    if line[:7] == b"UNKNOWN" and (len(line) == 7 or line[7] == 0x20):
        return consumed, None, 0, None, 0  # §2.1: ignore anything before the CRLF
    fields = line.split(b" ")
    proto = fields[0]
    if proto != b"TCP4" and proto != b"TCP6":
        raise ProxyProtocolError("v1: unknown protocol %r" % _show(proto))
    if len(fields) != 5:
        raise ProxyProtocolError("v1: expected 'PROXY TCP4|TCP6 src dst sport dport'")
    proto, src, dst, sport, dport = fields
    if proto == b"TCP4":
        src, dst = _v1_ipv4(src), _v1_ipv4(dst)
    else:
        src, dst = _v1_ipv6(src), _v1_ipv6(dst)
    return consumed, src, _v1_port(sport), dst, _v1_port(dport)


def _check_v1_prefix(buf):
    """No CRLF among the first MAX_V1 bytes: raise unless buf can still become a line."""
    n = len(buf)
    if n >= MAX_V1:
        raise ProxyProtocolError("v1: no CRLF in the first %d bytes" % MAX_V1)
    head = bytes(buf[:6])
    if head != _V1_SIGNATURE[:len(head)]:
        raise ProxyProtocolError("no PROXY protocol signature")
    if n <= 6:
        return
    rest = bytes(buf[6:])
    if rest[-1:] == b"\r":
        rest = rest[:-1]  # a CR whose LF has not arrived yet
    _check_no_ctl(rest)
    fields = rest.split(b" ")
    proto = fields[0]
    if len(fields) == 1:
        if not any(p.startswith(proto) for p in _V1_PROTOS):
            raise ProxyProtocolError("v1: unknown protocol %r" % _show(proto))
        return
    if proto == b"UNKNOWN":
        return
    if proto == b"TCP4":
        check_addr, chars, width = _v1_ipv4, _DIGITS_DOTS, 15
    elif proto == b"TCP6":
        check_addr, chars, width = _v1_ipv6, _HEX6, 45
    else:
        raise ProxyProtocolError("v1: unknown protocol %r" % _show(proto))
    if len(fields) > 5:
        raise ProxyProtocolError("v1: expected 'PROXY TCP4|TCP6 src dst sport dport'")
    last = len(fields) - 1
    for k in range(1, len(fields)):
        f = fields[k]
        if k < last:  # complete fields are checked in full
            if k <= 2:
                check_addr(f)
            else:
                _v1_port(f)
        elif k <= 2:  # the field being received: its characters and length so far
            if len(f) > width or not chars.issuperset(f):
                raise ProxyProtocolError("v1: bad address %r" % _show(f))
        elif len(f) > 5 or not _DIGITS.issuperset(f) or (len(f) > 1 and f[0] == 0x30):
            raise ProxyProtocolError("v1: bad port %r" % _show(f))


def _check_no_ctl(text):
    # §2.1: a lone CR or LF never ends the line, and the fields are US-ASCII text
    if b"\r" in text or b"\n" in text:
        raise ProxyProtocolError("v1: CR or LF inside the line (expected CRLF)")


def _v1_ipv4(f):
    # §2.1: exactly four decimal numbers 0-255, one dot apart, no heading zeroes;
    # the dict of the 256 valid spellings is that grammar, one lookup an octet
    parts = f.split(b".")
    if len(parts) == 4:
        o = _OCTETS
        if parts[0] in o and parts[1] in o and parts[2] in o and parts[3] in o:
            return f
    raise ProxyProtocolError("v1: bad IPv4 address %r" % _show(f))


def _v1_ipv6(f):
    # §2.1: hex groups and at most one "::"; ipaddress also takes an embedded IPv4
    # tail (::ffff:192.0.2.1), which is still 128 bits. No scope ids ("%eth0").
    if _HEX6.issuperset(f) and b":" in f:
        try:
            return _v6_text(ipaddress.IPv6Address(f.decode("ascii")).packed)
        except ValueError:
            pass
    raise ProxyProtocolError("v1: bad IPv6 address %r" % _show(f))


def _v1_port(f):
    # §2.1: decimal 0-65535, no heading zeroes (bytes.isdigit is ASCII digits only)
    if 0 < len(f) <= 5 and f.isdigit() and (f[0] != 0x30 or len(f) == 1):
        p = int(f)
        if p <= 65535:
            return p
    raise ProxyProtocolError("v1: bad port %r" % _show(f))


def _v6_text(packed):
    """16 bytes -> ipaddress's text for them (RFC 5952: lowercase, no leading zeros,
    the first longest run of two or more zero groups as "::"), without building an
    ipaddress object and its string (several µs, per connection)."""
    h = _H8.unpack(packed)
    best, best_len = -1, 1
    i = 0
    while i < 8:
        if h[i]:
            i += 1
            continue
        j = i + 1
        while j < 8 and not h[j]:
            j += 1
        if j - i > best_len:
            best, best_len = i, j - i
        i = j
    if best < 0:
        return b"%x:%x:%x:%x:%x:%x:%x:%x" % h
    return b":".join([b"%x" % x for x in h[:best]]) + b"::" + b":".join([b"%x" % x for x in h[best + best_len:]])


def _show(b):
    return bytes(b[:40]).decode("ascii", "backslashreplace")


# --- v2: binary ----------------------------------------------------------------------

def _parse_v2(buf):
    n = len(buf)
    if n < 16:
        head = bytes(buf[:12])
        if head != V2_SIGNATURE[:len(head)]:
            raise ProxyProtocolError("no PROXY protocol signature")
        if n > 12:
            _check_ver_cmd(buf[12])
        if n > 13 and buf[12] & 0x0F:  # PROXY
            _check_family(buf[13])
        return None
    if buf[:12] != V2_SIGNATURE:
        raise ProxyProtocolError("no PROXY protocol signature")
    ver_cmd = buf[12]
    fam = buf[13]
    if ver_cmd != 0x21:  # the common case, PROXY, needs no further look
        _check_ver_cmd(ver_cmd)
    (length,) = _U16.unpack_from(buf, 14)
    if length > MAX_V2_LEN:
        raise ProxyProtocolError("v2: header length %d above fastlb's bound of %d" % (length, MAX_V2_LEN))
    local = not (ver_cmd & 0x0F)
    if not local:
        _check_family(fam)
    need = _ADDR_LEN.get(fam, -1)
    if not local and length < need:  # a length that cannot hold the family's addresses
        raise ProxyProtocolError("v2: length %d too short for the address family (needs %d)" % (length, need))
    total = 16 + length
    if n < total:
        return None
    if local:
        # §2.2 LOCAL: the proxy's own connection (a health check); the block, family
        # included, is discarded and the real endpoints are used
        return total, None, 0, None, 0
    if need < 0:  # AF_UNSPEC or transport UNSPEC: ignore the block (§2.2)
        return total, None, 0, None, 0
    _check_tlvs(buf, 16 + need, total)
    if fam == 0x11:
        s, d, sp, dp = _V4_BLOCK.unpack_from(buf, 16)
        return total, b"%d.%d.%d.%d" % tuple(s), sp, b"%d.%d.%d.%d" % tuple(d), dp
    if fam == 0x21:
        s, d, sp, dp = _V6_BLOCK.unpack_from(buf, 16)
        return total, _v6_text(s), sp, _v6_text(d), dp
    # AF_UNIX and datagram transports: valid, not used by fastlb: fall back to UNSPEC (§2.2)
    return total, None, 0, None, 0


def _check_ver_cmd(b):
    # §2.2: version must be 2; command 0 LOCAL or 1 PROXY, anything else is dropped
    if b >> 4 != 2:
        raise ProxyProtocolError("v2: unsupported version %d" % (b >> 4))
    if b & 0x0F > 1:
        raise ProxyProtocolError("v2: unknown command %d" % (b & 0x0F))


def _check_family(b):
    # §2.2: family 0-3 (UNSPEC, INET, INET6, UNIX) and transport 0-2 (UNSPEC, STREAM,
    # DGRAM); other values must be rejected
    if b >> 4 > 3:
        raise ProxyProtocolError("v2: unknown address family %d" % (b >> 4))
    if b & 0x0F > 2:
        raise ProxyProtocolError("v2: unknown transport %d" % (b & 0x0F))


def _check_tlvs(buf, i, end):
    # §2.2.x: type (1 byte), length (2 bytes), value; the vectors must tile the rest of
    # the header exactly. Their contents are skipped (CRC32C is not verified).
    while i < end:
        if end - i < 3:
            raise ProxyProtocolError("v2: truncated TLV header")
        (tlen,) = _U16.unpack_from(buf, i + 1)
        i += 3 + tlen
        if i > end:
            raise ProxyProtocolError("v2: TLV longer than the header")
