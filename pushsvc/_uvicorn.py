"""uvicorn's ``websockets-sansio`` WebSocket protocol, leaner per connection.

uvicorn keeps the handshake's request and response objects (their header structures
are about 2 KB) on the protocol for the whole life of the connection, though nothing
reads them once the upgrade is answered; the ``websockets`` parser keeps the request too,
in its generator's frame, and the ASGI scope keeps the header list. For a push server,
whose connections are many and long-lived, that is a quarter of the memory of an idle
WebSocket. This subclass drops them once ``websocket.accept`` has been sent (the scope's
``headers`` become an empty list: read what you need before accepting, as pushsvc does).
It also replaces the receive queue (an ``asyncio.Queue``: three deques, about 2 KB) and
the flow-control event (a deque, 0.7 KB) with list-based equivalents that allocate
nothing while idle. Everything else is uvicorn's.

It also offers the app a synchronous write of ready text messages, as the ASGI scope
extension ``pushsvc.write_texts``: the hub's writer (``pushsvc.transports._writer``) calls
it with the UTF-8 payloads of one or more text messages, and it frames them (a server's
frames are not masked; no extension is negotiated without deflate) and hands them to the
transport in ONE ``write``. It declines (returns False) whenever the normal ``send`` must
decide instead: the handshake not done, a close received, the socket pushing back (flow
control), an extension negotiated; it returns None once this side has closed the
connection itself (uvicorn's ping timed out), where ``send`` would raise a RuntimeError.
That path skips only the per-message bookkeeping of ``send`` and of the ``websockets``
protocol, which keeps none for outgoing data frames; what goes on the wire is the same.

``LeanHttpToolsProtocol`` does the same for uvicorn's ``httptools`` HTTP protocol, which
an SSE stream or a pending long-poll holds as long as it is open: the request's
``message_event`` and the flow control's writable event become ``LeanEvent``, and the
pipelining queue (a deque, 0.7 KB, almost always empty) a list-based one.

``pushsvc serve`` runs uvicorn with ``ws=WS_PROTOCOL, http=HTTP_PROTOCOL``; with plain
uvicorn, pass ``--ws pushsvc._uvicorn:LeanWebSocketProtocol --http
pushsvc._uvicorn:LeanHttpToolsProtocol``.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

WRITE_TEXTS = "pushsvc.write_texts"  # the ASGI scope extension

WS_PROTOCOL = "pushsvc._uvicorn:LeanWebSocketProtocol"
HTTP_PROTOCOL = "pushsvc._uvicorn:LeanHttpToolsProtocol"


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


class LeanWebSocketProtocol(WebSocketsSansIOProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue = LeanQueue()  # type: ignore[assignment]
        writable = LeanEvent()
        writable.set()
        self.writable = writable  # type: ignore[assignment]

    def handle_connect(self, event: object) -> None:
        super().handle_connect(event)  # type: ignore[arg-type]
        scope = getattr(self, "scope", None)
        if scope is not None:  # the app's task has not run yet: it will see this
            scope["extensions"][WRITE_TEXTS] = self.write_texts

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
