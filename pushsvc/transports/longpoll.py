"""Long-polling: ``GET /v1/poll?channel=…&cursor=…&timeout=…``.

Stateless (DESIGN decision 6): each request carries token, channels and cursor, so any
instance can answer it. The request subscribes like any session (live first, then the
log after the cursor) and answers ``{"events": [...], "cursor": "..."}`` in one write as
soon as something is pending, or with no events at the timeout (default below the common
30 s proxy timeout). One answer holds at most about one history page; the cursor says
where the next poll goes on.
"""

from __future__ import annotations

import asyncio
import contextlib

from starlette.requests import Request
from starlette.responses import Response

from pushsvc.exceptions import BadRequest
from pushsvc.protocol import frames
from pushsvc.session import Session
from pushsvc.transports._common import open_request, state
from pushsvc.wires import PollWire


async def poll_endpoint(request: Request) -> Response:
    settings, hub, auth = state(request.scope)
    query = request.query_params
    opening = open_request(settings, hub, auth, request.headers, query, query.get("cursor"))
    timeout = _timeout(
        query.get("timeout"), settings.poll_timeout_default, settings.poll_timeout_max
    )

    session = Session(hub, opening.principal, PollWire())
    session.bounded_replay = True
    hub.register(session)
    disconnect = asyncio.create_task(_disconnected(request, session))
    try:
        await session.subscribe(opening.channels, opening.positions)
        if not session.queue and session.close_code is None:
            await session.wait(timeout)
        items = session.drain()
        body = frames.poll_response(items, session.cursor)  # type: ignore[arg-type]
        hub.metrics.poll.wrote(items)
    finally:
        disconnect.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await disconnect
        session.release()
    return Response(
        body,
        media_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


async def _disconnected(request: Request, session: Session) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            session.close()
            return


def _timeout(raw: str | None, default: float, maximum: float) -> float:
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise BadRequest("timeout must be a number of seconds") from exc
    if not 0 <= value <= maximum:
        raise BadRequest(f"timeout must be between 0 and {maximum} seconds")
    return value
