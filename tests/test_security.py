"""Auth, authorization and limits against a real server: nobody gets in where they don't
belong, every limit answers with its documented status or close code."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from pushsvc.auth import Authenticator
from pushsvc.protocol import codes
from tests.fixtures_server import API_KEY, SECRET, Server, make_server
from tests.test_bad_input import assert_problem
from tests.wire import SSEReader, poll_once, ws_collect

pytestmark = pytest.mark.parametrize("backend_url", ["memory"], indirect=True)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def next_frame(ws: Any, kind: str, timeout: float = 5) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            frame = json.loads(await ws.recv())
            if frame["type"] == kind:
                return frame  # type: ignore[no-any-return]


# --- credentials ------------------------------------------------------------------------


def test_secret_rotation_accepts_old_and_new_signing_keys(server_factory: Any) -> None:
    server: Server = server_factory(secrets=f"new-secret-0123456789,{SECRET}")
    old = Authenticator((SECRET,), ()).issue("alice", subscribe=["*"])
    new = Authenticator(("new-secret-0123456789",), ()).issue("alice", subscribe=["*"])
    alien = Authenticator(("someone-else",), ()).issue("alice", subscribe=["*"])
    params = {"channel": "a", "timeout": 0}
    assert httpx.get(server.url + "/v1/poll", params=params, headers=bearer(old)).status_code == 200
    assert httpx.get(server.url + "/v1/poll", params=params, headers=bearer(new)).status_code == 200
    assert_problem(httpx.get(server.url + "/v1/poll", params=params, headers=bearer(alien)), 401)


def test_api_keys_are_several_and_revocable_by_config(server_factory: Any) -> None:
    server: Server = server_factory(api_keys="key-one,key-two")
    body = {"channel": "k", "data": 1}
    for key in ("key-one", "key-two"):
        assert httpx.post(server.url + "/v1/publish", json=body, headers=bearer(key)).is_success
    revoked = httpx.post(server.url + "/v1/publish", json=body, headers=bearer(API_KEY))
    assert_problem(revoked, 401)


async def test_websocket_token_refresh_in_band(server: Server) -> None:
    async with websockets.connect(f"{server.ws_url}/v1/ws?token={server.token(ttl=60)}") as ws:
        await ws.send(json.dumps({"type": "refresh", "token": server.token(ttl=3600)}))
        refreshed = await next_frame(ws, "refreshed")
        assert refreshed["expires_at"] > 0
        await ws.send(json.dumps({"type": "refresh", "token": server.token("mallory")}))
        error = await next_frame(ws, "error")
        assert error["op"] == "refresh"
        await ws.send(json.dumps({"type": "refresh", "token": "forged"}))
        assert (await next_frame(ws, "error"))["code"] == codes.WS_4401_UNAUTHORIZED


async def test_token_expiry_on_a_live_connection_closes_with_4402_and_resume_loses_nothing(
    server_factory: Any,
) -> None:
    server: Server = server_factory(heartbeat_interval=0.3)
    short = server.token(ttl=1.5)
    async with websockets.connect(f"{server.ws_url}/v1/ws?token={short}") as ws:
        await ws.send(json.dumps({"type": "subscribe", "channels": ["exp"]}))
        cursor = (await next_frame(ws, "subscribed"))["cursor"]
        with pytest.raises(ConnectionClosed) as closed:
            async with asyncio.timeout(5):
                while True:
                    frame = json.loads(await ws.recv())
                    cursor = frame.get("cursor", cursor)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == codes.WS_4402_TOKEN_EXPIRED
    ids = [server.publish("exp", i) for i in range(3)]
    items, _ = await ws_collect(server.ws_url, ["exp"], server.token(), 3, cursor=cursor)
    assert [i["id"] for i in items] == ids


async def test_sse_stream_ends_with_token_expired_event(server_factory: Any) -> None:
    server: Server = server_factory(heartbeat_interval=0.3)
    kinds: list[str] = []
    async with (
        httpx.AsyncClient(timeout=10) as client,
        client.stream(
            "GET",
            server.url + "/v1/sse",
            params={"channel": "e"},
            headers=bearer(server.token(ttl=1)),
        ) as response,
    ):
        async with asyncio.timeout(6):
            async for frame in SSEReader(response).frames():
                kinds.append(frame.event)
    assert kinds[-2:] == ["token-expired", "close"]


# --- browsers -------------------------------------------------------------------------------


async def test_cross_site_websocket_is_refused_and_same_origin_allowed(server: Server) -> None:
    url = f"{server.ws_url}/v1/ws?token={server.token()}"
    with pytest.raises(InvalidStatus) as refused:
        async with websockets.connect(url, origin="https://evil.example"):  # type: ignore[arg-type]
            pass
    assert refused.value.response.status_code == 403
    async with websockets.connect(url, origin=server.url) as ws:  # type: ignore[arg-type]
        await ws.send(json.dumps({"type": "ping", "id": 1}))
        assert (await next_frame(ws, "pong"))["id"] == 1


async def test_allowed_origins_list(server_factory: Any) -> None:
    server: Server = server_factory(allowed_origins="https://app.example")
    url = f"{server.ws_url}/v1/ws?token={server.token()}"
    async with websockets.connect(url, origin="https://app.example"):  # type: ignore[arg-type]
        pass
    with pytest.raises(InvalidStatus):
        async with websockets.connect(url, origin="https://other.example"):  # type: ignore[arg-type]
            pass


def test_cors_only_for_configured_origins(server_factory: Any) -> None:
    server: Server = server_factory(cors_origins="https://app.example")
    preflight = httpx.options(
        server.url + "/v1/publish",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    assert "access-control-allow-credentials" not in preflight.headers
    params = {"channel": "c", "timeout": 0}
    ok = httpx.get(
        server.url + "/v1/poll",
        params=params,
        headers={"Origin": "https://app.example", **bearer(server.token())},
    )
    assert ok.headers["access-control-allow-origin"] == "https://app.example"
    other = httpx.get(
        server.url + "/v1/poll",
        params=params,
        headers={"Origin": "https://evil.example", **bearer(server.token())},
    )
    assert "access-control-allow-origin" not in other.headers


def test_tokens_in_query_strings_never_reach_the_logs(backend_url: str, tmp_path: Any) -> None:
    server = make_server(backend_url)
    server.log_level = "info"
    server.log_path = str(tmp_path / "server.log")
    server.start()
    try:
        token = server.token()
        httpx.get(server.url + "/v1/poll", params={"channel": "a", "timeout": 0, "token": token})
        httpx.get(server.url + "/v1/poll", params={"channel": "a", "token": "bogus-token-xyz"})
    finally:
        server.stop()
    log = (tmp_path / "server.log").read_text()
    assert "/v1/poll" in log and "token=REDACTED" in log
    assert token not in log and "bogus-token-xyz" not in log


# --- limits ---------------------------------------------------------------------------------


async def test_oversize_websocket_frame_closes_with_1009(server_factory: Any) -> None:
    server: Server = server_factory(max_frame_bytes=4096)
    async with websockets.connect(f"{server.ws_url}/v1/ws?token={server.token()}") as ws:
        await ws.send(json.dumps({"type": "ping", "pad": "x" * 8000}))
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == codes.WS_1009_MESSAGE_TOO_BIG


async def test_channels_per_session_limit(server_factory: Any) -> None:
    server: Server = server_factory(max_channels_per_session=3)
    params = {"channel": ["a", "b", "c", "d"], "timeout": 0}
    assert_problem(
        httpx.get(server.url + "/v1/poll", params=params, headers=bearer(server.token())), 400
    )
    async with websockets.connect(f"{server.ws_url}/v1/ws?token={server.token()}") as ws:
        await ws.send(json.dumps({"type": "subscribe", "channels": ["a", "b"]}))
        await next_frame(ws, "subscribed")
        await ws.send(json.dumps({"type": "subscribe", "channels": ["c", "d"]}))
        error = await next_frame(ws, "error")
        assert error["code"] == codes.WS_4400_BAD_REQUEST and "at most 3" in error["detail"]


async def test_connection_flood_is_refused_cleanly_while_existing_clients_work(
    server_factory: Any,
) -> None:
    server: Server = server_factory(max_connections=5)
    token = server.token()
    sockets = []
    for _ in range(5):
        ws = await websockets.connect(f"{server.ws_url}/v1/ws?token={token}")
        await ws.send(json.dumps({"type": "subscribe", "channels": ["flood"]}))
        await next_frame(ws, "subscribed")
        sockets.append(ws)
    try:
        with pytest.raises(InvalidStatus) as refused:
            async with websockets.connect(f"{server.ws_url}/v1/ws?token={token}"):
                pass
        assert refused.value.response.status_code == 503
        r = httpx.get(server.url + "/v1/sse", params={"channel": "flood"}, headers=bearer(token))
        assert_problem(r, 503)
        assert int(r.headers["retry-after"]) >= 1
        event_id = server.publish("flood", "still here")
        for ws in sockets:
            assert (await next_frame(ws, "event"))["id"] == event_id
    finally:
        for ws in sockets:
            await ws.close()


async def test_publish_rate_limit_per_token(server_factory: Any) -> None:
    server: Server = server_factory(publish_rate=2, publish_burst=3)
    token = server.token()
    statuses = [
        httpx.post(
            server.url + "/v1/publish", json={"channel": "r", "data": i}, headers=bearer(token)
        )
        for i in range(4)
    ]
    assert [r.status_code for r in statuses] == [200, 200, 200, 429]
    assert int(statuses[-1].headers["retry-after"]) >= 1
    assert_problem(statuses[-1], 429)
    # the same subject on WebSocket shares the bucket: an error frame, the socket stays
    async with websockets.connect(f"{server.ws_url}/v1/ws?token={token}") as ws:
        await ws.send(json.dumps({"type": "publish", "id": "m1", "channel": "r", "data": 1}))
        error = await next_frame(ws, "error")
        assert error["code"] == codes.WS_4429_RATE_LIMITED and error["id"] == "m1"
        await ws.send(json.dumps({"type": "ping"}))
        await next_frame(ws, "pong")
    # API keys have their own bucket
    assert httpx.post(
        server.url + "/v1/publish", json={"channel": "r", "data": 0}, headers=server.api_headers
    ).is_success


async def test_idle_websocket_is_closed(server_factory: Any) -> None:
    server: Server = server_factory(idle_timeout=0.5, heartbeat_interval=0.2)
    async with websockets.connect(f"{server.ws_url}/v1/ws?token={server.token()}") as ws:
        with pytest.raises(ConnectionClosed) as closed:
            async with asyncio.timeout(5):
                while True:
                    await ws.recv()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == codes.WS_4000_HEARTBEAT_TIMEOUT


async def test_slow_consumer_is_cut_and_resumes_without_loss(server_factory: Any) -> None:
    server: Server = server_factory(outbound_queue_messages=20)
    token = server.token()
    start = (await poll_once(server.url, ["slow"], token, timeout=0))["cursor"]
    received: list[str] = []
    last_cursor = start
    async with websockets.connect(
        f"{server.ws_url}/v1/ws?token={token}", max_queue=4, max_size=None
    ) as ws:
        await ws.send(json.dumps({"type": "subscribe", "channels": ["slow"], "cursor": start}))
        await next_frame(ws, "subscribed")
        # stop reading; publish ~16 MB so kernel buffers fill and the queue overflows
        published: list[str] = []
        payload = "x" * 16_000
        async with httpx.AsyncClient(timeout=30) as client:
            for _ in range(10):
                r = await client.post(
                    server.url + "/v1/publish",
                    json={"messages": [{"channel": "slow", "data": payload}] * 100},
                    headers=server.api_headers,
                )
                published += [x["id"] for x in r.json()["results"]]
        with pytest.raises(ConnectionClosed) as closed:
            async with asyncio.timeout(30):
                while True:
                    frame = json.loads(await ws.recv())
                    if frame["type"] == "event":
                        received.append(frame["id"])
                        last_cursor = frame["cursor"]
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == codes.WS_4008_SLOW_CONSUMER
    assert len(received) < len(published)
    rest, _ = await ws_collect(
        server.ws_url,
        ["slow"],
        token,
        len(published) - len(received),
        cursor=last_cursor,
        timeout=30,
    )
    assert received + [i["id"] for i in rest] == published
