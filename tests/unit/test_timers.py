"""The timer wheel (fastlb/timers.py): deadlines fire once, on time within two
slots, survive a raising callback, and idle timers cost nothing per tick."""

import logging

from hypothesis import given, settings, strategies as st

from fastlb.timers import Timer, Wheel

G = 0.1  # granularity (seconds)


class Owner:
    def __init__(self, name="o", raises=False):
        self.name = name
        self.raises = raises
        self.fired = []  # (kind, now)

    def on_timer(self, timer, kind, now):
        self.fired.append((kind, now))
        if self.raises:
            raise RuntimeError("broken callback")


def run(wheel, start, end, step=G / 2):
    t = start
    while t <= end + 1e-9:
        wheel.expire(t)
        t += step
    return t


def test_fires_once_not_early_and_at_most_two_slots_late():
    w = Wheel(G, 0.0)
    o = Owner()
    t = Timer(o)
    w.arm(t, 7, 1.0)
    run(w, 0.0, 0.99)
    assert o.fired == []
    run(w, 1.0, 3.0)
    assert len(o.fired) == 1
    kind, now = o.fired[0]
    assert kind == 7 and 1.0 <= now <= 1.0 + 2 * G + 1e-9
    assert t.deadline is None and t.kind == 0


def test_extend_later_is_free_and_fires_at_the_new_deadline():
    w = Wheel(G, 0.0)
    o = Owner()
    t = Timer(o)
    w.arm(t, 1, 1.0)
    slot = t.slot
    w.extend(t, 5.0)
    assert t.slot == slot  # not moved: looked at when its slot comes
    run(w, 0.0, 4.9)
    assert o.fired == []
    run(w, 5.0, 6.0)
    assert [k for k, _ in o.fired] == [1] and o.fired[0][1] >= 5.0


def test_arm_earlier_moves_the_timer():
    w = Wheel(G, 0.0)
    o = Owner()
    t = Timer(o)
    w.arm(t, 1, 10.0)
    w.arm(t, 2, 1.0)
    run(w, 0.0, 1.5)
    assert [k for k, _ in o.fired] == [2]
    run(w, 1.5, 11.0)
    assert len(o.fired) == 1  # the old, later deadline was replaced


def test_cancel():
    w = Wheel(G, 0.0)
    o = Owner()
    t = Timer(o)
    w.arm(t, 1, 1.0)
    w.cancel(t)
    run(w, 0.0, 3.0)
    assert o.fired == []
    assert len(w) == 0  # dropped lazily when its slot came


def test_a_raising_callback_does_not_stop_the_others(caplog):
    w = Wheel(G, 0.0)
    bad, good = Owner("bad", raises=True), Owner("good")
    tb, tg = Timer(bad), Timer(good)
    w.arm(tb, 1, 1.0)
    w.arm(tg, 1, 1.0)
    with caplog.at_level(logging.ERROR, logger="fastlb.timers"):
        run(w, 0.0, 2.0)
    assert len(bad.fired) == 1 and len(good.fired) == 1
    assert "timer callback" in caplog.text
    # the wheel keeps working afterwards
    w.arm(tg, 2, 3.0)
    run(w, 2.0, 4.0)
    assert [k for k, _ in good.fired] == [1, 2]


def test_idle_timers_are_not_visited_per_tick():
    w = Wheel(G, 0.0)
    owners = [Owner(str(i)) for i in range(10000)]
    timers = [Timer(o) for o in owners]
    for t in timers:
        w.arm(t, 1, 3600.0)  # idle keep-alive connections
    busy = Owner("busy")
    tb = Timer(busy)
    w.arm(tb, 1, 1.0)
    idle_slot = timers[0].slot
    bucket = w.slots[idle_slot]
    fired = sum(w.expire(x * G) for x in range(1, 30))
    assert fired == 1 and len(busy.fired) == 1
    # none of the 10,000 idle timers was visited: a visit pops their slot's bucket
    assert w.slots[idle_slot] is bucket and len(bucket) == 10000
    assert all(t.slot == idle_slot for t in timers)
    assert sum(len(o.fired) for o in owners) == 0


def test_a_callback_may_rearm_its_own_timer():
    w = Wheel(G, 0.0)

    class Again(Owner):
        def on_timer(self, timer, kind, now):
            Owner.on_timer(self, timer, kind, now)
            if len(self.fired) < 3:
                w.arm(timer, kind, now + 0.5)

    o = Again()
    t = Timer(o)
    w.arm(t, 1, 0.5)
    run(w, 0.0, 5.0)
    assert len(o.fired) == 3
    times = [now for _, now in o.fired]
    assert all(b - a >= 0.5 - 1e-9 for a, b in zip(times, times[1:]))


ops = st.lists(st.tuples(st.integers(0, 4), st.sampled_from(["arm", "extend", "cancel", "tick"]),
                         st.floats(0.0, 5.0)), max_size=60)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_random_operations_fire_each_arming_once_on_time(steps):
    """A model check: whatever the order of arm/extend/cancel/tick, a timer fires
    exactly when its latest deadline passes (never before, at most 2 slots after)."""
    w = Wheel(G, 0.0)
    owners = [Owner(str(i)) for i in range(5)]
    timers = [Timer(o) for o in owners]
    expect = [None] * 5  # the deadline each timer must fire at, or None
    now = 0.0
    for i, op, x in steps:
        t = timers[i]
        if op == "arm":
            when = now + x
            w.arm(t, 1, when)
            expect[i] = when
        elif op == "extend":
            if expect[i] is not None:
                when = max(expect[i], now + x)
                w.extend(t, when)
                expect[i] = when
        elif op == "cancel":
            w.cancel(t)
            expect[i] = None
        else:
            target = now + x
            while now < target:
                now = min(target, now + G / 3)
                before = [len(o.fired) for o in owners]
                w.expire(now)
                for j, o in enumerate(owners):
                    if len(o.fired) > before[j]:
                        assert len(o.fired) == before[j] + 1
                        assert expect[j] is not None, "fired after cancel"
                        assert expect[j] <= now + 1e-9, "fired early"
                        assert now <= expect[j] + 2 * G + G / 3 + 1e-9, "fired late"
                        expect[j] = None
                for j in range(5):
                    if expect[j] is not None:
                        assert now <= expect[j] + 2 * G + G / 3 + 1e-9, "missed"


def test_a_deadline_of_zero_is_armed_and_fires():
    """Found by the model check in CI: a deadline of exactly 0.0 was taken for
    "not armed" and never fired."""
    w = Wheel(G, 0.0)
    o = Owner()
    t = Timer(o)
    w.arm(t, 1, 0.0)
    run(w, 0.0, 1.0)
    assert len(o.fired) == 1 and o.fired[0][1] <= 2 * G + 1e-9
