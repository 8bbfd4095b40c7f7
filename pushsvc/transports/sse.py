"""Server-Sent Events: ``GET /v1/sse?channel=a&channel=b``.

Works with the browser's native ``EventSource``: every frame's ``id:`` is the cursor, so
the browser's automatic reconnect sends it back as ``Last-Event-ID``; a ``last_event_id``
(or ``cursor``) query parameter does the same for clients that cannot set headers.

The response is our own ASGI response rather than sse-starlette's ``EventSourceResponse``:
that one starts a ping task per connection and encodes each event per send, where pushsvc
needs the hub's pre-encoded bytes, one process-wide heartbeat timer, and a write that
coalesces everything queued for the connection into one ``send``. The stream races the
session's queue against the client's disconnect; server shutdown closes the session.

The first bytes are a comment sent at once: a client that does not see them within a
short window is behind a buffering proxy and should fall back to long-polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from pushsvc.protocol import frames
from pushsvc.session import Session
from pushsvc.transports._common import Opening, open_request, state
from pushsvc.wires import SSEWire

log = logging.getLogger("pushsvc.sse")

SSE_HEADERS = {
    "Cache-Control": "no-cache, no-transform",
    "X-Accel-Buffering": "no",
    "Connection": "keep-alive",
}


async def sse_endpoint(request: Request) -> Response:
    settings, hub, auth = state(request.scope)
    cursor = (
        request.headers.get("last-event-id")
        or request.query_params.get("last_event_id")
        or request.query_params.get("cursor")
    )
    opening = open_request(settings, hub, auth, request.headers, request.query_params, cursor)
    return SSEStream(request, opening)


class SSEStream(Response):
    media_type = "text/event-stream"

    def __init__(self, request: Request, opening: Opening) -> None:
        # no Content-Length: the body is endless
        self.status_code = 200
        self.background = None
        self.raw_headers = [(b"content-type", b"text/event-stream; charset=utf-8")] + [
            (k.lower().encode(), v.encode()) for k, v in SSE_HEADERS.items()
        ]
        settings, hub, _ = state(request.scope)
        self.opening = opening
        self.session = Session(hub, opening.principal, SSEWire())
        self.retry_ms = settings.sse_retry_ms

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        session = self.session
        stats = session.hub.metrics.sse
        session.hub.register(session)
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        await send(
            {
                "type": "http.response.body",
                "body": frames.SSE_OPEN + frames.sse_retry(self.retry_ms),
                "more_body": True,
            }
        )
        watcher = asyncio.create_task(_watch_disconnect(receive, session))
        subscriber = asyncio.create_task(_subscribe(session, self.opening))
        try:
            while True:
                await session.wait()
                batch = session.drain()
                if batch:
                    # bytes frames only on this wire; one write for the whole backlog
                    await send(
                        {
                            "type": "http.response.body",
                            "body": b"".join(batch),  # type: ignore[arg-type,unused-ignore]
                            "more_body": True,
                        }
                    )
                    stats.wrote(batch)
                if session.close_code is not None:
                    if session.close_reason:
                        await send(
                            {
                                "type": "http.response.body",
                                "body": frames.sse_control(
                                    "close",
                                    None,
                                    code=session.close_code,
                                    reason=session.close_reason,
                                ),
                                "more_body": True,
                            }
                        )
                    break
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass  # client went away mid-write
        finally:
            for task in (watcher, subscriber):
                task.cancel()
            for task in (watcher, subscriber):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            session.release()


async def _watch_disconnect(receive: Receive, session: Session) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            session.close()
            return


async def _subscribe(session: Session, opening: Opening) -> Any:
    try:
        await session.subscribe(opening.channels, opening.positions)
    except Exception as exc:
        log.warning("SSE subscribe failed: %s", exc)
        from pushsvc.protocol import codes

        session.close(codes.WS_1011_INTERNAL_ERROR, "subscribe failed; retry")
