"""A small chat with presence: pushsvc mounted under ``/push`` beside the page and a token
endpoint, in one Starlette application.

    python examples/chat.py --port 8000 --secret dev-secret
    # then open, in two browsers (or a normal and a private window):
    #   http://127.0.0.1:8000/?user=alice&name=Alice
    #   http://127.0.0.1:8000/?user=bob&name=Bob

Each page shows the messages of ``chat:lobby`` and who is in it, with a tab count.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse
from starlette.routing import Mount, Route

from pushsvc import Settings
from pushsvc.app import create_app
from pushsvc.server import HTTP_PROTOCOL, WS_PROTOCOL, GracefulServer

PAGE = Path(__file__).with_name("chat.html")


# --8<-- [start:app]
def chat_app(secret: str) -> Starlette:
    push = create_app(Settings(secrets=(secret,)))
    auth = push.state.auth  # signs with the first secret, as pushsvc verifies

    async def page(request: Request) -> FileResponse:
        return FileResponse(PAGE, media_type="text/html")

    async def token(request: Request) -> PlainTextResponse:
        # A DEMO: anyone may ask for a token of any user. A real application takes the
        # subject from its own login session and never from the query string.
        user = request.query_params.get("user", "")
        name = request.query_params.get("name") or user
        if not user or len(user) > 64 or len(name) > 64:
            return PlainTextResponse("user (1 to 64 characters) is required", 400)
        grants = ("chat:*",)
        issued = auth.issue(
            user,
            subscribe=grants,
            publish=grants,
            presence=grants,  # may see and be seen in the member list
            info={"name": name},  # what the other members see of this user
            ttl=3600,
        )
        return PlainTextResponse(issued, headers={"Cache-Control": "no-store"})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Starlette does not run a mounted app's lifespan: run pushsvc's (hub, backend) here.
        async with push.router.lifespan_context(push):
            yield

    app = Starlette(
        routes=[Route("/", page), Route("/token", token), Mount("/push", app=push)],
        lifespan=lifespan,
    )
    app.state.push = push
    return app


# --8<-- [end:app]


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--secret", required=True, help="token signing secret")
    args = parser.parse_args(argv)
    app = chat_app(args.secret)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        ws=WS_PROTOCOL,
        http=HTTP_PROTOCOL,
        ws_per_message_deflate=False,
        timeout_graceful_shutdown=5,
        log_level="warning",
    )
    print(f"chat on http://{args.host}:{args.port}/?user=alice&name=Alice", flush=True)
    GracefulServer(config, app.state.push.state.hub).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
