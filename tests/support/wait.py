"""Bounded polling for tests: every wait on a real process has a deadline."""

import subprocess
import time

__all__ = ["wait_for", "stop_process"]


def wait_for(pred, timeout=10.0, interval=0.05):
    """Poll ``pred()`` until it returns something true or ``timeout`` seconds pass;
    returns its last value (so a failed wait can be asserted and shown)."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def stop_process(proc, timeout=5.0):
    """Stop a ``subprocess.Popen``: SIGTERM, then SIGKILL if it is still running
    after ``timeout`` seconds; always reaped."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
