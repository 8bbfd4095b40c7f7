"""The request path as bare Starlette routes on uvicorn (the floor's endpoints, with a
framework): ``Request.json()`` in, ``JSONResponse`` out, no middleware, no log.

    python benchmarks/peers/starlette_route.py --host 127.0.0.1 --port 8011

- ``POST /publish``: one message or ``{"messages": [...]}``, answered with the event ID(s)
  as pushsvc's ``POST /v1/publish`` answers them;
- ``GET /poll?channel=C``: one event in the shape of pushsvc's long-poll answer;
- ``GET /healthz``: 200 once ready.

Same uvicorn options as ``floor_asgi.py``. Used by ``requests.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

_ids = itertools.count(1)
_CURSOR = "c1" + "A" * 20
_DATA = {"user": "alice", "text": "hello from starlette"}


def _id(message: dict[str, Any]) -> dict[str, Any]:
    return {"channel": message["channel"], "id": f"{next(_ids)}-0"}


async def publish(request: Request) -> Response:
    body = await request.json()
    if isinstance(body, dict) and "messages" in body:
        return JSONResponse({"results": [_id(m) for m in body["messages"]]})
    return JSONResponse(_id(body))


async def poll(request: Request) -> Response:
    channel = request.query_params.get("channel", "")
    event = {"type": "event", "channel": channel, "event": "message", "id": "1-0"}
    return JSONResponse({"events": [event | {"data": _DATA}], "cursor": _CURSOR})


async def healthz(request: Request) -> Response:
    return Response(b"ok")


app = Starlette(
    routes=[
        Route("/publish", publish, methods=["POST"]),
        Route("/poll", poll),
        Route("/healthz", healthz),
    ]
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8011)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.run(
            app,
            host=args.host,
            port=args.port,
            http="httptools",
            access_log=False,
            log_level="warning",
            timeout_graceful_shutdown=1,
        )


if __name__ == "__main__":
    main()
