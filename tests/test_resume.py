"""Resume across transports and instances: every event exactly once, in per-channel order."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
import websockets

from pushsvc.protocol import cursor as cursor_codec
from tests.fixtures_server import Server
from tests.waiting import until
from tests.wire import by_channel, poll_collect, poll_once, sse_collect, ws_collect


def publish_many(server: Server, plan: list[str]) -> dict[str, list[str]]:
    ids: dict[str, list[str]] = {}
    for i, channel in enumerate(plan):
        ids.setdefault(channel, []).append(server.publish(channel, {"n": i}))
    return ids


def merge(*parts: dict[str, list[str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for part in parts:
        for channel, ids in part.items():
            out.setdefault(channel, []).extend(ids)
    return out


async def test_one_cursor_resumes_across_sse_long_poll_and_websocket(server: Server) -> None:
    token = server.token()
    channels = ["orders", "chat:1"]
    start = (await poll_once(server.url, channels, token, timeout=0))["cursor"]
    first = publish_many(server, ["orders", "chat:1"] * 6)

    # SSE: read 4 events, then drop the connection, keeping the last id
    sse_items, last_id = await sse_collect(server.url, channels, token, 4, last_event_id=start)
    assert last_id is not None
    # long-poll from the SSE id: the rest of the backlog
    poll_items, cursor = await poll_collect(server.url, channels, token, 8, cursor=last_id)
    second = publish_many(server, ["chat:1", "orders", "chat:1"] * 2)
    # WebSocket from the long-poll cursor
    ws_items, _ = await ws_collect(server.ws_url, channels, token, 6, cursor=cursor)

    got = merge(by_channel(sse_items), by_channel(poll_items), by_channel(ws_items))
    assert got == merge(first, second)
    # nothing more is pending: no duplicate would follow
    rest = await poll_once(server.url, channels, token, cursor=cursor, timeout=0)
    already = {i for ids in first.values() for i in ids}
    assert [e for e in rest["events"] if e["id"] in already] == []


async def test_every_sse_frame_id_is_a_cursor_for_all_channels(server: Server) -> None:
    token = server.token()
    start = (await poll_once(server.url, ["a", "b"], token, timeout=0))["cursor"]
    server.publish("a", 1)
    server.publish("b", 2)
    _, last_id = await sse_collect(server.url, ["a", "b"], token, 2, last_event_id=start)
    assert last_id is not None
    decoded = cursor_codec.positions_for(last_id, ["a", "b"])
    assert all(position is not None for position in decoded.values())
    server.publish("a", 3)
    items, _ = await sse_collect(server.url, ["a", "b"], token, 1, last_event_id=last_id)
    assert [i["data"] for i in items] == [3]


async def test_quiet_channel_subscriber_resumes_from_its_first_cursor(server: Server) -> None:
    token = server.token()
    async with websockets.connect(f"{server.ws_url}/v1/ws?token={token}") as ws:
        await ws.send(json.dumps({"type": "subscribe", "channels": ["quiet"]}))
        subscribed = json.loads(await ws.recv())
    assert subscribed["type"] == "subscribed"
    ids = [server.publish("quiet", i) for i in range(3)]  # published while disconnected
    items, _ = await ws_collect(server.ws_url, ["quiet"], token, 3, cursor=subscribed["cursor"])
    assert [i["id"] for i in items] == ids


async def test_live_and_history_seam_has_no_gap_or_duplicate(server: Server) -> None:
    """Publish continuously while subscribers resume from an old cursor."""
    token = server.token()
    start = (await poll_once(server.url, ["seam"], token, timeout=0))["cursor"]
    published: list[str] = []

    async def publisher() -> None:
        async with httpx.AsyncClient() as client:
            for i in range(150):
                r = await client.post(
                    server.url + "/v1/publish",
                    json={"channel": "seam", "data": i},
                    headers=server.api_headers,
                )
                published.append(r.json()["id"])

    task = asyncio.create_task(publisher())
    # some history to resume, with the rest of the stream still to come live
    await until(lambda: len(published), 30, "10 publishes", check=lambda n: n >= 10)
    results = await asyncio.gather(
        ws_collect(server.ws_url, ["seam"], token, 150, cursor=start, timeout=30),
        sse_collect(server.url, ["seam"], token, 150, last_event_id=start, timeout=30),
        poll_collect(server.url, ["seam"], token, 150, cursor=start),
    )
    await task
    for items, _ in results:
        assert [i["id"] for i in items] == published


def test_publish_is_idempotent_by_key(server: Server) -> None:
    first = server.publish("idem", {"v": 1}, idempotency_key="k-1")
    again = server.publish("idem", {"v": 1}, idempotency_key="k-1")
    assert first == again
    history = httpx.get(server.url + "/v1/channels/idem/history", headers=server.api_headers).json()
    assert [e["id"] for e in history["events"]] == [first]


def test_batch_publish_answers_every_id_in_order(server: Server) -> None:
    r = httpx.post(
        server.url + "/v1/publish",
        json={"messages": [{"channel": "b1", "data": i} for i in range(5)]},
        headers=server.api_headers,
    )
    assert r.status_code == 200
    ids = [x["id"] for x in r.json()["results"]]
    assert ids == sorted(ids, key=lambda s: tuple(map(int, s.split("-")))) and len(set(ids)) == 5


async def test_binary_payload_on_every_transport(server: Server) -> None:
    token = server.token()
    start = (await poll_once(server.url, ["bin"], token, timeout=0))["cursor"]
    payload = bytes(range(256))
    import base64

    r = httpx.post(
        server.url + "/v1/publish",
        json={"channel": "bin", "data_b64": base64.b64encode(payload).decode()},
        headers=server.api_headers,
    )
    assert r.status_code == 200
    polled = await poll_once(server.url, ["bin"], token, cursor=start)
    assert base64.b64decode(polled["events"][0]["data"]) == payload
    sse, _ = await sse_collect(server.url, ["bin"], token, 1, last_event_id=start)
    assert sse[0]["encoding"] == "base64" and base64.b64decode(sse[0]["data"]) == payload
    async with websockets.connect(f"{server.ws_url}/v1/ws?token={token}") as ws:
        await ws.send(json.dumps({"type": "subscribe", "channels": ["bin"], "cursor": start}))
        while True:
            frame = await asyncio.wait_for(ws.recv(), 5)
            if isinstance(frame, bytes):
                head, _, body = frame.partition(b"\n")
                assert json.loads(head)["encoding"] == "binary" and body == payload
                break
        # and a client can publish bytes with a binary frame
        await ws.send(b'{"type":"publish","id":"b-1","channel":"bin"}\n' + b"\x00\x01\x02")
        while True:
            frame = await asyncio.wait_for(ws.recv(), 5)
            if isinstance(frame, str) and json.loads(frame)["type"] == "ack":
                break
    last = httpx.get(server.url + "/v1/channels/bin/history", headers=server.api_headers).json()
    assert base64.b64decode(last["events"][-1]["data"]) == b"\x00\x01\x02"


# --- retention and gaps ---------------------------------------------------------------


async def _expect_gap_then_retained(items: list[dict[str, Any]], ids: list[str]) -> None:
    assert items[0]["type"] == "gap"
    assert items[0]["channel"] == "g"
    assert items[0]["until"] == ids[4]  # the 5 oldest were trimmed
    assert [i["id"] for i in items[1:]] == ids[5:]


async def test_trimmed_history_sends_a_gap_on_every_transport(server_factory: Any) -> None:
    server: Server = server_factory(retention_max_len=5)
    token = server.token()
    start = (await poll_once(server.url, ["g"], token, timeout=0))["cursor"]
    ids = [server.publish("g", i) for i in range(10)]

    polled, _ = await poll_collect(server.url, ["g"], token, 6, cursor=start)
    await _expect_gap_then_retained(polled, ids)
    sse, _ = await sse_collect(server.url, ["g"], token, 6, last_event_id=start)
    await _expect_gap_then_retained(sse, ids)
    ws, _ = await ws_collect(server.ws_url, ["g"], token, 6, cursor=start)
    await _expect_gap_then_retained(ws, ids)
    history = httpx.get(
        server.url + "/v1/channels/g/history", params={"after": "0-0"}, headers=server.api_headers
    ).json()
    assert history["events"][0]["type"] == "gap"


# --- two instances sharing one Redis --------------------------------------------------


@pytest.mark.parametrize("backend_url", ["redis"], indirect=True)
async def test_resume_on_another_instance(server_factory: Any) -> None:
    a: Server = server_factory()
    b: Server = server_factory()
    token = a.token()
    channels = ["x", "y"]
    start = (await poll_once(a.url, channels, token, timeout=0))["cursor"]
    ids = publish_many(a, ["x", "y", "x", "y", "x", "y"])
    sse_items, last_id = await sse_collect(a.url, channels, token, 3, last_event_id=start)
    poll_items, cursor = await poll_collect(b.url, channels, token, 3, cursor=last_id)
    more = publish_many(b, ["y", "x"])
    ws_items, _ = await ws_collect(a.ws_url, channels, token, 2, cursor=cursor)
    got = merge(by_channel(sse_items), by_channel(poll_items), by_channel(ws_items))
    assert got == merge(ids, more)


@pytest.mark.parametrize("backend_url", ["redis"], indirect=True)
async def test_live_events_reach_subscribers_on_every_instance(server_factory: Any) -> None:
    a: Server = server_factory()
    b: Server = server_factory()
    token = a.token()
    start = (await poll_once(b.url, ["live"], token, timeout=0))["cursor"]
    collector = asyncio.create_task(ws_collect(b.ws_url, ["live"], token, 20, cursor=start))
    # b listens on the channel: what a publishes from now on reaches b live
    await until(
        lambda: httpx.get(b.url + "/readyz", timeout=5).json()["listener"]["channels"],
        10,
        "instance b listening on the channel",
        check=lambda channels: channels >= 1,
    )
    ids = [a.publish("live", i) for i in range(20)]
    items, _ = await collector
    assert [i["id"] for i in items] == ids
