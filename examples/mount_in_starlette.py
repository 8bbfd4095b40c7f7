"""Mount pushsvc in your own Starlette (or FastAPI) application under ``/push``.

    python examples/mount_in_starlette.py          # serves, checks itself, exits
    uvicorn examples.mount_in_starlette:app        # just serves

Run as a script it starts uvicorn on a free port, publishes through the mounted app and
reads the event back with a long-poll, then stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import time
from collections.abc import AsyncIterator

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

import pushsvc.server
from pushsvc import Settings
from pushsvc.app import create_app

# --8<-- [start:mount]
# Settings from PUSHSVC_* variables (or Settings(...) in code); with no secret and no
# API key configured, ephemeral ones are generated.
push = create_app(Settings.from_env())


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    # Starlette does not run a mounted app's lifespan: run pushsvc's (hub, backend) here.
    async with push.router.lifespan_context(push):
        yield


async def home(request: Request) -> PlainTextResponse:
    return PlainTextResponse("my application")


app = Starlette(
    routes=[Route("/", home), Mount("/push", app=push)],
    lifespan=lifespan,
)
# --8<-- [end:mount]


async def self_check(port: int) -> None:
    base = f"http://127.0.0.1:{port}"
    key = {"Authorization": f"Bearer {push.state.settings.api_keys[0]}"}
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        print("home", (await client.get("/")).text)
        ready = await client.get("/push/readyz")
        print("readyz", ready.status_code, ready.json()["status"])
        # an API key may read any channel: start a poll, then publish into it
        poll = asyncio.create_task(
            client.get("/push/v1/poll", params={"channel": "news", "timeout": 5}, headers=key)
        )
        await asyncio.sleep(0.3)
        published = await client.post(
            "/push/v1/publish", json={"channel": "news", "data": "mounted"}, headers=key
        )
        print("published", published.json()["id"])
        for event in (await poll).json()["events"]:
            print("polled", event["channel"], event["id"], event["data"])


async def sse_until_closed(port: int, opened: asyncio.Event) -> str:
    """Hold an SSE stream open; answer the server's ``close`` event at shutdown."""
    key = {"Authorization": f"Bearer {push.state.settings.api_keys[0]}"}
    url = f"http://127.0.0.1:{port}/push/v1/sse"
    async with (
        httpx.AsyncClient(timeout=10) as client,
        client.stream("GET", url, params={"channel": "news"}, headers=key) as response,
    ):
        opened.set()
        closing = False
        async for line in response.aiter_lines():
            if line == "event: close":
                closing = True
            elif closing and line.startswith("data: "):
                return line.removeprefix("data: ")
    return "stream ended without a close event"


async def main() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # --8<-- [start:serve]
    # A uvicorn.Config as `pushsvc serve` builds it: the lean WebSocket and HTTP protocols
    # (uvicorn's own if this uvicorn does not fit them), no ~300 KiB deflate state per
    # connection, frames up to the settings' max_frame_bytes; then uvicorn's options.
    config = pushsvc.server.config(
        app,
        push.state.settings,
        host="127.0.0.1",
        port=port,
        timeout_graceful_shutdown=5,
        log_level="warning",
    )
    # uvicorn waits for open responses before it shuts down, and an SSE stream never ends
    # by itself: GracefulServer ends pushsvc's sessions as soon as the shutdown starts.
    server = pushsvc.server.GracefulServer(config, push.state.hub)
    # Blocking, in one call: pushsvc.server.run(app, push.state.settings,
    #     hub=push.state.hub, host=..., port=...)
    # --8<-- [end:serve]
    serving = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 (uvicorn.Server has no "started" event)
        await asyncio.sleep(0.05)
    opened = asyncio.Event()
    stream = asyncio.create_task(sse_until_closed(port, opened))
    try:
        await self_check(port)
        await asyncio.wait_for(opened.wait(), 5)
    finally:
        started = time.monotonic()
        server.should_exit = True
        await serving
    print("sse closed", await stream)
    print("stopped in", "under a second" if time.monotonic() - started < 1 else "over a second")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
