"""Wait for a condition with a deadline: the only way tests here wait for anything.

A fixed sleep either wastes time or flakes on a loaded machine; polling a condition
with a deadline does neither, and the failure message says what never became true.
"""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """The condition did not hold before the deadline (an AssertionError, so pytest shows it as a failure)."""


def wait_until(condition: Callable[[], T], timeout: float, what: str = "condition",
               interval: float = 0.02) -> T:
    """Poll `condition` until it returns something truthy; return that value.

    Raises WaitTimeout naming `what` and the last value (or exception) seen.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = condition()
        except Exception as exc:  # the condition may fail while the thing starts up
            value, last = None, exc
        else:
            last = value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout:.1f}s waiting for {what}; last seen: {last!r}")
        time.sleep(interval)
