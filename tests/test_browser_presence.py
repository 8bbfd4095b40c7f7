"""Presence in the browser client (``presence: true``) in headless Chromium, through the
well-configured nginx, on each transport: the page's own member in the first snapshot,
another member joining (a second tab is one member with two connections) and leaving, a
reconnect and a transport switch converging on the server's view (no ghost, no member
twice), counts only for a truncated view, and a token without the presence grant closing
the client with the reason. ``PresenceView`` alone, fed many interleavings, in a page.

The servers run with ``presence_ttl`` 2 s: a long-poll client's entry outlives its last
poll until it expires (long-poll has no connection whose end the server could see).
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser

from tests.fixtures_browser import BrowserClient
from tests.fixtures_nginx import Nginx
from tests.fixtures_server import Server
from tests.waiting import until

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.parametrize("backend_url", ["memory"], indirect=True),
]

TRANSPORTS = ["websocket", "sse", "long-polling"]
FAST = {"connect_timeout": 3.0, "backoff_base": 0.2, "backoff_cap": 1.0}
PRESENCE = {"heartbeat_interval": 1, "presence_refresh_interval": 0.5, "presence_ttl": 2}
ROOM = "room:1"


@pytest.fixture
def proxied(server_factory: Any, nginx_factory: Any) -> tuple[Server, Nginx]:
    server = server_factory(**PRESENCE)
    return server, nginx_factory("good", server.port)


def token(server: Server, subject: str, *, presence: bool = True) -> str:
    return server.auth.issue(
        subject,
        subscribe=("*",),
        publish=("*",),
        presence=("*",) if presence else (),
        info={"name": subject.title()},
        ttl=600,
    )


@pytest.fixture
async def pages(browser: Browser) -> AsyncIterator[Callable[[], Awaitable[BrowserClient]]]:
    """``await pages()``: another ``BrowserClient`` (a page in a context of its own)."""
    started: list[BrowserClient] = []

    async def make() -> BrowserClient:
        client = BrowserClient(browser)
        started.append(client)
        return client

    yield make
    for client in started:
        await client.close()


def shape(members: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return [(m["subject"], m["connections"]) for m in members]


async def converge(
    read: Callable[[], Awaitable[Any]], expected: Any, timeout: float, what: str
) -> None:
    """Poll ``read()`` until it equals ``expected`` (a deadline, no fixed sleep)."""
    await until(read, timeout, what, check=lambda got: got == expected, interval=0.05)


def server_view(server: Server, channel: str) -> dict[str, Any]:
    r = httpx.get(server.url + f"/v1/channels/{channel}/presence", headers=server.api_headers)
    r.raise_for_status()
    body: dict[str, Any] = r.json()
    return body


def assert_callbacks_consistent(client: BrowserClient, channel: str) -> None:
    """onJoin / onLeave per subject alternate, starting with a join (never a member twice,
    never a leave of someone absent), and what they leave is the client's view."""
    present: set[str] = set()
    for p in client.presence:
        if p["channel"] != channel or p["kind"] == "view":
            continue
        subject = p["member"]["subject"]
        if p["kind"] == "join":
            assert subject not in present, f"{subject} joined twice: {client.presence}"
            present.add(subject)
        else:
            assert subject in present, f"{subject} left without joining: {client.presence}"
            assert p["member"]["connections"] == 0
            present.remove(subject)
    view = client.last_view(channel)
    assert view is not None
    assert present == {m["subject"] for m in view}


async def assert_matches_server(client: BrowserClient, server: Server, channel: str) -> None:
    truth = server_view(server, channel)
    assert await client.members(channel) == truth["members"]
    counts = await client.presence_counts(channel)
    assert counts == {
        "members": truth["member_count"],
        "connections": truth["connection_count"],
        "truncated": False,
    }
    assert client.last_view(channel) == truth["members"]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_page_sees_itself_and_another_member_join_with_two_tabs_and_leave(
    transport: str, proxied: tuple[Server, Nginx], pages: Any
) -> None:
    server, proxy = proxied
    alice = await pages()
    await alice.start(
        proxy.url, token(server, "alice"), [ROOM], presence=True, transports=[transport], **FAST
    )
    assert await alice.wait_connected() == transport
    await converge(lambda: alice.members(ROOM), [
        {"subject": "alice", "info": {"name": "Alice"}, "connections": 1}
    ], 10, "alice's own member")  # fmt: skip
    joins = [p for p in alice.presence if p["kind"] == "join"]
    assert joins[0]["member"] == {"subject": "alice", "info": {"name": "Alice"}, "connections": 1}
    assert joins[0]["channel"] == ROOM
    assert await alice.presence_counts(ROOM) == {
        "members": 1,
        "connections": 1,
        "truncated": False,
    }

    # bob's two tabs (WebSocket: a closed tab leaves at once): one member, two connections
    bob_tabs = [await pages(), await pages()]
    await bob_tabs[0].start(proxy.url, token(server, "bob"), [ROOM], presence=True, **FAST)
    await converge(lambda: shaped(alice), [("alice", 1), ("bob", 1)], 10, "bob's first tab")
    await bob_tabs[1].start(proxy.url, token(server, "bob"), [ROOM], presence=True, **FAST)
    await converge(lambda: shaped(alice), [("alice", 1), ("bob", 2)], 10, "bob's second tab")
    assert await alice.presence_counts(ROOM) == {
        "members": 2,
        "connections": 3,
        "truncated": False,
    }
    assert [p["member"]["subject"] for p in alice.presence if p["kind"] == "join"] == [
        "alice",
        "bob",
    ]  # the second tab is no new member
    bob_join = [p for p in alice.presence if p["kind"] == "join"][1]["member"]
    assert bob_join == {"subject": "bob", "info": {"name": "Bob"}, "connections": 1}
    await assert_matches_server(alice, server, ROOM)
    # bob's pages see the same room
    await converge(lambda: shaped(bob_tabs[1]), [("alice", 1), ("bob", 2)], 10, "bob's view")

    await bob_tabs[0].close()
    await converge(lambda: shaped(alice), [("alice", 1), ("bob", 1)], 10, "a tab of bob gone")
    assert not [p for p in alice.presence if p["kind"] == "leave"]
    await bob_tabs[1].close()
    await converge(lambda: shaped(alice), [("alice", 1)], 10, "bob gone")
    (left,) = [p for p in alice.presence if p["kind"] == "leave"]
    assert left["member"] == {"subject": "bob", "info": {"name": "Bob"}, "connections": 0}
    assert await alice.presence_counts(ROOM) == {
        "members": 1,
        "connections": 1,
        "truncated": False,
    }
    assert_callbacks_consistent(alice, ROOM)
    await assert_matches_server(alice, server, ROOM)


async def shaped(client: BrowserClient, channel: str = ROOM) -> list[tuple[str, int]]:
    return shape(await client.members(channel))


async def drop_connection(client: BrowserClient) -> None:
    """End the active connection as a network failure would (the client reconnects)."""
    await client._eval("() => window.client._active._end({ message: 'dropped by the test' })")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_reconnects_converge_on_the_servers_view_without_ghost_or_duplicate(
    transport: str, proxied: tuple[Server, Nginx], pages: Any
) -> None:
    server, proxy = proxied
    alice, bob = await pages(), await pages()
    await bob.start(proxy.url, token(server, "bob"), [ROOM], presence=True, **FAST)
    await alice.start(
        proxy.url, token(server, "alice"), [ROOM], presence=True, transports=[transport], **FAST
    )
    await converge(lambda: shaped(alice), [("alice", 1), ("bob", 1)], 10, "both members")
    for n in range(3):
        reconnects = len(alice.log_kinds("lost"))
        await drop_connection(alice)
        await until(lambda r=reconnects: len(alice.log_kinds("lost")) > r, 10, f"reconnect {n + 1}")
        await alice.wait_connected()
        # the old connection's entry goes (WebSocket/SSE: at once; long-poll: the same
        # presence_id, so the same entry): alice is one connection again
        await converge(lambda: shaped(alice), [("alice", 1), ("bob", 1)], 10, "convergence")
    # meanwhile the room changed while alice was connected: carol comes, bob goes
    carol = await pages()
    await carol.start(proxy.url, token(server, "carol"), [ROOM], presence=True, **FAST)
    await drop_connection(alice)
    await bob.close()
    await alice.wait_connected()
    await converge(lambda: shaped(alice), [("alice", 1), ("carol", 1)], 10, "carol, no bob")
    await assert_matches_server(alice, server, ROOM)
    assert_callbacks_consistent(alice, ROOM)
    assert await alice.transport() == transport


def reload_as(proxy: Nginx, mode: str) -> None:
    """nginx reloads its config in another mode (SIGHUP): live requests finish on the old
    workers, new ones get the new mode. A client's working connection is not dropped, so
    the move to WebSocket is a re-probe switch, not a reconnect."""
    assert proxy.proc is not None
    proxy.mode = mode
    (proxy.prefix / "nginx.conf").write_text(proxy.config())
    proxy.proc.send_signal(signal.SIGHUP)


@pytest.mark.parametrize(("mode", "first"), [("no-upgrade", "sse"), ("buffering", "long-polling")])
async def test_switch_to_websocket_keeps_the_view_until_the_new_snapshot_and_converges(
    mode: str, first: str, server_factory: Any, nginx_factory: Any, pages: Any
) -> None:
    server = server_factory(**PRESENCE)
    proxy = nginx_factory(mode, server.port)
    # bob stays on WebSocket through a good proxy of his own
    bob = await pages()
    good = nginx_factory("good", server.port)
    await bob.start(good.url, token(server, "bob"), [ROOM], presence=True, **FAST)
    alice = await pages()
    await alice.start(
        proxy.url,
        token(server, "alice"),
        [ROOM],
        presence=True,
        reprobe_interval=1.0,
        reprobe_max=1.0,
        first_event_timeout=1.0,
        **FAST,
    )
    await converge(alice.transport, first, 20, f"alice on {first}")
    await converge(lambda: shaped(alice), [("alice", 1), ("bob", 1)], 10, "both members")

    await asyncio.to_thread(reload_as, proxy, "good")
    # (from long-poll it may move up to SSE first when that re-probe is due first)
    await converge(alice.transport, "websocket", 20, "the switch to WebSocket")
    assert alice.log_kinds("switch")
    assert not alice.log_kinds("lost"), "a reconnect, not a re-probe switch"
    # during the switch, the view never lost a member (bob was there all along)
    assert not [p for p in alice.presence if p["kind"] == "leave"], alice.presence
    # the old connection's entry goes: SSE at once, long-poll's once it expires
    await converge(lambda: shaped(alice), [("alice", 1), ("bob", 1)], 10, "alice once again")
    await assert_matches_server(alice, server, ROOM)
    assert_callbacks_consistent(alice, ROOM)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_truncated_view_keeps_counts_only_and_follows_joins_and_leaves(
    transport: str, server_factory: Any, nginx_factory: Any, pages: Any
) -> None:
    server = server_factory(presence_snapshot_max=1, **PRESENCE)
    proxy = nginx_factory("good", server.port)
    bob = await pages()
    await bob.start(proxy.url, token(server, "bob"), [ROOM], presence=True, **FAST)
    alice = await pages()
    await alice.start(
        proxy.url, token(server, "alice"), [ROOM], presence=True, transports=[transport], **FAST
    )
    counts = {"members": 2, "connections": 2, "truncated": True}
    await converge(lambda: alice.presence_counts(ROOM), counts, 10, "the counts")
    assert await alice.members(ROOM) == []
    carol = await pages()
    await carol.start(proxy.url, token(server, "carol"), [ROOM], presence=True, **FAST)
    counts = {"members": 3, "connections": 3, "truncated": True}
    await converge(lambda: alice.presence_counts(ROOM), counts, 10, "carol counted")
    await carol.close()
    await bob.close()

    # The counts follow the leaves (exactly: the server drops the diffs a snapshot holds).
    # On WebSocket and SSE the view stays counts-only until a snapshot comes; a long-poll
    # whose client was between two polls when they left gets a fresh snapshot instead (its
    # presence_version is stale), which lists the one member again: both are right.
    async def counts() -> tuple[int, int]:
        got = await alice.presence_counts(ROOM)
        return got["members"], got["connections"]

    await converge(counts, (1, 1), 10, "the leaves counted")
    if transport != "long-polling":
        assert (await alice.presence_counts(ROOM))["truncated"] is True
    stats = httpx.get(
        server.url + f"/v1/channels/{ROOM}/presence/stats", headers=server.api_headers
    ).json()
    assert (stats["member_count"], stats["connection_count"]) == (1, 1)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_token_without_the_presence_grant_closes_the_client_with_the_reason(
    transport: str, proxied: tuple[Server, Nginx], pages: Any
) -> None:
    server, proxy = proxied
    alice = await pages()
    await alice.start(
        proxy.url,
        token(server, "alice", presence=False),
        [ROOM],
        presence=True,
        transports=[transport],
        **FAST,
    )
    await until(
        lambda: any(e.get("detail") == "closed" for e in alice.log_kinds("state")),
        15,
        "the client to close",
    )
    (fatal,) = alice.log_kinds("fatal")
    assert "403" in fatal["detail"] and "presence" in fatal["detail"], fatal
    assert await alice.state() == "closed"
    assert await alice.members(ROOM) == []
    assert server_view(server, ROOM)["members"] == []  # nothing joined
    # the same token without presence: the client works
    await alice._eval("(o) => window.startClient(o)", {**alice.options, "presence": False})
    assert await alice.wait_connected() == transport


# --- PresenceView alone -----------------------------------------------------------------


def scenario(rng: random.Random) -> tuple[list[dict[str, Any]], list[tuple[str, int]]]:
    """Frames one client may receive, as the server sends them, and the room they end on.
    Connections join and leave at random; each diff is delivered in order. A snapshot is
    read over a window of changes: it holds the room at some cut inside the window, and
    every diff of the window (older or newer than the cut) is held back and sent after
    the snapshot, in order."""
    subjects = ["ann", "bo", "cy", "di"]
    room: dict[str, int] = {}
    frames: list[dict[str, Any]] = []

    def change() -> dict[str, Any]:
        subject = rng.choice(subjects)
        if rng.random() < 0.55 or subject not in room:
            room[subject] = room.get(subject, 0) + 1
            kind = "join"
        else:
            room[subject] -= 1
            kind = "leave"
        diff = {"type": kind, "subject": subject, "info": {"n": subject}}
        diff["connections"] = room[subject]
        if room[subject] == 0:
            del room[subject]
        return diff

    def snapshot() -> dict[str, Any]:
        return {
            "type": "presence",
            "members": [
                {"subject": s, "info": {"n": s}, "connections": c} for s, c in sorted(room.items())
            ],
            "member_count": len(room),
            "connection_count": sum(room.values()),
            "truncated": False,
        }

    for _ in range(rng.randrange(1, 30)):
        if rng.random() < 0.2:
            window = rng.randrange(0, 5)
            cut = rng.randrange(0, window + 1)
            held = [change() for _ in range(cut)]
            snap = snapshot()
            held += [change() for _ in range(window - cut)]
            frames += [snap, *held]
        else:
            frames.append(change())
    return frames, sorted(room.items())


async def test_presence_view_ends_on_the_room_and_reports_each_member_once_per_stay(
    proxied: tuple[Server, Nginx], browser_client: BrowserClient
) -> None:
    _, proxy = proxied
    rng = random.Random(20261129)
    cases = [scenario(rng) for _ in range(400)]
    await browser_client.start(proxy.url, "unused", [ROOM], storage_key=None)
    await browser_client._eval("() => window.client.close()")
    results = await browser_client._eval(
        """async (cases) => {
            const { PresenceView } = await import("/pushsvc.js");
            return cases.map((frames) => {
                const view = new PresenceView();
                const calls = [];
                for (const f of frames) {
                    const method = f.type === "presence" ? "snapshot" : f.type;
                    const { joined, left } = view[method](f);
                    for (const m of left) calls.push(["leave", m.subject, m.connections]);
                    for (const m of joined) calls.push(["join", m.subject, m.connections]);
                }
                return { members: view.members(), counts: view.counts(), calls };
            });
        }""",
        [frames for frames, _ in cases],
    )
    for (frames, room), got in zip(cases, results, strict=True):
        context = json.dumps(frames)
        assert shape(got["members"]) == room, context
        assert got["counts"] == {
            "members": len(room),
            "connections": sum(c for _, c in room),
            "truncated": False,
        }, context
        present: set[str] = set()
        for kind, subject, connections in got["calls"]:
            if kind == "join":
                assert subject not in present and connections >= 1, context
                present.add(subject)
            else:
                assert subject in present and connections == 0, context
                present.remove(subject)
        assert present == {s for s, _ in room}, context
