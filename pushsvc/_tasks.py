"""Stopping tasks without swallowing the caller's own cancellation."""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel_and_wait(*tasks: asyncio.Future[Any] | None) -> None:
    """Cancel ``tasks`` (``None`` entries are skipped) and wait until every one has ended.

    ``task.cancel(); with suppress(CancelledError): await task`` is the common idiom, and
    it is wrong: when the *caller* is cancelled during that ``await``, the suppress swallows
    its cancellation, and a loop that was told to stop goes round again (a client's
    ``close()`` then waits forever). Here the caller's cancellation propagates; the tasks'
    own outcomes (cancelled, or an exception) are consumed, never raised.
    """
    pending = {task for task in tasks if task is not None}
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending)
    for task in pending:
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: no "exception was never retrieved" warning
