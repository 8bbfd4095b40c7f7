"""The Python client against a real server: exactly-once delivery on every transport,
fallback behind real (in-test) misbehaving proxies, moving back up, restarts, the outbox,
gaps and dead connections."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import websockets

import pushsvc.client
from pushsvc.client import (
    Client,
    ClientClosed,
    Event,
    Gap,
    OutboxFull,
    ServerRejected,
)
from pushsvc.client._backoff import Backoff
from pushsvc.client._sse import SSEParser
from tests.fixtures_server import Server
from tests.waiting import until
from tests.wire import poll_once

TRANSPORTS = ("websocket", "sse", "long-polling")
memory_only = pytest.mark.parametrize("backend_url", ["memory"], indirect=True)
redis_only = pytest.mark.parametrize("backend_url", ["redis"], indirect=True)


# --- a real TCP proxy with the habits of corporate proxies -------------------------------


class Proxy:
    """An asyncio TCP proxy in front of the server.

    - ``strip_upgrade``: drops ``Upgrade``/``Connection`` (the handshake reaches the server
      as a plain GET, answered 404): WebSocket cannot open.
    - ``one_request``: one request per connection (``Connection: close`` upstream, like
      nginx's HTTP/1.0 default), so that each request is seen by the proxy.
    - ``buffer``: ``one_request``, and the response body is held until 16 KiB or its end:
      an SSE stream delivers its headers and then nothing; complete responses get through.
    - ``freeze()``: the open connections go silent both ways without closing (a dropped
      network); new connections work.
    - ``drop_publish_responses``: that many ``POST /v1/publish`` reach the server, whose
      answer is then lost (the connection is cut when it arrives).
    - ``cut_after_frames``: on a WebSocket, the connection is cut as soon as the server
      answers after the client's N-th frame went through (lost ack).
    """

    def __init__(
        self,
        upstream: str,
        *,
        strip_upgrade: bool = False,
        buffer: bool = False,
        one_request: bool = False,
    ) -> None:
        parts = urlsplit(upstream)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.strip_upgrade = strip_upgrade
        self.buffer = buffer
        self.one_request = one_request or buffer
        self.drop_publish_responses = 0
        self.cut_after_frames: int | None = None
        self.upgrades_seen = 0
        self._server: asyncio.Server | None = None
        self._conns: set[_Conn] = set()
        self._handlers: set[asyncio.Task[Any]] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> Proxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for conn in list(self._conns):
            conn.close()
        if self._handlers:  # let them end by themselves (no cancelled handler tasks)
            await asyncio.wait(self._handlers, timeout=2)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2)

    def freeze(self) -> None:
        for conn in self._conns:
            conn.frozen = True

    def _rewrite(self, head: bytes) -> tuple[bytes, bool, bool]:
        lines = head.split(b"\r\n")
        upgrade = any(line.lower().startswith(b"upgrade:") for line in lines)
        publish = lines[0].startswith(b"POST ") and b"/v1/publish" in lines[0]
        self.upgrades_seen += upgrade
        drop = {b"upgrade", b"connection"} if (self.strip_upgrade or self.one_request) else set()
        kept = [
            line
            for line in lines
            if line.split(b":", 1)[0].strip().lower() not in drop or b":" not in line
        ]
        if self.one_request:
            kept.insert(1, b"Connection: close")
        return b"\r\n".join(kept), upgrade and not self.strip_upgrade, publish

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Conn(writer)
        self._conns.add(conn)
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            head, websocket, publish = self._rewrite(head)
            up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
            conn.upstream = up_writer
            up_writer.write(head)
            drop = publish and self.drop_publish_responses > 0
            if drop:
                self.drop_publish_responses -= 1
            cut = self.cut_after_frames if websocket else None
            up = asyncio.create_task(self._pipe(reader, up_writer, conn, count=cut))
            if drop:
                down = asyncio.create_task(self._drop_answer(up_reader, conn))
            elif self.buffer:
                down = asyncio.create_task(self._pipe_buffered(up_reader, writer, conn))
            else:
                down = asyncio.create_task(self._pipe(up_reader, writer, conn, down=True))
            await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
            for task in (up, down):
                task.cancel()
            await asyncio.gather(up, down, return_exceptions=True)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            conn.close()
            self._conns.discard(conn)

    async def _pipe(
        self,
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        conn: _Conn,
        count: int | None = None,
        down: bool = False,
    ) -> None:
        frames = 0
        while data := await src.read(65536):
            if conn.frozen:
                continue
            if down and conn.cut_armed:
                return  # the server answered after the counted frame: cut, answer lost
            dst.write(data)
            await dst.drain()
            if count is not None and not down:
                frames += 1
                if frames > count:  # the first chunk after the head is frame 1
                    conn.cut_armed = True

    async def _pipe_buffered(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, conn: _Conn
    ) -> None:
        buf, head_sent = b"", False
        while data := await src.read(65536):
            buf += data
            if not head_sent and b"\r\n\r\n" in buf:
                end = buf.index(b"\r\n\r\n") + 4
                dst.write(buf[:end])
                buf, head_sent = buf[end:], True
            if head_sent and len(buf) >= 16384:
                dst.write(buf)
                buf = b""
            await dst.drain()
        dst.write(buf)
        await dst.drain()

    async def _drop_answer(self, src: asyncio.StreamReader, conn: _Conn) -> None:
        await src.read(1)  # the server answered, so it has stored the message


class _Conn:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.upstream: asyncio.StreamWriter | None = None
        self.frozen = False
        self.cut_armed = False

    def close(self) -> None:
        for w in (self.writer, self.upstream):
            if w is not None:
                w.close()


# --- helpers ---------------------------------------------------------------------------


def unique(prefix: str = "c") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def apublish(server: Server, channel: str, data: Any) -> str:
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.post(
            server.url + "/v1/publish",
            json={"channel": channel, "data": data},
            headers=server.api_headers,
        )
    r.raise_for_status()
    return str(r.json()["id"])


async def start_cursor(server: Server, channels: list[str]) -> str:
    body = await poll_once(server.url, channels, server.token(), timeout=0)
    return str(body["cursor"])


async def take(client: Client, n: int, timeout: float = 15) -> list[Event | Gap]:
    items: list[Event | Gap] = []
    async with asyncio.timeout(timeout):
        async for item in client:
            items.append(item)
            if sum(isinstance(i, Event) for i in items) >= n:
                break
    return items


def ids_by_channel(items: list[Event | Gap]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for item in items:
        if isinstance(item, Event):
            out.setdefault(item.channel, []).append(item.id)
    return out


async def history_ids(server: Server, channel: str) -> list[str]:
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.get(
            f"{server.url}/v1/channels/{channel}/history",
            params={"limit": 1000},
            headers=server.api_headers,
        )
    r.raise_for_status()
    return [e["id"] for e in r.json()["events"] if e["type"] == "event"]


class States:
    def __init__(self) -> None:
        self.seen: list[tuple[float, str, str | None]] = []

    def __call__(self, state: str, transport: str | None) -> None:
        self.seen.append((time.monotonic(), state, transport))

    def names(self) -> list[tuple[str, str | None]]:
        return [(s, t) for _, s, t in self.seen]


# --- delivery on every transport ------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_every_event_of_a_live_stream_arrives_once_in_order(
    server: Server, transport: str
) -> None:
    channels = [unique("a"), unique("b")]
    states = States()
    async with Client(
        server.url, server.token(), channels, transports=(transport,), on_state=states
    ) as client:
        await until(lambda: client.state == "connected")
        published: dict[str, list[str]] = {c: [] for c in channels}
        for i in range(30):
            channel = channels[i % 2]
            published[channel].append(await apublish(server, channel, {"n": i}))
        binary_id = await client.publish_bytes(channels[0], b"\x00\xffraw")
        own_id = await client.publish(channels[1], {"from": "client"})
        published[channels[0]].append(binary_id)
        published[channels[1]].append(own_id)
        items = await take(client, 32)
        assert client.transport == transport
    assert ids_by_channel(items) == published
    by_id = {(i.channel, i.id): i for i in items if isinstance(i, Event)}  # IDs are per channel
    assert by_id[channels[0], binary_id].data == b"\x00\xffraw"
    assert by_id[channels[1], own_id].data == {"from": "client"}
    assert client.duplicates == 0
    assert states.names()[:2] == [("connecting", None), ("connected", transport)]


@memory_only
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_each_event_cursor_resumes_right_after_it_on_any_transport(
    server: Server, transport: str
) -> None:
    channels = [unique("a"), unique("b")]
    cursor = await start_cursor(server, channels)
    published: dict[str, list[str]] = {c: [] for c in channels}
    for i in range(6):
        published[channels[i % 2]].append(await apublish(server, channels[i % 2], i))
    async with Client(
        server.url, server.token(), channels, cursor=cursor, max_buffered=1
    ) as client:
        items = await take(client, 3)
    # a new client, on another transport, from the third event's cursor
    async with Client(
        server.url, server.token(), channels, transports=(transport,), cursor=items[-1].cursor
    ) as client:
        rest = await take(client, 3)
    assert ids_by_channel(items + rest) == published


# --- fallback behind proxies -------------------------------------------------------------


@memory_only
async def test_falls_back_to_sse_when_a_proxy_strips_the_upgrade(server: Server) -> None:
    channel = unique()
    cursor = await start_cursor(server, [channel])
    ids = [await apublish(server, channel, i) for i in range(5)]
    states = States()
    async with Proxy(server.url, strip_upgrade=True) as proxy:
        started = time.monotonic()
        async with Client(
            proxy.url, server.token(), [channel], cursor=cursor, on_state=states
        ) as c:
            items = await take(c, 5)
            first_event = time.monotonic()
            live = await apublish(server, channel, "live")
            items += await take(c, 1)
            assert c.transport == "sse"
            assert c.state == "degraded"
    assert proxy.upgrades_seen >= 1
    assert [i.id for i in items] == [*ids, live]
    assert ("degraded", "sse") in states.names()
    print(f"\nfallback websocket->sse: {1000 * (first_event - started):.0f} ms to first event")


@memory_only
async def test_falls_back_to_long_poll_when_a_proxy_buffers_sse(server: Server) -> None:
    channel = unique()
    cursor = await start_cursor(server, [channel])
    ids = [await apublish(server, channel, i) for i in range(5)]
    states = States()
    async with Proxy(server.url, strip_upgrade=True, buffer=True) as proxy:
        started = time.monotonic()
        async with Client(
            proxy.url,
            server.token(),
            [channel],
            cursor=cursor,
            on_state=states,
            sse_first_byte_timeout=1.0,
        ) as c:
            items = await take(c, 5)
            first_event = time.monotonic()
            live = await apublish(server, channel, "live")
            items += await take(c, 1)
            assert c.transport == "long-polling"
    assert [i.id for i in items] == [*ids, live]
    assert ("degraded", "long-polling") in states.names()
    print(
        f"\nfallback websocket->sse(stalled, window 1 s)->long-poll: "
        f"{1000 * (first_event - started):.0f} ms to first event"
    )


@memory_only
async def test_moves_back_up_to_websocket_when_the_upgrade_works_again(server: Server) -> None:
    channel = unique()
    states = States()
    async with (
        Proxy(server.url, strip_upgrade=True) as proxy,
        Client(proxy.url, server.token(), [channel], on_state=states, reprobe_interval=0.3) as c,
    ):
        await until(lambda: c.transport == "sse")
        ids = [await apublish(server, channel, i) for i in range(10)]
        items = await take(c, 10)
        proxy.strip_upgrade = False
        published = list(ids)

        async def publisher() -> None:
            for i in range(40):
                published.append(await apublish(server, channel, 100 + i))
                await asyncio.sleep(0.01)  # pace: a stream of publishes during the move

        task = asyncio.create_task(publisher())
        await until(lambda: c.transport == "websocket")
        await task
        items += await take(c, 40)
        assert c.state == "connected"
    assert [i.id for i in items] == published
    names = states.names()
    assert names.index(("degraded", "sse")) < names.index(("connected", "websocket"))


# --- restarts, dead networks, the outbox ---------------------------------------------------


@redis_only
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_server_restart_mid_stream_loses_and_duplicates_nothing(
    server: Server, transport: str
) -> None:
    channel = unique()
    async with Client(
        server.url, server.token(), [channel], transports=(transport,), backoff_base=0.2
    ) as c:
        await until(lambda: c.state == "connected")
        before = [await apublish(server, channel, i) for i in range(10)]
        items = await take(c, 5)
        assert server.proc is not None
        server.proc.kill()  # a crash, mid-stream: 5 events are still on their way
        server.proc.wait()
        await until(lambda: c.state != "connected")
        server.start()  # same port, same Redis
        after = [await apublish(server, channel, 100 + i) for i in range(10)]
        items += await take(c, 15)
        assert c.transport == transport
    assert [i.id for i in items] == before + after


@redis_only
async def test_message_published_while_the_server_is_down_is_delivered_once(
    server: Server,
) -> None:
    channel = unique()
    async with Client(server.url, server.token(), [channel], backoff_base=0.2) as c:
        await until(lambda: c.state == "connected")
        assert server.proc is not None
        server.proc.terminate()
        server.proc.wait()
        await until(lambda: c.state == "disconnected")
        pending = c.publish(channel, {"offline": True})
        await asyncio.sleep(0.3)  # window: the publish may not complete while the server is down
        assert not pending.done() and c.outbox_size == 1
        server.start()
        event_id = await asyncio.wait_for(pending, 15)
        items = await take(c, 1)
        other = await apublish(server, channel, "after")
        items += await take(c, 1)
    assert [i.id for i in items] == [event_id, other]
    assert await history_ids(server, channel) == [event_id, other]


@memory_only
async def test_publish_whose_answer_was_lost_is_resent_and_stored_once(server: Server) -> None:
    channel = unique()
    async with Proxy(server.url, one_request=True) as proxy:
        proxy.drop_publish_responses = 1
        async with Client(proxy.url, server.token(), [channel], transports=("sse",)) as c:
            event_id = await asyncio.wait_for(c.publish(channel, "once"), 10)
            items = await take(c, 1)
    assert proxy.drop_publish_responses == 0
    assert [i.id for i in items] == [event_id]
    assert await history_ids(server, channel) == [event_id]


@memory_only
async def test_websocket_publish_whose_ack_was_lost_is_stored_once(server: Server) -> None:
    channel = unique()
    async with Proxy(server.url) as proxy:
        proxy.cut_after_frames = 1  # frame 1: subscribe, frame 2: the publish
        async with Client(
            proxy.url, server.token(), [channel], transports=("websocket",), backoff_base=0.1
        ) as c:
            await until(lambda: c.state == "connected")
            proxy.cut_after_frames = None  # the reconnection goes through
            event_id = await asyncio.wait_for(c.publish(channel, "once"), 10)
            items = await take(c, 1)
    assert [i.id for i in items] == [event_id]
    assert await history_ids(server, channel) == [event_id]


@memory_only
async def test_a_message_id_is_one_idempotency_key_across_transports(server: Server) -> None:
    channel, token = unique(), server.token()
    async with websockets.connect(
        f"{server.ws_url}/v1/ws", additional_headers={"Authorization": f"Bearer {token}"}
    ) as ws:
        await ws.send(json.dumps({"type": "publish", "id": "m-1", "channel": channel, "data": 1}))
        ack = json.loads(await ws.recv())
    async with httpx.AsyncClient() as http:
        r = await http.post(
            server.url + "/v1/publish",
            json={"channel": channel, "data": 1, "idempotency_key": "m-1"},
            headers={"Authorization": f"Bearer {token}"},
        )
    assert r.json()["id"] == ack["event_id"]
    assert await history_ids(server, channel) == [ack["event_id"]]


@memory_only
@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_a_silent_connection_is_detected_and_resumed(
    server_factory: Any, transport: str
) -> None:
    server: Server = server_factory(heartbeat_interval=0.4)
    channel = unique()
    async with (
        Proxy(server.url) as proxy,
        Client(
            proxy.url, server.token(), [channel], transports=(transport,), backoff_base=0.1
        ) as c,
    ):
        await until(lambda: c.state == "connected")
        first = await apublish(server, channel, 0)
        items = await take(c, 1)
        proxy.freeze()  # the network drops; nothing closes
        dropped = time.monotonic()
        during = await apublish(server, channel, 1)
        items += await take(c, 1, timeout=10)
        recovered = time.monotonic() - dropped
    assert [i.id for i in items] == [first, during]
    assert 0.4 < recovered < 5  # ~2.5 heartbeats, then a reconnect


@memory_only
async def test_a_frozen_server_does_not_demote_sse(server_factory: Any) -> None:
    """While the whole server is frozen (SIGSTOP), SSE gets no first byte and long-poll no
    answer either: that is an outage, not a buffering proxy. The client backs off and comes
    back on SSE, instead of demoting it and waiting for a re-probe on long-poll."""
    server: Server = server_factory(heartbeat_interval=0.4)
    channel = unique()
    states = States()
    async with Client(
        server.url,
        server.token(),
        [channel],
        transports=("sse", "long-polling"),
        sse_first_byte_timeout=0.5,
        connect_timeout=1.0,
        backoff_base=0.1,
        backoff_cap=0.5,
        on_state=states,
    ) as c:
        await until(lambda: c.state == "connected")
        first = await apublish(server, channel, 0)
        items = await take(c, 1)
        assert server.proc is not None
        server.proc.send_signal(signal.SIGSTOP)
        try:
            # silence detected (1 s), then reconnects into the frozen server
            await until(lambda: states.names().count(("connecting", None)) >= 3, timeout=10)
        finally:
            server.proc.send_signal(signal.SIGCONT)
        after = await apublish(server, channel, 1)
        items += await take(c, 1, timeout=10)
        assert c.transport == "sse"
    assert [i.id for i in items] == [first, after]
    assert ("degraded", "long-polling") not in states.names()


class _Recorder:
    """A connection sink that records what the connection hands over."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, Any]] = []
        self.seeds: list[str | None] = []

    def event(self, channel: str, name: str, event_id: str, data: Any) -> None:
        self.events.append((channel, event_id, data))

    def gap(self, channel: str, after: str, until: str) -> None: ...
    def seed(self, cursor: str | None) -> None:
        self.seeds.append(cursor)

    def acked(self, msg_id: str, event_id: str) -> None: ...
    def rejected(self, msg_id: str, exc: BaseException) -> None: ...
    def retry_later(self, msg_id: str) -> None: ...
    def resume_cursor(self) -> str | None:
        return None

    async def room(self) -> None: ...


async def test_websocket_asks_for_batches_and_handles_every_frame_of_a_message() -> None:
    """``/v1/ws?batch=1``: several JSON frames in one text message, separated by "\\n"
    (a JSON string may hold an escaped newline); binary messages are single frames."""
    from websockets.asyncio.server import ServerConnection, serve

    from pushsvc.client._transports import Context, WebSocketConnection

    def event(n: int, data: Any) -> dict[str, Any]:
        return {"type": "event", "channel": "c", "event": "m", "id": f"1-{n}", "data": data}

    paths: list[str] = []

    async def handler(ws: ServerConnection) -> None:
        assert ws.request is not None
        paths.append(ws.request.path)
        assert json.loads(await ws.recv())["type"] == "subscribe"
        frames = [{"type": "subscribed", "cursor": "cur-0"}, event(0, "a\nb"), event(1, 1)]
        await ws.send("\n".join(json.dumps(f) for f in frames))
        await ws.send(json.dumps(event(2, None)).encode() + b"\nraw\nbytes")
        await ws.send(json.dumps({"type": "heartbeat"}) + "\n" + json.dumps(event(3, [3])))
        await ws.send(json.dumps(event(4, {"n": 4})))
        await ws.wait_closed()

    async with (
        serve(handler, "127.0.0.1", 0) as server,
        httpx.AsyncClient() as http,
        httpx.AsyncClient() as streams,
    ):
        port = server.sockets[0].getsockname()[1]
        ctx = Context(f"http://127.0.0.1:{port}", ["c"], http, streams, token="t")
        sink = _Recorder()
        conn = WebSocketConnection(ctx, sink)
        await conn.open()
        assert sink.seeds == ["cur-0"]
        run = asyncio.create_task(conn.run())
        try:
            await until(lambda: len(sink.events) == 5, timeout=5)
        finally:
            run.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await run
            await conn.close()
    assert urlsplit(paths[0]).query == "batch=1"
    assert sink.events == [
        ("c", "1-0", "a\nb"),
        ("c", "1-1", 1),
        ("c", "1-2", b"raw\nbytes"),
        ("c", "1-3", [3]),
        ("c", "1-4", {"n": 4}),
    ]


# --- gaps, rejections --------------------------------------------------------------------


@memory_only
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_gap_is_surfaced_as_an_item_and_a_callback(
    server_factory: Any, transport: str
) -> None:
    server: Server = server_factory(retention_max_len=5)
    channel = unique()
    cursor = await start_cursor(server, [channel])
    ids = [await apublish(server, channel, i) for i in range(12)]
    gaps: list[Gap] = []
    states = States()
    async with Client(
        server.url,
        server.token(),
        [channel],
        transports=(transport,),
        cursor=cursor,
        on_gap=gaps.append,
        on_state=states,
    ) as c:
        items = await take(c, 5)
    assert isinstance(items[0], Gap)
    assert items[0].until == ids[6] and gaps == [items[0]]
    assert ("gap", transport) in states.names()
    assert [i.id for i in items[1:]] == ids[7:]


@memory_only
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_channel_not_granted_stops_the_client_with_a_clear_error(
    server: Server, transport: str
) -> None:
    token = server.token(subscribe=("mine:*",))
    async with Client(server.url, token, ["theirs"], transports=(transport,)) as c:
        with pytest.raises(ServerRejected) as info:
            await take(c, 1)
    assert info.value.status in (403, 4403)
    with pytest.raises(ClientClosed):
        c.publish("mine:x", 1)


@memory_only
async def test_invalid_token_stops_the_client(server: Server) -> None:
    async with Client(server.url, "not-a-token", ["x"]) as c:
        with pytest.raises(ServerRejected) as info:
            await take(c, 1)
    assert info.value.status == 401


# --- the start position -------------------------------------------------------------------


@redis_only
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_reconnect_before_the_first_event_resumes_from_the_pinned_start(
    server_factory: Any, transport: str
) -> None:
    """Pinned and connected, no event yet; the server goes away, events are stored through
    another instance meanwhile, the server comes back: the client's new negotiate and
    transport start from the pinned position, not from "now"."""
    a, b = server_factory(), server_factory()  # two instances on one Redis
    channel = f"quiet-{uuid.uuid4().hex[:8]}"
    async with Client(
        a.url, a.token(), [channel], transports=(transport,), backoff_base=0.05, backoff_cap=0.3
    ) as c:
        pinned = await c.ready(10)
        await until(lambda: c.transport is not None)
        a.stop()
        await until(lambda: c.transport is None)
        ids = [b.publish(channel, n) for n in range(3)]
        a.start()
        ids.append(a.publish(channel, 3))
        items = await take(c, 4)
    assert [i.id for i in items] == ids
    assert c.cursor != pinned


@memory_only
async def test_ready_answers_the_pinned_cursor_before_any_transport_opens(server: Server) -> None:
    channel = f"pin-{uuid.uuid4().hex[:8]}"
    server.publish(channel, "before")
    states = States()
    async with Client(server.url, server.token(), [channel], on_state=states) as c:
        cursor = await c.ready(10)
        assert cursor.startswith("c1")
        after = server.publish(channel, "after")
        items = await take(c, 1)
    assert [i.id for i in items] == [after]
    assert items[0].data == "after"


async def test_ready_answers_at_once_when_the_given_cursor_covers_every_channel() -> None:
    from pushsvc.protocol import cursor as cursor_codec

    given = cursor_codec.encode({"a": (5, 0), "b": (7, 1)})
    client = Client("http://127.0.0.1:9", "t", ["a", "b"], cursor=given)
    try:
        assert await client.ready(1) == given
    finally:
        await client.close()


async def test_ready_raises_when_the_client_closes_before_its_start_is_pinned() -> None:
    client = Client("http://127.0.0.1:9", "t", ["x"], backoff_base=0.01, backoff_cap=0.05)
    waiting = asyncio.create_task(client.ready())
    await until(lambda: client.last_error is not None)  # it tried, and nothing answered
    await client.close()
    with pytest.raises(ClientClosed):
        await waiting


@memory_only
async def test_ready_raises_the_refusal_of_an_ungranted_channel(server: Server) -> None:
    token = server.token(subscribe=("mine:*",))
    async with Client(server.url, token, ["theirs"]) as c:
        with pytest.raises(ServerRejected) as info:
            await c.ready(10)
    assert info.value.status == 403


# --- without a server ----------------------------------------------------------------------


async def test_outbox_is_bounded_and_rejects_on_close() -> None:
    client = Client("http://127.0.0.1:9", "t", ["x"], outbox_limit=2)
    first, second = client.publish("x", 1), client.publish_bytes("x", b"2")
    with pytest.raises(OutboxFull):
        client.publish("x", 3)
    await client.close()
    for future in (first, second):
        with pytest.raises(ClientClosed):
            await future


async def test_unreachable_server_is_retried_with_backoff_not_raised() -> None:
    states = States()
    async with Client(
        "http://127.0.0.1:9", "t", ["x"], on_state=states, backoff_base=0.01, backoff_cap=0.05
    ) as c:
        await until(lambda: len(states.seen) >= 6)
        assert c.transport is None and c.last_error is not None
    assert {s for s, _ in states.names()} == {"connecting", "disconnected"}


def test_backoff_is_full_jitter_capped_and_resettable() -> None:
    top = Backoff(base=0.5, cap=4.0, rng=lambda: 1.0)
    assert [top.next_delay() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    top.reset()
    assert top.next_delay() == 0.5
    assert Backoff(rng=lambda: 0.0).next_delay() == 0.0


def test_sse_parser_handles_split_chunks_crlf_and_comments() -> None:
    parser = SSEParser()
    stream = b': pushsvc\n\nretry: 2000\n\nevent: gap\r\ndata: {"a":\r\ndata: 1}\r\nid: c1x\r\n\r\n'
    stream += b"data: plain\n\n: hb\n\n"
    out = []
    for i in range(len(stream)):  # one byte at a time
        out += parser.feed(stream[i : i + 1])
    assert [(m.event, m.data, m.id) for m in out] == [
        ("gap", '{"a":\n1}', "c1x"),
        ("message", "plain", None),
    ]
    assert parser.comments == 2 and parser.retry_ms == 2000 and parser.last_id == "c1x"


def test_public_names_are_complete_and_sorted() -> None:
    names = pushsvc.client.__all__
    assert names == sorted(names, key=lambda n: (not n.isupper(), n))  # constants first
    public = {n for n in dir(pushsvc.client) if not n.startswith("_")} - {"annotations"}
    assert set(names) == public
