"""pushsvc.server's list-based stand-ins for uvicorn's asyncio.Queue, asyncio.Event and
deque behave as what they replace, and the lean protocols still serve pipelined HTTP and
WebSockets through a real server; where uvicorn's internals differ from what the lean
protocols build on, pushsvc.server says why and serves with uvicorn's own protocols."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from pushsvc import server as pushsvc_server
from pushsvc.app import create_app
from pushsvc.auth import Principal
from pushsvc.backends.memory import MemoryBackend
from pushsvc.hub import Hub
from pushsvc.protocol.wires import WebSocketWire
from pushsvc.server import (
    HTTP_PROTOCOL,
    STOCK_HTTP_PROTOCOL,
    STOCK_WS_PROTOCOL,
    WS_PROTOCOL,
    GracefulServer,
    LeanDeque,
    LeanEvent,
    LeanQueue,
    protocols,
)
from pushsvc.session import Session
from pushsvc.settings import Settings
from pushsvc.transports.websocket import WebSocketWriter
from tests.fixtures_server import Server, free_port


@pytest.mark.asyncio
async def test_lean_queue_is_fifo_and_wakes_its_consumer() -> None:
    q: LeanQueue[int] = LeanQueue()
    assert q.empty() and q.qsize() == 0
    q.put_nowait(1)
    q.put_nowait(2)
    assert await q.get() == 1 and q.qsize() == 1
    assert await q.get() == 2 and q.empty()
    getter = asyncio.ensure_future(q.get())
    await asyncio.sleep(0)
    assert not getter.done()
    q.put_nowait(3)
    assert await asyncio.wait_for(getter, 1) == 3
    # a cancelled get leaves nothing behind: the next put is there for the next get
    getter = asyncio.ensure_future(q.get())
    await asyncio.sleep(0)
    getter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await getter
    q.put_nowait(4)
    assert await asyncio.wait_for(q.get(), 1) == 4


@pytest.mark.asyncio
async def test_lean_event_wakes_every_waiter_and_survives_cancellation() -> None:
    e = LeanEvent()
    assert not e.is_set()
    waiters = [asyncio.ensure_future(e.wait()) for _ in range(3)]
    cancelled = asyncio.ensure_future(e.wait())
    await asyncio.sleep(0)
    cancelled.cancel()
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)
    e.set()
    assert await asyncio.wait_for(asyncio.gather(*waiters), 1) == [True, True, True]
    assert cancelled.cancelled()
    assert await e.wait() is True  # set: returns at once
    e.clear()
    late = asyncio.ensure_future(e.wait())
    await asyncio.sleep(0)
    assert not late.done()
    e.set()
    assert await asyncio.wait_for(late, 1) is True


def test_lean_deque_pops_in_pipelining_order() -> None:
    d: LeanDeque[str] = LeanDeque()
    assert not d and len(d) == 0
    d.appendleft("first")
    d.appendleft("second")
    assert d and len(d) == 2
    assert d.pop() == "first"
    assert d.pop() == "second"
    assert not d
    with pytest.raises(IndexError):
        d.pop()


def test_pipelined_requests_are_answered_in_order(server: Server) -> None:
    requests = b"".join(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
        for path in ("/healthz", "/nope", "/healthz")
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(requests)
        data = b""
        while data.count(b"HTTP/1.1 ") < 3 or not data.endswith(b"}"):
            chunk = s.recv(65536)
            assert chunk, data
            data += chunk
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", data)
    assert statuses == [b"200", b"404", b"200"]


@pytest.mark.asyncio
async def test_writer_stops_quietly_when_the_server_closed_the_socket_itself(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """uvicorn closes a WebSocket whose ping went unanswered; until the disconnect
    reaches the app, ``send`` would raise a RuntimeError. The lean protocol's
    ``write_texts`` says None then, and the writer stops without an error."""
    hub = Hub(MemoryBackend(), Settings(backend_url="memory://"))
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)
        raise RuntimeError("Unexpected ASGI message 'websocket.send', after sending close")

    answers: list[bool | None] = [True, None]
    written: list[list[bytes]] = []

    def write_texts(payloads: list[bytes]) -> bool | None:
        written.append(payloads)
        return answers.pop(0)

    session = Session(hub, Principal("t", subscribe=("*",)), WebSocketWire())
    session.writer = writer = WebSocketWriter(send, hub.metrics.websocket, False, write_texts)
    session.queue.append('{"type":"event","n":1}')
    writer.flush(session)
    assert written == [[b'{"type":"event","n":1}']] and not session.queue
    session.queue.append('{"type":"event","n":2}')
    with caplog.at_level(logging.DEBUG, logger="pushsvc"):
        writer.flush(session)
        assert session.finished and session.close_code is not None and not session.queue
        session.queue.append('{"type":"event","n":3}')
        writer.flush(session)  # nothing more is tried
    assert sent == [] and len(written) == 2
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# --- protocols(): the lean ones where they fit, uvicorn's own where they do not ------------


class ListQueueWS(WebSocketsSansIOProtocol):
    """A uvicorn whose receive queue is no longer an asyncio.Queue."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue = []  # type: ignore[assignment]


class ForgetfulWS(WebSocketsSansIOProtocol):
    """A uvicorn that no longer keeps the handshake on the protocol."""

    def handle_connect(self, event: Any) -> None:
        pass


class ListPipelineHTTP(HttpToolsProtocol):
    """A uvicorn whose pipelining queue is no longer a deque."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pipeline = []  # type: ignore[assignment]


@pytest.fixture
def fresh_protocols() -> Iterator[None]:
    protocols.cache_clear()
    yield
    protocols.cache_clear()


def test_the_installed_uvicorn_fits_the_lean_protocols(
    fresh_protocols: None, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="pushsvc.server"):
        assert protocols() == (WS_PROTOCOL, HTTP_PROTOCOL)
    assert not caplog.records
    options = pushsvc_server.uvicorn_options(Settings(max_frame_bytes=1234), port=1)
    assert options == {
        "ws": WS_PROTOCOL,
        "http": HTTP_PROTOCOL,
        "ws_per_message_deflate": False,
        "ws_max_size": 1234,
        "access_log": False,
        "port": 1,
    }


def test_changed_uvicorn_internals_are_named() -> None:
    assert pushsvc_server._ws_misfit(WebSocketsSansIOProtocol) is None
    assert pushsvc_server._http_misfit(HttpToolsProtocol) is None
    assert "queue is not an asyncio.Queue" in (pushsvc_server._ws_misfit(ListQueueWS) or "")
    assert "keeps no request/response" in (pushsvc_server._ws_misfit(ForgetfulWS) or "")
    assert "pipeline is not a deque" in (pushsvc_server._http_misfit(ListPipelineHTTP) or "")
    assert "start_keepalive" in (pushsvc_server._ws_misfit(asyncio.Protocol) or "")


def wait_started(server: GracefulServer, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not server.started:  # uvicorn.Server has no "started" event
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)  # poll: until the server started, against the deadline


@pytest.mark.asyncio
async def test_a_uvicorn_that_does_not_fit_is_served_with_its_own_protocols(
    fresh_protocols: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(pushsvc_server, "WebSocketsSansIOProtocol", ListQueueWS)
    monkeypatch.setattr(pushsvc_server, "HttpToolsProtocol", ListPipelineHTTP)
    with caplog.at_level(logging.WARNING, logger="pushsvc.server"):
        assert protocols() == (STOCK_WS_PROTOCOL, STOCK_HTTP_PROTOCOL)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2
    assert "'websockets-sansio'" in warnings[0] and "queue is not an asyncio.Queue" in warnings[0]
    assert "'httptools'" in warnings[1] and "pipeline is not a deque" in warnings[1]

    # and those serve: an event published over HTTP reaches a WebSocket, an SSE stream and
    # a long-poll through them
    settings = Settings(backend_url="memory://", secrets=("s" * 32,), api_keys=("k" * 32,))
    app = create_app(settings)
    port = free_port()
    config = pushsvc_server.config(app, settings, port=port, log_level="warning")
    assert (config.ws, config.http) == (STOCK_WS_PROTOCOL, STOCK_HTTP_PROTOCOL)
    server = GracefulServer(config, app.state.hub)
    serving = asyncio.create_task(server.serve())
    try:
        await asyncio.to_thread(wait_started, server)
        token = app.state.auth.issue("u", subscribe=("*",))
        base = f"http://127.0.0.1:{port}"
        for transport in ("websocket", "sse", "long-polling"):
            event = await asyncio.wait_for(_one_event(base, token, transport), 15)
            assert (event.channel, event.data) == ("news", transport)
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 10)


async def _one_event(base: str, token: str, transport: str) -> Any:
    from pushsvc.client import Client

    async with Client(base, token, ["news"], transports=(transport,)) as client:
        await client.ready()
        async with httpx.AsyncClient(base_url=base) as http:
            r = await http.post(
                "/v1/publish",
                json={"channel": "news", "data": transport},
                headers={"Authorization": "Bearer " + "k" * 32},
            )
            assert r.status_code == 200, r.text
        async for item in client:
            return item
    raise AssertionError("no event")
