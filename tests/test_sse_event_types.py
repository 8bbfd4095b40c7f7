"""``GET /v1/sse?named_events=1``: the event's name as the SSE ``event:`` type, for pages
that use ``EventSource.addEventListener(name, ...)``. The encoder byte for byte, the
encode-once memo it shares with the default wire, and the stream over HTTP against a
real server: the same data and ``id:`` as the default stream, only the type differs.
(The browser side is tests/test_browser_event_types.py.)"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from pushsvc.protocol.events import Event, Gap
from pushsvc.protocol.session import Replay, SessionCore
from pushsvc.protocol.wires import (
    SSE_RESERVED_TYPES,
    Frame,
    SSENamedWire,
    SSEWire,
    Wire,
    sse_event_type,
)
from tests.fixtures_server import Server
from tests.wire import SSEFrame, SSEReader

ROOT = Path(__file__).resolve().parent.parent
ID = (1795647018568, 0)


def _event(name: str, data: bytes = b'{"n":1}', sid: tuple[int, int] = ID) -> Event:
    return Event("orders", sid, name, data)


# --- the encoder ------------------------------------------------------------------------


def test_a_named_event_carries_its_name_as_the_sse_type() -> None:
    assert SSENamedWire().event(_event("order.created"), None) == (
        b"event: order.created\n"
        b'data: {"channel":"orders","event":"order.created","id":"1795647018568-0",'
        b'"data":{"n":1}}\n'
        b"id: c1mv_Tx-sBohTnFkgAAADL\n\n"
    )


def test_the_default_wire_keeps_message_for_every_event() -> None:
    assert SSEWire().event(_event("order.created"), None) == (
        b"event: message\n"
        b'data: {"channel":"orders","event":"order.created","id":"1795647018568-0",'
        b'"data":{"n":1}}\n'
        b"id: c1mv_Tx-sBohTnFkgAAADL\n\n"
    )


def test_an_unnamed_event_is_message_on_the_named_wire() -> None:
    # publish stores an event given without a name as "message"
    assert SSENamedWire().event(_event("message", sid=(1795647018568, 1)), None) == (
        b"event: message\n"
        b'data: {"channel":"orders","event":"message","id":"1795647018568-1",'
        b'"data":{"n":1}}\n'
        b"id: c1mv_Tx-sBohTnFkgAAAHM\n\n"
    )


def test_a_multi_channel_cursor_is_spliced_into_the_named_frame() -> None:
    assert SSENamedWire().event(_event("order.paid"), "c1AAAA") == (
        b"event: order.paid\n"
        b'data: {"channel":"orders","event":"order.paid","id":"1795647018568-0",'
        b'"data":{"n":1}}\n'
        b"id: c1AAAA\n\n"
    )


def test_the_named_frame_differs_from_the_default_only_in_its_type() -> None:
    for cursor in (None, "c1AAAA"):
        event = _event("order.created")
        named = SSENamedWire().event(event, cursor)
        default = SSEWire().event(event, cursor)
        assert isinstance(named, bytes) and isinstance(default, bytes)
        assert named.split(b"\n", 1)[1] == default.split(b"\n", 1)[1]


@pytest.mark.parametrize("name", sorted(SSE_RESERVED_TYPES))
def test_an_event_named_like_a_control_frame_or_an_eventsource_event_is_message(
    name: str,
) -> None:
    """A page's ``gap``/``close`` listener sees only pushsvc's frames, and ``onerror``
    only the connection's errors; the name is still the data's ``event`` member."""
    frame = SSENamedWire().event(_event(name), None)
    assert isinstance(frame, bytes)
    assert frame.startswith(b"event: message\ndata: {")
    assert f'"event":"{name}"'.encode() in frame


@pytest.mark.parametrize("name", ["a\nevent: close", "a\rb", "a\r\nb"])
def test_a_name_with_a_line_break_cannot_break_the_frame(name: str) -> None:
    """Publish refuses such names (see the HTTP test below); an event that reached the
    log another way still makes one well-formed frame: four lines, type message."""
    assert sse_event_type(name) == "message"
    frame = SSENamedWire().event(_event(name), None)
    assert isinstance(frame, bytes)
    lines = frame.split(b"\n")
    assert lines[0] == b"event: message" and lines[-2:] == [b"", b""]
    assert len(lines) == 5 and b"\r" not in frame


def test_control_frames_are_the_same_on_both_wires() -> None:
    named, default = SSENamedWire(), SSEWire()
    assert named.heartbeat == default.heartbeat
    assert named.subscribed(["orders"], "c1AAAA") == default.subscribed(["orders"], "c1AAAA")
    gap = Gap("orders", (1, 0), (4, 0))
    assert named.gap(gap, "c1AAAA") == default.gap(gap, "c1AAAA")
    assert named.control("token-expired", reason="x") == default.control(
        "token-expired", reason="x"
    )
    assert named.name == default.name == "sse"  # one transport in metrics


def test_the_reserved_types_are_the_control_frames_of_the_sse_reference() -> None:
    """docs/reference/sse.md has a heading per SSE type the server sends: all of them
    but ``message`` are reserved, with EventSource's own ``open`` and ``error``."""
    text = (ROOT / "docs/reference/sse.md").read_text()
    headings = re.findall(r"^### (.+)$", text, re.MULTILINE)
    documented = {t for h in headings for t in re.findall(r"`([a-z-]+)`", h)}
    assert documented - {"message"} | {"open", "error"} == SSE_RESERVED_TYPES


# --- encoded once per wire, lazily ------------------------------------------------------


class _Sink:
    def __init__(self, wire: Wire) -> None:
        self.core = SessionCore(
            wire, queue_messages=16, queue_bytes=1 << 20, history_page=10, max_channels=2
        )
        (channel,) = self.core.add_channels(["orders"])
        self.core.seed(channel, (0, 0))
        pos = self.core.channels[channel]
        self.core.history(channel, pos, [], None, (0, 0))
        assert self.core.replay(channel, pos) is Replay.LIVE

    def frames(self) -> list[Frame]:
        return self.core.drain()


def test_each_sse_variant_is_encoded_once_per_event_for_all_its_sessions() -> None:
    named = [_Sink(SSENamedWire()) for _ in range(3)]
    default = [_Sink(SSEWire()) for _ in range(2)]
    event = _event("order.created")
    memo: dict[type[Wire], Frame] = {}  # the hub's per-event memo
    for sink in named + default:
        sink.core.on_live(event, memo)
    assert set(memo) == {SSENamedWire, SSEWire}
    (first,) = named[0].frames()
    assert all(s.frames()[0] is first for s in named[1:])  # the very same bytes object
    (plain,) = default[0].frames()
    assert default[1].frames()[0] is plain
    assert isinstance(first, bytes) and first.startswith(b"event: order.created\n")
    assert isinstance(plain, bytes) and plain.startswith(b"event: message\n")


def test_the_named_frame_is_not_encoded_when_no_session_chose_it() -> None:
    sink = _Sink(SSEWire())
    event = _event("order.created")
    memo: dict[type[Wire], Frame] = {}
    sink.core.on_live(event, memo)
    assert set(memo) == {SSEWire}
    assert not {"ssen1", "ssenp"} & set(event.cache)


# --- over HTTP, against a real server ---------------------------------------------------

on_a_server = pytest.mark.parametrize("backend_url", ["memory"], indirect=True)


@asynccontextmanager
async def sse_stream(
    server: Server,
    channels: list[str],
    *,
    named: str | None = None,
    last_event_id: str | None = None,
) -> AsyncIterator[AsyncIterator[SSEFrame]]:
    params: dict[str, Any] = {"channel": channels}
    if named is not None:
        params["named_events"] = named
    headers = {"Authorization": f"Bearer {server.token()}"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    async with (
        httpx.AsyncClient(timeout=10) as http,
        http.stream("GET", server.url + "/v1/sse", params=params, headers=headers) as response,
    ):
        assert response.status_code == 200, await response.aread()
        yield SSEReader(response).frames()


async def _next(
    frames: AsyncIterator[SSEFrame], skip: tuple[str, ...] = ("heartbeat",)
) -> SSEFrame:
    async with asyncio.timeout(10):
        while True:
            frame = await anext(frames)
            if frame.event not in skip:
                return frame


# (name, data): no name is stored as "message"; a control frame's name is sent as one
PUBLISHED: list[tuple[str | None, int]] = [
    ("order.created", 1),
    ("order.paid", 2),
    (None, 3),
    ("close", 4),
]


def publish(server: Server, channel: str, name: str | None, data: Any) -> str:
    return server.publish(channel, data, **({} if name is None else {"event": name}))


@on_a_server
async def test_the_named_stream_types_events_by_name_and_the_default_stream_is_unchanged(
    server: Server,
) -> None:
    async with (
        sse_stream(server, ["orders"], named="1") as named,
        sse_stream(server, ["orders"]) as default,
        sse_stream(server, ["orders"], named="0") as explicit_default,
    ):
        streams = (named, default, explicit_default)
        assert [(await _next(s)).event for s in streams] == ["subscribed"] * 3
        ids = [await asyncio.to_thread(publish, server, "orders", *m) for m in PUBLISHED]
        got = [[await _next(s) for _ in PUBLISHED] for s in streams]
    assert [f.event for f in got[0]] == ["order.created", "order.paid", "message", "message"]
    assert [f.event for f in got[1]] == [f.event for f in got[2]] == ["message"] * 4
    # the same data and the same cursor on every stream: only the type differs
    for frames in got:
        assert [f.json()["id"] for f in frames] == ids
        assert [f.json()["event"] for f in frames] == [n or "message" for n, _ in PUBLISHED]
        assert [(f.data, f.id) for f in frames] == [(f.data, f.id) for f in got[1]]


@on_a_server
async def test_a_named_stream_resumed_with_last_event_id_gets_the_same_events(
    server: Server,
) -> None:
    channels = ["orders", "payments"]  # two channels: the cursor is spliced per session
    order = ["orders", "payments", "orders", "payments"]
    async with sse_stream(server, channels, named="1") as first:
        assert (await _next(first)).event == "subscribed"
        ids = [
            await asyncio.to_thread(publish, server, channel, f"{channel}.made", n)
            for n, channel in enumerate(order)
        ]
        seen = [await _next(first) for _ in range(2)]
    assert [f.event for f in seen] == ["orders.made", "payments.made"]
    cursor = seen[-1].id
    assert cursor is not None
    async with (
        sse_stream(server, channels, named="1", last_event_id=cursor) as named,
        sse_stream(server, channels, last_event_id=cursor) as default,
    ):
        assert (await _next(named)).event == (await _next(default)).event == "subscribed"
        rest = [await _next(named) for _ in range(2)]
        rest_default = [await _next(default) for _ in range(2)]
    assert [f.event for f in rest] == ["orders.made", "payments.made"]
    assert [f.json()["id"] for f in seen + rest] == ids
    assert [(f.data, f.id) for f in rest] == [(f.data, f.id) for f in rest_default]


@on_a_server
@pytest.mark.parametrize("value", ["yes", "2", "named"])
async def test_a_bad_named_events_value_is_a_400_problem(server: Server, value: str) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.get(
            server.url + "/v1/sse",
            params={"channel": "orders", "named_events": value},
            headers={"Authorization": f"Bearer {server.token()}"},
        )
        assert r.status_code == 400
        assert r.headers["content-type"].startswith("application/problem+json")
        assert "named_events" in r.json()["detail"]
        # credentials are checked first: no token is a 401 whatever the option says
        r = await http.get(
            server.url + "/v1/sse", params={"channel": "orders", "named_events": value}
        )
        assert r.status_code == 401


@on_a_server
@pytest.mark.parametrize("name", ["order\ncreated", "order\rcreated", "order created", ""])
async def test_publish_refuses_an_event_name_that_could_break_an_sse_frame(
    server: Server, name: str
) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.post(
            server.url + "/v1/publish",
            json={"channel": "orders", "event": name, "data": 1},
            headers=server.api_headers,
        )
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
