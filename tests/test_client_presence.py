"""Presence in the Python client: against a real server on every transport (own member in
the snapshot, joins and leaves of others, one member for several connections, convergence
across reconnects and transport switches, the presence grant, two servers on one Redis and
a crashed one), and the pure ``PresenceViews`` fed by hand (overlapping connections,
truncated views)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from pushsvc.client import Client, Member, PresenceChange, ServerRejected
from pushsvc.client._presence import PresenceViews
from tests.fixtures_server import Server
from tests.test_client import Proxy
from tests.waiting import until

TRANSPORTS = ("websocket", "sse", "long-polling")
memory_only = pytest.mark.parametrize("backend_url", ["memory"], indirect=True)
redis_only = pytest.mark.parametrize("backend_url", ["redis"], indirect=True)

INFO = {"alice": {"name": "Alice"}, "bob": {"name": "Bob"}, "carol": {}}


def ptoken(server: Server, subject: str, presence: bool = True) -> str:
    return server.auth.issue(
        subject,
        subscribe=("*",),
        publish=("*",),
        presence=("*",) if presence else (),
        info=INFO.get(subject) or None,
        ttl=600,
    )


def room() -> str:
    return f"room-{uuid.uuid4().hex[:8]}"


class Changes:
    """An ``on_presence`` recorder that checks, as changes arrive, that a member is never
    reported twice and never reported leaving without having joined."""

    def __init__(self) -> None:
        self.seen: list[PresenceChange] = []
        self.present: dict[str, set[str]] = {}
        self.errors: list[str] = []

    def __call__(self, change: PresenceChange) -> None:
        self.seen.append(change)
        here = self.present.setdefault(change.channel, set())
        subject = change.member.subject
        if change.kind == "join":
            if subject in here:
                self.errors.append(f"{subject} joined twice")
            here.add(subject)
        else:
            if subject not in here:
                self.errors.append(f"{subject} left without having joined (a ghost)")
            here.discard(subject)
            if change.member.connections != 0:
                self.errors.append(f"{subject} left with {change.member.connections} connections")

    def kinds(self, subject: str) -> list[str]:
        return [c.kind for c in self.seen if c.member.subject == subject]


def view(client: Client, channel: str) -> dict[str, int]:
    return {m.subject: m.connections for m in client.members(channel)}


def consistent(client: Client, changes: Changes, channel: str) -> None:
    """The members, the counts and what was reported all say the same."""
    members = client.members(channel)
    assert not changes.errors, changes.errors
    assert {m.subject for m in members} == changes.present.get(channel, set())
    assert client.presence_counts(channel) == (
        len(members),
        sum(m.connections for m in members),
    )
    assert [m.subject for m in members] == sorted(m.subject for m in members)


@pytest.fixture
async def clients() -> AsyncIterator[Callable[..., Client]]:
    made: list[Client] = []

    def make(server_url: str, token: str, channels: list[str], **options: Any) -> Client:
        client = Client(server_url, token, channels, presence=True, **options)
        client.start()
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()


# --- on every transport ----------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_own_member_is_in_the_snapshot(
    server: Server, clients: Callable[..., Client], transport: str
) -> None:
    channel, changes = room(), Changes()
    alice = clients(
        server.url, ptoken(server, "alice"), [channel], transports=(transport,), on_presence=changes
    )
    await until(lambda: view(alice, channel) == {"alice": 1}, what="alice in her own view")
    assert alice.members(channel) == [Member("alice", {"name": "Alice"}, 1)]
    assert alice.presence_counts(channel) == (1, 1)
    assert changes.seen == [PresenceChange(channel, "join", Member("alice", {"name": "Alice"}, 1))]
    assert alice.transport == transport


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_another_subject_joins_and_leaves(
    server: Server, clients: Callable[..., Client], transport: str
) -> None:
    channel, changes = room(), Changes()
    alice = clients(
        server.url, ptoken(server, "alice"), [channel], transports=(transport,), on_presence=changes
    )
    await until(lambda: view(alice, channel) == {"alice": 1}, what="alice's snapshot")
    bob = clients(server.url, ptoken(server, "bob"), [channel])
    await until(lambda: "bob" in view(alice, channel), what="bob's join")
    assert alice.members(channel) == [
        Member("alice", {"name": "Alice"}, 1),
        Member("bob", {"name": "Bob"}, 1),
    ]
    assert alice.presence_counts(channel) == (2, 2)
    await bob.close()
    await until(lambda: "bob" not in view(alice, channel), what="bob's leave")
    assert changes.kinds("bob") == ["join", "leave"]
    bob_changes = [c for c in changes.seen if c.member.subject == "bob"]
    assert [c.member.connections for c in bob_changes] == [1, 0]
    assert bob_changes[0].member.info == {"name": "Bob"}
    assert alice.presence_counts(channel) == (1, 1)
    consistent(alice, changes, channel)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_two_connections_of_one_subject_are_one_member(
    server: Server, clients: Callable[..., Client], transport: str
) -> None:
    channel, changes = room(), Changes()
    alice = clients(
        server.url, ptoken(server, "alice"), [channel], transports=(transport,), on_presence=changes
    )
    await until(lambda: view(alice, channel) == {"alice": 1}, what="alice's snapshot")
    tab1 = clients(server.url, ptoken(server, "bob"), [channel], transports=("websocket",))
    await until(lambda: view(alice, channel).get("bob") == 1, what="bob's first connection")
    tab2 = clients(server.url, ptoken(server, "bob"), [channel], transports=("sse",))
    await until(lambda: view(alice, channel).get("bob") == 2, what="bob's second connection")
    assert alice.presence_counts(channel) == (2, 3)
    await tab1.close()
    await until(lambda: view(alice, channel).get("bob") == 1, what="bob down to one")
    assert changes.kinds("bob") == ["join"]
    await tab2.close()
    await until(lambda: "bob" not in view(alice, channel), what="bob's leave")
    assert changes.kinds("bob") == ["join", "leave"]
    consistent(alice, changes, channel)


@memory_only
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_reconnect_converges_without_ghost_or_duplicate(
    server_factory: Any, clients: Callable[..., Client], transport: str
) -> None:
    """Alice's network drops silently; while she is away bob leaves and carol joins. Her
    new connection's snapshot reports exactly that, and her own member stays one."""
    server: Server = server_factory(heartbeat_interval=0.4)
    channel, changes = room(), Changes()
    bob = clients(server.url, ptoken(server, "bob"), [channel])
    async with Proxy(server.url) as proxy:
        alice = clients(
            proxy.url,
            ptoken(server, "alice"),
            [channel],
            transports=(transport,),
            on_presence=changes,
            backoff_base=0.05,
            backoff_cap=0.2,
            poll_timeout=1,
        )
        await until(lambda: set(view(alice, channel)) == {"alice", "bob"}, what="both")
        states: list[str] = []
        alice.on_state = lambda state, t: states.append(state)

        async def dropped_path() -> None:
            # whatever alice has open hangs until she notices; freezing once can miss a
            # long-poll client that is between two polls (a new poll's connection works)
            while "disconnected" not in states:
                proxy.freeze()
                await asyncio.sleep(0.1)  # poll: freeze again until the drop is noticed

        freezing = asyncio.create_task(dropped_path())
        try:
            await bob.close()
            carol = clients(server.url, ptoken(server, "carol"), [channel])
            await until(lambda: "carol" in view(carol, channel), what="carol's snapshot")
            await until(lambda: "disconnected" in states, timeout=15, what="the drop noticed")
        finally:
            freezing.cancel()
        await until(
            lambda: (
                alice.transport == transport and view(alice, channel) == {"alice": 1, "carol": 1}
            ),
            timeout=15,
            what=f"reconnected, and the new snapshot (view {view(alice, channel)})",
        )
    assert changes.kinds("alice") == ["join"]
    assert changes.kinds("bob") == ["join", "leave"]
    assert changes.kinds("carol") == ["join"]
    consistent(alice, changes, channel)


@memory_only
@pytest.mark.parametrize("fallback", ["sse", "long-polling"])
async def test_moving_up_to_websocket_converges(
    server: Server, clients: Callable[..., Client], fallback: str
) -> None:
    """While the client moves up, two of its connections overlap: each sees the other's
    join and leave of alice, and only the one in use may count."""
    channel, changes = room(), Changes()
    bob = clients(server.url, ptoken(server, "bob"), [channel])
    async with Proxy(server.url, strip_upgrade=True, buffer=fallback == "long-polling") as proxy:
        alice = clients(
            proxy.url,
            ptoken(server, "alice"),
            [channel],
            on_presence=changes,
            reprobe_interval=0.3,
            sse_first_byte_timeout=0.5,
            poll_timeout=1,
        )
        await until(lambda: alice.transport == fallback, what=fallback)
        await until(lambda: set(view(alice, channel)) == {"alice", "bob"}, what="both")
        proxy.strip_upgrade = proxy.buffer = proxy.one_request = False
        await until(lambda: alice.transport == "websocket", what="moving up")
        await bob.close()
        await until(lambda: "bob" not in view(alice, channel), what="bob's leave")
        if fallback == "sse":  # a closed stream leaves at once (a poll's entry expires)
            await until(lambda: view(alice, channel) == {"alice": 1}, what="one alice")
    assert changes.kinds("alice") == ["join"]
    assert changes.kinds("bob") == ["join", "leave"]
    consistent(alice, changes, channel)


@memory_only
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_token_without_the_presence_grant_is_refused(
    server: Server, transport: str
) -> None:
    async with Client(
        server.url,
        ptoken(server, "alice", presence=False),
        [room()],
        transports=(transport,),
        presence=True,
    ) as client:
        with pytest.raises(ServerRejected) as info:
            async with asyncio.timeout(10):
                async for _ in client:
                    pass
    assert info.value.status == 403


@memory_only
async def test_without_presence_the_views_stay_empty(server: Server) -> None:
    channel = room()
    other = Client(server.url, ptoken(server, "bob"), [channel], presence=True)
    async with (
        other,
        Client(server.url, ptoken(server, "alice", presence=False), [channel]) as plain,
    ):
        await until(lambda: "bob" in view(other, channel), what="bob's snapshot")
        event_id = server.publish(channel, "hello")
        async with asyncio.timeout(10):
            item = await anext(plain)
        assert item.id == event_id  # type: ignore[union-attr]
        assert plain.members(channel) == [] and plain.presence_counts(channel) == (0, 0)
    with pytest.raises(ValueError):
        plain.members("not-subscribed")


async def test_presence_frames_are_not_items(
    server: Server, clients: Callable[..., Client]
) -> None:
    channel = room()
    alice = clients(server.url, ptoken(server, "alice"), [channel])
    await until(lambda: "alice" in view(alice, channel), what="alice's snapshot")
    clients(server.url, ptoken(server, "bob"), [channel])
    await until(lambda: "bob" in view(alice, channel), what="bob's join")
    event_id = server.publish(channel, "after the joins")
    async with asyncio.timeout(10):
        item = await anext(alice)
    assert item.id == event_id  # type: ignore[union-attr]


# --- two servers on one Redis ----------------------------------------------------------


@redis_only
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_members_of_a_killed_server_leave_within_ttl_plus_interval(
    server_factory: Any, clients: Callable[..., Client], transport: str
) -> None:
    interval, ttl = 0.5, 1.5
    a: Server = server_factory(presence_refresh_interval=interval, presence_ttl=ttl)
    b: Server = server_factory(presence_refresh_interval=interval, presence_ttl=ttl)
    channel, changes = room(), Changes()
    watcher = clients(
        b.url, ptoken(b, "alice"), [channel], transports=(transport,), on_presence=changes
    )
    await until(lambda: view(watcher, channel) == {"alice": 1}, what="alice on B")
    clients(a.url, ptoken(a, "bob"), [channel], backoff_base=0.5)
    clients(a.url, ptoken(a, "carol"), [channel], backoff_base=0.5)
    await until(
        lambda: view(watcher, channel) == {"alice": 1, "bob": 1, "carol": 1},
        what="A's members seen on B",
    )
    assert a.proc is not None
    a.proc.kill()  # SIGKILL: A removes nothing, its entries have to expire
    killed = time.monotonic()
    a.proc.wait()
    await until(
        lambda: view(watcher, channel) == {"alice": 1}, timeout=ttl + interval + 10, what="leaves"
    )
    took = time.monotonic() - killed
    # the bound counts from A's last refresh, at most one interval before the kill; plus
    # the round trips (and a loaded machine's delay) to the client
    assert took <= ttl + interval + 1.0, f"A's members left after {took:.2f} s"
    assert changes.kinds("bob") == ["join", "leave"]
    assert changes.kinds("carol") == ["join", "leave"]
    consistent(watcher, changes, channel)


# --- the pure views ------------------------------------------------------------------------


def snapshot(channel: str, *members: tuple[str, int], truncated: bool = False) -> dict[str, Any]:
    listed = [{"subject": s, "info": {}, "connections": n} for s, n in members]
    return {
        "type": "presence",
        "channel": channel,
        "members": [] if truncated else listed,
        "member_count": len(members),
        "connection_count": sum(n for _, n in members),
        "truncated": truncated,
    }


def diff(kind: str, channel: str, subject: str, connections: int) -> dict[str, Any]:
    return {
        "type": kind,
        "channel": channel,
        "subject": subject,
        "info": {},
        "connections": connections,
    }


def reported(changes: list[PresenceChange]) -> list[tuple[str, str]]:
    return [(c.kind, c.member.subject) for c in changes]


def test_views_follow_the_connection_in_use_while_two_overlap() -> None:
    views = PresenceViews(["a"])
    assert views.receive(0, [snapshot("a", ("me", 1), ("bob", 1))]) == []  # held while opening
    assert reported(views.adopt(0)) == [("join", "bob"), ("join", "me")]
    # a better transport opens beside it: its snapshot is held, and each connection sees
    # the other's join of "me"
    assert views.receive(1, [snapshot("a", ("me", 2), ("bob", 1))]) == []
    assert views.receive(0, [diff("join", "a", "me", 2)]) == []
    assert views.receive(0, [diff("leave", "a", "bob", 0)]) == [
        PresenceChange("a", "leave", Member("bob", {}, 0))
    ]
    assert reported(views.adopt(1)) == [("join", "bob")]  # its snapshot still has bob
    assert views.receive(0, [diff("leave", "a", "me", 1)]) == []  # the replaced one: dropped
    assert views.receive(1, [diff("leave", "a", "bob", 0)]) == [
        PresenceChange("a", "leave", Member("bob", {}, 0))
    ]
    assert views.receive(1, [diff("leave", "a", "me", 1)]) == []
    # a late answer of the replaced one (a long-poll's re-snapshot): dropped, bob stays gone
    assert views.receive(0, [snapshot("a", ("me", 2), ("bob", 1))]) == []
    assert views.members("a") == [Member("me", {}, 1)]
    assert views.counts("a") == (1, 1)


def test_frames_received_together_are_reported_as_their_net_effect() -> None:
    """A long-poll answer that saw diffs ends with a fresh snapshot: a member that came and
    went within it, or the client's own member leaving and coming back, is not reported."""
    views = PresenceViews(["a"])
    views.adopt(0)
    views.receive(0, [snapshot("a", ("me", 1))])
    batch = [
        diff("leave", "a", "me", 0),
        diff("join", "a", "me", 1),
        diff("join", "a", "bob", 1),
        diff("leave", "a", "bob", 0),
        diff("join", "a", "cid", 1),
        snapshot("a", ("cid", 1), ("me", 1)),
    ]
    assert views.receive(0, batch) == [PresenceChange("a", "join", Member("cid", {}, 1))]
    assert views.counts("a") == (2, 2)


def test_views_take_diffs_only_after_the_connections_snapshot() -> None:
    views = PresenceViews(["a"])
    views.adopt(0)
    assert views.receive(0, [diff("join", "a", "bob", 1)]) == []
    assert reported(views.receive(0, [snapshot("a", ("carol", 1))])) == [("join", "carol")]
    assert reported(views.receive(0, [diff("join", "a", "bob", 1)])) == [("join", "bob")]
    assert views.receive(0, [diff("join", "a", "bob", 2)]) == []
    assert views.receive(0, [diff("leave", "a", "dave", 0)]) == []  # never known: no ghost
    assert reported(views.receive(0, [snapshot("a", ("bob", 2))])) == [("leave", "carol")]
    assert views.counts("a") == (1, 2)


def test_a_truncated_view_keeps_counts_and_reports_only_known_members() -> None:
    views = PresenceViews(["a"])
    views.adopt(0)
    views.receive(0, [snapshot("a", ("bob", 1))])
    assert (
        views.receive(0, [snapshot("a", *[(f"m{i}", 1) for i in range(5)], truncated=True)]) == []
    )
    assert views.members("a") == [] and views.counts("a") == (5, 5)
    assert reported(views.receive(0, [diff("join", "a", "zed", 1)])) == [("join", "zed")]
    # m1 was not known: its second connection makes it known (and reported, once)
    assert reported(views.receive(0, [diff("join", "a", "m1", 2)])) == [("join", "m1")]
    assert views.counts("a") == (6, 7)
    assert views.receive(0, [diff("leave", "a", "m3", 0)]) == []  # unknown: counted only
    assert reported(views.receive(0, [diff("leave", "a", "bob", 0)])) == [("leave", "bob")]
    assert views.counts("a") == (4, 5)
    assert views.receive(0, [snapshot("a", ("zed", 1), ("m1", 2))]) == []
    assert views.counts("a") == (2, 3)


class OverlappingConnections(RuleBasedStateMachine):
    """A server's presence changes; the client opens connections (each starts with a
    snapshot, then gets every diff), adopts them in order, and frames of any connection
    arrive late in any interleaving. Never a member twice, never a ghost, and once the
    connection in use delivered what it was sent, the view is the server's."""

    def __init__(self) -> None:
        super().__init__()
        self.truth: dict[str, int] = {}
        self.views = PresenceViews(["a"])
        self.changes = Changes()
        self.queues: dict[int, list[dict[str, Any]]] = {}  # open connections' pending frames
        self.next_serial = 0
        self.current = -1

    def _send(self, frame: dict[str, Any]) -> None:
        for queue in self.queues.values():
            queue.append(frame)

    def _report(self, changes: list[PresenceChange]) -> None:
        for change in changes:
            self.changes(change)

    @rule(subject=st.sampled_from(["ann", "bob", "cid"]))
    def join(self, subject: str) -> None:
        self.truth[subject] = self.truth.get(subject, 0) + 1
        self._send(diff("join", "a", subject, self.truth[subject]))

    @rule(subject=st.sampled_from(["ann", "bob", "cid"]))
    def leave(self, subject: str) -> None:
        if subject in self.truth:
            self.truth[subject] -= 1
            self._send(diff("leave", "a", subject, self.truth[subject]))
            if not self.truth[subject]:
                del self.truth[subject]

    @precondition(lambda self: len(self.queues) < 3)
    @rule()
    def open(self) -> None:
        serial, self.next_serial = self.next_serial, self.next_serial + 1
        self.queues[serial] = [snapshot("a", *sorted(self.truth.items()))]

    @rule(data=st.data())
    def deliver(self, data: st.DataObject) -> None:
        pending = sorted(s for s, q in self.queues.items() if q)
        if pending:
            serial = data.draw(st.sampled_from(pending))
            queue = self.queues[serial]  # a batch: what arrived together
            n = data.draw(st.integers(min_value=1, max_value=len(queue)))
            batch, self.queues[serial] = queue[:n], queue[n:]
            self._report(self.views.receive(serial, batch))

    @rule(data=st.data())
    def adopt(self, data: st.DataObject) -> None:
        newer = sorted(s for s in self.queues if s > self.current)
        if newer:
            self.current = data.draw(st.sampled_from(newer))
            self._report(self.views.adopt(self.current))

    @rule(data=st.data())
    def close(self, data: st.DataObject) -> None:
        if self.queues:
            serial = data.draw(st.sampled_from(sorted(self.queues)))
            del self.queues[serial]
            self.views.forget(serial)

    @invariant()
    def reports_match_the_view(self) -> None:
        assert not self.changes.errors, self.changes.errors
        members = self.views.members("a")
        assert {m.subject for m in members} == self.changes.present.get("a", set())

    @invariant()
    def caught_up_view_is_the_servers(self) -> None:
        if self.current in self.queues and not self.queues[self.current]:
            assert view_of(self.views) == self.truth


def view_of(views: PresenceViews) -> dict[str, int]:
    return {m.subject: m.connections for m in views.members("a")}


TestOverlappingConnections = OverlappingConnections.TestCase
TestOverlappingConnections.settings = settings(
    max_examples=200, stateful_step_count=40, deadline=None
)
