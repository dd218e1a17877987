"""Token buckets per key — pure-Python twin of ``ratelimit.pyx``.

This module is the executable spec: ``ratelimit.pyx`` must return the same
value and leave the same ``wait`` / ``reset`` for the same calls
(tests/unit/test_ratelimit.py runs both in lockstep). docs/rate-limiting.md
says what the numbers mean for the RateLimit-* and Retry-After headers.

The bucket (the classic token bucket: capacity ``burst``, refilled
continuously at ``rate`` tokens per second):

* A key not in the table starts full: ``burst`` tokens, stamped ``now``.
* On each ``take(key, now)`` the bucket first refills:
  ``tokens = min(burst, tokens + (now - stamp) * rate)``, ``stamp = now``.
  A ``now`` at or before the stamp refills nothing and leaves the stamp
  alone (the clock is the event loop's monotonic time; an earlier value is
  treated as the stamp, so no interval is ever counted twice).
* ``tokens >= 1``: one is taken, the call returns ``floor(tokens left)``
  (>= 0). Otherwise it returns -1 and nothing is taken.
* ``wait``: seconds from ``now`` until one token is there (0.0 when the call
  was allowed and a whole token is still left); ``reset``: seconds until the
  bucket is full again. Both are ``gap / rate`` rounded *up* by a margin of a
  few units in the last place of ``now`` (``_until``), so that a caller who
  comes back at ``now + wait``, computed in doubles, is allowed: the naive
  quotient can land one rounding step short of the token.

The table (memory is bounded whatever the clients do):

* At most ``max_keys`` keys, in least-recently-used order (every take moves
  its key to the most-recent end). A new key in a full table evicts the
  least recently used one first; its state is forgotten, so it would start
  full next time.
* ``sweep(now)`` walks from the least-recent end and drops buckets that have
  refilled to full: a missing key starts full, so dropping a full bucket
  changes no later answer. It stops at the first bucket not yet full or after
  ``max_visits`` entries (bounded work per server tick). When a sweep leaves
  a quarter or less of the table's peak size, the table is rebuilt so its
  hash table shrinks too (CPython dicts never shrink on deletion).

Deterministic and sans-IO: no clock, no hash(), no randomness; time is passed
in. Floats: every quantity is an IEEE double computed by the same operations
in the same order in both twins.
"""

import math
import numbers
import operator
from collections import OrderedDict

__all__ = ["TokenBuckets", "MAX_BURST", "MAX_KEYS", "check_config"]

MAX_BURST = 2**53            # token counts stay exact in a double up to here
MAX_KEYS = 2**31 - 1         # the compiled twin numbers slots with C ints
DEFAULT_MAX_KEYS = 100_000
MIN_REBUILD = 64             # tables smaller than this are never rebuilt by sweep
# wait/reset margin, as a fraction of |stamp| + 2 * seconds: >= 8 ulps of the larger
# of the two, so ``now + wait`` (one rounding), the subtraction ``now - stamp`` (one
# more) and ``gap / rate * rate`` (two relative roundings) cannot end below the token.
# 2**-48 of a 10**6 s monotonic clock is 3.6 ns.
_PAD = 2.0 ** -48


def check_config(rate, burst, max_keys):
    """Validated (rate, burst, max_keys) as (float, int, int); ValueError otherwise.

    The compiled twin calls this too, so both raise the same messages."""
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real):
        raise ValueError("rate must be a finite number of tokens per second > 0, got %r" % (rate,))
    r = float(rate)
    if not (r > 0.0 and math.isfinite(r)):
        raise ValueError("rate must be a finite number of tokens per second > 0, got %r" % (rate,))
    b = _int_in(burst, "burst", 1, MAX_BURST)
    m = _int_in(max_keys, "max_keys", 1, MAX_KEYS)
    return r, b, m


def _int_in(value, name, lo, hi):
    try:
        if isinstance(value, bool):
            raise TypeError
        v = operator.index(value)
    except TypeError:
        v = None
    if v is None or not lo <= v <= hi:
        raise ValueError("%s must be an int in %d..%d, got %r" % (name, lo, hi, value))
    return v


def check_visits(max_visits):
    try:
        if isinstance(max_visits, bool):
            raise TypeError
        v = operator.index(max_visits)
    except TypeError:
        v = -1
    if v < 0:
        raise ValueError("max_visits must be an int >= 0, got %r" % (max_visits,))
    return v


def bad_now(now):
    return ValueError("now must be a finite number of seconds, got %r" % (now,))


def _until(gap, rate, stamp):
    """Seconds from ``stamp`` until ``gap`` more tokens have accrued, rounded up (see _PAD)."""
    s = gap / rate
    return s + (abs(stamp) + 2.0 * s) * _PAD


class TokenBuckets:
    """One token bucket per key (bytes), at most ``max_keys`` of them, LRU-evicted."""

    __slots__ = ("_rate", "_burst", "_burst_f", "_max_keys", "_table", "_peak", "_wait", "_reset")

    def __init__(self, rate, burst, max_keys=DEFAULT_MAX_KEYS):
        self._rate, self._burst, self._max_keys = check_config(rate, burst, max_keys)
        self._burst_f = float(self._burst)
        # key -> [tokens, stamp]; order = least recently used first
        self._table = OrderedDict()
        self._peak = 0           # most keys held since the table was last rebuilt
        self._wait = 0.0
        self._reset = 0.0

    rate = property(lambda self: self._rate, doc="tokens per second")
    burst = property(lambda self: self._burst, doc="bucket capacity, tokens")
    max_keys = property(lambda self: self._max_keys, doc="most keys held at once")
    wait = property(lambda self: self._wait, doc="after take: seconds until one token is available")
    reset = property(lambda self: self._reset, doc="after take: seconds until the bucket is full")

    def __len__(self):
        return len(self._table)

    def take(self, key, now):
        """Take one token from ``key``'s bucket at time ``now`` (seconds).

        Returns the whole tokens left (>= 0), or -1 when the bucket had less than
        one token (nothing taken). Sets ``wait`` and ``reset``."""
        if type(key) is not bytes:
            raise TypeError("key must be bytes, got %s" % type(key).__name__)
        now = now + 0.0
        if not now - now == 0.0:     # NaN or infinite: would stop the bucket's clock for good
            raise bad_now(now)
        rate = self._rate
        burst = self._burst_f
        table = self._table
        b = table.get(key)
        if b is not None:
            table.move_to_end(key)
            t, stamp = b
            if now > stamp:
                t = t + (now - stamp) * rate
                if t > burst:
                    t = burst
                stamp = now
                b[1] = stamp
        else:
            if len(table) >= self._max_keys:
                table.popitem(last=False)        # least recently used: forgotten
            t = burst
            stamp = now
            b = table[key] = [t, stamp]
            if len(table) > self._peak:
                self._peak = len(table)
        if t >= 1.0:
            t -= 1.0
            b[0] = t
            self._wait = 0.0 if t >= 1.0 else _until(1.0 - t, rate, stamp)
            self._reset = _until(burst - t, rate, stamp)
            return int(t)
        b[0] = t
        self._wait = _until(1.0 - t, rate, stamp)
        self._reset = _until(burst - t, rate, stamp)
        return -1

    def sweep(self, now, max_visits=1024):
        """Drop buckets that are full by ``now``, least recently used first; stop at the
        first one that is not, or after ``max_visits`` entries. Returns how many were dropped."""
        now = now + 0.0
        if not now - now == 0.0:
            raise bad_now(now)
        visits = check_visits(max_visits)
        rate = self._rate
        burst = self._burst_f
        table = self._table
        dropped = 0
        while visits > 0 and table:
            visits -= 1
            key = next(iter(table))
            t, stamp = table[key]
            if now > stamp:
                t = t + (now - stamp) * rate
            if not t >= burst:
                break
            del table[key]
            dropped += 1
        if dropped and self._peak > MIN_REBUILD and len(table) <= self._peak // 4:
            self._table = OrderedDict(table)     # same order, hash table sized to what is left
            self._peak = len(table)
        return dropped
