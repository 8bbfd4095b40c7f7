"""Property-based hostile input against a running server (hypothesis).

Whatever arrives -- arbitrary WebSocket frames, cursors, channel names, tokens, publish
bodies -- the server answers with a 2xx/4xx (problem JSON) or a documented close code,
never a 500, a traceback or a crash; it never leaks an event across channels, and a canary
subscriber keeps receiving throughout.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from pushsvc.protocol import codes
from tests.fixtures_server import Server
from tests.waiting import until_sync

pytestmark = pytest.mark.parametrize("backend_url", ["memory"], indirect=True)

HYPOTHESIS = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
KNOWN_SERVER_FRAMES = {
    "subscribed",
    "unsubscribed",
    "event",
    "gap",
    "ack",
    "pong",
    "error",
    "heartbeat",
    "refreshed",
    "token-expired",
}

names = st.text(alphabet="abcz:.-_/@=+{} \n\x00é", min_size=0, max_size=12)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
frame_objects = st.fixed_dictionaries(
    {
        "type": st.sampled_from(
            ["subscribe", "unsubscribe", "publish", "ping", "refresh", "bogus", ""]
        )
        | st.text(max_size=8),
    },
    optional={
        "channels": st.lists(names, max_size=4) | json_values,
        "channel": names | json_values,
        "cursor": st.text(max_size=60) | json_values,
        "id": st.text(max_size=10) | json_values,
        "data": json_values,
        "data_b64": st.text(max_size=20),
        "event": names,
        "token": st.text(max_size=30),
    },
)
ws_frames = (
    frame_objects.map(json.dumps)
    | st.text(max_size=200)
    | st.binary(max_size=200)
    | frame_objects.map(lambda o: json.dumps(o).encode() + b"\n" + b"\x00payload")
)


class Canary:
    """A well-behaved subscriber that must keep receiving while others misbehave."""

    def __init__(self, server: Server) -> None:
        self.ws = connect(f"{server.ws_url}/v1/ws?token={server.token()}").__enter__()
        self.ws.send(json.dumps({"type": "subscribe", "channels": ["canary"]}))
        self.received: list[dict[str, Any]] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for raw in self.ws:
                frame = json.loads(raw)
                if frame["type"] == "event":
                    self.received.append(frame)
        except ConnectionClosed:
            pass

    def close(self) -> None:
        self.ws.close()
        self.thread.join(5)


@pytest.fixture
def canary(server: Server) -> Iterator[Canary]:
    c = Canary(server)
    yield c
    c.close()


def check_canary(server: Server, canary: Canary) -> None:
    ids = [server.publish("canary", i) for i in range(5)]
    until_sync(
        lambda: [f["id"] for f in canary.received][-5:],
        10,
        "the canary receiving the last five events",
        check=lambda last: last == ids,
        interval=0.02,
    )
    assert {f["channel"] for f in canary.received} == {"canary"}
    assert httpx.get(server.url + "/readyz").status_code == 200
    assert server.proc is not None and server.proc.poll() is None


def check_http(r: httpx.Response) -> None:
    assert r.status_code < 500, r.text
    assert "Traceback" not in r.text
    if r.status_code >= 400:
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["status"] == r.status_code


def test_arbitrary_websocket_frames(server: Server, canary: Canary) -> None:
    token = server.token()
    server.publish("a", "seed")

    @HYPOTHESIS
    @given(frames=st.lists(ws_frames, min_size=1, max_size=3))
    def run(frames: list[str | bytes]) -> None:
        subscribed: set[str] = set()
        with connect(f"{server.ws_url}/v1/ws?token={token}", open_timeout=5) as ws:
            try:
                for frame in frames:
                    ws.send(frame)
                    try:
                        obj = json.loads(frame) if isinstance(frame, str) else None
                    except ValueError:
                        obj = None
                    if (
                        isinstance(obj, dict)
                        and obj.get("type") == "subscribe"
                        and isinstance(obj.get("channels"), list)
                    ):
                        subscribed |= {c for c in obj["channels"] if isinstance(c, str)}
                ws.send(json.dumps({"type": "ping", "id": "end"}))
                while True:
                    reply = json.loads(ws.recv(timeout=5))
                    assert reply["type"] in KNOWN_SERVER_FRAMES, reply
                    if reply["type"] == "event":
                        assert reply["channel"] in subscribed  # never across channels
                    if reply["type"] == "pong" and reply.get("id") == "end":
                        break
            except ConnectionClosed as closed:
                assert closed.rcvd is not None and closed.rcvd.code in codes.CLOSE_CODES

    run()
    check_canary(server, canary)


def test_arbitrary_cursors_channels_and_tokens_on_poll_and_sse(
    server: Server, canary: Canary
) -> None:
    good = server.token()

    @HYPOTHESIS
    @given(
        cursor=st.text(max_size=80) | st.just("c1" + "A" * 20),
        channels=st.lists(names, min_size=0, max_size=3),
        token=st.sampled_from([good, "", "garbage"]) | st.text(max_size=40),
        timeout=st.sampled_from(["0", "-1", "nan", "1e9", "x", "0.01"]),
    )
    def run(cursor: str, channels: list[str], token: str, timeout: str) -> None:
        params: list[tuple[str, str]] = [("channel", c) for c in channels]
        params += [("cursor", cursor), ("token", token), ("timeout", timeout)]
        check_http(httpx.get(server.url + "/v1/poll", params=params, timeout=10))
        sse_params = [*params[:-3], ("last_event_id", cursor), ("token", token)]
        with httpx.stream("GET", server.url + "/v1/sse", params=sse_params, timeout=10) as r:
            if r.status_code != 200:
                r.read()
                check_http(r)

    run()
    check_canary(server, canary)


def test_arbitrary_publish_bodies(server: Server, canary: Canary) -> None:
    token = server.token(publish=("pub:*",))

    @HYPOTHESIS
    @given(
        body=st.binary(max_size=300)
        | json_values.map(lambda v: json.dumps(v).encode())
        | frame_objects.map(lambda o: json.dumps(o).encode())
        | st.lists(frame_objects, max_size=3).map(lambda m: json.dumps({"messages": m}).encode()),
        credential=st.sampled_from(["api", "user", "none", "junk"]),
    )
    def run(body: bytes, credential: str) -> None:
        headers = {"content-type": "application/json"}
        if credential == "api":
            headers.update(server.api_headers)
        elif credential == "user":
            headers["Authorization"] = f"Bearer {token}"
        elif credential == "junk":
            headers["Authorization"] = "Basic Zm9v"
        check_http(httpx.post(server.url + "/v1/publish", content=body, headers=headers))

    run()
    check_canary(server, canary)
