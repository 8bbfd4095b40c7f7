"""Peer: python-socketio 5 (``AsyncServer``, ASGI) on uvicorn with the same uvicorn options
as ``pushsvc serve`` (``ws="websockets-sansio"``, no permessage-deflate).

    python benchmarks/peers/python_socketio_app.py --host 127.0.0.1 --port 8004

- Socket.IO (Engine.IO v4) at ``/socket.io/``, WebSocket transport only; the ``channel``
  query parameter of the handshake URL puts the socket in that room (before the server
  answers the namespace connect, ``40{...}``);
- ``POST /publish?channel=C``: the body (text) is the payload: ``await sio.emit("m",
  payload, to=C)`` (encoded once by the manager), answered ``204``.

Needs ``pip install 'python-socketio>=5,<6'`` (benchmarks/peers/install.sh).
"""

from __future__ import annotations

import argparse
import contextlib
from typing import Any
from urllib.parse import parse_qs

import socketio
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

sio = socketio.AsyncServer(
    async_mode="asgi",
    transports=["websocket"],
    cors_allowed_origins="*",
    logger=False,
    engineio_logger=False,
)


@sio.event
async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
    query = parse_qs(environ.get("QUERY_STRING", ""))
    channel = query.get("channel", [""])[0]
    if channel:
        await sio.enter_room(sid, channel)


async def publish(request: Request) -> Response:
    channel = request.query_params.get("channel")
    payload = (await request.body()).decode()
    await sio.emit("m", payload, to=channel)
    return Response(status_code=204)


async def healthz(request: Request) -> Response:
    return Response(b"ok")


http = Starlette(routes=[Route("/publish", publish, methods=["POST"]), Route("/healthz", healthz)])
app = socketio.ASGIApp(sio, other_asgi_app=http)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8004)
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
