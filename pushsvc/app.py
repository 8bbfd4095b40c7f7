"""``create_app(settings)``: the Starlette application.

State lives on ``app.state`` (settings, auth, backend, hub): no module-level singletons,
so several apps can live in one process and the app can be mounted in another
Starlette/FastAPI application.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
from collections.abc import AsyncIterator
from importlib import resources

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from pushsvc import api, openapi
from pushsvc.auth import Authenticator
from pushsvc.backends import Retention, open_backend
from pushsvc.exceptions import PushError
from pushsvc.hub import Hub
from pushsvc.logs import hand_off, install_redaction
from pushsvc.metrics import Metrics, metrics_endpoint
from pushsvc.problems import http_error_handler, push_error_handler, unexpected_error_handler
from pushsvc.ratelimit import RateLimiter
from pushsvc.settings import Settings
from pushsvc.transports.asgi import serve_endpoint
from pushsvc.transports.longpoll import PollTransport, serve_poll
from pushsvc.transports.sse import sse_endpoint
from pushsvc.transports.websocket import WebSocketTransport, serve_websocket

log = logging.getLogger("pushsvc")


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or Settings()
    if not settings.secrets or not settings.api_keys:
        settings, generated = settings.with_generated_credentials()
        if generated:
            log.warning("no secret/API key configured: generated ephemeral ones")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        install_redaction()
        await hub.start()
        try:
            yield
        finally:
            await hub.close()
            await app.state.auth.aclose()

    backend = open_backend(
        settings.backend_url,
        Retention(
            max_len=settings.retention_max_len,
            max_age=settings.retention_max_age,
            approximate=settings.retention_approximate,
            idempotency_ttl=settings.idempotency_ttl,
            presence_ttl=settings.presence_ttl,
        ),
    )
    metrics = Metrics(backend, settings)
    hub = Hub(backend, settings, metrics)
    routes = [
        Route("/v1/publish", api.PublishEndpoint(), methods=["POST"]),
        Route("/v1/negotiate", api.negotiate, methods=["POST"]),
        Route("/v1/sse", sse_endpoint, methods=["GET"]),
        Route("/v1/poll", PollTransport(), methods=["GET"]),
        WebSocketRoute("/v1/ws", WebSocketTransport()),
        Route("/v1/channels/{channel:path}/history", api.history, methods=["GET"]),
        Route("/v1/channels/{channel:path}/presence/stats", api.presence_stats, methods=["GET"]),
        Route("/v1/channels/{channel:path}/presence", api.presence, methods=["GET"]),
        Route("/healthz", api.healthz, methods=["GET"]),
        Route("/readyz", api.readyz, methods=["GET"]),
        Route(openapi.PATH, openapi.openapi_endpoint, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        _static_route("pushsvc.js", "application/javascript"),
        _static_route("pushsvc.d.ts", "application/typescript"),
    ]
    middleware = []
    if settings.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.cors_origins),
                allow_methods=["GET", "POST"],
                allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
                allow_credentials=settings.cors_allow_credentials,
                max_age=600,
            )
        )
    app = PushApp(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={
            PushError: push_error_handler,
            HTTPException: http_error_handler,
            Exception: unexpected_error_handler,
        },
    )
    app.direct_http = not settings.cors_origins
    app.state.settings = settings
    app.state.auth = Authenticator.from_settings(settings)
    app.state.backend = backend
    app.state.hub = hub
    app.state.metrics = metrics
    app.state.publish_limiter = RateLimiter(settings.publish_rate, settings.publish_burst)
    app.state.api_key_limiter = RateLimiter(
        settings.api_key_publish_rate, settings.api_key_publish_burst
    )
    return app


class PushApp(Starlette):
    """Starlette, with the subscription endpoints and the publish dispatched before the
    middleware stack.

    A WebSocket, an SSE stream or a pending long-poll otherwise keeps a frame of every
    middleware and of the router alive for as long as it is open (2-3 KB each), and a
    poll or a publish pays for the whole stack each time (about half of a publish's
    CPU). None of them needs it: they answer their own errors (problem bodies, close
    codes). SSE, long-poll and publish go through the stack when CORS is configured,
    which they need; every other request takes the normal route."""

    direct_http = True
    _direct: dict[tuple[str, str], ASGIApp] = {
        ("GET", "/v1/sse"): functools.partial(serve_endpoint, sse_endpoint),
        ("GET", "/v1/poll"): serve_poll,
        ("POST", "/v1/publish"): api.PublishEndpoint(),
    }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "websocket":
            if _route_path(scope) == "/v1/ws":
                scope["app"] = self
                await serve_websocket(scope, receive, send)
                return
        elif kind == "http" and self.direct_http:
            endpoint = self._direct.get((scope["method"], _route_path(scope)))
            if endpoint is not None:
                scope["app"] = self
                await endpoint(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def _route_path(scope: Scope) -> str:
    """The path inside this app when it is mounted under a prefix (``root_path``), as
    Starlette's router computes it."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] == "/":
        return path[len(root) :]
    return path


def _static_route(name: str, media_type: str) -> Route:
    """The browser client and its types, read once from the package (works from a wheel)."""
    body = (resources.files("pushsvc") / "static" / name).read_bytes()
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    headers = {"ETag": etag, "Cache-Control": "no-cache"}

    async def endpoint(request: Request) -> Response:
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        return Response(body, media_type=media_type, headers=headers)

    return Route("/" + name, endpoint, methods=["GET"])


def app_from_env() -> Starlette:
    """Factory for ``uvicorn --factory pushsvc.app:app_from_env`` (and ``--workers``):
    called once uvicorn has set its logging up, it puts the log writes on a thread
    (``pushsvc.logs.hand_off``), as ``pushsvc.server.run`` does."""
    hand_off()
    return create_app(Settings.from_env())
