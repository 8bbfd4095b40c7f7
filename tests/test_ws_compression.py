"""WebSocket permessage-deflate (``ws_compression``): negotiated with no context takeover,
each event compressed once, plain frames for plain clients, bounded inflation of the
client's frames.

The encoder is checked byte for byte; the server end to end with the ``websockets``
client (which inflates what it gets) and with a raw socket client that reads the frames
as they are on the wire (RSV1, identical bytes on every connection).
"""

from __future__ import annotations

import asyncio
import json
import os
import zlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import websockets
from websockets.exceptions import ConnectionClosed
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

from pushsvc.protocol.deflate import DeflatedFrame, Deflater, DeflateWebSocketWire
from pushsvc.protocol.events import Event
from pushsvc.protocol.wires import WebSocketWire
from pushsvc.protocol.wsframes import OP_TEXT, encode_frame
from pushsvc.server import uvicorn_options
from pushsvc.settings import Settings
from tests.fixtures_server import Server, make_server

TAIL = b"\x00\x00\xff\xff"


def record(i: int) -> dict[str, Any]:
    """A realistic event: repetitive keys, some variety."""
    return {
        "order_id": f"ord-{i:08d}",
        "customer": {"id": i * 7, "name": f"Customer {i}", "tier": "gold"},
        "items": [
            {"sku": f"sku-{j}", "quantity": j % 3 + 1, "price_cents": 1999} for j in range(8)
        ],
        "status": "created",
    }


def parse_frame(frame: bytes) -> tuple[int, bool, bytes]:
    """(opcode, rsv1, payload) of one whole unmasked frame."""
    b0, b1 = frame[0], frame[1]
    n, at = b1 & 0x7F, 2
    if n == 126:
        n, at = int.from_bytes(frame[2:4], "big"), 4
    elif n == 127:
        n, at = int.from_bytes(frame[2:10], "big"), 10
    assert b1 & 0x80 == 0 and len(frame) == at + n
    return b0 & 0x0F, bool(b0 & 0x40), frame[at:]


def inflate(payload: bytes) -> bytes:
    return zlib.decompressobj(-15).decompress(payload + TAIL)


def event(channel: str, data: Any, n: int = 1) -> Event:
    return Event(channel, (1_700_000_000_000, n), "order.created", json.dumps(data).encode())


# --- the encoder ---------------------------------------------------------------------


def test_each_compressed_frame_inflates_on_its_own_with_rsv1_set() -> None:
    deflater = Deflater(6)
    texts = [json.dumps(record(i)) for i in range(5)] + ["x" * 70_000]
    for text in texts:  # one compressor for all: no message may refer to an earlier one
        frame = deflater.frame(text)
        opcode, rsv1, payload = parse_frame(frame)
        assert (opcode, rsv1) == (OP_TEXT, True)
        assert inflate(payload) == text.encode()
        assert len(payload) < len(text)
        assert frame.plain == text


def test_a_binary_message_is_compressed_as_a_binary_frame() -> None:
    data = bytes(range(256)) * 8
    opcode, rsv1, payload = parse_frame(Deflater().frame(data))
    assert (opcode, rsv1) == (0x2, True) and inflate(payload) == data


def test_an_event_is_compressed_once_and_decodes_to_the_plain_frame() -> None:
    wire = DeflateWebSocketWire(level=6, min_bytes=256)
    ev = event("orders", record(1))
    first = wire.event(ev, None)
    assert isinstance(first, DeflatedFrame)
    assert wire.event(ev, None) is first  # every single-channel subscriber: these bytes
    assert DeflateWebSocketWire(6, 256).event(ev, None) is first
    plain = WebSocketWire().event(ev, None)
    assert first.plain == plain
    assert inflate(parse_frame(first)[2]).decode() == plain


def test_a_multi_channel_cursor_frame_is_compressed_per_session() -> None:
    wire = DeflateWebSocketWire(level=1, min_bytes=0)
    ev = event("orders", record(2))
    frame = wire.event(ev, "CURSOR")
    assert isinstance(frame, DeflatedFrame)
    assert inflate(parse_frame(frame)[2]).decode() == WebSocketWire().event(ev, "CURSOR")


def test_frames_under_the_threshold_and_control_frames_go_plain() -> None:
    wire = DeflateWebSocketWire(level=6, min_bytes=256)
    small = event("orders", {"n": 1})
    assert wire.event(small, None) == WebSocketWire().event(small, None)
    assert type(wire.event(small, None)) is str
    assert type(wire.subscribed(["orders"], "C")) is str
    assert type(wire.heartbeat) is str


def test_the_setting_reaches_uvicorn_and_is_checked() -> None:
    assert uvicorn_options(Settings())["ws_per_message_deflate"] is False
    assert uvicorn_options(Settings(ws_compression=True))["ws_per_message_deflate"] is True
    assert Settings.from_env({"PUSHSVC_WS_COMPRESSION": "1"}).ws_compression is True
    with pytest.raises(Exception, match="ws_compression_level"):
        Settings(ws_compression_level=0)


# --- end to end ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def zserver() -> Iterator[Server]:
    srv = make_server("memory://", ws_compression=1, max_frame_bytes=64 * 1024 + 4096)
    srv.env["PUSHSVC_MAX_PUBLISH_BYTES"] = str(64 * 1024)
    srv.start()
    yield srv
    srv.stop()


DEFLATE = [ClientPerMessageDeflateFactory()]  # offers client_max_window_bits, as Chromium


async def subscribe(ws: Any, channel: str) -> None:
    await ws.send(json.dumps({"type": "subscribe", "channels": [channel]}))
    while True:
        msg = json.loads(await asyncio.wait_for(ws.recv(), 10))
        if msg["type"] == "subscribed":
            return


async def events(ws: Any, count: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while len(out) < count:
        msg = json.loads(await asyncio.wait_for(ws.recv(), 10))
        if msg["type"] == "event":
            out.append(msg)
    return out


async def test_websockets_client_negotiates_and_receives_every_event_intact(
    zserver: Server,
) -> None:
    url = f"{zserver.ws_url}/v1/ws?token={zserver.token()}"
    async with (
        websockets.connect(url, extensions=DEFLATE, compression=None, max_size=None) as zws,
        websockets.connect(url, compression=None, max_size=None) as plain,
    ):
        answer = zws.response.headers["Sec-WebSocket-Extensions"]
        assert answer.startswith("permessage-deflate")
        assert "server_no_context_takeover" in answer
        assert "client_no_context_takeover" in answer
        assert "client_max_window_bits=12" in answer
        assert "Sec-WebSocket-Extensions" not in plain.response.headers
        await subscribe(zws, "orders-a")
        await subscribe(plain, "orders-a")
        sent = [record(i) for i in range(30)] + [{"blob": "y" * 60_000}, {"n": 1}]
        for data in sent:
            await asyncio.to_thread(zserver.publish, "orders-a", data)
        for ws in (zws, plain):
            got = await events(ws, len(sent))
            assert [m["data"] for m in got] == sent


@dataclass
class RawClient:
    """A WebSocket client that keeps the frames as they came."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    extensions: str | None

    async def send(self, obj: Any) -> None:
        self.writer.write(encode_frame(OP_TEXT, json.dumps(obj).encode(), mask=os.urandom(4)))
        await self.writer.drain()

    async def frame(self) -> bytes:
        head = await asyncio.wait_for(self.reader.readexactly(2), 10)
        n = head[1] & 0x7F
        ext = b""
        if n == 126:
            ext = await self.reader.readexactly(2)
            n = int.from_bytes(ext, "big")
        elif n == 127:
            ext = await self.reader.readexactly(8)
            n = int.from_bytes(ext, "big")
        return head + ext + await self.reader.readexactly(n)

    async def event_frames(self, count: int) -> list[bytes]:
        out: list[bytes] = []
        while len(out) < count:
            frame = await self.frame()
            _, rsv1, payload = parse_frame(frame)
            text = inflate(payload) if rsv1 else payload
            if json.loads(text)["type"] == "event":
                out.append(frame)
        return out


@pytest.fixture
async def raw_client(zserver: Server) -> AsyncIterator[Any]:
    opened: list[RawClient] = []

    async def connect(offer: str | None) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", zserver.port)
        lines = [
            f"GET /v1/ws?token={zserver.token()} HTTP/1.1",
            f"Host: 127.0.0.1:{zserver.port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version: 13",
        ]
        if offer is not None:
            lines.append(f"Sec-WebSocket-Extensions: {offer}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).decode()
        assert head.startswith("HTTP/1.1 101"), head
        answer = None
        for line in head.split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "sec-websocket-extensions":
                answer = value.strip()
        client = RawClient(reader, writer, answer)
        opened.append(client)
        return client

    yield connect
    for client in opened:
        client.writer.close()


async def test_compressed_subscribers_get_the_same_bytes_plain_ones_plain_frames(
    zserver: Server, raw_client: Any
) -> None:
    z1 = await raw_client("permessage-deflate; client_max_window_bits")
    z2 = await raw_client("permessage-deflate")
    plain = await raw_client(None)
    assert z1.extensions == (
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
        "client_max_window_bits=12"
    )
    assert z2.extensions == (
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
    )
    assert plain.extensions is None
    for client in (z1, z2, plain):
        await client.send({"type": "subscribe", "channels": ["orders-b"]})
        _, rsv1, payload = parse_frame(await client.frame())
        assert not rsv1 and json.loads(payload)["type"] == "subscribed"  # control: plain
    sent = [record(i) for i in range(5)] + [{"n": 1}]
    for data in sent:
        await asyncio.to_thread(zserver.publish, "orders-b", data)
    f1, f2, fp = [await c.event_frames(len(sent)) for c in (z1, z2, plain)]
    assert f1 == f2  # compressed once: the same bytes on both connections
    assert [parse_frame(f)[1] for f in f1] == [True] * 5 + [False]  # a tiny one goes plain
    assert not any(parse_frame(f)[1] for f in fp)
    for zf, pf in zip(f1, fp, strict=True):
        _, rsv1, payload = parse_frame(zf)
        assert (inflate(payload) if rsv1 else payload) == parse_frame(pf)[2]
        assert len(zf) <= len(pf)


async def test_a_client_asking_for_a_smaller_server_window_is_served_plain(
    zserver: Server, raw_client: Any
) -> None:
    client = await raw_client("permessage-deflate; server_max_window_bits=10")
    assert client.extensions is None
    await client.send({"type": "subscribe", "channels": ["orders-c"]})
    await client.frame()
    await asyncio.to_thread(zserver.publish, "orders-c", record(1))
    (frame,) = await client.event_frames(1)
    assert not parse_frame(frame)[1]


async def test_a_decompression_bomb_closes_1009_at_max_frame_bytes(zserver: Server) -> None:
    url = f"{zserver.ws_url}/v1/ws?token={zserver.token()}"
    async with websockets.connect(url, extensions=DEFLATE, compression=None) as ws:
        await subscribe(ws, "orders-d")
        # 8 MiB of spaces deflate to about 8 KiB: far over max_frame_bytes (68 KiB) inflated
        await ws.send(" " * (8 * 1024 * 1024))
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(ws.recv(), 10)
        # the close frame the server sent (websockets < 15 has no ws.close_code)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    # the server lives on
    async with websockets.connect(url, extensions=DEFLATE, compression=None) as ws:
        await subscribe(ws, "orders-d")


async def test_compressed_client_frames_are_inflated(zserver: Server) -> None:
    url = f"{zserver.ws_url}/v1/ws?token={zserver.token()}"
    async with websockets.connect(url, extensions=DEFLATE, compression=None) as ws:
        await subscribe(ws, "orders-e")
        data = [record(i) for i in range(20)]  # compressed by the client (context reset)
        for i in range(3):
            await ws.send(
                json.dumps({"type": "publish", "id": f"m{i}", "channel": "orders-e", "data": data})
            )
        acks: list[str] = []
        got = []
        while len(acks) < 3 or len(got) < 3:
            msg = json.loads(await asyncio.wait_for(ws.recv(), 10))
            if msg["type"] == "ack":
                acks.append(msg["id"])
            elif msg["type"] == "event":
                got.append(msg["data"])
        assert acks == ["m0", "m1", "m2"] and got == [data] * 3
