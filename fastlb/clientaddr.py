"""The client address fastlb believes: CIDR sets, allow/deny lists, and the walk of
X-Forwarded-For / Forwarded (RFC 7239) behind trusted proxies.

Sans-IO and standard library only: addresses come in as the ASCII bytes a transport or
a header gives, decisions go out. No clock, no sockets.

Invariants:
- An address is compared as (family, integer). IPv4-mapped IPv6 (``::ffff:a.b.c.d``,
  RFC 4291 §2.5.5.2) is the IPv4 address a.b.c.d, both as a lookup and as a network
  (``::ffff:10.0.0.0/104`` is 10.0.0.0/8), so a dual-stack socket and an IPv4 socket
  see the same client.
- A set is two sorted tuples of disjoint, non-adjacent integer ranges per family; a
  lookup is one ``bisect`` (O(log n)) after the text is parsed once.
- Every memo is a plain dict bounded by ``MEMO_SIZE`` entries and cleared when full:
  the same few peers (load balancers, NAT gateways) repeat, so a hit is one dict get,
  and an adversary sending many distinct addresses costs at most one parse each.
- client_address() follows HAProxy's and nginx's ``real_ip_recursive on`` semantics:
  walk the hops right to left and stop at the first one that is not a trusted proxy.
  Anything left of that hop was written by parties fastlb has no reason to believe.
"""

import ipaddress
from bisect import bisect_right

__all__ = ["parse_networks", "AddressSet", "AccessList", "client_address", "forwarded_for_values", "normalize",
           "MEMO_SIZE"]

# Entries per memo before it is cleared. A few hundred distinct peers cover a
# deployment's proxies and busiest clients; one entry is ~150 bytes.
MEMO_SIZE = 256

_MAPPED_V4 = ipaddress.IPv6Network("::ffff:0:0/96")  # RFC 4291 §2.5.5.2
_MAPPED_LO = int(_MAPPED_V4.network_address)
_MAPPED_HI = int(_MAPPED_V4.broadcast_address)
_OWS = b" \t"  # RFC 9110 §5.6.3


# --- networks ------------------------------------------------------------------------

def parse_networks(values):
    """Config values -> a tuple of ipaddress networks, in the order given.

    Each value is a network in CIDR form ("10.0.0.0/8", "2001:db8::/32") or a single
    address ("192.0.2.7" is 192.0.2.7/32, "::1" is ::1/128). Host bits must be clear:
    "10.0.0.1/8" is refused with a hint (it is more often a typo for a /32 than a wish
    for the /8). A bare string is taken as a one-element list.
    Raises ValueError naming the bad entry."""
    if isinstance(values, (str, bytes)):
        values = [values]
    out = []
    for v in values:
        if isinstance(v, bytes):
            try:
                v = v.decode("ascii")
            except UnicodeDecodeError:
                raise ValueError("%r is not a valid IPv4 or IPv6 network" % (v,)) from None
        if not isinstance(v, str):
            raise ValueError("%r is not a valid IPv4 or IPv6 network (expected a string such as "
                             "'10.0.0.0/8')" % (v,))
        text = v.strip()
        try:
            net = ipaddress.ip_network(text, strict=True)
        except ValueError:
            try:
                loose = ipaddress.ip_network(text, strict=False)
            except ValueError:
                raise ValueError("%r is not a valid IPv4 or IPv6 network" % (v,)) from None
            host = text.split("/", 1)[0]
            raise ValueError("%r has host bits set: did you mean %s (the network) or %s/%d (the one "
                             "address)?" % (v, loose, host, loose.max_prefixlen)) from None
        if "%" in text:  # a scope id ("fe80::1%eth0") names an interface, not a network
            raise ValueError("%r is not a valid IPv4 or IPv6 network (no scope ids)" % (v,))
        out.append(net)
    return tuple(out)


def _ranges(networks):
    """networks -> (v4 starts, v4 ends, v6 starts, v6 ends): merged sorted int ranges.
    IPv6 networks inside ::ffff:0:0/96 become IPv4 ranges (see the invariants)."""
    v4, v6 = [], []
    for net in networks:
        if isinstance(net, str):
            (net,) = parse_networks([net])
        lo, hi = int(net.network_address), int(net.broadcast_address)
        if net.version == 4:
            v4.append((lo, hi))
        elif _MAPPED_LO <= lo and hi <= _MAPPED_HI:
            v4.append((lo - _MAPPED_LO, hi - _MAPPED_LO))
        else:
            v6.append((lo, hi))
    return _merge(v4) + _merge(v6)


def _merge(ranges):
    ranges.sort()
    starts, ends = [], []
    for lo, hi in ranges:
        if ends and lo <= ends[-1] + 1:  # overlapping or adjacent: extend the last range
            if hi > ends[-1]:
                ends[-1] = hi
        else:
            starts.append(lo)
            ends.append(hi)
    return tuple(starts), tuple(ends)


# --- one address ---------------------------------------------------------------------

# "0".."255" -> int: a dict lookup per octet is the whole IPv4 grammar (ipaddress's:
# decimal, no leading zeros, which other parsers would read as octal)
_OCTETS = {b"%d" % i: i for i in range(256)}
_HEX6 = frozenset(b"0123456789abcdefABCDEF:")


def _parse_ip(text):
    """ASCII bytes (or str) of one address -> (is_v6, integer), or None.

    IPv4-mapped IPv6 comes back as its IPv4 address. The grammar is ipaddress's
    (tests/unit/test_clientaddr.py checks the two agree): IPv4 dotted quads; IPv6 as
    RFC 4291 §2.2 (1-4 hex digits a group, at most one "::", an optional IPv4 tail), a
    scope id ("%eth0", as sockets report link-local peers) is ignored. Hand-written,
    without objects, so that compiling this module makes it C: a memo miss is the case
    an adversary with many source addresses controls. In pure Python it is ~3x quicker
    than ipaddress for IPv4 and about as quick for IPv6."""
    if type(text) is not bytes:
        if type(text) is str:
            try:
                text = text.encode("ascii")
            except UnicodeEncodeError:
                return None
        else:
            text = bytes(text)
    if 58 not in text:  # no ":": IPv4 or nothing
        parts = text.split(b".")
        if len(parts) != 4:
            return None
        o = _OCTETS
        try:
            return False, (o[parts[0]] << 24) | (o[parts[1]] << 16) | (o[parts[2]] << 8) | o[parts[3]]
        except KeyError:
            return None
    n = _parse_v6(text)
    if n is None:
        return None
    if _MAPPED_LO <= n <= _MAPPED_HI:
        return False, n - _MAPPED_LO
    return True, n


def _parse_v6(t):
    if 37 in t:  # "%": a scope id names an interface; the address is what is left
        t, _, scope = t.partition(b"%")
        if not scope:
            return None
    if len(t) > 45:  # the longest form: 6 groups of 4, 6 colons, a 15-character IPv4 tail
        return None
    tail = None
    if 46 in t:  # ".": an IPv4 tail in the last 32 bits
        head, _, v4 = t.rpartition(b":")
        p = _parse_ip(v4) if 58 not in v4 else None
        if p is None or p[0] or not head:
            return None
        tail = p[1]
        t = head + b":0:0"  # two placeholder groups, replaced below
    if b"::" in t:
        left, _, right = t.partition(b"::")
        if b"::" in right:
            return None
        lg = left.split(b":") if left else []
        rg = right.split(b":") if right else []
        missing = 8 - len(lg) - len(rg)
        if missing < 1:  # "::" stands for at least one group of zeros
            return None
        groups = lg + [b"0"] * missing + rg
    else:
        groups = t.split(b":")
        if len(groups) != 8:
            return None
    # every group 1-4 hex digits (the whole text is checked at once: ":" is in _HEX6),
    # then one int() of the 32 zero-padded digits
    if b"" in groups or max(map(len, groups)) > 4 or not _HEX6.issuperset(t):
        return None
    n = int(b"".join([g.zfill(4) for g in groups]), 16)
    if tail is not None:
        n = (n & ~0xFFFFFFFF) | tail
    return n


def _normal(p, text):
    """The normalized ASCII form of a parsed address: ipaddress's str, IPv4-mapped
    IPv6 as the IPv4 address, no scope id."""
    v6, n = p
    if not v6:
        if 58 not in text:
            return bytes(text)  # a dotted quad that parsed is already canonical
        return b"%d.%d.%d.%d" % (n >> 24, (n >> 16) & 255, (n >> 8) & 255, n & 255)
    return str(ipaddress.IPv6Address(n)).encode("ascii")


class AddressSet:
    """A set of IPv4 and IPv6 networks; ``ip in s`` for ASCII-bytes addresses.

    Invalid text is never a member. Lookups are memoised (bounded, see MEMO_SIZE)."""

    __slots__ = ("networks", "_v4s", "_v4e", "_v6s", "_v6e", "_memo", "_hops", "_chains")

    def __init__(self, networks=()):
        self.networks = tuple(networks)
        self._v4s, self._v4e, self._v6s, self._v6e = _ranges(self.networks)
        self._memo = {}   # address bytes -> bool
        self._hops = {}   # hop text -> (normalized, trusted) or None    } client_address's
        self._chains = {}  # one X-Forwarded-For value -> address, or None  } memos

    def __contains__(self, ip):
        try:
            r = self._memo.get(ip)
        except TypeError:  # an unhashable bytearray / memoryview
            ip = bytes(ip)
            r = self._memo.get(ip)
        if r is not None:
            return r
        p = _parse_ip(ip)
        r = p is not None and self._match(p[0], p[1])
        memo = self._memo
        if len(memo) >= MEMO_SIZE:
            memo.clear()
        memo[ip] = r
        return r

    def _match(self, v6, n):
        if v6:
            starts, ends = self._v6s, self._v6e
        else:
            starts, ends = self._v4s, self._v4e
        i = bisect_right(starts, n) - 1
        return i >= 0 and n <= ends[i]

    def __bool__(self):
        return bool(self._v4s or self._v6s)

    def __len__(self):
        return len(self.networks)

    def __repr__(self):
        return "AddressSet([%s])" % ", ".join("'%s'" % n for n in self.networks)


class AccessList:
    """allow/deny by client address: deny wins; an empty allow list allows everyone
    who is not denied. An address that does not parse is refused whenever there is any
    rule (fail closed) and allowed only when both lists are empty."""

    __slots__ = ("allow", "deny", "_allow_all", "_memo")

    def __init__(self, allow=(), deny=()):
        self.allow = allow if isinstance(allow, AddressSet) else AddressSet(allow)
        self.deny = deny if isinstance(deny, AddressSet) else AddressSet(deny)
        self._allow_all = not self.allow
        self._memo = {}

    def allowed(self, ip):
        try:
            r = self._memo.get(ip)
        except TypeError:  # an unhashable bytearray / memoryview
            ip = bytes(ip)
            r = self._memo.get(ip)
        if r is not None:
            return r
        p = _parse_ip(ip)
        if p is None:
            r = self._allow_all and not self.deny
        else:
            r = not self.deny._match(p[0], p[1]) and (self._allow_all or self.allow._match(p[0], p[1]))
        memo = self._memo
        if len(memo) >= MEMO_SIZE:
            memo.clear()
        memo[ip] = r
        return r

    def __repr__(self):
        return "AccessList(allow=%r, deny=%r)" % (self.allow, self.deny)


# --- forwarding headers --------------------------------------------------------------

def forwarded_for_values(value):
    """The for= nodes of one Forwarded field value (RFC 7239 §4), in order.

    Forwarded = 1#forwarded-element; forwarded-element = [pair] *(";" [pair]);
    pair = token "=" (token / quoted-string). Parameter names are case-insensitive
    (§4); quoted-strings are unquoted and their quoted-pairs undone (RFC 9110 §5.6.4);
    commas and semicolons inside quotes do not separate. Elements without for= are
    skipped (they name no address); an element with two for= pairs is ambiguous
    (§4: a parameter MUST NOT occur more than once per element) and yields b"", which
    is not an address. Leniency: whitespace around "=", and unquoted values that RFC
    7239 would have quoted (for=[2001:db8::1]), are accepted as written."""
    out = []
    if 34 not in value:  # no quoted-string: plain splits (the common case, quicker)
        for element in value.split(b","):
            node = None
            for pair in element.split(b";"):
                name, eq, v = pair.partition(b"=")
                if eq and name.strip(_OWS).lower() == b"for":
                    node = b"" if node is not None else bytes(v.strip(_OWS))
            if node is not None:
                out.append(node)
        return out
    n = len(value)
    i = 0
    node = None   # this element's for= value
    dup = False
    while True:
        j = i
        while j < n and value[j] not in b"=;,":
            j += 1
        name = value[i:j].strip(_OWS).lower()
        v = None
        if j < n and value[j] == 61:  # "="
            j += 1
            while j < n and value[j] in _OWS:
                j += 1
            if j < n and value[j] == 34:  # '"': quoted-string
                buf = bytearray()
                closed = False
                j += 1
                while j < n:
                    c = value[j]
                    if c == 34:
                        closed = True
                        j += 1
                        break
                    if c == 92 and j + 1 < n:  # "\\" quoted-pair
                        j += 1
                        c = value[j]
                    buf.append(c)
                    j += 1
                k = j
                while k < n and value[k] not in b";,":
                    k += 1
                # an unterminated quote, or text after the closing one: not a value
                v = bytes(buf) if closed and not value[j:k].strip(_OWS) else b""
                j = k
            else:
                k = j
                while k < n and value[k] not in b";,":
                    k += 1
                v = bytes(value[j:k].strip(_OWS))
                j = k
        if v is not None and name == b"for":
            if node is not None:
                dup = True
            node = v
        if j >= n or value[j] == 44:  # "," or the end: the element is complete
            if node is not None:
                out.append(b"" if dup else node)
            node = None
            dup = False
            if j >= n:
                return out
        i = j + 1


def _node_address(node):
    """A hop's text -> its address bytes without brackets or port, or None.
    Forms: IPv4, IPv4:port, IPv6, [IPv6], [IPv6]:port (RFC 7239 §6 node; a port may
    be obfuscated, "_x"). "unknown" and obfuscated "_hidden" identifiers (§6.2, §6.3)
    are not addresses."""
    if node[:1] == b"[":
        end = node.find(b"]")
        if end < 0:
            return None
        rest = node[end + 1:]
        if rest and not (rest[:1] == b":" and _is_port(rest[1:])):
            return None
        addr = node[1:end]
        return addr if b":" in addr else None  # brackets hold IPv6 only
    if node.count(b":") == 1:
        addr, _, port = node.partition(b":")
        return addr if _is_port(port) and b"." in addr else None
    return node


def _is_port(p):
    if p[:1] == b"_":  # obfport = "_" 1*(ALPHA / DIGIT / "." / "_" / "-")
        return len(p) > 1 and p[1:].replace(b".", b"").replace(b"_", b"").replace(b"-", b"").isalnum()
    return 0 < len(p) <= 5 and p.isdigit() and int(p) <= 65535


def _hop(trusted, text):
    """(normalized address, in trusted) for one hop's text, or None if it is not an
    address; memoised on the set (hops from one client repeat on every request)."""
    memo = trusted._hops
    try:
        return memo[text]
    except (KeyError, TypeError):  # TypeError: a bytearray, unhashable
        pass
    addr = _node_address(text)
    p = _parse_ip(addr) if addr else None
    r = None if p is None else (_normal(p, addr), trusted._match(p[0], p[1]))
    if len(memo) >= MEMO_SIZE:
        memo.clear()
    memo[bytes(text)] = r
    return r


def _peer(peer):
    """The socket peer as returned: as given, except IPv4-mapped IPv6 -> IPv4."""
    if type(peer) is str:
        peer = peer.encode("ascii", "replace")
    if peer[:2] == b"::" and peer[2:7].lower() == b"ffff:":
        p = _parse_ip(peer)
        if p is not None and not p[0]:
            return _normal(p, peer)
    return peer


def normalize(ip):
    """One address as ASCII bytes in the form client_address() returns (ipaddress's
    str, IPv4-mapped IPv6 as IPv4, no scope id); text that is not an address is
    returned unchanged. For a connection's peer (socket or PROXY protocol source), once
    per connection, so that "::ffff:192.0.2.7" and "192.0.2.7" are one client for
    ip_hash, per-client limits and logs."""
    p = _parse_ip(ip)
    if p is None:
        return ip.encode("ascii", "replace") if type(ip) is str else ip
    return _normal(p, ip if type(ip) is not str else ip.encode("ascii"))


def client_address(peer, xff, forwarded, trusted):
    """The client address fastlb believes, as ASCII bytes.

    peer: the socket peer (or the PROXY protocol source). xff / forwarded: the field
    values of every X-Forwarded-For / Forwarded field, in field order (lists of bytes).
    trusted: the AddressSet of trusted proxies.

    An untrusted peer is the client: headers are ignored. Behind a trusted peer, the
    hops are the elements of all X-Forwarded-For fields (or, when there is no
    X-Forwarded-For field at all, the for= nodes of the Forwarded fields), walked right
    to left: the first hop that is not trusted is the client; if every hop is trusted,
    the leftmost. A hop that is not an address (garbage, "unknown", "_hidden") stops
    the walk: the answer is the hop to its right (the last good one), or the peer."""
    if peer not in trusted:
        return _peer(peer)
    if xff:
        if len(xff) == 1:  # the usual case: one field, memoised whole on the set
            field = xff[0]
            chains = trusted._chains
            try:
                r = chains[field]
            except (KeyError, TypeError):  # TypeError: a bytearray, unhashable
                r = _walk(trusted, field.split(b","), True)
                if len(chains) >= MEMO_SIZE:
                    chains.clear()
                chains[bytes(field)] = r
        else:
            hops = []
            for field in xff:
                hops.extend(field.split(b","))
            r = _walk(trusted, hops, True)
    elif forwarded:
        hops = []
        for field in forwarded:
            hops.extend(forwarded_for_values(field))
        r = _walk(trusted, hops, False)
    else:
        r = None
    return r if r is not None else _peer(peer)


def _walk(trusted, hops, strip):
    """The right-to-left walk over the hops: the address, or None for "the peer"."""
    good = None
    for i in range(len(hops) - 1, -1, -1):
        h = hops[i]
        if strip:
            h = h.strip(_OWS)
            if not h:  # an empty list element (RFC 9110 §5.6.1): not a hop
                continue
        r = _hop(trusted, h)
        if r is None:
            break
        if not r[1]:
            return r[0]
        good = r[0]
    return good
