"""Bad input gets a clear 4xx problem or a documented close code, and the server keeps
serving everyone else."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from pushsvc.protocol import codes
from tests.fixtures_server import Server
from tests.wire import poll_once, ws_collect


def assert_problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = r.json()
    assert body["status"] == status and body["type"] and body["detail"]
    assert "Traceback" not in r.text
    return body


async def ws_close_code(server: Server, frame: str | bytes, token: str) -> int:
    async with websockets.connect(f"{server.ws_url}/v1/ws?token={token}") as ws:
        await ws.send(frame)
        with pytest.raises(ConnectionClosed) as closed:
            for _ in range(10):
                await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code


@pytest.mark.parametrize(
    ("path", "params"),
    [("/v1/poll", {"channel": "a", "timeout": 0}), ("/v1/sse", {"channel": "a"})],
)
@pytest.mark.parametrize("cursor", ["garbage", "c1" + "A" * 20, "c1" + "_" * 7])
def test_malformed_cursor_is_a_400(
    server: Server, path: str, params: dict[str, Any], cursor: str
) -> None:
    key = "cursor" if path == "/v1/poll" else "last_event_id"
    r = httpx.get(
        server.url + path,
        params={**params, key: cursor},
        headers={"Authorization": f"Bearer {server.token()}"},
    )
    assert assert_problem(r, 400)["type"].endswith("bad-cursor")


@pytest.mark.parametrize("channel", ["has space", "a{b}", "x" * 200, ""])
def test_invalid_channel_name_is_a_400(server: Server, channel: str) -> None:
    headers = {"Authorization": f"Bearer {server.token()}"}
    assert_problem(
        httpx.get(
            server.url + "/v1/poll", params={"channel": channel, "timeout": 0}, headers=headers
        ),
        400,
    )
    assert_problem(
        httpx.post(
            server.url + "/v1/publish",
            json={"channel": channel, "data": 1},
            headers=server.api_headers,
        ),
        400,
    )


def test_oversize_publish_is_a_413(server_factory: Any) -> None:
    server: Server = server_factory(max_publish_bytes=1024)
    r = httpx.post(
        server.url + "/v1/publish",
        json={"channel": "a", "data": "x" * 2000},
        headers=server.api_headers,
    )
    assert_problem(r, 413)
    huge = b'{"channel":"a","data":"' + b"x" * 2_000_000 + b'"}'
    r = httpx.post(
        server.url + "/v1/publish",
        content=huge,
        headers={**server.api_headers, "content-type": "application/json"},
    )
    assert_problem(r, 413)


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"channel":"a"}',
        b'{"messages":[]}',
        b'{"channel":"a","data":1,"event":"a b"}',
    ],
)
def test_malformed_publish_is_a_400(server: Server, body: bytes) -> None:
    r = httpx.post(
        server.url + "/v1/publish",
        content=body,
        headers={**server.api_headers, "content-type": "application/json"},
    )
    assert_problem(r, 400)


@pytest.mark.parametrize(
    ("message", "status", "close_code"),
    [
        ({"channel": "has space", "data": 1}, 400, codes.WS_4400_BAD_REQUEST),
        ({"channel": "a", "event": "a b", "data": 1}, 400, codes.WS_4400_BAD_REQUEST),
        ({"channel": "a"}, 400, codes.WS_4400_BAD_REQUEST),
        ({"channel": "a", "data_b64": "%%%"}, 400, codes.WS_4400_BAD_REQUEST),
    ],
)
async def test_a_malformed_publish_gets_the_same_answer_over_http_and_websocket(
    server: Server, message: dict[str, Any], status: int, close_code: int
) -> None:
    r = httpx.post(server.url + "/v1/publish", json=message, headers=server.api_headers)
    detail = assert_problem(r, status)["detail"]
    frame = json.dumps({"type": "publish", "id": "m1", **message})
    async with websockets.connect(f"{server.ws_url}/v1/ws?token={server.token()}") as ws:
        await ws.send(frame)
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd is not None  # a frame the server cannot understand closes
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (close_code, detail)


@pytest.mark.parametrize("binary", [False, True])
async def test_a_publish_over_max_publish_bytes_fails_alone_over_http_and_websocket(
    server_factory: Any, binary: bool
) -> None:
    server: Server = server_factory(max_publish_bytes=1024)
    r = httpx.post(
        server.url + "/v1/publish",
        json={"channel": "a", "data": "x" * 2000},
        headers=server.api_headers,
    )
    problem = assert_problem(r, 413)
    token = server.token(publish=("*",))
    async with websockets.connect(f"{server.ws_url}/v1/ws?token={token}") as ws:
        if binary:
            await ws.send(b'{"type":"publish","id":"m1","channel":"a"}\n' + b"x" * 2002)
        else:
            await ws.send(
                json.dumps({"type": "publish", "id": "m1", "channel": "a", "data": "x" * 2000})
            )
        error = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert error == {
            "type": "error",
            "code": codes.WS_1009_MESSAGE_TOO_BIG,
            "status": 413,
            "detail": problem["detail"],
            "op": "publish",
            "id": "m1",
            "problem": problem["type"],
        }
        # the request failed, the connection goes on
        await ws.send(json.dumps({"type": "publish", "id": "m2", "channel": "a", "data": 1}))
        ack = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert ack["type"] == "ack" and ack["id"] == "m2"


def test_credentials_are_checked_before_any_stream_starts(server: Server) -> None:
    for path in ("/v1/sse", "/v1/poll"):
        assert_problem(httpx.get(server.url + path, params={"channel": "a"}), 401)
        bad = {"Authorization": "Bearer not-a-token"}
        assert_problem(httpx.get(server.url + path, params={"channel": "a"}, headers=bad), 401)
        expired = {"Authorization": f"Bearer {server.token(ttl=-5)}"}
        assert_problem(httpx.get(server.url + path, params={"channel": "a"}, headers=expired), 401)
        narrow = {"Authorization": f"Bearer {server.token(subscribe=('public:*',))}"}
        assert_problem(
            httpx.get(server.url + path, params={"channel": "secret"}, headers=narrow), 403
        )
    assert_problem(httpx.post(server.url + "/v1/publish", json={"channel": "a", "data": 1}), 401)
    user = {"Authorization": f"Bearer {server.token(publish=('mine:*',))}"}
    assert_problem(
        httpx.post(server.url + "/v1/publish", json={"channel": "theirs", "data": 1}, headers=user),
        403,
    )
    ok = httpx.post(server.url + "/v1/publish", json={"channel": "mine:1", "data": 1}, headers=user)
    assert ok.status_code == 200


async def test_websocket_upgrade_without_credentials_is_refused_with_401(server: Server) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with websockets.connect(f"{server.ws_url}/v1/ws"):
            pass
    assert refused.value.response.status_code == 401
    assert json.loads(refused.value.response.body or b"{}")["status"] == 401


async def test_bad_websocket_frames_close_with_documented_codes(server: Server) -> None:
    token = server.token()
    assert await ws_close_code(server, "not json", token) == codes.WS_4400_BAD_REQUEST
    assert await ws_close_code(server, '{"type":"bogus"}', token) == codes.WS_4400_BAD_REQUEST
    assert await ws_close_code(server, "[1,2]", token) == codes.WS_4400_BAD_REQUEST
    bad_cursor = json.dumps({"type": "subscribe", "channels": ["a"], "cursor": "c1nope"})
    assert await ws_close_code(server, bad_cursor, token) == codes.WS_4400_BAD_REQUEST
    bad_binary = b"\x00\x01 no header"
    assert await ws_close_code(server, bad_binary, token) == codes.WS_4400_BAD_REQUEST
    for code in (codes.WS_4400_BAD_REQUEST,):
        assert code in codes.CLOSE_CODES


async def test_forbidden_subscribe_yields_an_error_frame_and_no_event(server: Server) -> None:
    token = server.token(subscribe=("public:*",))
    async with websockets.connect(f"{server.ws_url}/v1/ws?token={token}") as ws:
        await ws.send(json.dumps({"type": "subscribe", "channels": ["secret"]}))
        error = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert error["type"] == "error" and error["code"] == codes.WS_4403_FORBIDDEN
        await ws.send(json.dumps({"type": "subscribe", "channels": ["public:1"]}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "subscribed"
        server.publish("secret", "hidden")
        server.publish("public:1", "visible")
        frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert frame["channel"] == "public:1" and frame["data"] == "visible"


async def test_server_keeps_serving_other_clients_through_bad_input(server: Server) -> None:
    token = server.token()
    start = (await poll_once(server.url, ["steady"], token, timeout=0))["cursor"]
    collector = asyncio.create_task(ws_collect(server.ws_url, ["steady"], token, 10, cursor=start))
    for i in range(10):
        # a burst of garbage from other clients between the good publishes
        httpx.post(server.url + "/v1/publish", content=b"{", headers=server.api_headers)
        httpx.get(server.url + "/v1/poll", params={"channel": "steady", "cursor": "zz"})
        await ws_close_code(server, "garbage", token)
        server.publish("steady", i)
    items, _ = await collector
    assert [i["data"] for i in items] == list(range(10))
    assert httpx.get(server.url + "/readyz").status_code == 200


def test_unknown_paths_and_methods_get_problem_json(server: Server) -> None:
    assert_problem_status = httpx.get(server.url + "/nope")
    assert assert_problem_status.status_code == 404
    assert assert_problem_status.headers["content-type"].startswith("application/problem+json")
    assert httpx.get(server.url + "/v1/publish").status_code == 405
