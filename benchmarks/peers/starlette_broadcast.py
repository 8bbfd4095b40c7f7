"""Peer: bare Starlette on uvicorn, the same uvicorn options as ``pushsvc serve``
(``ws="websockets-sansio"``, no permessage-deflate), no log, no session, no queue.

    python benchmarks/peers/starlette_broadcast.py --host 127.0.0.1 --port 8001

- ``GET /ws?channel=C``: a WebSocket subscriber of channel C (registered before the
  handshake answers, so a subscriber whose handshake completed receives every later event);
- ``GET /sse?channel=C``: a Server-Sent Events subscriber (registered before the response
  headers are sent);
- ``POST /publish?channel=C``: the body is the payload; it is encoded once per wire format
  (the text for WebSocket, ``data: <payload>\\n\\n`` for SSE) and written to every
  subscriber of C in a loop (``await ws.send_text(payload)``; one ``http.response.body``
  per SSE stream), then answered ``204``.

Used by ``benchmarks/peers/compare.py`` and tests/test_bench_peers.py.
"""

from __future__ import annotations

import argparse
import contextlib
from collections import defaultdict
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

ws_subs: dict[str, set[WebSocket]] = defaultdict(set)
sse_subs: dict[str, set[Any]] = defaultdict(set)


async def ws_endpoint(ws: WebSocket) -> None:
    channel = ws.query_params.get("channel", "")
    subs = ws_subs[channel]
    subs.add(ws)
    try:
        await ws.accept()
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                break
    except WebSocketDisconnect:
        pass
    finally:
        subs.discard(ws)


class SSEStream:
    """A raw ASGI response: headers, then whatever the publisher writes, until the client
    disconnects."""

    def __init__(self, channel: str) -> None:
        self.channel = channel

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        subs = sse_subs[self.channel]
        subs.add(send)
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"text/event-stream"),
                        (b"cache-control", b"no-cache"),
                    ],
                }
            )
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    break
        finally:
            subs.discard(send)


async def sse_endpoint(request: Request) -> SSEStream:
    return SSEStream(request.query_params.get("channel", ""))


async def publish(request: Request) -> Response:
    channel = request.query_params.get("channel", "")
    payload = await request.body()
    text = payload.decode()
    for ws in list(ws_subs.get(channel, ())):
        try:
            await ws.send_text(text)
        except Exception:  # a subscriber that went away meanwhile
            ws_subs[channel].discard(ws)
    streams = sse_subs.get(channel)
    if streams:
        message = {"type": "http.response.body", "body": b"data: " + payload + b"\n\n"}
        message["more_body"] = True
        for send in list(streams):
            try:
                await send(message)
            except Exception:
                streams.discard(send)
    return Response(status_code=204)


async def healthz(request: Request) -> Response:
    return Response(b"ok")


app = Starlette(
    routes=[
        WebSocketRoute("/ws", ws_endpoint),
        Route("/sse", sse_endpoint),
        Route("/publish", publish, methods=["POST"]),
        Route("/healthz", healthz),
    ]
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.run(
            app,
            host=args.host,
            port=args.port,
            ws="websockets-sansio",
            ws_per_message_deflate=False,
            log_level="warning",
            timeout_graceful_shutdown=1,
        )


if __name__ == "__main__":
    main()
