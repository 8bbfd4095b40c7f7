"""Serving pushsvc with uvicorn: lean protocols, a graceful server, ``run``.

``run(app, settings)`` is what ``pushsvc serve`` does; ``config()`` and ``GracefulServer``
are its parts, for an application that mounts pushsvc and serves itself
(``examples/mount_in_starlette.py``).

The lean protocols. uvicorn keeps the handshake's request and response objects (their
header structures are about 2 KB) on its ``websockets-sansio`` protocol for the whole life
of the connection, though nothing reads them once the upgrade is answered; the
``websockets`` parser keeps the request too, in its generator's frame, and the ASGI scope
keeps the header list. For a push server, whose connections are many and long-lived, that
is a quarter of the memory of an idle WebSocket. ``LeanWebSocketProtocol`` drops them once
``websocket.accept`` has been sent (the scope's ``headers`` become an empty list: read what
you need before accepting, as pushsvc does). It also replaces the receive queue (an
``asyncio.Queue``: three deques, about 2 KB) and the flow-control event (a deque, 0.7 KB)
with list-based equivalents that allocate nothing while idle. Everything else is uvicorn's.

It also offers the app a synchronous write of ready text messages, as the ASGI scope
extension ``WRITE_TEXTS`` (``pushsvc.protocol.asgi_extensions``): the hub's writer
(``pushsvc.writer``) calls it with the UTF-8 payloads of one or more text
messages, and it frames them (a server's frames are not masked; no extension is negotiated
without deflate) and hands them to the transport in ONE ``write``. It declines (returns
False) whenever the normal ``send`` must decide instead: the handshake not done, a close
received, the socket pushing back (flow control), an extension negotiated; it returns None
once this side has closed the connection itself (uvicorn's ping timed out), where ``send``
would raise a RuntimeError. That path skips only the per-message bookkeeping of ``send``
and of the ``websockets`` protocol, which keeps none for outgoing data frames; what goes on
the wire is the same.

``LeanHttpToolsProtocol`` does the same for uvicorn's ``httptools`` HTTP protocol, which
an SSE stream or a pending long-poll holds as long as it is open: the request's
``message_event`` and the flow control's writable event become ``LeanEvent``, and the
pipelining queue (a deque, 0.7 KB, almost always empty) a list-based one.

They reach into uvicorn's internals, which a uvicorn release may change. ``protocols()``
names them to uvicorn as import strings (``WS_PROTOCOL``, ``HTTP_PROTOCOL``: uvicorn's
``--ws``/``--http`` take these as they take their own names) only after checking that the
installed uvicorn's protocols still have what they replace; otherwise it logs why and
names uvicorn's stock ones (``STOCK_WS_PROTOCOL``, ``STOCK_HTTP_PROTOCOL``), which serve
the same bytes with more memory per connection. With plain uvicorn, pass ``--ws
pushsvc.server:LeanWebSocketProtocol --http pushsvc.server:LeanHttpToolsProtocol``.

Compression (``ws_compression``, off by default): uvicorn's ``ws_per_message_deflate``
is set from it. uvicorn's own deflate keeps a compressor (and an inflater) per connection
and compresses every message for every connection; its stock ``websockets`` protocol does
so at zlib defaults, about 300 KiB per connection. When it is on, ``LeanWebSocketProtocol``
negotiates permessage-deflate its own way instead (``SharedDeflateFactory``):
``server_no_context_takeover``, so that the app compresses an event ONCE and the same
frame goes to every connection that negotiated it (``pushsvc.protocol.deflate``), written
through the ``WRITE_FRAMES`` extension it offers only on such a connection; and
``client_no_context_takeover`` with ``client_max_window_bits`` bounded where the client
offers it, so that the inflater of a client's message (``websockets``', bounded by
``ws_max_size``: a bomb closes 1009) lives for that message only. An idle connection
holds no compression state at all.

uvicorn's protocol pings (every 20 s, closing a connection whose pong is 20 s late)
find dead peers; pushsvc's heartbeats are app frames that browsers and proxies see.

Shutdown (a drain): uvicorn waits for every open HTTP response before it runs the
lifespan shutdown, and an SSE stream never ends by itself. ``GracefulServer`` therefore
stops listening (a new connection is refused: a proxy passes it to another instance) and
drains the hub at once (``Hub.drain``: WebSockets close 1012 "service restart", SSE
streams end with a ``close`` event carrying 1012, pending long-polls answer with what they
have and their cursor; the clients resume on another instance at once), then lets
uvicorn wait up to ``timeout_graceful_shutdown`` (``--graceful-timeout``) for the
connections to end before it cancels what is left. The hub's writes are flushed before
uvicorn's own shutdown of each connection, which would otherwise close a WebSocket with
its own 1012 ahead of the events still queued for it (docs/how-to/drain.md).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import socket
import struct
import time
from collections.abc import Sequence
from typing import Any, Generic, Protocol, TypeVar

import uvicorn
from starlette.types import ASGIApp
from websockets.exceptions import NegotiationError
from websockets.extensions.base import Extension
from websockets.extensions.permessage_deflate import (
    PerMessageDeflate,
    ServerPerMessageDeflateFactory,
)
from websockets.protocol import State
from websockets.typing import ExtensionParameter

from pushsvc import logs
from pushsvc.protocol.asgi_extensions import WRITE_FRAMES, WRITE_TEXTS
from pushsvc.protocol.deflate import CLIENT_MAX_WINDOW_BITS, SERVER_WINDOW_BITS
from pushsvc.settings import Settings

log = logging.getLogger("pushsvc.server")


class _Unavailable:
    """Stands in for a uvicorn protocol class that did not import: ``protocols()`` then
    names uvicorn's stock protocols instead, and naming the lean one anyway fails here."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError(f"uvicorn's protocol did not import: {_IMPORT_ERRORS}")


_IMPORT_ERRORS: dict[str, str] = {}
try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError as exc:  # httptools missing, or uvicorn moved the module
    _IMPORT_ERRORS["http"] = str(exc)
    HttpToolsProtocol = _Unavailable  # type: ignore[misc,assignment]
try:
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
except ImportError as exc:
    _IMPORT_ERRORS["ws"] = str(exc)
    WebSocketsSansIOProtocol = _Unavailable  # type: ignore[misc,assignment]

__all__ = [
    "HTTP_PROTOCOL",
    "STOCK_HTTP_PROTOCOL",
    "STOCK_WS_PROTOCOL",
    "WS_PROTOCOL",
    "GracefulServer",
    "LeanHttpToolsProtocol",
    "LeanWebSocketProtocol",
    "SharedDeflateFactory",
    "config",
    "protocols",
    "run",
    "uvicorn_options",
]

# import strings, as uvicorn's own registry (uvicorn.config.WS_PROTOCOLS, HTTP_PROTOCOLS)
# maps its names to classes, resolved by uvicorn when it loads its config
WS_PROTOCOL = "pushsvc.server:LeanWebSocketProtocol"
HTTP_PROTOCOL = "pushsvc.server:LeanHttpToolsProtocol"
# uvicorn's names for the protocols the lean ones build on
STOCK_WS_PROTOCOL = "websockets-sansio"
STOCK_HTTP_PROTOCOL = "httptools"


T = TypeVar("T")


class LeanQueue(Generic[T]):
    """The part of ``asyncio.Queue`` uvicorn uses (unbounded, one consumer): a list and
    at most one waiting future."""

    __slots__ = ("_getter", "_items")

    def __init__(self) -> None:
        self._items: list[T] = []
        self._getter: asyncio.Future[None] | None = None

    def put_nowait(self, item: T) -> None:
        self._items.append(item)
        getter = self._getter
        if getter is not None and not getter.done():
            getter.set_result(None)

    async def get(self) -> T:
        while not self._items:
            getter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._getter = getter
            try:
                await getter
            finally:
                self._getter = None
        return self._items.pop(0)

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items)


class LeanEvent:
    """``asyncio.Event`` without the deque it allocates up front."""

    __slots__ = ("_value", "_waiters")

    def __init__(self) -> None:
        self._value = False
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._value

    def set(self) -> None:
        self._value = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._value = False

    async def wait(self) -> bool:
        if self._value:
            return True
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)
        return True


class LeanDeque(Generic[T]):
    """The part of ``collections.deque`` uvicorn's pipelining queue uses; allocates
    nothing while empty."""

    __slots__ = ("_items",)

    def __init__(self) -> None:
        self._items: list[T] | None = None

    def appendleft(self, item: T) -> None:
        if self._items is None:
            self._items = []
        self._items.insert(0, item)

    def pop(self) -> T:
        if not self._items:
            raise IndexError("pop from an empty deque")
        item = self._items.pop()
        if not self._items:
            self._items = None
        return item

    def __len__(self) -> int:
        return len(self._items) if self._items else 0

    def __bool__(self) -> bool:
        return bool(self._items)


class LeanHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pipeline = LeanDeque()  # type: ignore[assignment]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        flow = getattr(self, "flow", None)
        if flow is not None and isinstance(
            getattr(flow, "_is_writable_event", None), asyncio.Event
        ):
            writable = LeanEvent()
            if flow._is_writable_event.is_set():
                writable.set()
            flow._is_writable_event = writable

    def on_headers_complete(self) -> None:
        before = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        # a new request's cycle, whose task has not run yet: nothing waits on the event
        if cycle is not before and cycle is not None:
            event = cycle.message_event
            if isinstance(event, asyncio.Event) and not event.is_set():
                cycle.message_event = LeanEvent()  # type: ignore[assignment]


class SharedDeflateFactory(ServerPerMessageDeflateFactory):
    """permessage-deflate as pushsvc negotiates it: the server's messages without context
    takeover (each inflates on its own, so one compressed frame serves every connection),
    the client's too (its inflater is built per message), the client's window at most
    ``CLIENT_MAX_WINDOW_BITS`` where it offers the parameter. A client that asks the
    server for a window under ``SERVER_WINDOW_BITS`` is served without compression."""

    def __init__(self) -> None:
        super().__init__(
            server_no_context_takeover=True,
            client_no_context_takeover=True,
            client_max_window_bits=CLIENT_MAX_WINDOW_BITS,
        )

    def process_request_params(
        self, params: Sequence[ExtensionParameter], accepted_extensions: Sequence[Extension]
    ) -> tuple[list[ExtensionParameter], PerMessageDeflate]:
        response, extension = super().process_request_params(params, accepted_extensions)
        if extension.local_max_window_bits < SERVER_WINDOW_BITS:
            raise NegotiationError(
                f"server_max_window_bits={extension.local_max_window_bits}: the shared "
                f"frames need {SERVER_WINDOW_BITS}"
            )
        return response, extension


_SHARED_DEFLATE = [SharedDeflateFactory()]  # stateless: one list for every connection


class LeanWebSocketProtocol(WebSocketsSansIOProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue = LeanQueue()  # type: ignore[assignment]
        writable = LeanEvent()
        writable.set()
        self.writable = writable  # type: ignore[assignment]
        if self.config.ws_per_message_deflate:
            self.conn.available_extensions = _SHARED_DEFLATE

    def handle_connect(self, event: object) -> None:
        super().handle_connect(event)  # type: ignore[arg-type]
        scope = getattr(self, "scope", None)
        if scope is not None:  # the app's task has not run yet: it will see this
            scope["extensions"][WRITE_TEXTS] = self.write_texts
            if self.conn.extensions:  # negotiated: the only one offered is SharedDeflate
                scope["extensions"][WRITE_FRAMES] = self.write_frames

    def write_texts(self, payloads: Sequence[bytes]) -> bool | None:
        """Write each payload as one unfragmented text message, all in one transport
        write. False (nothing written) when ``send`` must handle it; None when this
        side already closed the connection (a protocol ping timed out, say), where
        ``send`` would raise: nothing more can go out. No payloads: only the check."""
        if self.close_sent or self.disconnected:
            return None
        if (
            not self.handshake_complete
            or not self.writable.is_set()
            or self.conn.state is not State.OPEN
            or self.conn.extensions
            or self.conn.expect_continuation_frame
        ):
            return False
        if not payloads:
            return True
        parts: list[bytes] = []
        for data in payloads:
            n = len(data)
            if n < 126:
                parts.append(bytes((0x81, n)))
            elif n < 65536:
                parts.append(struct.pack("!BBH", 0x81, 126, n))
            else:
                parts.append(struct.pack("!BBQ", 0x81, 127, n))
            parts.append(data)
        self.transport.write(b"".join(parts))
        return True

    def write_frames(self, frames: Sequence[bytes]) -> bool | None:
        """Write whole, encoded frames (``pushsvc.protocol.deflate``'s compressed ones,
        plain ones) in one transport write; offered only where ``SharedDeflateFactory``
        was negotiated. Declines as ``write_texts`` does, an extension aside."""
        if self.close_sent or self.disconnected:
            return None
        if (
            not self.handshake_complete
            or not self.writable.is_set()
            or self.conn.state is not State.OPEN
            or self.conn.expect_continuation_frame
        ):
            return False
        if frames:
            self.transport.write(b"".join(frames))
        return True

    def start_keepalive(self) -> None:
        # uvicorn calls this once, right after it wrote the accepting response; hooking
        # here rather than in ``send`` keeps the per-message path exactly uvicorn's.
        request = self.request
        if request is not None:
            request.headers.clear()  # also held by the parser generator's frame
        scope = getattr(self, "scope", None)
        if scope is not None:
            scope["headers"] = []
        self.request = self.response = None  # type: ignore[assignment]
        super().start_keepalive()


# --- which protocols: the lean ones when this uvicorn has what they replace -----------------


def _probe(base: type[Any]) -> Any:
    """An unconnected instance of a uvicorn protocol class, to look at its state."""
    from uvicorn.server import ServerState

    async def app(scope: Any, receive: Any, send: Any) -> None:  # never called
        raise NotImplementedError

    loop = asyncio.new_event_loop()
    try:
        probe = uvicorn.Config(app, http="h11", ws="none", lifespan="off", log_config=None)
        return base(probe, ServerState(), {}, _loop=loop)
    finally:
        loop.close()


def _missing(obj: Any, names: Sequence[str]) -> str | None:
    absent = [name for name in names if not hasattr(obj, name)]
    return ", ".join(absent) + " missing" if absent else None


def _ws_misfit(base: type[Any]) -> str | None:
    """Why ``LeanWebSocketProtocol`` cannot build on ``base`` (None: it can)."""
    if base is _Unavailable:
        return _IMPORT_ERRORS.get("ws", "not importable")
    reason = _missing(base, ("handle_connect", "start_keepalive", "send"))
    if reason:
        return f"{base.__qualname__}: {reason}"
    # handle_connect keeps the handshake where start_keepalive drops it
    kept = set(base.handle_connect.__code__.co_names)
    if not {"request", "response"} <= kept:
        return f"{base.__qualname__}.handle_connect keeps no request/response"
    try:
        proto = _probe(base)
    except Exception as exc:
        return f"{base.__qualname__}() failed: {exc!r}"
    if not isinstance(getattr(proto, "queue", None), asyncio.Queue):
        return f"{base.__qualname__}.queue is not an asyncio.Queue"
    if not isinstance(getattr(proto, "writable", None), asyncio.Event):
        return f"{base.__qualname__}.writable is not an asyncio.Event"
    state = ("conn", "close_sent", "disconnected", "handshake_complete", "transport")
    reason = _missing(proto, state) or _missing(
        proto.conn,
        ("state", "extensions", "available_extensions", "expect_continuation_frame"),
    )
    return f"{base.__qualname__}: {reason}" if reason else None


def _http_misfit(base: type[Any]) -> str | None:
    """Why ``LeanHttpToolsProtocol`` cannot build on ``base`` (None: it can)."""
    if base is _Unavailable:
        return _IMPORT_ERRORS.get("http", "not importable")
    reason = _missing(base, ("connection_made", "on_headers_complete"))
    if reason:
        return f"{base.__qualname__}: {reason}"
    try:
        proto = _probe(base)
    except Exception as exc:
        return f"{base.__qualname__}() failed: {exc!r}"
    if not isinstance(getattr(proto, "pipeline", None), collections.deque):
        return f"{base.__qualname__}.pipeline is not a deque"
    reason = _missing(proto, ("cycle", "flow"))
    return f"{base.__qualname__}: {reason}" if reason else None


@functools.cache
def protocols() -> tuple[str, str]:
    """The ``(ws, http)`` protocols to give uvicorn: the lean ones, each unless the
    installed uvicorn's internals differ from what it builds on (then uvicorn's own, with
    a warning saying why)."""
    ws, http = WS_PROTOCOL, HTTP_PROTOCOL
    reason = _ws_misfit(WebSocketsSansIOProtocol)
    if reason is not None:
        ws = "auto" if "ws" in _IMPORT_ERRORS else STOCK_WS_PROTOCOL
        log.warning(
            "WebSockets served by uvicorn's %r protocol: pushsvc's lean one does not fit "
            "this uvicorn %s (%s)",
            ws,
            uvicorn.__version__,
            reason,
        )
    reason = _http_misfit(HttpToolsProtocol)
    if reason is not None:
        http = "auto" if "http" in _IMPORT_ERRORS else STOCK_HTTP_PROTOCOL
        log.warning(
            "HTTP served by uvicorn's %r protocol: pushsvc's lean one does not fit "
            "this uvicorn %s (%s)",
            http,
            uvicorn.__version__,
            reason,
        )
    return ws, http


# --- serving ---------------------------------------------------------------------------------


def uvicorn_options(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.Config`` (or ``uvicorn.run``) as ``pushsvc serve``
    gives them: ``protocols()``, permessage-deflate only with ``settings.ws_compression``,
    frames up to ``settings.max_frame_bytes``, the access log only with
    ``settings.access_log``; ``overrides`` (host, port, ...) win."""
    ws, http = protocols()
    options: dict[str, Any] = {
        "ws": ws,
        "http": http,
        "ws_per_message_deflate": settings.ws_compression,
        "ws_max_size": settings.max_frame_bytes,
        "access_log": settings.access_log,
    }
    options.update(overrides)
    return options


def config(app: ASGIApp, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """A ``uvicorn.Config`` serving ``app`` with ``uvicorn_options(settings, ...)``."""
    return uvicorn.Config(app, **uvicorn_options(settings, **overrides))


class SessionCloser(Protocol):
    async def drain(self) -> None: ...


class GracefulServer(uvicorn.Server):
    """uvicorn's server, draining pushsvc's sessions as soon as the shutdown starts
    (SIGTERM, SIGINT): see the module docstring."""

    def __init__(self, config: uvicorn.Config, hub: SessionCloser) -> None:
        super().__init__(config)
        self.hub = hub

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()  # no new connection may start a stream from here on
        started = time.monotonic()
        await self.hub.drain()
        await super().shutdown(sockets)
        log.info("drained and shut down in %.3f s", time.monotonic() - started)


def run(
    app: ASGIApp, settings: Settings, *, hub: SessionCloser | None = None, **overrides: Any
) -> bool:
    """Serve ``app`` until a signal stops it, as ``pushsvc serve`` does: a
    ``GracefulServer`` with ``config(app, settings, **overrides)``. ``hub``: the one whose
    sessions end at shutdown, by default ``app.state.hub`` (an app from ``create_app``;
    when pushsvc is mounted, pass the pushsvc app's ``state.hub``). False when the server
    did not start (its address in use, say)."""
    if hub is None:
        hub = app.state.hub  # type: ignore[attr-defined]
    server = GracefulServer(config(app, settings, **overrides), hub)
    logs.hand_off()  # after uvicorn's Config set its handlers up
    server.run()
    return bool(server.started)
