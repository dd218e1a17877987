"""Deadlines whose cost does not grow with idle connections: a timer wheel.

Every object with a deadline (a client connection, a backend session) owns one
``Timer`` for its life; the ``Wheel`` keeps timers in slots of ``granularity``
seconds, keyed by absolute slot number (a dict of sets). So:

- arming a deadline *later* than the slot a timer already sits in costs nothing:
  the timer is looked at when its slot comes and moved to the right slot then.
  That is the common case: every body chunk pushes an inactivity deadline back,
  and a keep-alive connection's next header deadline is later than its last;
- arming an *earlier* deadline moves the timer (two set operations);
- a tick costs the timers whose slot has come, not every connection: 100k idle
  connections cost nothing until their deadlines come.

HAProxy's wait queues do the same on ebtrees keyed by expiry ("requeue on expiry
if the date moved"); the slot dict is the cheap Python equivalent. A timer fires
at most two slots (two ticks) late.

A callback that raises is logged and does not stop the other timers or the tick
(``expire`` runs each callback in its own try). Time is passed in (``now``):
this module never reads a clock.
"""

import logging

__all__ = ["Timer", "Wheel"]

log = logging.getLogger("fastlb.timers")


class Timer:
    """One deadline of ``owner``: ``owner.on_timer(timer, kind, now)`` when it is due."""

    __slots__ = ("owner", "kind", "deadline", "slot")

    def __init__(self, owner):
        self.owner = owner
        self.kind = 0
        self.deadline = None  # None: not armed (0.0 is a valid deadline)
        self.slot = 0  # the wheel slot it sits in, 0: none


class Wheel:
    __slots__ = ("granularity", "slots", "current")

    def __init__(self, granularity, now=0.0):
        self.granularity = granularity
        self.slots = {}  # slot number -> set of timers
        self.current = int(now / granularity)  # every slot up to this one has been expired

    def arm(self, timer, kind, when):
        """Set ``timer`` to fire with ``kind`` at ``when`` (replacing what it had)."""
        timer.kind = kind
        timer.deadline = when
        # Slot s is expired by the first tick at or after s * granularity, so a
        # timer in slot int(when / g) + 1 is never looked at before ``when``.
        slot = int(when / self.granularity) + 1
        if slot <= self.current:
            slot = self.current + 1
        old = timer.slot
        if old:
            if old <= slot:
                return  # it is looked at earlier and moved then
            bucket = self.slots.get(old)
            if bucket is not None:
                bucket.discard(timer)
        timer.slot = slot
        bucket = self.slots.get(slot)
        if bucket is None:
            self.slots[slot] = {timer}
        else:
            bucket.add(timer)

    def extend(self, timer, when):
        """Push an armed timer's deadline to ``when`` (same kind); free when later."""
        if timer.deadline is not None:
            if when >= timer.deadline:
                timer.deadline = when
            else:
                self.arm(timer, timer.kind, when)

    @staticmethod
    def cancel(timer):
        """Disarm; the slot entry is dropped lazily when its slot comes."""
        timer.deadline = None
        timer.kind = 0

    def expire(self, now):
        """Fire every timer due at ``now``; returns how many fired."""
        end = int(now / self.granularity)
        slots = self.slots
        fired = 0
        while self.current < end:
            self.current += 1
            bucket = slots.pop(self.current, None)
            if not bucket:
                continue
            for timer in bucket:
                timer.slot = 0
                when = timer.deadline
                if when is None:
                    continue
                if when > now:  # moved later since it was slotted
                    self.arm(timer, timer.kind, when)
                    continue
                kind = timer.kind
                timer.deadline = None
                timer.kind = 0
                fired += 1
                try:
                    timer.owner.on_timer(timer, kind, now)
                except Exception:  # one broken callback must not stop every deadline
                    log.exception("timer callback of %r failed", timer.owner)
        return fired

    def __len__(self):
        return sum(len(b) for b in self.slots.values())
