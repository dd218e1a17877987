"""Unit tests for ChunkedDecoder (RFC 9112 §7.1), on both twins.

Every body is decoded whole, byte by byte and in seeded random splits; the payload, the
done flag, the leftover count and any error must not depend on the split.
"""

import random

import pytest

from fastlb._core._scanerror import ScanError
from tests.conftest import load_twin


@pytest.fixture
def mod(twin):
    return load_twin("scanner", twin)


def decode(dec, pieces):
    """Feed pieces; return (payload, done, leftover-of-the-final-piece) or the error."""
    out = []
    try:
        for piece in pieces:
            out.append(dec.feed(piece))
            if dec.done:
                return ("ok", b"".join(out), dec.leftover, piece[len(piece) - dec.leftover :])
    except ScanError as exc:
        return ("error", exc.status, exc.reason)
    return ("incomplete", b"".join(out))


def split_ways(body, seeds=(1, 2, 3, 4)):
    ways = [[body], [body[i : i + 1] for i in range(len(body))]]
    for seed in seeds:
        rng = random.Random(seed)
        if len(body) > 1:
            cuts = sorted(rng.sample(range(1, len(body)), rng.randint(1, min(10, len(body) - 1))))
        else:
            cuts = []
        bounds = [0] + cuts + [len(body)]
        ways.append([body[a:b] for a, b in zip(bounds, bounds[1:])])
    return ways


def decode_every_way(mod, body, **limits):
    results = [decode(mod.ChunkedDecoder(**limits), pieces) for pieces in split_ways(body)]
    # the leftover is relative to the last piece fed: compare the bytes it designates
    norm = [(r[0], r[1], r[3]) if r[0] == "ok" else r for r in results]
    assert all(r == norm[0] for r in norm), results
    return results[0]


VALID = [
    (b"5\r\nhello\r\n0\r\n\r\n", b"hello"),
    (b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", b"hello world"),
    (b"0\r\n\r\n", b""),
    (b"000\r\n\r\n", b""),
    (b"A\r\n0123456789\r\n0\r\n\r\n", b"0123456789"),
    (b"a\r\n0123456789\r\n0\r\n\r\n", b"0123456789"),
    (b"005\r\nhello\r\n0\r\n\r\n", b"hello"),
    (b"0000000000000005\r\nhello\r\n0\r\n\r\n", b"hello"),  # 16 digits: the maximum
    (b"1\r\n\r\r\n1\r\n\n\r\n0\r\n\r\n", b"\r\n"),  # CR/LF inside data are data
    # chunk extensions (RFC 9112 §7.1.1)
    (b"5;name\r\nhello\r\n0\r\n\r\n", b"hello"),
    (b"5;name=value\r\nhello\r\n0\r\n\r\n", b"hello"),
    (b"5;a=1;b;c=x\r\nhello\r\n0;last=1\r\n\r\n", b"hello"),
    (b'5;a="quoted; value"\r\nhello\r\n0\r\n\r\n', b"hello"),
    (b'5;a="esc \\"q\\" \\\\"\r\nhello\r\n0\r\n\r\n', b"hello"),
    (b'5;a=""\r\nhello\r\n0\r\n\r\n', b"hello"),
    (b'5;a="\xe9t\xe9"\r\nhello\r\n0\r\n\r\n', b"hello"),  # obs-text in quoted-string
    (b"5 ;a\r\nhello\r\n0\r\n\r\n", b"hello"),  # BWS before ";"
    (b"5\t; a = b ;c\r\nhello\r\n0\r\n\r\n", b"hello"),  # BWS around ";" and "="
    (b'5;a="x" ;b\r\nhello\r\n0\r\n\r\n', b"hello"),
    # trailer section (RFC 9112 §7.1.2): validated, then discarded
    (b"5\r\nhello\r\n0\r\nX-Checksum: abc\r\n\r\n", b"hello"),
    (b"5\r\nhello\r\n0\r\nA: 1\r\nB:\r\nC: \t x \xe9\r\n\r\n", b"hello"),
    (b"5\r\nhello\r\n0\r\nContent-Length: 50\r\n\r\n", b"hello"),
]


@pytest.mark.parametrize("body,payload", VALID)
def test_valid_bodies(mod, body, payload):
    result = decode_every_way(mod, body)
    assert result[:3] == ("ok", payload, 0)


def test_leftover_is_the_next_message(mod):
    body = b"5\r\nhello\r\n0\r\n\r\n"
    nxt = b"GET /next HTTP/1.1\r\n"
    for pieces in split_ways(body + nxt):
        dec = mod.ChunkedDecoder()
        out = []
        consumed = 0
        for piece in pieces:
            out.append(dec.feed(piece))
            if dec.done:
                consumed += len(piece) - dec.leftover
                break
            consumed += len(piece)
        assert dec.done
        assert b"".join(out) == b"hello"
        assert consumed == len(body)


def test_feed_after_done_returns_nothing(mod):
    dec = mod.ChunkedDecoder()
    assert dec.feed(b"0\r\n\r\nabc") == b""
    assert dec.done and dec.leftover == 3
    assert dec.feed(b"more") == b""
    assert dec.leftover == 4


def test_large_chunk_streams_through(mod):
    payload = bytes(range(256)) * 400  # 102400 bytes
    body = b"%x\r\n" % len(payload) + payload + b"\r\n0\r\n\r\n"
    dec = mod.ChunkedDecoder()
    out = [dec.feed(body[i : i + 4096]) for i in range(0, len(body), 4096)]
    assert dec.done and b"".join(out) == payload


def test_output_types(mod):
    dec = mod.ChunkedDecoder()
    first = dec.feed(b"a\r\n01234")
    assert first == b"01234" and type(first) is bytes
    whole = b"56789"
    second = dec.feed(whole)  # the input is all payload
    assert second == whole and type(second) is bytes
    assert type(dec.feed(b"\r\n")) is bytes
    assert dec.feed(bytearray(b"2\r\nab\r\n3\r\ncde\r\n")) == b"abcde"
    assert dec.feed(memoryview(b"1\r\nf\r\n0\r\n\r\n")) == b"f"
    assert dec.done


def test_reset(mod):
    dec = mod.ChunkedDecoder()
    assert dec.feed(b"5\r\nhel") == b"hel"
    dec.reset()
    assert not dec.done
    assert dec.feed(b"2\r\nok\r\n0\r\n\r\n") == b"ok"
    assert dec.done and dec.leftover == 0


def test_errors_are_sticky(mod):
    dec = mod.ChunkedDecoder()
    with pytest.raises(ScanError) as first:
        dec.feed(b"zz\r\n")
    with pytest.raises(ScanError) as again:
        dec.feed(b"0\r\n\r\n")
    assert first.value.status == again.value.status == 400
    assert first.value.reason == again.value.reason
    dec.reset()
    assert dec.feed(b"0\r\n\r\n") == b"" and dec.done


INVALID = [
    ("empty size", b"\r\nhello\r\n0\r\n\r\n"),
    ("leading SP", b" 5\r\nhello\r\n0\r\n\r\n"),
    ("leading HTAB", b"\t5\r\nhello\r\n0\r\n\r\n"),
    ("trailing SP", b"5 \r\nhello\r\n0\r\n\r\n"),
    ("trailing HTAB", b"5\t\r\nhello\r\n0\r\n\r\n"),
    ("plus", b"+5\r\nhello\r\n0\r\n\r\n"),
    ("minus", b"-1\r\nhello\r\n0\r\n\r\n"),
    ("0x prefix", b"0x5\r\nhello\r\n0\r\n\r\n"),
    ("underscore", b"1_0\r\nhello world!!!!!\r\n0\r\n\r\n"),
    ("not hex", b"g\r\nhello\r\n0\r\n\r\n"),
    ("size with junk", b"2 erfrferferf\r\naa\r\n0\r\n\r\n"),
    ("17 digits", b"00000000000000005\r\nhello\r\n0\r\n\r\n"),
    ("2**63", b"8000000000000000\r\n"),
    ("2**64-1", b"FFFFFFFFFFFFFFFF\r\n"),
    ("overflow", b"FFFFFFFFFFFFFFFF0\r\nhello\r\n0\r\n\r\n"),
    ("bare LF after size", b"5\nhello\r\n0\r\n\r\n"),
    ("bare CR after size", b"5\rhello\r\n0\r\n\r\n"),
    ("CR CR LF", b"5\r\r\nhello\r\n0\r\n\r\n"),
    ("LF after data", b"5\r\nhello\n0\r\n\r\n"),
    ("nothing after data", b"5\r\nhello0\r\n\r\n"),
    ("data too long", b"5\r\nhello!!\r\n0\r\n\r\n"),
    ("CR only after data", b"5\r\nhello\r0\r\n\r\n"),
    ("extra CRLF after data", b"3\r\nfoo\r\n\r\n"),
    ("bare LF ends body", b"5\r\nhello\r\n0\r\n\n"),
    ("bare LF after last-chunk", b"5\r\nhello\r\n0\n\r\n"),
    # extensions
    ("bare semicolon", b"5;\r\nhello\r\n0\r\n\r\n"),
    ("ext no name", b"5;=x\r\nhello\r\n0\r\n\r\n"),
    ("ext no value", b"5;a=\r\nhello\r\n0\r\n\r\n"),
    ("ext bad name", b"5;bad[=x\r\nhello\r\n0\r\n\r\n"),
    ("ext NUL", b"5;\x00ext\r\nhello\r\n0\r\n\r\n"),
    ("ext CR", b"5;a\rX\r\nhello\r\n0\r\n\r\n"),
    ("ext LF", b"5;a\nhello\r\n0\r\n\r\n"),
    ("ext SP inside", b"5;a b\r\nhello\r\n0\r\n\r\n"),
    ("ext trailing BWS", b"5;a=b \r\nhello\r\n0\r\n\r\n"),
    ("ext name trailing BWS", b"5;a \r\nhello\r\n0\r\n\r\n"),
    ("ext unterminated quote", b'5;a="def; ghi\r\nhello\r\n0\r\n\r\n'),
    ("ext junk after quote", b'5;a="x"y\r\nhello\r\n0\r\n\r\n'),
    ("ext DEL in quote", b'5;a="\x7f"\r\nhello\r\n0\r\n\r\n'),
    ("ext CTL quoted-pair", b'5;a="\\\x01"\r\nhello\r\n0\r\n\r\n'),
    # trailers
    ("trailer obs-fold", b"0\r\nA: 1\r\n 2\r\n\r\n"),
    ("trailer SP before colon", b"0\r\nA : 1\r\n\r\n"),
    ("trailer no colon", b"0\r\nA\r\n\r\n"),
    ("trailer empty name", b"0\r\n: 1\r\n\r\n"),
    ("trailer NUL value", b"0\r\nA: \x00\r\n\r\n"),
    ("trailer bare LF", b"0\r\nA: 1\n\r\n"),
    ("trailer bare CR", b"0\r\nA: 1\rB: 2\r\n\r\n"),
    ("trailer CR only at end", b"0\r\nA: 1\r\n\rX"),
]


@pytest.mark.parametrize("name,body", INVALID, ids=[c[0] for c in INVALID])
def test_invalid_bodies(mod, name, body):
    result = decode_every_way(mod, body)
    assert result[:2] == ("error", 400), result


def test_chunk_size_line_limit(mod):
    ext = b";e=" + b"a" * 100
    body = b"5" + ext + b"\r\nhello\r\n0\r\n\r\n"
    assert decode_every_way(mod, body, max_line=len(ext) + 1)[:2] == ("ok", b"hello")
    assert decode_every_way(mod, body, max_line=len(ext))[:2] == ("error", 400)
    # the limit holds while the line is still incomplete
    dec = mod.ChunkedDecoder(max_line=64)
    with pytest.raises(ScanError):
        dec.feed(b"5;e=" + b"a" * 100)


def test_trailer_section_limit(mod):
    trailer = b"X-A: " + b"a" * 50 + b"\r\n\r\n"  # 59 bytes with both CRLFs
    body = b"0\r\n" + trailer
    assert decode_every_way(mod, body, max_trailer=len(trailer))[:2] == ("ok", b"")
    assert decode_every_way(mod, body, max_trailer=len(trailer) - 1)[:2] == ("error", 400)


def test_largest_chunk_size_is_accepted(mod):
    dec = mod.ChunkedDecoder()
    assert dec.feed(b"7FFFFFFFFFFFFFFF\r\nabc") == b"abc"
    assert not dec.done


def test_incomplete_bodies(mod):
    for body in (b"", b"5", b"5\r", b"5\r\nhel", b"5\r\nhello", b"5\r\nhello\r", b"5\r\nhello\r\n0\r\n",
                 b"5\r\nhello\r\n0\r\nX: 1\r\n", b"5\r\nhello\r\n0\r\n\r", b"5;a=\"x"):
        result = decode_every_way(mod, body)
        assert result[0] == "incomplete", (body, result)


def test_invalid_limits(mod):
    with pytest.raises(ValueError):
        mod.ChunkedDecoder(max_line=0)
    with pytest.raises(ValueError):
        mod.ChunkedDecoder(max_trailer=0)
