"""PROXY protocol v1/v2 receiver (fastlb/proxyproto.py): valid headers of every kind,
every split point of each returning None until complete, the bytes after the header
left alone, and malformed headers refused with a reason."""

import ipaddress
import struct

import pytest
from hypothesis import given, settings, strategies as st

from fastlb.proxyproto import MAX_V1, MAX_V2, MAX_V2_LEN, ProxyProtocolError, V2_SIGNATURE, parse

SIG = b"\r\n\r\n\x00\r\nQUIT\n"
HTTP = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def v2(cmd=1, fam=0x11, block=b"", tlvs=b"", version=2, length=None):
    body = block + tlvs
    return SIG + struct.pack("!BBH", (version << 4) | cmd, fam, len(body) if length is None else length) + body


def inet(src="192.0.2.1", dst="198.51.100.2", sport=56324, dport=443):
    return struct.pack("!4s4sHH", ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed, sport, dport)


def inet6(src="2001:db8::1", dst="2001:db8:cafe::17", sport=4711, dport=8443):
    return struct.pack("!16s16sHH", ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed,
                       sport, dport)


def unix(src=b"/run/a.sock", dst=b"/run/b.sock"):
    return struct.pack("!108s108s", src, dst)


def tlv(t, value):
    return struct.pack("!BH", t, len(value)) + value


TLVS = tlv(0x01, b"http/1.1") + tlv(0x02, b"api.example.com") + tlv(0x04, b"") + tlv(0x05, b"x" * 128) + \
    tlv(0x20, b"\x01\x00\x00\x00\x00" + tlv(0x21, b"TLSv1.3") + tlv(0x22, b"client.example"))

VALID = [
    # (header, (src_ip, src_port, dst_ip, dst_port))
    (b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n", (b"192.168.0.1", 56324, b"192.168.0.11", 443)),
    (b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n",
     (b"255.255.255.255", 65535, b"255.255.255.255", 65535)),
    (b"PROXY TCP4 0.0.0.0 10.0.0.1 0 0\r\n", (b"0.0.0.0", 0, b"10.0.0.1", 0)),
    (b"PROXY TCP6 2001:db8::1 2001:db8::2 4711 80\r\n", (b"2001:db8::1", 4711, b"2001:db8::2", 80)),
    (b"PROXY TCP6 2001:DB8:0:0:0:0:0:1 ::1 1 2\r\n", (b"2001:db8::1", 1, b"::1", 2)),     # normalized
    (b"PROXY TCP6 ::ffff:192.0.2.1 :: 1 2\r\n", (b"::ffff:c000:201", 1, b"::", 2)),
    (b"PROXY TCP6 " + b":".join([b"ffff"] * 8) + b" " + b":".join([b"ffff"] * 8) + b" 65535 65535\r\n",
     (b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535, b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535)),
    (b"PROXY UNKNOWN\r\n", (None, 0, None, 0)),
    (b"PROXY UNKNOWN ffff:f...f:ffff anything at all 1\r\n", (None, 0, None, 0)),
    (b"PROXY UNKNOWN " + b"f" * (MAX_V1 - 16) + b"\r\n", (None, 0, None, 0)),             # exactly 107
    (v2(1, 0x11, inet()), (b"192.0.2.1", 56324, b"198.51.100.2", 443)),
    (v2(1, 0x11, inet(), TLVS), (b"192.0.2.1", 56324, b"198.51.100.2", 443)),
    (v2(1, 0x21, inet6()), (b"2001:db8::1", 4711, b"2001:db8:cafe::17", 8443)),
    (v2(1, 0x21, inet6(), TLVS), (b"2001:db8::1", 4711, b"2001:db8:cafe::17", 8443)),
    (v2(1, 0x21, inet6("::ffff:10.0.0.1", "::1")), (b"::ffff:a00:1", 4711, b"::1", 8443)),
    (v2(1, 0x11, inet("0.0.0.0", "255.255.255.255", 0, 65535)), (b"0.0.0.0", 0, b"255.255.255.255", 65535)),
    (v2(0, 0x00), (None, 0, None, 0)),                                       # LOCAL (a health check)
    (v2(0, 0x00, tlvs=TLVS), (None, 0, None, 0)),
    (v2(0, 0x11, inet()), (None, 0, None, 0)),                               # LOCAL: the block is ignored
    (v2(0, 0xFF, b"\xff" * 7), (None, 0, None, 0)),                          # ...family included (§2.2)
    (v2(1, 0x00), (None, 0, None, 0)),                                       # AF_UNSPEC
    (v2(1, 0x00, b"whatever the sender put here"), (None, 0, None, 0)),
    (v2(1, 0x31, unix()), (None, 0, None, 0)),                               # AF_UNIX stream
    (v2(1, 0x31, unix(), TLVS), (None, 0, None, 0)),
    (v2(1, 0x12, inet()), (None, 0, None, 0)),                               # UDP: falls back to UNSPEC
    (v2(1, 0x10, b""), (None, 0, None, 0)),                                  # transport UNSPEC
    (v2(1, 0x11, inet(), b"\x00" * 0), (b"192.0.2.1", 56324, b"198.51.100.2", 443)),
    (v2(1, 0x11, inet(), tlv(0xE0, b"z" * (MAX_V2_LEN - 12 - 3))),         # exactly the bound
     (b"192.0.2.1", 56324, b"198.51.100.2", 443)),
]
IDS = [repr(h[:40]) for h, _ in VALID]


@pytest.mark.parametrize("header, want", VALID, ids=IDS)
def test_valid_headers(header, want):
    assert parse(header) == (len(header),) + want
    assert parse(bytearray(header)) == (len(header),) + want
    got = parse(header)
    for x in (got[1], got[3]):
        assert x is None or type(x) is bytes


@pytest.mark.parametrize("header, want", VALID, ids=IDS)
def test_every_split_point_needs_more_until_complete(header, want):
    for k in range(len(header)):
        assert parse(header[:k]) is None, k
        assert parse(bytearray(header[:k])) is None, k
    assert parse(header) == (len(header),) + want


@pytest.mark.parametrize("header, want", VALID, ids=IDS)
def test_consumed_leaves_the_following_bytes_untouched(header, want):
    for tail in (HTTP, b"\r\n", b"PROXY TCP4 1.1.1.1 2.2.2.2 1 2\r\n", SIG + b"\x21\x11\x00\x0c", b"\x00" * 50):
        buf = header + tail
        got = parse(buf)
        assert got == (len(header),) + want
        assert buf[got[0]:] == tail


def test_constants():
    assert MAX_V1 == 107 and V2_SIGNATURE == SIG and MAX_V2 == 16 + MAX_V2_LEN


MALFORMED = [
    # (bytes, a word the reason must contain)
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "signature"),
    (b"G", "signature"),
    (b"\x16\x03\x01\x02\x00", "signature"),                                  # a TLS ClientHello
    (b"PROXX TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "signature"),
    (b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "signature"),
    (b"PRO", None),                                                           # valid prefix: see below
    (b"PROXY\r\n", "signature"),
    (b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "protocol"),
    (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "protocol"),
    (b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n", "protocol"),
    (b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", "protocol"),
    (b"PROXY UNKNOWNX\r\n", "protocol"),
    (b"PROXY TCP4\r\n", "expected"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "expected"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "expected"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", "expected"),
    (b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", "expected"),
    (b"PROXY TCP4 1.2.3.4\t5.6.7.8 1 2\r\n", "expected"),
    (b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", "IPv4"),
    (b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", "IPv4"),                        # heading zero
    (b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", "IPv4"),
    (b"PROXY TCP4 1.2.3.4.5 5.6.7.8 1 2\r\n", "IPv4"),
    (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "IPv4"),                              # wrong family
    (b"PROXY TCP4 1.2.3.4 localhost 1 2\r\n", "IPv4"),
    (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "IPv6"),
    (b"PROXY TCP6 ::1 2001:db8::g 1 2\r\n", "IPv6"),
    (b"PROXY TCP6 1::2::3 ::1 1 2\r\n", "IPv6"),
    (b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "IPv6"),
    (b"PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n", "IPv6"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "port"),                         # heading zero
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 -2\r\n", "port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 +2\r\n", "port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2x\r\n", "port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 \xd9\xa3\r\n", "port"),                   # a non-ASCII digit
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "CR or LF"),                        # bare LF
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX", "CR or LF"),                       # bare CR
    (b"PROXY TCP4 1.2.3.4\r5.6.7.8 1 2\r\n", "CR or LF"),
    (b"PROXY UNKNOWN\n", "CR or LF"),
    (b"PROXY UNKNOWN " + b"f" * (MAX_V1 - 15) + b"\r\n", "107"),              # 108 bytes with CRLF
    (b"PROXY UNKNOWN " + b"f" * 200, "107"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2" + b"0" * 100, "107"),
    (SIG[:5] + b"X", "signature"),
    (SIG[:11] + b"\r", "signature"),
    (v2(version=1), "version"),
    (v2(version=3), "version"),
    (v2(version=0x0f), "version"),
    (v2(cmd=2), "command"),
    (v2(cmd=0xf), "command"),
    (v2(1, 0x41, inet()), "family"),
    (v2(1, 0x13, inet()), "transport"),
    (v2(1, 0xF1, inet()), "family"),
    (v2(1, 0x11, inet()[:11]), "too short"),
    (v2(1, 0x11, b""), "too short"),
    (v2(1, 0x21, inet()), "too short"),                                       # IPv4 block for an IPv6 family
    (v2(1, 0x31, b"/x"), "too short"),
    (v2(1, 0x11, inet(), length=MAX_V2_LEN + 1), "bound"),
    (v2(1, 0x11, inet(), length=0xFFFF), "bound"),
    (v2(0, 0x00, length=MAX_V2_LEN + 1), "bound"),
    (v2(1, 0x11, inet(), b"\x01"), "truncated TLV"),
    (v2(1, 0x11, inet(), b"\x01\x00"), "truncated TLV"),
    (v2(1, 0x11, inet(), b"\x01\x00\x05abc"), "TLV longer"),
    (v2(1, 0x11, inet(), tlv(1, b"h2") + b"\x02\x00\x10"), "TLV longer"),
    (v2(1, 0x21, inet6(), tlv(1, b"h2") + b"\x02"), "truncated TLV"),
    (v2(1, 0x31, unix(), b"\x04\xff\xff"), "TLV longer"),
]


@pytest.mark.parametrize("data, word", [m for m in MALFORMED if m[1]], ids=[repr(m[0][:40]) for m in MALFORMED if m[1]])
def test_malformed_headers_raise_with_a_reason(data, word):
    with pytest.raises(ProxyProtocolError) as e:
        parse(data)
    assert e.value.reason and word in e.value.reason, e.value.reason
    assert str(e.value) == e.value.reason
    with pytest.raises(ProxyProtocolError):
        parse(bytearray(data))
    with pytest.raises(ProxyProtocolError):  # more bytes never make it valid
        parse(data + HTTP)


@pytest.mark.parametrize("data", [b"", b"P", b"PRO", b"PROXY", b"PROXY ", b"PROXY T", b"PROXY TCP4 1.2",
                                  b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r", b"PROXY UNKNOWN whatever", b"\r", SIG[:5], SIG,
                                  SIG + b"\x21", SIG + b"\x21\x11", SIG + b"\x21\x11\x00", v2(1, 0x11, inet())[:-1]])
def test_valid_prefixes_need_more(data):
    assert parse(data) is None


@pytest.mark.parametrize("data, word", [
    (b"GE", "signature"),
    (b"PROXY TCP7", "protocol"),
    (b"PROXY TCP4 1.2.3.4x", "address"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 123456", "port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 01", "port"),
    (b"PROXY TCP4 1.2.3.256 ", "IPv4"),
    (b"PROXY TCP6 ::1 zz", "address"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 ", "expected"),
    (b"PROXY TCP4 1.2.3.4\n", "CR or LF"),
    (b"PROXY TCP4 1.2.3.4\r5", "CR or LF"),
    (SIG + b"\x31", "version"),
    (SIG + b"\x22", "command"),
    (SIG + b"\x21\x51", "family"),
    (SIG + b"\x21\x1f", "transport"),
    (SIG + b"\x21\x11\x00\x00", "too short"),
    (SIG + b"\x21\x11\xff\xff", "bound"),
])
def test_impossible_prefixes_raise_early(data, word):
    with pytest.raises(ProxyProtocolError) as e:
        parse(data)
    assert word in e.value.reason


@settings(max_examples=300, deadline=None)
@given(src=st.integers(0, 2**32 - 1), dst=st.integers(0, 2**32 - 1), sp=st.integers(0, 65535),
       dp=st.integers(0, 65535), v6=st.booleans(), version=st.sampled_from([1, 2]),
       tlvs=st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=40)), max_size=4),
       cut=st.integers(0, 200))
def test_roundtrip_and_splits(src, dst, sp, dp, v6, version, tlvs, cut):
    if v6:
        s, d = ipaddress.IPv6Address(src * 2**96 + dst), ipaddress.IPv6Address(dst * 2**64 + sp)
    else:
        s, d = ipaddress.IPv4Address(src), ipaddress.IPv4Address(dst)
    if version == 1:
        header = b"PROXY %s %s %s %d %d\r\n" % (b"TCP6" if v6 else b"TCP4", str(s).encode(), str(d).encode(), sp, dp)
    else:
        block = (inet6 if v6 else inet)(str(s), str(d), sp, dp)
        header = v2(1, 0x21 if v6 else 0x11, block, b"".join(tlv(t, v) for t, v in tlvs))
    assert len(header) <= (MAX_V1 if version == 1 else MAX_V2)
    want = (len(header), str(s).encode(), sp, str(d).encode(), dp)
    assert parse(header + HTTP) == want
    k = min(cut, len(header) - 1)
    assert parse(header[:k]) is None


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=120))
def test_arbitrary_bytes_never_crash(data):
    try:
        r = parse(data)
    except ProxyProtocolError as e:
        assert e.reason
        return
    if r is not None:
        consumed, src, sport, dst, dport = r
        assert 0 < consumed <= len(data)
        assert 0 <= sport <= 65535 and 0 <= dport <= 65535
        for a in (src, dst):
            if a is not None:
                ipaddress.ip_address(a.decode())


@settings(max_examples=300, deadline=None)
@given(data=st.binary(min_size=1, max_size=60), prefix=st.sampled_from([b"PROXY ", b"PROXY TCP4 ", b"PROXY TCP6 ",
                                                                         SIG, SIG + b"\x21\x11\x00\x0c"]))
def test_mutated_headers_never_crash(data, prefix):
    try:
        parse(prefix + data)
    except ProxyProtocolError:
        pass


@settings(max_examples=500, deadline=None)
@given(n=st.one_of(st.integers(0, 2**128 - 1),
                   st.lists(st.sampled_from([0, 0, 0, 1, 0xffff]), min_size=8, max_size=8).map(
                       lambda hs: int.from_bytes(struct.pack("!8H", *hs), "big"))))
def test_ipv6_text_is_ipaddress_text(n):
    from fastlb.proxyproto import _v6_text
    a = ipaddress.IPv6Address(n)
    assert _v6_text(a.packed) == str(a).encode()
