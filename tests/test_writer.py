"""The hub's write path: batched WebSocket messages, connections that push back, and the
subscribe answer that precedes live delivery (pushsvc.writer)."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import httpx
import pytest
import websockets
from websockets.client import ClientProtocol
from websockets.frames import Close, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from tests.fixtures_server import Server

pytestmark = pytest.mark.asyncio
N_STALL = 200


def publish_padded(server: Server, channel: str, pads: dict[int, int]) -> None:
    """One batch request: event ``n`` carries ``{"n": n, "pad": "x" * pads[n]}``."""
    messages = [{"channel": channel, "data": {"n": n, "pad": "x" * pad}} for n, pad in pads.items()]
    r = httpx.post(
        server.url + "/v1/publish",
        json={"messages": messages},
        headers=server.api_headers,
        timeout=30,
    )
    r.raise_for_status()


def publish_batch(server: Server, channel: str, start: int, count: int, pad: int = 0) -> None:
    publish_padded(server, channel, dict.fromkeys(range(start, start + count), pad))


async def subscribed(ws: Any, channel: str) -> dict[str, Any]:
    await ws.send(json.dumps({"type": "subscribe", "channels": [channel]}))
    async with asyncio.timeout(10):
        while True:
            frame = json.loads(await ws.recv())
            if frame["type"] == "subscribed":
                return dict(frame)


async def events_of(ws: Any, count: int, split: bool) -> tuple[list[int], int]:
    """The ``n`` of ``count`` events, and how many WebSocket messages carried them."""
    seen: list[int] = []
    messages = 0
    async with asyncio.timeout(20):
        while len(seen) < count:
            raw = await ws.recv()
            messages += 1
            parts = raw.split("\n") if split else [raw]
            for part in parts:
                frame = json.loads(part)  # without batch=1 a message is exactly one frame
                if frame["type"] == "event":
                    seen.append(frame["data"]["n"])
    return seen, messages


async def test_batch_clients_get_a_backlog_in_fewer_messages_in_order(server: Server) -> None:
    token = server.token()
    async with (
        websockets.connect(f"{server.ws_url}/v1/ws?token={token}&batch=1") as batched,
        websockets.connect(f"{server.ws_url}/v1/ws?token={token}") as plain,
    ):
        await subscribed(batched, "wr")
        await subscribed(plain, "wr")
        # a request publishes 100 events: they are all queued before the hub writes
        for start in range(0, 300, 100):
            await asyncio.to_thread(publish_batch, server, "wr", start, 100)
        got_batched, batched_messages = await events_of(batched, 300, split=True)
        got_plain, plain_messages = await events_of(plain, 300, split=False)
    assert got_batched == list(range(300))
    assert got_plain == list(range(300))
    assert plain_messages == 300
    assert batched_messages < 300 // 2, batched_messages


class RawWebSocket:
    """A WebSocket client on a plain socket with a small receive buffer, which reads only
    when told to: a client that stops reading fills its socket for real."""

    def __init__(self, url: str) -> None:
        self.protocol = ClientProtocol(parse_uri(url), max_size=2**24)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        host, port = url.removeprefix("ws://").split("/")[0].split(":")
        self.sock.connect((host, int(port)))
        self.protocol.send_request(self.protocol.connect())
        self._flush()
        while not isinstance(self._events(), Response):  # the handshake answer
            pass
        self.frames: list[Any] = []

    def _flush(self) -> None:
        for data in self.protocol.data_to_send():
            self.sock.sendall(data)

    def _events(self) -> Any:
        self.sock.settimeout(20)
        self.protocol.receive_data(self.sock.recv(65536))
        events = self.protocol.events_received()
        for event in events:
            if isinstance(event, Response):
                return event
        self.frames += events
        return None

    def send_json(self, obj: Any) -> None:
        self.protocol.send_text(json.dumps(obj).encode())
        self._flush()

    def read_events(self, count: int) -> tuple[list[int], int | None]:
        """Read until ``count`` events arrived or the server closed; (ns, close code)."""
        seen: list[int] = []
        while len(seen) < count:
            while not self.frames:
                self._events()
            frame = self.frames.pop(0)
            if frame.opcode is Opcode.CLOSE:
                return seen, Close.parse(frame.data).code
            if frame.opcode is Opcode.TEXT:
                for part in frame.data.decode().split("\n"):
                    item = json.loads(part)
                    if item["type"] == "event":
                        seen.append(item["data"]["n"])
        return seen, None


async def test_a_connection_that_stops_reading_holds_up_nobody(server: Server) -> None:
    """A client that reads nothing fills its socket and the server's write buffer; the
    hub finishes that connection's writes in a task of its own while every other
    subscriber keeps receiving."""
    token = server.token()
    stalled = RawWebSocket(f"{server.ws_url}/v1/ws?token={token}&batch=1")
    try:
        stalled.send_json({"type": "subscribe", "channels": ["stall"]})
        async with websockets.connect(
            f"{server.ws_url}/v1/ws?token={token}&batch=1", max_size=2**22
        ) as healthy:
            await subscribed(healthy, "stall")
            # 200 events of 16 KiB: 3.2 MB, far beyond what the stalled socket holds
            for start in range(0, N_STALL, 20):
                await asyncio.to_thread(publish_batch, server, "stall", start, 20, 16 * 1024)
                got, _ = await events_of(healthy, 20, split=True)
                assert got == list(range(start, start + 20))
        # now the stalled client reads: what it gets is in order, without duplicates,
        # and either complete or cut as a slow consumer (4008) to resume by cursor
        seen, close_code = await asyncio.to_thread(stalled.read_events, N_STALL)
        assert seen == list(range(len(seen)))
        assert len(seen) == N_STALL or close_code == 4008, (len(seen), close_code)
    finally:
        stalled.sock.close()


async def test_subscribe_is_answered_before_live_events_and_always(server: Server) -> None:
    token = server.token()
    async with websockets.connect(f"{server.ws_url}/v1/ws?token={token}") as ws:
        first = await subscribed(ws, "seed")
        assert first["channels"] == ["seed"]
        # an event published right after the answer is delivered: the channel was live
        await ws.send(json.dumps({"type": "publish", "channel": "seed", "data": 1, "id": "m1"}))
        kinds: list[str] = []
        async with asyncio.timeout(10):
            while "event" not in kinds or "ack" not in kinds:
                kinds.append(json.loads(await ws.recv())["type"])
        # subscribing to what is already subscribed is answered too
        again = await subscribed(ws, "seed")
        assert again["channels"] == ["seed"]
        assert again["cursor"]


async def test_frames_of_every_length_encoding_arrive_intact(server: Server) -> None:
    """The server frames text messages itself (pushsvc.server): 7-bit, 16-bit and
    64-bit payload lengths, alone and several per write."""
    token = server.token()
    # frames are the payload plus ~150 bytes: the last one needs a 64-bit length
    sizes = [0, 60, 125, 126, 200, 65_200, 65_450]
    async with (
        websockets.connect(f"{server.ws_url}/v1/ws?token={token}", max_size=2**20) as plain,
        websockets.connect(
            f"{server.ws_url}/v1/ws?token={token}&batch=1", max_size=2**20
        ) as batched,
    ):
        await subscribed(plain, "sizes")
        await subscribed(batched, "sizes")
        publish_padded(server, "sizes", dict(enumerate(sizes)))
        for ws, split in ((plain, False), (batched, True)):
            got: list[dict[str, Any]] = []
            async with asyncio.timeout(20):
                while len(got) < len(sizes):
                    raw = await ws.recv()
                    for part in raw.split("\n") if split else [raw]:
                        frame = json.loads(part)
                        if frame["type"] == "event":
                            got.append(frame["data"])
            assert [d["n"] for d in got] == list(range(len(sizes)))
            assert [len(d["pad"]) for d in got] == sizes


async def test_a_large_fan_out_at_light_load_reaches_everyone_once_in_order(
    server: Server,
) -> None:
    """More subscribers than one flush chunk (``hub.FLUSH_CHUNK``): with nothing waiting
    to be written, the hub writes the first chunk before dispatching the rest; every
    subscriber still gets every event once, in order, whether events come one at a time
    (light load) or in batches (a flush pass pending)."""
    from pushsvc.hub import FLUSH_CHUNK

    n = FLUSH_CHUNK * 2 + 10
    token = server.token()
    sockets = [await websockets.connect(f"{server.ws_url}/v1/ws?token={token}") for _ in range(n)]
    try:
        for ws in sockets:
            await subscribed(ws, "fan-light")
        for i in range(10):  # one at a time: each publish answered before the next
            await asyncio.to_thread(publish_batch, server, "fan-light", i, 1)
        await asyncio.to_thread(publish_batch, server, "fan-light", 10, 20)
        got = await asyncio.gather(*(events_of(ws, 30, split=False) for ws in sockets))
    finally:
        for ws in sockets:
            await ws.close()
    assert all(seen == list(range(30)) for seen, _ in got)
