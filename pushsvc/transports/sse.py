"""Server-Sent Events: ``GET /v1/sse?channel=a&channel=b``.

Works with the browser's native ``EventSource``: every frame's ``id:`` is the cursor, so
the browser's automatic reconnect sends it back as ``Last-Event-ID``; a ``last_event_id``
(or ``cursor``) query parameter does the same for clients that cannot set headers.

The response is our own ASGI response rather than sse-starlette's ``EventSourceResponse``:
that one starts a ping task per connection and encodes each event per send, where pushsvc
needs the hub's pre-encoded bytes, one process-wide heartbeat timer, and a write that
coalesces everything queued for the connection into one ``send``. The hub writes the
stream (``pushsvc.writer``); the response's own task subscribes, then waits
for the disconnect. Server shutdown closes the session, which ends the stream (a drain:
with a ``close`` event carrying 1012, "service restart"; docs/how-to/drain.md).

The first bytes are a comment sent at once: a client that does not see them within a
short window is behind a buffering proxy and should fall back to long-polling.

``named_events=1`` sends each event's name as its SSE ``event:`` type (``SSENamedWire``)
for pages that use ``EventSource.addEventListener(name, ...)``; the default keeps the
type ``message`` for every event, which the browser client reads with one listener.
"""

from __future__ import annotations

import logging

from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from pushsvc.exceptions import BadRequest
from pushsvc.protocol import codes, frames
from pushsvc.protocol.wires import Frame, SSENamedWire, SSEWire
from pushsvc.session import Session
from pushsvc.transports.admission import Opening, open_request
from pushsvc.transports.asgi import state
from pushsvc.writer import Writer

log = logging.getLogger("pushsvc.sse")

SSE_HEADERS = {
    "Cache-Control": "no-cache, no-transform",
    "X-Accel-Buffering": "no",
    "Connection": "keep-alive",
}
_RAW_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8")] + [
    (k.lower().encode(), v.encode()) for k, v in SSE_HEADERS.items()
]


async def sse_endpoint(request: Request) -> Response:
    settings, hub, auth = state(request.scope)
    cursor = (
        request.headers.get("last-event-id")
        or request.query_params.get("last_event_id")
        or request.query_params.get("cursor")
    )
    opening = await open_request(settings, hub, auth, request.headers, request.query_params, cursor)
    named = named_events(request.query_params)
    return SSEStream(request, opening, named)


def named_events(query: QueryParams) -> bool:
    """``?named_events=1``: the event's name as the SSE type; ``0`` or absent: ``message``."""
    raw = query.get("named_events")
    if raw is None or raw in ("", "0", "false"):
        return False
    if raw in ("1", "true"):
        return True
    raise BadRequest("named_events must be 1 or 0")


class SSEStream(Response):
    media_type = "text/event-stream"

    def __init__(self, request: Request, opening: Opening, named: bool = False) -> None:
        # no Content-Length: the body is endless
        self.status_code = 200
        self.background = None
        self.raw_headers = _RAW_HEADERS  # copied when sent: middleware may add to them
        settings, hub, _ = state(request.scope)
        self.opening: Opening | None = opening
        self.session = Session(hub, opening.principal, SSENamedWire() if named else SSEWire())
        self.retry_ms = settings.sse_retry_ms

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        session = self.session
        hub = session.hub
        hub.register(session)
        await send(
            {"type": "http.response.start", "status": 200, "headers": list(self.raw_headers)}
        )
        await send(
            {
                "type": "http.response.body",
                "body": frames.SSE_OPEN + frames.sse_retry(self.retry_ms),
                "more_body": True,
            }
        )
        session.writer = SSEWriter(send, hub.metrics.sse)
        try:
            # The hub writes the stream; this task subscribes (replaying history at the
            # writer's pace), then waits for the end: the client's disconnect, or the
            # last chunk of a stream the server closed (uvicorn then reports one too).
            opening, self.opening = self.opening, None  # not needed once subscribed
            assert opening is not None, "an SSEStream is served once"
            try:
                new = await session.join(opening.channels, opening.positions)
                if opening.presence:
                    await session.join_presence(opening.channels, opening.presence_conn)
                await session.catch_up(new, opening.positions)
            except Exception as exc:
                log.warning("SSE subscribe failed: %s", exc)
                session.close(codes.WS_1011_INTERNAL_ERROR, "subscribe failed; retry")
            del opening
            while (await receive())["type"] != "http.disconnect":
                pass
        finally:
            session.release()


class SSEWriter(Writer):
    __slots__ = ()

    def message(self, frame: Frame) -> Message:
        return {"type": "http.response.body", "body": frame, "more_body": True}

    def messages(self, session: Session, batch: list[Frame]) -> list[Message]:
        # bytes frames only on this wire; one write for the whole backlog
        body = b"".join(batch)  # type: ignore[arg-type]
        if session.close_code is not None:
            if session.close_reason:
                body += frames.sse_control(
                    "close", None, code=session.close_code, reason=session.close_reason
                )
            return [{"type": "http.response.body", "body": body, "more_body": False}]
        return [{"type": "http.response.body", "body": body, "more_body": True}]
