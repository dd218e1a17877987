"""Bounded polling for tests: every wait on a real process has a deadline."""

import time

__all__ = ["wait_for"]


def wait_for(pred, timeout=10.0, interval=0.05):
    """Poll ``pred()`` until it returns something true or ``timeout`` seconds pass;
    returns its last value (so a failed wait can be asserted and shown)."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)
