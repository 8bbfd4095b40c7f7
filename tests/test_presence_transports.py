"""Presence on the wire, on every transport and both backends, with raw connections (not
the clients): a snapshot on subscribe, then join/leave frames with the member's
connection count; two connections of one subject are one member; a reconnect converges;
an ungranted presence is refused; a crashed instance's members leave on the other
instance within ``presence_ttl + presence_refresh_interval``; a long-poll member lives
across its stateless polls and expires once they stop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import redis
import websockets

from tests.fixtures_redis import without_query
from tests.fixtures_server import Server
from tests.waiting import until
from tests.wire import SSEReader

pytestmark = pytest.mark.timeout(90)

TRANSPORTS = ("websocket", "sse", "long-polling")
FAST = {"presence_refresh_interval": 0.3, "presence_ttl": 1.0}
redis_only = pytest.mark.parametrize("backend_url", ["redis"], indirect=True)


def token(server: Server, subject: str, presence: tuple[str, ...] = ("*",), **info: Any) -> str:
    return server.auth.issue(
        subject, subscribe=("*",), publish=("*",), presence=presence, info=info, ttl=600
    )


class Watcher:
    """One connection with presence on ``channels``, recording presence frames and the
    view they make: ``{channel: {subject: connections}}``."""

    def __init__(
        self,
        server: Server,
        transport: str,
        token: str,
        channels: list[str],
        cursor: str | None = None,
        presence_id: str | None = None,
    ) -> None:
        self.server = server
        self.transport = transport
        self.token = token
        self.channels = channels
        self.cursor = cursor
        self.named = presence_id is not None  # streams send one only when given
        self.presence_id = presence_id or uuid.uuid4().hex[:16]
        self.frames: list[dict[str, Any]] = []
        self.view: dict[str, dict[str, int]] = {}
        self.info: dict[str, dict[str, Any]] = {}
        self.task: asyncio.Task[None] | None = None
        self.error: BaseException | None = None
        self.subscribed = asyncio.Event()

    async def __aenter__(self) -> Watcher:
        task = self.task = asyncio.create_task(self._run())
        await until(lambda: self.subscribed.is_set() or task.done(), 10, "subscribed")
        if not self.subscribed.is_set():
            task.result()  # raises what ended it
            raise AssertionError(f"the watcher ended before it subscribed: {self.frames}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
            self.task = None

    def apply(self, frame: dict[str, Any]) -> None:
        self.frames.append(frame)
        kind, channel = frame["type"], frame["channel"]
        if kind == "presence":
            self.view[channel] = {m["subject"]: m["connections"] for m in frame["members"]}
            for m in frame["members"]:
                self.info[m["subject"]] = m["info"]
        elif kind == "join":
            self.view.setdefault(channel, {})[frame["subject"]] = frame["connections"]
            self.info[frame["subject"]] = frame["info"]
        elif kind == "leave":
            members = self.view.setdefault(channel, {})
            if frame["connections"]:
                members[frame["subject"]] = frame["connections"]
            else:
                members.pop(frame["subject"], None)

    async def _run(self) -> None:
        run: Callable[[], Any] = {
            "websocket": self._ws,
            "sse": self._sse,
            "long-polling": self._poll,
        }[self.transport]
        await run()

    async def _ws(self) -> None:
        url = f"{self.server.ws_url}/v1/ws?token={self.token}"
        async with websockets.connect(url) as ws:
            frame = {"type": "subscribe", "channels": self.channels, "presence": True}
            if self.cursor:
                frame["cursor"] = self.cursor
            if self.named:
                frame["presence_id"] = self.presence_id
            await ws.send(json.dumps(frame))
            async for message in ws:
                obj = json.loads(message)
                if obj["type"] == "subscribed":
                    self.cursor = obj["cursor"]
                    self.subscribed.set()
                elif obj["type"] in ("presence", "join", "leave"):
                    self.apply(obj)
                elif obj["type"] == "error":
                    self.frames.append(obj)
                    self.subscribed.set()

    async def _sse(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        if self.cursor:
            headers["Last-Event-ID"] = self.cursor
        params: dict[str, Any] = {"channel": self.channels, "presence": 1}
        if self.named:
            params["presence_id"] = self.presence_id
        async with (
            httpx.AsyncClient(timeout=httpx.Timeout(10, read=None)) as http,
            http.stream("GET", self.server.url + "/v1/sse", params=params, headers=headers) as r,
        ):
            if r.status_code != 200:
                self.frames.append({"type": "error", "status": r.status_code})
                self.subscribed.set()
                return
            async for frame in SSEReader(r).frames():
                if frame.event == "subscribed":
                    self.cursor = frame.id
                    self.subscribed.set()
                elif frame.event in ("presence", "join", "leave"):
                    self.apply({"type": frame.event, **frame.json()})

    async def _poll(self) -> None:
        version: str | None = None
        timeout = 0.0
        async with httpx.AsyncClient(timeout=30) as http:
            while True:
                params: dict[str, Any] = {
                    "channel": self.channels,
                    "presence": 1,
                    "presence_id": self.presence_id,
                    "timeout": timeout,
                }
                if self.cursor:
                    params["cursor"] = self.cursor
                if version:
                    params["presence_version"] = version
                r = await http.get(
                    self.server.url + "/v1/poll",
                    params=params,
                    headers={"Authorization": f"Bearer {self.token}"},
                )
                if r.status_code != 200:
                    self.frames.append({"type": "error", "status": r.status_code})
                    self.subscribed.set()
                    return
                body = r.json()
                for item in body["events"]:
                    if item["type"] in ("presence", "join", "leave"):
                        self.apply(item)
                self.cursor, version = body["cursor"], body["presence_version"]
                self.subscribed.set()
                timeout = 2.0

    def members(self, channel: str) -> dict[str, int]:
        return self.view.get(channel, {})


@pytest.fixture
def room() -> str:
    return f"room-{uuid.uuid4().hex[:8]}"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_snapshot_then_joins_and_leaves_with_connection_counts(
    server: Server, transport: str, room: str
) -> None:
    async with Watcher(server, transport, token(server, "alice", name="Alice"), [room]) as alice:
        await until(lambda: alice.members(room) == {"alice": 1}, 10, "alice in her snapshot")
        assert alice.frames[0]["type"] == "presence"
        assert alice.info["alice"] == {"name": "Alice"}
        bob = token(server, "bob", name="Bob")
        async with Watcher(server, "websocket", bob, [room]):
            await until(lambda: alice.members(room).get("bob") == 1, 10, "bob's join")
            assert alice.info["bob"] == {"name": "Bob"}
            async with Watcher(server, "sse", bob, [room]):  # a second tab: one member
                await until(lambda: alice.members(room).get("bob") == 2, 10, "bob's 2nd tab")
            await until(lambda: alice.members(room).get("bob") == 1, 10, "one tab closed")
        await until(lambda: "bob" not in alice.members(room), 10, "bob's leave")
        assert alice.members(room) == {"alice": 1}
        kinds = [f["type"] for f in alice.frames if f.get("subject") == "bob"]
        assert kinds == ["join", "join", "leave", "leave"], kinds
        # no change is told twice: her own join is in her snapshot, never a diff after it
        assert not [f for f in alice.frames if f.get("subject") == "alice"], alice.frames


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_reconnect_with_its_cursor_converges_to_the_truth(
    server: Server, transport: str, room: str
) -> None:
    alice_token = token(server, "alice")
    presence_id = uuid.uuid4().hex[:16]
    async with (
        Watcher(server, transport, alice_token, [room], presence_id=presence_id) as alice,
        Watcher(server, "websocket", token(server, "bob"), [room]) as bob,
    ):
        await until(lambda: "bob" in alice.members(room), 10, "bob seen by alice")
        cursor = alice.cursor
        await alice.stop()  # alice is away ...
        await bob.stop()  # ... while bob leaves and carol comes
        async with Watcher(server, "sse", token(server, "carol"), [room]):
            back = Watcher(server, transport, alice_token, [room], cursor, presence_id)
            async with back:
                await until(
                    lambda: back.members(room) == {"alice": 1, "carol": 1},
                    10,
                    "alice's fresh view: no ghost of bob, herself once",
                )
                assert back.frames[0]["type"] == "presence"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_presence_without_the_grant_is_refused_and_shows_nothing(
    server: Server, transport: str, room: str
) -> None:
    ungranted = token(server, "mallory", presence=("other:*",))
    async with Watcher(server, transport, ungranted, [room]) as w:
        await until(lambda: bool(w.frames), 10, "the refusal")
    assert w.frames[0]["type"] == "error" and w.frames[0]["status"] == 403, w.frames
    assert not w.view


async def test_a_long_poll_member_lives_across_polls_and_expires_when_they_stop(
    server_factory: Any, room: str
) -> None:
    server = server_factory(**FAST)
    async with Watcher(server, "websocket", token(server, "alice"), [room]) as alice:
        poller = Watcher(server, "long-polling", token(server, "pat"), [room])
        async with poller:
            await until(lambda: alice.members(room).get("pat") == 1, 10, "pat's join")
            # several of pat's polls come and go: pat stays, once, without a leave
            await until(lambda: len(poller.frames) >= 1, 10, "pat's snapshot")
            await asyncio.sleep(2.5)  # window: no leave of pat while the polls go on
            assert alice.members(room).get("pat") == 1
            assert not [f for f in alice.frames if f["type"] == "leave"]
        stopped = time.monotonic()
        await until(lambda: "pat" not in alice.members(room), 10, "pat expiring")
        # within ttl + refresh interval (+ slack for a loaded machine)
        assert time.monotonic() - stopped < 1.0 + 0.3 + 1.5


async def test_a_client_that_moves_from_long_poll_to_a_stream_stays_one_connection(
    server: Server, room: str
) -> None:
    """Its presence_id names one entry on every transport: the stream takes over the
    polls' entry (no second connection, no leave and join), and its close is a leave at
    once (not an expiry a ttl later)."""
    pat = token(server, "pat")
    async with Watcher(server, "websocket", token(server, "alice"), [room]) as alice:
        polls = Watcher(server, "long-polling", pat, [room], presence_id="pats-client-1")
        async with polls:
            await until(lambda: alice.members(room).get("pat") == 1, 10, "pat's join")
            stream = Watcher(server, "sse", pat, [room], presence_id="pats-client-1")
            async with stream:
                await until(lambda: "pat" in stream.members(room), 10, "the stream's view")
                await polls.stop()  # moved up: the polls stop
                assert stream.members(room)["pat"] == 1
                await asyncio.sleep(0.5)  # a window: pat stays one connection, no leave
                assert alice.members(room).get("pat") == 1
        await until(lambda: "pat" not in alice.members(room), 5, "pat's leave on close")
        assert [f["type"] for f in alice.frames if f.get("subject") == "pat"] == [
            "join",
            "leave",
        ]


async def test_a_long_poll_with_an_unchanged_presence_version_waits(
    server: Server, room: str
) -> None:
    t = token(server, "pat")
    params: dict[str, Any] = {"channel": room, "presence": 1, "presence_id": "pat-tab-0001"}
    async with httpx.AsyncClient(timeout=10) as http:
        headers = {"Authorization": f"Bearer {t}"}
        first = await http.get(server.url + "/v1/poll", params=params | {"timeout": 0})
        assert first.status_code == 401  # no credential: refused before anything
        first = await http.get(
            server.url + "/v1/poll", params=params | {"timeout": 0}, headers=headers
        )
        body = first.json()
        assert [i["type"] for i in body["events"]][:1] == ["presence"]
        settled = body["presence_version"]
        for _ in range(3):  # its own join may come once more, then the version settles
            again = await http.get(
                server.url + "/v1/poll",
                params=params | {"timeout": 0, "presence_version": settled},
                headers=headers,
            )
            if not again.json()["events"]:
                break
            settled = again.json()["presence_version"]
        # a window: nothing changes, so the poll waits its whole timeout and answers nothing
        started = time.monotonic()
        quiet = await http.get(
            server.url + "/v1/poll",
            params=params | {"timeout": 0.5, "presence_version": settled},
            headers=headers,
        )
        assert quiet.json()["events"] == [] and time.monotonic() - started >= 0.45
        assert quiet.json()["presence_version"] == settled
        stale = await http.get(
            server.url + "/v1/poll",
            params=params | {"timeout": 5, "presence_version": "0000"},
            headers=headers,
        )
        assert [i["type"] for i in stale.json()["events"]] == ["presence"]


async def test_a_malformed_presence_id_on_a_stream_is_refused(server: Server, room: str) -> None:
    t = token(server, "pat")
    r = httpx.get(
        server.url + "/v1/sse",
        params={"channel": room, "presence": 1, "presence_id": "x"},
        headers={"Authorization": f"Bearer {t}"},
    )
    assert r.status_code == 400 and r.json()["type"].endswith("/bad-request")
    async with websockets.connect(f"{server.ws_url}/v1/ws?token={t}") as ws:
        frame = {"type": "subscribe", "channels": [room], "presence": True, "presence_id": 7}
        await ws.send(json.dumps(frame))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4400


@pytest.mark.parametrize(
    "params",
    [
        {"presence": 1},
        {"presence": 1, "presence_id": "short"},
        {"presence": 1, "presence_id": "no spaces allowed here"},
        {"presence": "maybe", "presence_id": "abcdefgh"},
    ],
)
async def test_a_malformed_presence_poll_is_a_problem(
    server: Server, room: str, params: dict[str, Any]
) -> None:
    r = httpx.get(
        server.url + "/v1/poll",
        params={"channel": room, "timeout": 0, **params},
        headers={"Authorization": f"Bearer {token(server, 'pat')}"},
    )
    assert r.status_code == 400
    assert r.headers["content-type"].startswith("application/problem+json")


async def test_a_large_channel_answers_counts_only(server_factory: Any, room: str) -> None:
    server = server_factory(presence_snapshot_max=1)
    async with (
        Watcher(server, "websocket", token(server, "bob"), [room]),
        Watcher(server, "sse", token(server, "carol"), [room]),
        Watcher(server, "websocket", token(server, "alice"), [room]) as alice,
    ):
        await until(lambda: bool(alice.frames), 10, "alice's snapshot")
        snap = alice.frames[0]
        assert snap["type"] == "presence" and snap["truncated"] is True
        assert snap["members"] == []
        assert (snap["member_count"], snap["connection_count"]) == (3, 3)


async def test_unsubscribing_leaves_the_presence(server: Server, room: str) -> None:
    async with Watcher(server, "sse", token(server, "alice"), [room]) as alice:
        url = f"{server.ws_url}/v1/ws?token={token(server, 'bob')}"
        async with websockets.connect(url) as ws:
            await ws.send(json.dumps({"type": "subscribe", "channels": [room], "presence": True}))
            await until(lambda: "bob" in alice.members(room), 10, "bob's join")
            await ws.send(json.dumps({"type": "unsubscribe", "channels": [room]}))
            await until(lambda: "bob" not in alice.members(room), 10, "bob's leave")


@pytest.fixture
async def two_instances(server_factory: Any) -> AsyncIterator[tuple[Server, Server]]:
    yield server_factory(**FAST), server_factory(**FAST)


@redis_only
async def test_a_member_on_one_instance_is_seen_on_another_and_leaves_when_it_is_killed(
    two_instances: tuple[Server, Server], room: str
) -> None:
    a, b = two_instances
    async with (
        Watcher(b, "websocket", token(b, "alice"), [room]) as alice,
        Watcher(a, "sse", token(a, "bob"), [room]),
    ):
        await until(lambda: alice.members(room).get("bob") == 1, 10, "bob (on A) seen on B")
        listed = httpx.get(f"{b.url}/v1/channels/{room}/presence", headers=b.api_headers)
        assert [m["subject"] for m in listed.json()["members"]] == ["alice", "bob"]
        assert a.proc is not None
        a.proc.kill()  # kill -9: no leave is ever sent by A
        killed = time.monotonic()
        await until(lambda: "bob" not in alice.members(room), 10, "bob expiring")
        # presence_ttl + presence_refresh_interval, plus slack for a loaded machine
        assert time.monotonic() - killed < 1.0 + 0.3 + 1.5


@redis_only
async def test_fresh_snapshots_after_the_backend_listener_reconnected(
    server_factory: Any, redis_url: str, room: str
) -> None:
    """Diffs sent while the listener is away are lost: the next refresh after its
    reconnect sends every presence session a fresh snapshot, so the view converges."""
    server = server_factory(**FAST)
    async with Watcher(server, "websocket", token(server, "alice"), [room]) as alice:
        await until(lambda: alice.members(room) == {"alice": 1}, 10, "alice's snapshot")
        snapshots = sum(f["type"] == "presence" for f in alice.frames)
        client = redis.Redis.from_url(without_query(redis_url))
        try:
            killed = client.client_kill_filter(_type="pubsub")
        finally:
            client.close()
        assert killed >= 1
        await until(
            lambda: sum(f["type"] == "presence" for f in alice.frames) > snapshots,
            10,
            "a fresh snapshot after the listener reconnected",
        )
        assert alice.members(room) == {"alice": 1}
