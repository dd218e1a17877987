"""Hash-based selectors — pure-Python twin of ``hashing.pyx``.

The executable spec: ``hashing.pyx`` must give the same points, tables and
picks (tests/unit/test_hashing*.py compare the twins and check libketama's
golden vectors).

* ``md5(data)``: RFC 1321 digest (here hashlib; the compiled twin has its own
  C implementation, checked against hashlib).
* ``key_hash(key)``: libketama's key point, the first 4 bytes of MD5(key) as a
  little-endian uint32 (ketama.c ``ketama_hashi``).
* ``KetamaRing``: libketama-compatible consistent hash ring.
* ``Maglev``: Maglev lookup table (Eisenbud et al., NSDI 2016).

Both selectors share the walk used when the hashed-to backend may not take the
request: step to the next ring point / table entry and consider each DISTINCT
backend once, skipping it when unusable or over the bounded load, so only the
keys of a missing backend move (and move back when it returns).

Bounded loads (Mirrokni, Thorup, Zadimoghaddam, "Consistent Hashing with
Bounded Loads", SODA 2018; HAProxy ``hash-balance-factor`` as a ratio): with
balance_factor c >= 1 a backend is skipped when

    in_flight(i) + 1 > ceil(c * (total_in_flight + 1) / usable_count)

i.e. it may not go above c times the mean load counting the request being
placed. With c >= 1 some usable backend always fits (if all had
in_flight >= limit the usable in-flight sum would be >= usable_count * limit >=
c * (total + 1) > total); should none fit anyway, the first usable backend met
on the walk is chosen.

Names are ``"host:port"`` strings (UTF-8 encoded) or bytes; all hashing uses
MD5, never Python's ``hash()``, so tables are the same in every process.
"""

import hashlib
import math
import operator

from .selectors_py import MAX_WEIGHT

__all__ = ["md5", "key_hash", "KetamaRing", "Maglev", "is_prime"]

# libketama: 40 MD5 digests per weight unit, 4 points per digest (160 points).
KETAMA_DIGESTS_PER_WEIGHT = 40
MAGLEV_DEFAULT_SIZE = 65537  # the paper's small table size (prime)
# 160 * sum(weights) ring points are capped so a mistyped weight cannot take gigabytes
# (the compiled ring is 8 bytes per point, this twin's ~100).
MAX_RING_POINTS = 1 << 24


def md5(data):
    """MD5 digest of a bytes-like (RFC 1321), 16 bytes."""
    return hashlib.md5(bytes(data)).digest()


def key_hash(key):
    """libketama key point: little-endian uint32 of MD5(key)[0:4]."""
    return int.from_bytes(hashlib.md5(key).digest()[:4], "little")


def is_prime(m):
    """Deterministic trial division (table sizes are at most a few million)."""
    m = int(m)
    if m < 2:
        return False
    if m % 2 == 0:
        return m == 2
    f = 3
    while f * f <= m:
        if m % f == 0:
            return False
        f += 2
    return True


def _name_bytes(name):
    return name.encode("utf-8") if isinstance(name, str) else bytes(name)


def _check_members(names, weights, what):
    names = [_name_bytes(n) for n in names]
    weights = [int(w) for w in weights]
    if not names:
        raise ValueError("%s needs at least one backend" % what)
    if len(names) != len(weights):
        raise ValueError("%d names but %d weights" % (len(names), len(weights)))
    for w in weights:
        if w < 1 or w > MAX_WEIGHT:
            raise ValueError("weights must be in 1..%d, got %d" % (MAX_WEIGHT, w))
    return names, weights


def _check_factor(balance_factor):
    c = float(balance_factor)
    if c != 0.0 and not c >= 1.0:
        raise ValueError("balance_factor must be 0 (off) or >= 1.0, got %r" % balance_factor)
    return c


def _check_key(key):
    key = operator.index(key)  # a float is a TypeError, as the compiled uint32_t argument
    if not 0 <= key <= 0xFFFFFFFF:
        raise OverflowError("key must be a 32-bit unsigned hash, got %d" % key)
    return key


class _Walker:
    """The shared walk over a sequence of backend indexes (ring order or table order),
    and the accessors both hash selectors have."""

    __slots__ = ()

    @property
    def size(self):
        return self._n

    @property
    def balance_factor(self):
        return self._factor

    def names(self):
        return [n.decode("utf-8", "replace") for n in self._names]

    def weights(self):
        return list(self._weights)

    def _prepare(self, usable, load):
        n = self._n
        if usable is not None and len(usable) < n:
            raise ValueError("usable has %d entries, selector has %d backends" % (len(usable), n))
        limit = -1
        if self._factor > 0.0:
            if load is None:
                raise ValueError("bounded loads (balance_factor > 0) need a LoadState")
            if load.size < n:
                raise ValueError("LoadState has %d slots, selector has %d backends" % (load.size, n))
            count = n if usable is None else sum(1 for i in range(n) if usable[i])
            if count == 0:
                return 0, -1
            limit = math.ceil(self._factor * (load.total_in_flight + 1) / count)
            return count, limit
        if usable is not None and not any(usable[i] for i in range(n)):
            return 0, -1
        return n, limit

    def _walk(self, seq, start, usable, load, limit, skipped):
        """First backend along seq from start that is usable and within limit; -1 if none usable."""
        length = len(seq)
        n = self._n
        seen = bytearray(n)
        rejected = 0
        fallback = -1
        pos = start
        for _ in range(length):
            b = seq[pos]
            if not seen[b]:
                seen[b] = 1
                if usable is not None and not usable[b]:
                    if skipped is not None:
                        skipped.append({"index": b, "reason": "unusable", "position": pos})
                elif limit >= 0 and load.in_flight(b) + 1 > limit:
                    if fallback < 0:
                        fallback = b
                    if skipped is not None:
                        skipped.append({"index": b, "reason": "over bounded load", "position": pos,
                                        "in_flight": load.in_flight(b), "limit": limit})
                else:
                    return b, pos
                rejected += 1
                if rejected == n:
                    break
            pos += 1
            if pos == length:
                pos = 0
        return fallback, -1

    def _lookup(self, usable, load, key, skipped):
        key = _check_key(key)
        count, limit = self._prepare(usable, load)
        start = self._start(key)
        if count == 0:
            return -1, start, -1, limit
        seq = self._seq
        if usable is None and limit < 0:
            return seq[start], start, start, limit
        chosen, pos = self._walk(seq, start, usable, load, limit, skipped)
        return chosen, start, pos, limit

    def pick(self, usable=None, load=None, key=0, now=0.0):
        """Backend for the request whose key hash is ``key`` (a uint32), or -1."""
        return self._lookup(usable, load, key, None)[0]


class KetamaRing(_Walker):
    """libketama-compatible consistent hash ring.

    For backend name S (``"host:port"``) and i in 0..40*weight-1,
    MD5(S + "-" + str(i)) gives four little-endian uint32 points (digest bytes
    0-3, 4-7, 8-11, 12-15), 160 points per weight unit as libketama
    (ketama.c ``ketama_create_continuum``; spymemcached's KetamaNodeLocator).
    The ring is sorted by (point, backend index) — the index only orders the
    rare equal points, deterministically. A key's point is ``key_hash(key)``;
    the first ring point >= it wins, wrapping past the end to the first.
    """

    __slots__ = ("_names", "_weights", "_n", "_factor", "_points", "_seq")
    algorithm = "consistent_hash"

    def __init__(self, names, weights, balance_factor=0.0):
        self._names, self._weights = _check_members(names, weights, "KetamaRing")
        self._n = len(self._names)
        self._factor = _check_factor(balance_factor)
        npoints = 4 * KETAMA_DIGESTS_PER_WEIGHT * sum(self._weights)
        if npoints > MAX_RING_POINTS:
            raise ValueError("ring would have %d points (160 x sum of weights), more than %d"
                             % (npoints, MAX_RING_POINTS))
        ring = []
        for b, (name, w) in enumerate(zip(self._names, self._weights)):
            for i in range(KETAMA_DIGESTS_PER_WEIGHT * w):
                d = hashlib.md5(b"%s-%d" % (name, i)).digest()
                for h in range(4):
                    ring.append((int.from_bytes(d[4 * h:4 * h + 4], "little"), b))
        ring.sort()
        self._points = [p for p, _ in ring]
        self._seq = [b for _, b in ring]

    @classmethod
    def _from_parts(cls, names, weights, balance_factor, points, seq):
        """A ring over an already-built point list (the compiled twin's explain())."""
        self = cls.__new__(cls)
        self._names, self._weights = _check_members(names, weights, "KetamaRing")
        self._n = len(self._names)
        self._factor = _check_factor(balance_factor)
        self._points = list(points)
        self._seq = list(seq)
        return self

    def points(self):
        """The sorted ring as a list of (point, backend index)."""
        return list(zip(self._points, self._seq))

    def _start(self, key):
        # bisect_left by hand (the compiled twin does the same): first point >= key, else wrap to 0.
        pts = self._points
        lo, hi = 0, len(pts)
        while lo < hi:
            mid = (lo + hi) >> 1
            if pts[mid] < key:
                lo = mid + 1
            else:
                hi = mid
        return lo if lo < len(pts) else 0

    def explain(self, usable=None, load=None, key=0, now=0.0):
        skipped = []
        chosen, start, pos, limit = self._lookup(usable, load, key, skipped)
        return {"chosen": chosen, "algorithm": self.algorithm, "key": int(key),
                "ring_points": len(self._points), "position": start, "point": self._points[start],
                "owner": self._seq[start], "chosen_position": pos,
                "chosen_point": self._points[pos] if pos >= 0 else None,
                "balance_factor": self._factor, "limit": limit if limit >= 0 else None,
                "skipped": skipped}


class Maglev(_Walker):
    """Maglev lookup table (Eisenbud et al., "Maglev: A Fast and Reliable
    Software Network Load Balancer", NSDI 2016, §3.4).

    Table size M must be prime (so every skip in 1..M-1 walks all M entries)
    and at least 7 x the number of backends: each backend then owns about 7 or
    more entries, so entry granularity alone keeps a backend's share within
    about 1/7 of its fair share even at the minimum (M >> N, e.g. the default
    65537, gives ~0.1%). Per backend, from MD5 of its name (never ``hash()``):
    offset = le64(d[0:8]) mod M, skip = le64(d[8:16]) mod (M - 1) + 1; its
    permutation is offset, offset + skip, offset + 2*skip, ... mod M.

    Fill (the paper's Pseudocode 1) in turns: each backend in index order takes
    its next preferred empty entry. Weighted as Envoy's MaglevTable: in round
    t = 0, 1, 2, ... backend i takes a turn only when ``t * w_i >= target_i``,
    and then ``target_i += max_weight``: the heaviest backend takes every round,
    weight w about w / max_weight of the rounds, so entries are shared in
    proportion to weight (exact integer arithmetic).

    Lookup: ``table[key % M]``; unusable or over-bound backends are walked past
    to the next entries until a usable distinct backend.
    """

    __slots__ = ("_names", "_weights", "_n", "_factor", "_m", "_seq")
    algorithm = "maglev"

    def __init__(self, names, weights, table_size=MAGLEV_DEFAULT_SIZE, balance_factor=0.0):
        self._names, self._weights = _check_members(names, weights, "Maglev")
        self._n = n = len(self._names)
        self._factor = _check_factor(balance_factor)
        m = int(table_size)
        if not is_prime(m):
            raise ValueError("Maglev table_size must be prime, got %d" % m)
        if m < 7 * n:
            raise ValueError("Maglev table_size must be >= 7 x backends (%d), got %d" % (7 * n, m))
        self._m = m
        offset = []
        skip = []
        for name in self._names:
            d = hashlib.md5(name).digest()
            offset.append(int.from_bytes(d[0:8], "little") % m)
            skip.append(int.from_bytes(d[8:16], "little") % (m - 1) + 1)
        weights = self._weights
        wmax = max(weights)
        target = [0] * n
        pos = offset[:]  # next preferred entry of each backend
        table = [-1] * m
        filled = 0
        t = 0
        while True:
            for i in range(n):
                if t * weights[i] < target[i]:
                    continue
                target[i] += wmax
                c = pos[i]
                s = skip[i]
                while table[c] >= 0:
                    c += s
                    if c >= m:
                        c -= m
                table[c] = i
                c += s
                if c >= m:
                    c -= m
                pos[i] = c
                filled += 1
                if filled == m:
                    self._seq = table
                    return
            t += 1

    @classmethod
    def _from_parts(cls, names, weights, table_size, balance_factor, table):
        """A Maglev over an already-built table (the compiled twin's explain())."""
        self = cls.__new__(cls)
        self._names, self._weights = _check_members(names, weights, "Maglev")
        self._n = len(self._names)
        self._factor = _check_factor(balance_factor)
        self._m = int(table_size)
        self._seq = list(table)
        return self

    @property
    def table_size(self):
        return self._m

    def table(self):
        """The lookup table: entry -> backend index."""
        return list(self._seq)

    def _start(self, key):
        return key % self._m

    def explain(self, usable=None, load=None, key=0, now=0.0):
        skipped = []
        chosen, start, pos, limit = self._lookup(usable, load, key, skipped)
        return {"chosen": chosen, "algorithm": self.algorithm, "key": int(key),
                "table_size": self._m, "entry": start, "owner": self._seq[start],
                "chosen_entry": pos, "balance_factor": self._factor,
                "limit": limit if limit >= 0 else None, "skipped": skipped}
