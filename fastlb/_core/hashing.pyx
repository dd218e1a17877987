# cython: language_level=3
"""Hash-based selectors, compiled. Spec and commentary: hashing_py.py.

* md5: a C implementation of RFC 1321 (one 64-byte block per 64 steps, §3.4), so a key
  lookup hashes without creating a hashlib object; tests check it against hashlib.
* KetamaRing: libketama ring (160 points per weight unit), binary search, walk.
* Maglev: NSDI 2016 lookup table, weighted turns as Envoy's MaglevTable.

``pick`` is a ``def`` at the boundary over ``noexcept`` C cores reading LoadState's
arrays (cimported from selectors.pxd). ``explain()`` hands the built ring/table to the
pure twin (the spec) and returns its explanation; the tests check its ``chosen``
against this module's ``pick()``.
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.number cimport PyNumber_Index
from libc.math cimport ceil
from libc.stdint cimport int32_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc, qsort
from libc.string cimport memcpy, memset

from .selectors cimport LoadState, get_usable

# Same constants as hashing_py.
KETAMA_DIGESTS_PER_WEIGHT = 40      # libketama: 40 digests x 4 points per weight unit
MAGLEV_DEFAULT_SIZE = 65537         # the paper's small table size (prime)
cdef long long MAX_WEIGHT_C = 1000000
# A ring is 8 bytes per point here (and ~100 in the pure twin): 160 * sum(weights) points
# are capped so a mistyped weight cannot take gigabytes.
MAX_RING_POINTS = 1 << 24


# --------------------------------------------------------------------------- MD5 (RFC 1321)

cdef inline uint32_t rotl(uint32_t x, int c) noexcept nogil:
    return (x << c) | (x >> (32 - c))


cdef inline uint32_t le32(const unsigned char *p) noexcept nogil:
    return (<uint32_t>p[0]) | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16) | (<uint32_t>p[3] << 24)


cdef inline uint64_t le64(const unsigned char *p) noexcept nogil:
    return (<uint64_t>le32(p)) | ((<uint64_t>le32(p + 4)) << 32)


# The four step functions of RFC 1321 §3.4 (md5c.c's FF, GG, HH, II): a = b + ((a + f(b,c,d)
# + x[k] + T[i]) <<< s). Written out per step with constant k, s and T[i] = floor(2**32 *
# abs(sin(i))) so the compiler keeps the state in registers and folds the constants. One
# 64-byte block costs ~144 ns on the reference host, the same as OpenSSL's assembly MD5 there
# (hashlib on 2 KiB); MD5's 64 dependent steps are the floor, not this code.
cdef inline uint32_t ff(uint32_t a, uint32_t b, uint32_t c, uint32_t d, uint32_t x, int s,
                        uint32_t t) noexcept nogil:
    return b + rotl(a + (d ^ (b & (c ^ d))) + x + t, s)      # F = (b & c) | (~b & d)


cdef inline uint32_t gg(uint32_t a, uint32_t b, uint32_t c, uint32_t d, uint32_t x, int s,
                        uint32_t t) noexcept nogil:
    return b + rotl(a + (c ^ (d & (b ^ c))) + x + t, s)      # G = (b & d) | (c & ~d)


cdef inline uint32_t hh(uint32_t a, uint32_t b, uint32_t c, uint32_t d, uint32_t x, int s,
                        uint32_t t) noexcept nogil:
    return b + rotl(a + (b ^ c ^ d) + x + t, s)


cdef inline uint32_t ii(uint32_t a, uint32_t b, uint32_t c, uint32_t d, uint32_t x, int s,
                        uint32_t t) noexcept nogil:
    return b + rotl(a + (c ^ (b | ~d)) + x + t, s)


cdef void md5_block(uint32_t *st, const unsigned char *p) noexcept nogil:
    """One 16-word block (RFC 1321 §3.4, as md5c.c's MD5Transform)."""
    cdef uint32_t x[16]
    cdef uint32_t a = st[0], b = st[1], c = st[2], d = st[3]
    cdef int i
    for i in range(16):
        x[i] = le32(p + 4 * i)
    # round 1 (RFC 1321 §3.4: F(X,Y,Z) = XY v not(X) Z)
    a = ff(a, b, c, d, x[ 0],  7, 0xd76aa478)
    d = ff(d, a, b, c, x[ 1], 12, 0xe8c7b756)
    c = ff(c, d, a, b, x[ 2], 17, 0x242070db)
    b = ff(b, c, d, a, x[ 3], 22, 0xc1bdceee)
    a = ff(a, b, c, d, x[ 4],  7, 0xf57c0faf)
    d = ff(d, a, b, c, x[ 5], 12, 0x4787c62a)
    c = ff(c, d, a, b, x[ 6], 17, 0xa8304613)
    b = ff(b, c, d, a, x[ 7], 22, 0xfd469501)
    a = ff(a, b, c, d, x[ 8],  7, 0x698098d8)
    d = ff(d, a, b, c, x[ 9], 12, 0x8b44f7af)
    c = ff(c, d, a, b, x[10], 17, 0xffff5bb1)
    b = ff(b, c, d, a, x[11], 22, 0x895cd7be)
    a = ff(a, b, c, d, x[12],  7, 0x6b901122)
    d = ff(d, a, b, c, x[13], 12, 0xfd987193)
    c = ff(c, d, a, b, x[14], 17, 0xa679438e)
    b = ff(b, c, d, a, x[15], 22, 0x49b40821)
    # round 2 (RFC 1321 §3.4: G(X,Y,Z) = XZ v Y not(Z))
    a = gg(a, b, c, d, x[ 1],  5, 0xf61e2562)
    d = gg(d, a, b, c, x[ 6],  9, 0xc040b340)
    c = gg(c, d, a, b, x[11], 14, 0x265e5a51)
    b = gg(b, c, d, a, x[ 0], 20, 0xe9b6c7aa)
    a = gg(a, b, c, d, x[ 5],  5, 0xd62f105d)
    d = gg(d, a, b, c, x[10],  9, 0x02441453)
    c = gg(c, d, a, b, x[15], 14, 0xd8a1e681)
    b = gg(b, c, d, a, x[ 4], 20, 0xe7d3fbc8)
    a = gg(a, b, c, d, x[ 9],  5, 0x21e1cde6)
    d = gg(d, a, b, c, x[14],  9, 0xc33707d6)
    c = gg(c, d, a, b, x[ 3], 14, 0xf4d50d87)
    b = gg(b, c, d, a, x[ 8], 20, 0x455a14ed)
    a = gg(a, b, c, d, x[13],  5, 0xa9e3e905)
    d = gg(d, a, b, c, x[ 2],  9, 0xfcefa3f8)
    c = gg(c, d, a, b, x[ 7], 14, 0x676f02d9)
    b = gg(b, c, d, a, x[12], 20, 0x8d2a4c8a)
    # round 3 (RFC 1321 §3.4: H(X,Y,Z) = X xor Y xor Z)
    a = hh(a, b, c, d, x[ 5],  4, 0xfffa3942)
    d = hh(d, a, b, c, x[ 8], 11, 0x8771f681)
    c = hh(c, d, a, b, x[11], 16, 0x6d9d6122)
    b = hh(b, c, d, a, x[14], 23, 0xfde5380c)
    a = hh(a, b, c, d, x[ 1],  4, 0xa4beea44)
    d = hh(d, a, b, c, x[ 4], 11, 0x4bdecfa9)
    c = hh(c, d, a, b, x[ 7], 16, 0xf6bb4b60)
    b = hh(b, c, d, a, x[10], 23, 0xbebfbc70)
    a = hh(a, b, c, d, x[13],  4, 0x289b7ec6)
    d = hh(d, a, b, c, x[ 0], 11, 0xeaa127fa)
    c = hh(c, d, a, b, x[ 3], 16, 0xd4ef3085)
    b = hh(b, c, d, a, x[ 6], 23, 0x04881d05)
    a = hh(a, b, c, d, x[ 9],  4, 0xd9d4d039)
    d = hh(d, a, b, c, x[12], 11, 0xe6db99e5)
    c = hh(c, d, a, b, x[15], 16, 0x1fa27cf8)
    b = hh(b, c, d, a, x[ 2], 23, 0xc4ac5665)
    # round 4 (RFC 1321 §3.4: I(X,Y,Z) = Y xor (X v not(Z)))
    a = ii(a, b, c, d, x[ 0],  6, 0xf4292244)
    d = ii(d, a, b, c, x[ 7], 10, 0x432aff97)
    c = ii(c, d, a, b, x[14], 15, 0xab9423a7)
    b = ii(b, c, d, a, x[ 5], 21, 0xfc93a039)
    a = ii(a, b, c, d, x[12],  6, 0x655b59c3)
    d = ii(d, a, b, c, x[ 3], 10, 0x8f0ccc92)
    c = ii(c, d, a, b, x[10], 15, 0xffeff47d)
    b = ii(b, c, d, a, x[ 1], 21, 0x85845dd1)
    a = ii(a, b, c, d, x[ 8],  6, 0x6fa87e4f)
    d = ii(d, a, b, c, x[15], 10, 0xfe2ce6e0)
    c = ii(c, d, a, b, x[ 6], 15, 0xa3014314)
    b = ii(b, c, d, a, x[13], 21, 0x4e0811a1)
    a = ii(a, b, c, d, x[ 4],  6, 0xf7537e82)
    d = ii(d, a, b, c, x[11], 10, 0xbd3af235)
    c = ii(c, d, a, b, x[ 2], 15, 0x2ad7d2bb)
    b = ii(b, c, d, a, x[ 9], 21, 0xeb86d391)
    st[0] += a
    st[1] += b
    st[2] += c
    st[3] += d


cdef void md5_digest(const unsigned char *data, Py_ssize_t n, unsigned char *out) noexcept nogil:
    # Initial state A..D (RFC 1321 §3.3), as little-endian words.
    cdef uint32_t st[4]
    st[0] = 0x67452301
    st[1] = 0xefcdab89
    st[2] = 0x98badcfe
    st[3] = 0x10325476
    cdef Py_ssize_t off = 0, rem, tail_len, i
    cdef unsigned char tail[128]
    cdef uint64_t bits = (<uint64_t>n) << 3
    while n - off >= 64:
        md5_block(st, data + off)
        off += 64
    # Padding (§3.1, §3.2): 0x80, zeros to 56 mod 64, the bit length as 64-bit little-endian.
    rem = n - off
    memcpy(tail, data + off, rem)
    tail[rem] = 0x80
    tail_len = 64 if rem < 56 else 128
    memset(tail + rem + 1, 0, tail_len - rem - 1)
    for i in range(8):
        tail[tail_len - 8 + i] = <unsigned char>(bits >> (8 * i))
    md5_block(st, tail)
    if tail_len == 128:
        md5_block(st, tail + 64)
    for i in range(4):
        out[4 * i] = <unsigned char>st[i]
        out[4 * i + 1] = <unsigned char>(st[i] >> 8)
        out[4 * i + 2] = <unsigned char>(st[i] >> 16)
        out[4 * i + 3] = <unsigned char>(st[i] >> 24)


cdef uint32_t c_key_hash(const unsigned char *data, Py_ssize_t n) noexcept nogil:
    cdef unsigned char d[16]
    md5_digest(data, n, d)
    return le32(d)


def md5(data):
    """MD5 digest of a bytes-like (RFC 1321), 16 bytes."""
    cdef unsigned char out[16]
    cdef Py_buffer view
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    md5_digest(<const unsigned char *>view.buf, view.len, out)
    PyBuffer_Release(&view)
    return PyBytes_FromStringAndSize(<char *>out, 16)


def key_hash(key):
    """libketama key point: little-endian uint32 of MD5(key)[0:4]."""
    cdef Py_buffer view
    cdef uint32_t h
    if type(key) is bytes:
        return c_key_hash(<const unsigned char *>PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key))
    PyObject_GetBuffer(key, &view, PyBUF_SIMPLE)
    h = c_key_hash(<const unsigned char *>view.buf, view.len)
    PyBuffer_Release(&view)
    return h


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


# --------------------------------------------------------------------------- shared checks and walk

cdef tuple check_members(names, weights, str what):
    cdef list ns = [n.encode("utf-8") if isinstance(n, str) else bytes(n) for n in names]
    cdef list ws = [int(w) for w in weights]
    if not ns:
        raise ValueError("%s needs at least one backend" % what)
    if len(ns) != len(ws):
        raise ValueError("%d names but %d weights" % (len(ns), len(ws)))
    for w in ws:
        if w < 1 or w > MAX_WEIGHT_C:
            raise ValueError("weights must be in 1..%d, got %d" % (MAX_WEIGHT_C, w))
    return ns, ws


cdef double check_factor(balance_factor) except -1.0:
    cdef double c = float(balance_factor)
    if c != 0.0 and not c >= 1.0:
        raise ValueError("balance_factor must be 0 (off) or >= 1.0, got %r" % balance_factor)
    return c


cdef int check_bounded(LoadState load, Py_ssize_t n) except -1:
    if load is None:
        raise ValueError("bounded loads (balance_factor > 0) need a LoadState")
    if load.n < n:
        raise ValueError("LoadState has %d slots, selector has %d backends" % (load.n, n))
    return 0


cdef inline uint32_t key_arg(object k) except? 0xFFFFFFFF:
    if type(k) is not int:
        k = PyNumber_Index(k)
    return <uint32_t>k


cdef Py_ssize_t walk(const int32_t *seq, Py_ssize_t length, Py_ssize_t start, Py_ssize_t n,
                     const unsigned char *usable, LoadState load, double factor,
                     unsigned char *seen) noexcept:
    """hashing_py._Walker._prepare + _walk: from start, the first DISTINCT backend that is
    usable and (with bounded loads) has in_flight + 1 <= ceil(c * (total + 1) / usable_count).
    Assumes load is a LoadState of >= n slots when factor > 0."""
    cdef Py_ssize_t i, count, k, pos = start, rejected = 0, fallback = -1
    cdef int32_t b
    cdef long long limit = -1
    if factor == 0.0:
        b = seq[start]
        if usable == NULL or usable[b]:
            return b  # the common case: the hashed-to owner is usable, no count needed
    if usable == NULL:
        count = n
    else:
        count = 0
        for i in range(n):
            if usable[i]:
                count += 1
    if count == 0:
        return -1
    if factor > 0.0:
        limit = <long long>ceil(factor * <double>(load.total + 1) / <double>count)
    memset(seen, 0, n)
    for k in range(length):
        b = seq[pos]
        if not seen[b]:
            seen[b] = 1
            if usable != NULL and not usable[b]:
                pass
            elif limit >= 0 and load.inflight[b] + 1 > limit:
                if fallback < 0:
                    fallback = b
            else:
                return b
            rejected += 1
            if rejected == n:
                break
        pos += 1
        if pos == length:
            pos = 0
    return fallback


# --------------------------------------------------------------------------- KetamaRing

cdef int cmp_u64(const void *pa, const void *pb) noexcept nogil:
    cdef uint64_t a = (<const uint64_t *>pa)[0]
    cdef uint64_t b = (<const uint64_t *>pb)[0]
    return (a > b) - (a < b)


@cython.final
cdef class KetamaRing:
    """libketama-compatible consistent hash ring (see hashing_py.KetamaRing)."""

    algorithm = "consistent_hash"

    def __cinit__(self, names, weights, balance_factor=0.0):
        cdef Py_ssize_t b, i, j, k, h, nl, total_w = 0
        cdef bytes name
        cdef unsigned char d[16]
        cdef char *buf = NULL
        cdef char digits[24]
        cdef uint64_t *keys = NULL
        cdef long long w
        self._names, self._weights = check_members(names, weights, "KetamaRing")
        self.n = len(self._names)
        self.factor = check_factor(balance_factor)
        for w in self._weights:
            total_w += w
        if 4 * KETAMA_DIGESTS_PER_WEIGHT * total_w > MAX_RING_POINTS:
            raise ValueError("ring would have %d points (160 x sum of weights), more than %d"
                             % (4 * KETAMA_DIGESTS_PER_WEIGHT * total_w, MAX_RING_POINTS))
        self.length = 4 * KETAMA_DIGESTS_PER_WEIGHT * total_w
        self.pts = <uint32_t *>malloc(self.length * sizeof(uint32_t))
        self.seq = <int32_t *>malloc(self.length * sizeof(int32_t))
        self.seen = <unsigned char *>calloc(self.n, 1)
        keys = <uint64_t *>malloc(self.length * sizeof(uint64_t))
        if self.pts == NULL or self.seq == NULL or self.seen == NULL or keys == NULL:
            free(keys)
            raise MemoryError()
        try:
            k = 0
            for b in range(self.n):
                name = self._names[b]
                nl = len(name)
                free(buf)
                buf = <char *>malloc(nl + 24)
                if buf == NULL:
                    raise MemoryError()
                memcpy(buf, <char *>name, nl)
                buf[nl] = b'-'
                for i in range(KETAMA_DIGESTS_PER_WEIGHT * <long long>self._weights[b]):
                    # "%s-%d" % (name, i) without a Python object per digest.
                    j = 0
                    h = i
                    while True:
                        digits[j] = <char>(48 + h % 10)
                        j += 1
                        h //= 10
                        if h == 0:
                            break
                    for h in range(j):
                        buf[nl + 1 + h] = digits[j - 1 - h]
                    md5_digest(<const unsigned char *>buf, nl + 1 + j, d)
                    for h in range(4):
                        # (point, backend) packed so one integer sort orders by point, then index.
                        keys[k] = ((<uint64_t>le32(d + 4 * h)) << 32) | <uint64_t>b
                        k += 1
            qsort(keys, self.length, sizeof(uint64_t), cmp_u64)
            for k in range(self.length):
                self.pts[k] = <uint32_t>(keys[k] >> 32)
                self.seq[k] = <int32_t>(keys[k] & 0xFFFFFFFF)
        finally:
            free(buf)
            free(keys)

    def __dealloc__(self):
        free(self.pts)
        free(self.seq)
        free(self.seen)

    @property
    def size(self):
        return self.n

    @property
    def balance_factor(self):
        return self.factor

    def names(self):
        return [n.decode("utf-8", "replace") for n in self._names]

    def weights(self):
        return list(self._weights)

    def points(self):
        """The sorted ring as a list of (point, backend index)."""
        return [(self.pts[k], self.seq[k]) for k in range(self.length)]

    cdef Py_ssize_t c_start(self, uint32_t key) noexcept:
        # First point >= key (lower bound), wrapping past the end to 0.
        cdef Py_ssize_t lo = 0, hi = self.length, mid
        cdef const uint32_t *pts = self.pts
        while lo < hi:
            mid = (lo + hi) >> 1
            if pts[mid] < key:
                lo = mid + 1
            else:
                hi = mid
        return lo if lo < self.length else 0

    def pick(self, usable=None, LoadState load=None, key=0, now=0.0):
        """Backend for the request whose key hash is ``key`` (a uint32), or -1."""
        cdef Py_buffer view
        cdef const unsigned char *u
        cdef Py_ssize_t r
        # An int, or anything with __index__ (a float is a TypeError, as in the twin);
        # a uint32_t argument would truncate floats silently.
        cdef uint32_t kh = key_arg(key)
        cdef int rel = get_usable(usable, self.n, &view, &u)
        if u == NULL and self.factor == 0.0:
            return self.seq[self.c_start(kh)]
        if self.factor > 0.0 and (load is None or load.n < self.n):
            if rel:
                PyBuffer_Release(&view)
            check_bounded(load, self.n)
        r = walk(self.seq, self.length, self.c_start(kh), self.n, u, load, self.factor, self.seen)
        if rel:
            PyBuffer_Release(&view)
        return r

    def explain(self, usable=None, load=None, key=0, now=0.0):
        if self._spec is None:
            from . import hashing_py
            self._spec = hashing_py.KetamaRing._from_parts(
                self._names, self._weights, self.factor,
                [self.pts[k] for k in range(self.length)], [self.seq[k] for k in range(self.length)])
        return self._spec.explain(usable, load, key, now)


# --------------------------------------------------------------------------- Maglev

@cython.final
cdef class Maglev:
    """Maglev lookup table, weighted (see hashing_py.Maglev)."""

    algorithm = "maglev"

    def __cinit__(self, names, weights, table_size=MAGLEV_DEFAULT_SIZE, balance_factor=0.0):
        cdef Py_ssize_t i, n, m, c, s, filled = 0
        cdef long long t = 0, wmax = 0
        cdef unsigned char d[16]
        cdef bytes name
        cdef Py_ssize_t *offset = NULL
        cdef Py_ssize_t *skip = NULL
        cdef long long *target = NULL
        cdef long long *w = NULL
        self._names, self._weights = check_members(names, weights, "Maglev")
        self.n = n = len(self._names)
        self.factor = check_factor(balance_factor)
        mm = int(table_size)
        if not is_prime(mm):
            raise ValueError("Maglev table_size must be prime, got %d" % mm)
        if mm < 7 * n:
            raise ValueError("Maglev table_size must be >= 7 x backends (%d), got %d" % (7 * n, mm))
        self.m = m = mm
        self.seq = <int32_t *>malloc(m * sizeof(int32_t))
        self.seen = <unsigned char *>calloc(n, 1)
        offset = <Py_ssize_t *>malloc(n * sizeof(Py_ssize_t))
        skip = <Py_ssize_t *>malloc(n * sizeof(Py_ssize_t))
        target = <long long *>calloc(n, sizeof(long long))
        w = <long long *>malloc(n * sizeof(long long))
        try:
            if self.seq == NULL or self.seen == NULL or offset == NULL or skip == NULL \
                    or target == NULL or w == NULL:
                raise MemoryError()
            for i in range(n):
                name = self._names[i]
                md5_digest(<const unsigned char *>PyBytes_AS_STRING(name), len(name), d)
                offset[i] = <Py_ssize_t>(le64(d) % <uint64_t>m)
                skip[i] = <Py_ssize_t>(le64(d + 8) % <uint64_t>(m - 1)) + 1
                w[i] = self._weights[i]
                if w[i] > wmax:
                    wmax = w[i]
            for i in range(m):
                self.seq[i] = -1
            # Pseudocode 1 of the paper, with Envoy's weighted turns; offset[] becomes each
            # backend's next preferred entry.
            while filled < m:
                for i in range(n):
                    if t * w[i] < target[i]:
                        continue
                    target[i] += wmax
                    c = offset[i]
                    s = skip[i]
                    while self.seq[c] >= 0:
                        c += s
                        if c >= m:
                            c -= m
                    self.seq[c] = <int32_t>i
                    c += s
                    if c >= m:
                        c -= m
                    offset[i] = c
                    filled += 1
                    if filled == m:
                        break
                t += 1
        finally:
            free(offset)
            free(skip)
            free(target)
            free(w)

    def __dealloc__(self):
        free(self.seq)
        free(self.seen)

    @property
    def size(self):
        return self.n

    @property
    def table_size(self):
        return self.m

    @property
    def balance_factor(self):
        return self.factor

    def names(self):
        return [n.decode("utf-8", "replace") for n in self._names]

    def weights(self):
        return list(self._weights)

    def table(self):
        """The lookup table: entry -> backend index."""
        return [self.seq[i] for i in range(self.m)]

    def pick(self, usable=None, LoadState load=None, key=0, now=0.0):
        """Backend for the request whose key hash is ``key`` (a uint32), or -1."""
        cdef Py_buffer view
        cdef const unsigned char *u
        cdef Py_ssize_t r
        cdef uint32_t kh = key_arg(key)
        cdef int rel = get_usable(usable, self.n, &view, &u)
        if u == NULL and self.factor == 0.0:
            return self.seq[kh % <uint32_t>self.m]
        if self.factor > 0.0 and (load is None or load.n < self.n):
            if rel:
                PyBuffer_Release(&view)
            check_bounded(load, self.n)
        r = walk(self.seq, self.m, kh % <uint32_t>self.m, self.n, u, load, self.factor, self.seen)
        if rel:
            PyBuffer_Release(&view)
        return r

    def explain(self, usable=None, load=None, key=0, now=0.0):
        if self._spec is None:
            from . import hashing_py
            self._spec = hashing_py.Maglev._from_parts(
                self._names, self._weights, self.m, self.factor, self.table())
        return self._spec.explain(usable, load, key, now)
