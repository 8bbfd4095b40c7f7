"""pushsvc._uvicorn's list-based stand-ins for uvicorn's asyncio.Queue, asyncio.Event and
deque behave as what they replace, and the lean protocols still serve pipelined HTTP and
WebSockets through a real server."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from typing import Any

import pytest

from pushsvc._uvicorn import LeanDeque, LeanEvent, LeanQueue
from pushsvc.auth import Principal
from pushsvc.backends.memory import MemoryBackend
from pushsvc.hub import Hub
from pushsvc.protocol.wires import WebSocketWire
from pushsvc.session import Session
from pushsvc.settings import Settings
from pushsvc.transports.websocket import WebSocketWriter
from tests.fixtures_server import Server


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
