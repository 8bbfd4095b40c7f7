"""Waiting on a condition in tests: poll a probe against a deadline, never a fixed sleep.

``await until(probe, timeout, what)`` (and ``until_sync`` for sync tests) calls ``probe()``
every ``interval`` seconds until ``check`` accepts what it returned (by default: until it is
truthy), and returns that value, so a test can wait for a state and then assert on it. A
probe may return an awaitable (a Playwright ``evaluate``, a backend read): ``until`` awaits
it. On timeout it raises ``AssertionError`` naming ``what`` and the last value observed, so
a failure says what was expected and what was seen instead.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any

_NOT_YET = object()


def _timed_out(timeout: float, what: str, probe: Callable[[], Any], last: Any) -> AssertionError:
    seen = "nothing (the probe never returned)" if last is _NOT_YET else repr(last)
    if len(seen) > 2000:
        seen = seen[:2000] + "…"
    return AssertionError(
        f"timed out after {timeout} s waiting for {what or probe}; last observed: {seen}"
    )


async def until(
    probe: Callable[[], Any],
    timeout: float = 10,
    what: str = "",
    *,
    check: Callable[[Any], Any] = bool,
    interval: float = 0.01,
) -> Any:
    """Poll ``probe()`` (awaiting it if it returns an awaitable) until ``check(value)``;
    return the accepted value."""
    deadline = time.monotonic() + timeout
    last: Any = _NOT_YET
    while True:
        value = probe()
        if inspect.isawaitable(value):
            value = await value
        last = value
        if check(value):
            return value
        if time.monotonic() > deadline:
            raise _timed_out(timeout, what, probe, last)
        await asyncio.sleep(interval)  # poll


def until_sync(
    probe: Callable[[], Any],
    timeout: float = 10,
    what: str = "",
    *,
    check: Callable[[Any], Any] = bool,
    interval: float = 0.01,
) -> Any:
    """The blocking twin of :func:`until`, for sync tests and fixtures."""
    deadline = time.monotonic() + timeout
    last: Any = _NOT_YET
    while True:
        last = value = probe()
        if check(value):
            return value
        if time.monotonic() > deadline:
            raise _timed_out(timeout, what, probe, last)
        time.sleep(interval)  # poll
