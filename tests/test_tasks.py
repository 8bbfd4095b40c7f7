"""pushsvc._tasks.cancel_and_wait: the caller's own cancellation is never swallowed."""

from __future__ import annotations

import asyncio

import pytest

from pushsvc._tasks import cancel_and_wait


async def test_tasks_are_cancelled_and_their_outcomes_consumed() -> None:
    async def forever() -> None:
        await asyncio.Event().wait()

    async def fails() -> None:
        raise RuntimeError("boom")

    failing = asyncio.create_task(fails())
    await asyncio.wait({failing})
    waiting = asyncio.create_task(forever())
    await cancel_and_wait(waiting, failing, None)
    assert waiting.cancelled()
    assert isinstance(failing.exception(), RuntimeError)


async def test_a_caller_cancelled_while_waiting_is_cancelled() -> None:
    """The bug this replaces: ``suppress(CancelledError)`` around ``await task`` let a
    cancelled caller (a client's reconnect loop, told to stop by close()) go on."""
    started, stopping, release = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def slow_to_stop() -> None:
        try:
            started.set()
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            stopping.set()
            await release.wait()  # cleans up for a while after being told to stop
            raise

    went_on = False
    inner = asyncio.create_task(slow_to_stop())
    await asyncio.wait_for(started.wait(), 5)

    async def caller() -> None:
        nonlocal went_on
        await cancel_and_wait(inner)
        went_on = True

    outer = asyncio.create_task(caller())
    await asyncio.wait_for(stopping.wait(), 5)  # caller() waits for inner to stop
    outer.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await outer
    assert not went_on
