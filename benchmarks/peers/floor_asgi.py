"""The request-path floor: a raw ASGI app on uvicorn + httptools, no framework, no log.

    python benchmarks/peers/floor_asgi.py --host 127.0.0.1 --port 8010

What any Python push service has to do for a request, and nothing else:

- ``POST /publish``: read the body, ``json.loads`` it, answer the event ID(s) as JSON:
  ``{"channel": …, "id": "<n>-0"}`` for one message, ``{"results": [...]}`` for a batch
  (``{"messages": [...]}``), as pushsvc's ``POST /v1/publish`` answers;
- ``GET /poll?channel=C``: answer one event in the shape of pushsvc's long-poll answer
  (``{"events": [{"type": "event", ...}], "cursor": "..."}``), JSON-encoded per request;
- ``GET /healthz``: 200 once ready.

uvicorn runs it as ``pushsvc serve`` runs pushsvc, less what costs per request: httptools,
the default loop (uvloop when installed), no access log, log level warning. Used by
``requests.py`` (the request-path benchmark).
"""

from __future__ import annotations

import argparse
import contextlib
import json
from typing import Any
from urllib.parse import parse_qsl

import uvicorn

_JSON = [(b"content-type", b"application/json")]
_CURSOR = "c1" + "A" * 20  # a one-channel cursor's length; its value does not matter here
_DATA = {"user": "alice", "text": "hello from the floor"}


class Floor:
    def __init__(self) -> None:
        self.count = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await _lifespan(receive, send)
            return
        path = scope["path"]
        if path == "/publish" and scope["method"] == "POST":
            body = await _read(receive)
            await _answer(send, 200, json.dumps(self.publish(json.loads(body))).encode())
        elif path == "/poll":
            query = dict(parse_qsl(scope["query_string"].decode("latin-1")))
            await _answer(send, 200, json.dumps(self.poll(query.get("channel", ""))).encode())
        elif path == "/healthz":
            await _answer(send, 200, b"ok")
        else:
            await _answer(send, 404, b'{"detail":"not found"}')

    def publish(self, body: Any) -> dict[str, Any]:
        if isinstance(body, dict) and "messages" in body:
            return {"results": [self._id(m) for m in body["messages"]]}
        return self._id(body)

    def _id(self, message: dict[str, Any]) -> dict[str, Any]:
        self.count += 1
        return {"channel": message["channel"], "id": f"{self.count}-0"}

    def poll(self, channel: str) -> dict[str, Any]:
        event = {"type": "event", "channel": channel, "event": "message", "id": "1-0"}
        return {"events": [event | {"data": _DATA}], "cursor": _CURSOR}


async def _read(receive: Any) -> bytes:
    body = b""
    while True:
        message = await receive()
        chunk: bytes = message.get("body", b"")
        body += chunk
        if not message.get("more_body"):
            return body


async def _answer(send: Any, status: int, body: bytes) -> None:
    headers = [*_JSON, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8010)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.run(
            Floor(),
            host=args.host,
            port=args.port,
            http="httptools",
            access_log=False,
            log_level="warning",
            timeout_graceful_shutdown=1,
        )


if __name__ == "__main__":
    main()
