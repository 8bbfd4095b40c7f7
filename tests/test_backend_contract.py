"""The log contract (``pushsvc.backends.base``), ONE suite run against ``memory://`` and a
real ``redis://``; a few Redis-only tests cover what only a network backend can suffer
(killed and deaf listener connections, several processes on one Redis)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis.asyncio as aioredis

from pushsvc.backends import Backend, Message, Retention
from pushsvc.backends.base import EXPIRY_MARGIN
from pushsvc.backends.memory import MemoryBackend
from pushsvc.backends.redis import RedisBackend, idempotency_field, parse_url
from pushsvc.exceptions import BackendError
from pushsvc.protocol import cursor
from pushsvc.protocol.events import Event, Gap
from pushsvc.protocol.ids import ZERO, StreamId
from tests.fixtures_redis import MakeBackend, backend_url_for, with_prefix, without_query
from tests.waiting import until

redis_only = pytest.mark.parametrize("backend_url", ["redis"], indirect=True)


@pytest.fixture(params=["memory", "redis", "redis-cluster"])
def backend_url(request: pytest.FixtureRequest) -> str:
    """The contract holds on a Redis Cluster too (a real 3-master one, started once)."""
    return backend_url_for(request)


class Received:
    """A sink that records live events per channel."""

    def __init__(self, backend: Backend) -> None:
        self.events: dict[str, list[Event]] = defaultdict(list)
        backend.set_sink(self)

    def __call__(self, event: Event) -> None:
        self.events[event.channel].append(event)

    def ids(self, channel: str) -> list[StreamId]:
        return [e.id for e in self.events[channel]]

    def count(self) -> int:
        return sum(len(v) for v in self.events.values())

    async def wait_for(self, count: int, timeout: float = 10) -> None:
        await until(self.count, timeout, f"{count} live events", check=lambda n: n >= count)


def msg(channel: str, i: int, idempotency_key: str | None = None) -> Message:
    return Message(channel, "message", b'{"n":%d}' % i, idempotency_key=idempotency_key)


async def append_ids(backend: Backend, channel: str, n: int) -> list[StreamId]:
    return [e.id for e in await backend.append_many([msg(channel, i) for i in range(n)])]


async def read_all(backend: Backend, channel: str, after: StreamId = ZERO) -> list[Event]:
    return (await backend.read_after(channel, after, 10_000)).events


# --- the log -----------------------------------------------------------------------


async def test_ids_are_monotonic_and_ordered_per_channel(backend: Backend) -> None:
    ids = await append_ids(backend, "c", 30)
    for i in range(10):
        ids.append((await backend.append(msg("c", 100 + i))).id)
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    events = await read_all(backend, "c")
    assert [e.id for e in events] == ids
    assert [e.data for e in events][:2] == [b'{"n":0}', b'{"n":1}']
    assert await backend.top("c") == ids[-1]
    assert (await backend.read_after("c", ZERO, 1)).top == ids[-1]


async def test_read_after_pages_in_order_and_is_exclusive(backend: Backend) -> None:
    ids = await append_ids(backend, "c", 25)
    got: list[StreamId] = []
    after = ZERO
    while True:
        page = await backend.read_after("c", after, 10)
        assert page.gap is None and page.top == ids[-1]
        if not page.events:
            break
        got.extend(e.id for e in page.events)
        after = page.events[-1].id
    assert got == ids
    assert [e.id for e in await read_all(backend, "c", ids[4])] == ids[5:]
    assert await read_all(backend, "c", ids[-1]) == []
    assert (await backend.read_after("c", ZERO, 0)).events == []


async def test_top_of_an_unknown_channel_is_zero(backend: Backend) -> None:
    assert await backend.top("nobody-wrote-here") == ZERO
    recent = (int(time.time() * 1000) - 1000, 0)  # newer than any expired event can be
    for after in (ZERO, recent):
        result = await backend.read_after("nobody-wrote-here", after, 10)
        assert (result.events, result.top, result.gap) == ([], ZERO, None)
    # older than max_age: the backend cannot tell it from a channel that expired
    result = await backend.read_after("nobody-wrote-here", (5, 5), 10)
    assert (result.events, result.top) == ([], ZERO)
    assert result.gap is not None and result.gap.after == (5, 5)


async def test_idempotent_append_stores_once_and_answers_the_original(backend: Backend) -> None:
    first = await backend.append(msg("c", 1, idempotency_key="k1"))
    again = await backend.append(msg("c", 2, idempotency_key="k1"))
    assert again.same_as(first)
    batch = await backend.append_many(
        [msg("c", 3, idempotency_key="k2"), msg("c", 4), msg("c", 5, idempotency_key="k2")]
    )
    assert batch[2].same_as(batch[0]) and batch[1].id > batch[0].id
    other = await backend.append(msg("other", 6, idempotency_key="k1"))  # per channel
    assert other.data == b'{"n":6}'
    stored = await read_all(backend, "c")
    assert [e.data for e in stored] == [b'{"n":1}', b'{"n":3}', b'{"n":4}']


async def test_binary_and_unicode_data_round_trip(backend: Backend) -> None:
    received = Received(backend)
    await backend.listen("c")
    blob = bytes(range(256)) * 3
    text = '{"s":"héllo ✓ \\u0000"}'.encode()
    sent = await backend.append_many(
        [Message("c", "bin", blob, binary=True), Message("c", "txt", text), Message("c", "e", b"")]
    )
    stored = await read_all(backend, "c")
    await received.wait_for(3)
    for got in (stored, received.events["c"]):
        assert [(e.name, e.data, e.binary) for e in got] == [
            ("bin", blob, True),
            ("txt", text, False),
            ("e", b"", False),
        ]
        assert [e.id for e in got] == [e.id for e in sent]


@pytest.mark.parametrize("backend", [Retention(max_len=5, approximate=False)], indirect=True)
async def test_retention_by_count_trims_exactly_and_reports_the_gap(backend: Backend) -> None:
    ids = await append_ids(backend, "c", 8)
    ids += await append_ids(backend, "c", 4)
    result = await backend.read_after("c", ZERO, 100)
    assert [e.id for e in result.events] == ids[7:]
    assert result.gap == Gap("c", ZERO, ids[6])
    assert result.top == ids[-1]
    from_old = await backend.read_after("c", ids[3], 2)
    assert from_old.gap == Gap("c", ids[3], ids[6])
    assert [e.id for e in from_old.events] == ids[7:9]
    at_edge = await backend.read_after("c", ids[6], 100)
    assert at_edge.gap is None and [e.id for e in at_edge.events] == ids[7:]


@pytest.mark.parametrize("backend", [Retention(max_len=20, approximate=True)], indirect=True)
async def test_approximate_retention_keeps_at_least_max_len_without_holes(
    backend: Backend,
) -> None:
    ids = await append_ids(backend, "c", 100)
    result = await backend.read_after("c", ZERO, 1000)
    kept = [e.id for e in result.events]
    assert len(kept) >= 20 and kept == ids[-len(kept) :]
    assert result.gap == Gap("c", ZERO, ids[-len(kept) - 1])


@pytest.mark.parametrize("backend", [Retention(max_age=0.05, approximate=False)], indirect=True)
async def test_retention_by_age_trims_old_events_when_the_channel_is_written(
    backend: Backend,
) -> None:
    old = await append_ids(backend, "c", 3)
    # the events age past max_age (0.05 s) on the clock that stamped their IDs
    await until(
        lambda: time.time() * 1000 - old[-1][0],
        5,
        "the events to be 0.12 s old",
        check=lambda age_ms: age_ms >= 120,
    )
    assert [e.id for e in await read_all(backend, "c")] == old  # nothing written since
    new = await append_ids(backend, "c", 2)
    result = await backend.read_after("c", ZERO, 100)
    assert [e.id for e in result.events] == new
    assert result.gap == Gap("c", ZERO, old[-1])
    assert await backend.top("c") == new[-1]


async def gone(backend: Backend, channel: str, timeout: float = 10) -> None:
    """Wait until ``channel`` has expired (its top reads as never written)."""
    await until(
        lambda: backend.top(channel), timeout, f"{channel} to expire", check=lambda t: t == ZERO
    )


@pytest.mark.parametrize("backend", [Retention(max_age=0.1)], indirect=True)
async def test_a_channel_with_no_event_for_max_age_expires_and_a_cursor_into_it_gets_a_gap(
    backend: Backend,
) -> None:
    ids = await append_ids(backend, "c", 3)
    await gone(backend, "c")
    # a reader that saw ids[0] missed ids[1:], a reader at ids[-1] missed nothing: the
    # backend no longer knows which, so both get a gap that covers every expired event
    for after in (ids[0], ids[-1]):
        result = await backend.read_after("c", after, 10)
        assert (result.events, result.top) == ([], ZERO)
        assert result.gap is not None and result.gap.after == after
        assert result.gap.until > ids[-1]
        cursor.segment(cursor.channel_hash("c"), result.gap.until)  # fits a cursor
    assert (await backend.read_after("c", ZERO, 10)).gap is None  # nothing seen, none lost
    # the channel starts again above every ID it had, and a cursor into it reads on
    new = await append_ids(backend, "c", 2)
    assert new[0] > ids[-1]
    result = await backend.read_after("c", ids[-1], 10)
    assert [e.id for e in result.events] == new and result.gap is None


@pytest.mark.parametrize("backend", [Retention(max_age=0.1, idempotency_ttl=60)], indirect=True)
async def test_an_idempotency_record_outlives_its_expired_channel(backend: Backend) -> None:
    first = await backend.append(msg("c", 1, idempotency_key="k"))
    later = await backend.append(msg("d", 1))
    await gone(backend, "d")  # "d" is as old as "c": "c"'s events are past max_age too
    assert first.id[0] <= later.id[0]
    again = await backend.append(msg("c", 2, idempotency_key="k"))
    assert again.id == first.id  # and nothing stored:
    assert b'{"n":2}' not in [e.data for e in await read_all(backend, "c")]


@pytest.mark.parametrize("backend", [Retention(idempotency_ttl=0.2)], indirect=True)
async def test_an_idempotency_key_is_forgotten_after_idempotency_ttl(backend: Backend) -> None:
    first = await backend.append(msg("c", 1, idempotency_key="k"))
    batch = await backend.append_many([msg("c", 2, idempotency_key="k"), msg("c", 3)])
    assert batch[0].id == first.id  # within the TTL, in a batch too
    await until(
        lambda: time.time() * 1000 - first.id[0],
        5,
        "the record to be 0.3 s old",
        check=lambda age_ms: age_ms >= 300,
    )
    again = await backend.append(msg("c", 4, idempotency_key="k"))
    assert again.id > batch[1].id and again.data == b'{"n":4}'
    assert (await backend.append(msg("c", 5, idempotency_key="k"))).id == again.id


@pytest.mark.parametrize("backend_url", ["memory"], indirect=True)
@pytest.mark.parametrize("backend", [Retention(max_age=0.1)], indirect=True)
async def test_memory_keeps_a_listened_channel_and_sweeps_in_bounded_steps(
    backend: Backend,
) -> None:
    assert isinstance(backend, MemoryBackend)
    await backend.listen("held")
    await backend.append_many([msg("held", 0)] + [msg(f"c{i}", i) for i in range(10)])
    await until(
        lambda: backend.channel_count, 10, "the sweep to evict the unheld", check=lambda n: n == 1
    )
    assert await backend.top("held") != ZERO
    await backend.unlisten("held")
    await until(lambda: backend.channel_count, 10, "held to go", check=lambda n: n == 0)
    await backend.close()  # no periodic sweep from here on: only explicit ones
    sent = await backend.append_many([msg(f"c{i}", i) for i in range(10)])
    newest_ms = max(e.id[0] for e in sent)
    await until(
        lambda: time.time() * 1000 - (backend.retention.max_age + EXPIRY_MARGIN) * 1000,
        5,
        "the channels to be past max_age + margin",
        check=lambda horizon_ms: horizon_ms > newest_ms,
    )
    assert backend.channel_count == 10
    assert backend.sweep(3) == 3 and backend.channel_count == 7
    assert backend.sweep() == 7 and backend.channel_count == 0


@pytest.mark.parametrize("backend", [Retention(max_len=3, approximate=False)], indirect=True)
async def test_channels_are_independent(backend: Backend) -> None:
    sent = await backend.append_many([msg(c, i) for i in range(6) for c in ("a", "b")])
    sent += await backend.append_many([msg("a", i) for i in range(10)])
    for channel in ("a", "b"):
        mine = [e.id for e in sent if e.channel == channel]
        result = await backend.read_after(channel, ZERO, 100)
        assert [e.id for e in result.events] == mine[-3:]
        assert all(e.channel == channel for e in result.events)
        assert result.gap == Gap(channel, ZERO, mine[-4])
        assert await backend.top(channel) == mine[-1]


@pytest.mark.parametrize(
    "channel", ["a:b", "a/b", "u@host", "k=v", "p+q", "v1.2", "a:b/c@d=e+f.g_-"]
)
async def test_channel_names_with_punctuation_are_separate_channels(
    backend: Backend, channel: str
) -> None:
    received = Received(backend)
    neighbours = [channel, "a", channel + ":log", channel.split(":")[0]]
    neighbours = list(dict.fromkeys(neighbours))
    for c in neighbours:
        await backend.listen(c)
    sent = {c: (await backend.append(msg(c, i))).id for i, c in enumerate(neighbours)}
    await received.wait_for(len(neighbours))
    for i, c in enumerate(neighbours):
        events = await read_all(backend, c)
        assert [(e.id, e.data) for e in events] == [(sent[c], b'{"n":%d}' % i)]
        assert received.ids(c) == [sent[c]]


# --- live notifications ------------------------------------------------------------


async def test_listen_delivers_every_later_event_once_and_in_order(backend: Backend) -> None:
    received = Received(backend)
    channels = ["x", "y", "z"]
    for c in channels:
        await backend.listen(c)
    sent: list[Event] = []

    async def publisher(k: int) -> None:
        for i in range(20):  # batches of 1, 2, 3, 4: 50 events
            batch = [msg(random.choice(channels), k * 1000 + i * 10 + j) for j in range(i % 4 + 1)]
            if len(batch) == 1:
                sent.append(await backend.append(batch[0]))
            else:
                sent.extend(await backend.append_many(batch))

    await asyncio.gather(*(publisher(k) for k in range(10)))
    total = len(sent)
    assert total == 500
    await received.wait_for(total)
    await asyncio.sleep(0.05)  # window: a duplicate would arrive now
    assert received.count() == total
    for c in channels:
        assert received.ids(c) == sorted(e.id for e in sent if e.channel == c)
        assert received.ids(c) == [e.id for e in await read_all(backend, c)]
    assert backend.listener_status().channels == 3


async def test_an_append_right_after_listen_returns_is_delivered(backend: Backend) -> None:
    received = Received(backend)
    expected = {}
    for i in range(30):
        channel = f"race-{i}"
        if i % 2:
            await backend.append(msg(channel, -1))  # a channel with history, or a new one
        await backend.listen(channel)
        expected[channel] = (await backend.append(msg(channel, i))).id
    await received.wait_for(30)
    await asyncio.sleep(0.02)  # window: a duplicate would arrive now
    assert {c: received.ids(c) for c in expected} == {c: [i] for c, i in expected.items()}


async def test_unlisten_stops_delivery(backend: Backend) -> None:
    received = Received(backend)
    await backend.listen("c")
    await backend.listen("d")
    await backend.append(msg("c", 1))
    await received.wait_for(1)
    await backend.unlisten("c")
    await backend.unlisten("never-listened")
    await backend.append_many([msg("c", 2), msg("d", 3)])
    await received.wait_for(2)
    await asyncio.sleep(0.05)  # window: an event of the unlistened channel would arrive now
    assert [e.data for e in received.events["c"]] == [b'{"n":1}']
    assert backend.listener_status().channels == 1
    await backend.listen("c")  # and listening again works
    await backend.append(msg("c", 4))
    await received.wait_for(3)
    assert [e.data for e in received.events["c"]] == [b'{"n":1}', b'{"n":4}']


async def test_ping_answers_and_the_listener_reports_connected(backend: Backend) -> None:
    await backend.ping()
    status = backend.listener_status()
    assert status.connected and status.reconnects == 0 and status.channels == 0


# --- Redis only: several processes, lost and deaf connections ------------------------


@redis_only
async def test_two_backends_on_one_prefix_both_receive_every_event(
    make_backend: MakeBackend,
) -> None:
    one, two = await make_backend(), await make_backend()
    got_one, got_two = Received(one), Received(two)
    await one.listen("shared")
    await two.listen("shared")
    sent = []
    for i in range(40):
        sent.append((await (one if i % 2 else two).append(msg("shared", i))).id)
    await got_one.wait_for(40)
    await got_two.wait_for(40)
    assert got_one.ids("shared") == got_two.ids("shared") == sent
    assert [e.id for e in await read_all(two, "shared")] == sent


@redis_only
async def test_keys_live_under_the_prefix_with_a_hash_tag_per_channel(
    backend: Backend, backend_url: str
) -> None:
    _, prefix = parse_url(backend_url)
    await backend.append(msg("room/1", 1, idempotency_key="key-1"))
    r = aioredis.from_url(without_query(backend_url))
    try:
        keys = sorted([k async for k in r.scan_iter(match=prefix + "*")])
        ttls = [await r.pttl(k) for k in keys]
        bucket = await r.hgetall(keys[0])
    finally:
        await r.aclose()
    tag = f"{prefix}{{room/1}}"
    assert len(keys) == 2 and keys[1] == f"{tag}:log".encode()
    assert keys[0].startswith(f"{tag}:i:".encode())
    assert list(bucket) == [idempotency_field("key-1")]
    # every key expires by itself: the idempotency bucket once its newest record is
    # idempotency_ttl old (plus at most a bucket's width), the stream max_age + margin
    # after its last event
    r_ = backend.retention
    assert 0 < ttls[0] <= r_.idempotency_ttl * 1000 * 1.25
    assert 0 < ttls[1] <= (r_.max_age + EXPIRY_MARGIN) * 1000


@redis_only
async def test_a_flushed_script_cache_is_reloaded(backend: Backend, backend_url: str) -> None:
    first = await backend.append(msg("c", 1))
    r = aioredis.from_url(without_query(backend_url))
    try:
        await r.script_flush()
    finally:
        await r.aclose()
    # several channels in one batch: one script call per channel, answered in input order
    events = await backend.append_many([msg("c", 2), msg("d", 1), msg("c", 3)])
    assert [(e.channel, e.data) for e in events] == [
        ("c", b'{"n":2}'),
        ("d", b'{"n":1}'),
        ("c", b'{"n":3}'),
    ]
    assert first.id < events[0].id < events[2].id
    assert len(await read_all(backend, "c")) == 3


async def test_an_unreachable_redis_fails_start_with_a_clear_error() -> None:
    backend = RedisBackend("redis://127.0.0.1:1/0?prefix=x:", Retention())
    try:
        with pytest.raises(BackendError, match=r"cannot reach Redis at redis://127\.0\.0\.1:1/0"):
            await backend.start()
    finally:
        await backend.close()


async def _publish_continuously(
    backend: Backend, channels: list[str], n: int, sent: list[Event]
) -> None:
    for i in range(n):
        sent.append(await backend.append(msg(channels[i % len(channels)], i)))
        await asyncio.sleep(0.001)  # pace: a steady stream of publishes


def _assert_once_in_order(received: Received, sent: list[Event], channels: list[str]) -> None:
    for c in channels:
        assert received.ids(c) == [e.id for e in sent if e.channel == c]


@redis_only
async def test_listener_is_gap_free_across_killed_connections(
    make_backend: MakeBackend, backend_url: str
) -> None:
    listener = await make_backend()
    publisher = await make_backend()
    received = Received(listener)
    channels = ["k1", "k2", "k3"]
    for c in channels:
        await listener.listen(c)
    sent: list[Event] = []
    task = asyncio.create_task(_publish_continuously(publisher, channels, 400, sent))
    r = aioredis.from_url(without_query(backend_url))
    try:
        for k in range(3):
            # kill after every 50 publishes, while the stream goes on
            await until(
                lambda: len(sent),
                30,
                f"{(k + 1) * 50} publishes",
                check=lambda n: n >= (k + 1) * 50,  # noqa: B023
            )
            # the listener is back and subscribed once there is a pub/sub client to kill
            await until(
                lambda: r.client_kill_filter(_type="pubsub"),
                2,
                "a pub/sub connection to kill",
                check=lambda killed: int(killed) > 0,
                interval=0.005,
            )
    finally:
        await r.aclose()
        await task
    await received.wait_for(len(sent))
    await asyncio.sleep(0.05)  # window: a duplicate would arrive now
    _assert_once_in_order(received, sent, channels)
    assert listener.listener_status().reconnects >= 3
    assert listener.listener_status().connected


class MutingProxy:
    """A TCP proxy to Redis that can silence the listener's connections passing through
    it (a half-dead connection: the socket stays open, nothing arrives)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.muted: set[int] = set()
        self.listeners: set[int] = set()
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    def mute_listeners(self) -> None:
        self.muted |= self.listeners

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers += [writer, up_writer]
        conn = id(writer)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, up: bool) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    if up and b"pushsvc-listener" in data:  # its CLIENT SETNAME
                        self.listeners.add(conn)
                    if conn not in self.muted:
                        dst.write(data)
                        await dst.drain()
            dst.close()

        for task in (
            asyncio.create_task(pump(reader, up_writer, True)),
            asyncio.create_task(pump(up_reader, writer, False)),
        ):
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for writer in self.writers:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def muting_proxy(redis_server_url: str) -> AsyncIterator[MutingProxy]:
    proxy = MutingProxy(int(urlsplit(redis_server_url).port or 6379))
    yield proxy
    await proxy.close()


async def _listener_via_proxy(
    make_backend: MakeBackend,
    backend_url: str,
    muting_proxy: MutingProxy,
    publisher_retention: Retention | None = None,
) -> tuple[Backend, Backend, Received]:
    """A listener that reaches Redis through the proxy (pinging every 50 ms, deaf after
    200 ms), a publisher that does not, and what the listener receives."""
    proxy_port = await muting_proxy.start()
    _, prefix = parse_url(backend_url)
    via_proxy = with_prefix(f"redis://127.0.0.1:{proxy_port}/0", prefix)
    listener = await make_backend(url=via_proxy, ping_interval=0.05, ping_timeout=0.2)
    publisher = await make_backend(publisher_retention)
    return listener, publisher, Received(listener)


@redis_only
async def test_a_deaf_listener_is_detected_and_recovers_without_loss(
    make_backend: MakeBackend, backend_url: str, muting_proxy: MutingProxy
) -> None:
    listener, publisher, received = await _listener_via_proxy(
        make_backend, backend_url, muting_proxy
    )
    await listener.listen("deaf")
    sent: list[Event] = []
    task = asyncio.create_task(_publish_continuously(publisher, ["deaf"], 150, sent))
    await until(lambda: len(sent), 10, "20 publishes", check=lambda n: n >= 20)
    muting_proxy.mute_listeners()
    started = time.monotonic()
    await until(lambda: listener.listener_status().reconnects, 5, "a reconnect")
    assert time.monotonic() - started < 1.5
    await task
    await received.wait_for(len(sent))
    await asyncio.sleep(0.05)  # window: a duplicate would arrive now
    _assert_once_in_order(received, sent, ["deaf"])


@redis_only
async def test_a_saturated_event_loop_does_not_make_a_healthy_listener_look_deaf(
    make_backend: MakeBackend, backend_url: str, muting_proxy: MutingProxy
) -> None:
    # A process at 100% CPU: every turn of the event loop takes ~0.1 s, so the PONG
    # (relayed by a proxy in this same loop: several turns) is read after its 0.2 s
    # deadline although Redis answers at once. Nothing is muted.
    listener, publisher, received = await _listener_via_proxy(
        make_backend, backend_url, muting_proxy
    )
    await listener.listen("busy")
    sent: list[Event] = []
    until = time.monotonic() + 2.5

    async def hog() -> None:
        while time.monotonic() < until:
            time.sleep(0.01)  # pace: a CPU hog, it blocks the whole event loop
            await asyncio.sleep(0)  # pace: the hog lets one turn of the loop through

    hogs = [asyncio.create_task(hog()) for _ in range(10)]
    await _publish_continuously(publisher, ["busy"], 20, sent)
    await asyncio.gather(*hogs)
    await received.wait_for(len(sent))
    _assert_once_in_order(received, sent, ["busy"])
    assert listener.listener_status().reconnects == 0


@redis_only
async def test_a_listen_while_redis_is_unreachable_fails_clearly(
    make_backend: MakeBackend, backend_url: str, muting_proxy: MutingProxy
) -> None:
    proxy_port = await muting_proxy.start()
    _, prefix = parse_url(backend_url)
    url = with_prefix(f"redis://127.0.0.1:{proxy_port}/0", prefix)
    listener = await make_backend(url=url, ping_interval=10, listen_timeout=0.3)
    muting_proxy.mute_listeners()
    with pytest.raises(BackendError, match="no subscription"):
        await listener.listen("c")
    assert listener.listener_status().channels == 0


@redis_only
async def test_events_trimmed_while_the_listener_was_away_come_as_a_gap(
    make_backend: MakeBackend, backend_url: str, muting_proxy: MutingProxy
) -> None:
    """A listener cut off long enough for retention to trim what it had not passed on
    reports the hole to the gap sink, then passes on what is left: nothing is skipped
    silently."""
    listener, publisher, received = await _listener_via_proxy(
        make_backend, backend_url, muting_proxy, Retention(max_len=5, approximate=False)
    )
    gaps: list[Gap] = []
    listener.set_sink(received, gaps.append)
    await listener.listen("trim")
    seen = [await publisher.append(msg("trim", 0))]
    await received.wait_for(1)
    muting_proxy.mute_listeners()
    missed = await publisher.append_many([msg("trim", i) for i in range(1, 31)])  # one call
    await received.wait_for(1 + 5)
    await asyncio.sleep(0.05)  # window: no other event nor gap may arrive
    assert gaps == [Gap("trim", seen[0].id, missed[-6].id)]
    assert received.ids("trim") == [e.id for e in seen + missed[-5:]]
    assert listener.listener_status().reconnects >= 1


async def test_a_batch_across_channels_answers_in_order_and_dedupes_per_channel(
    backend: Backend,
) -> None:
    received = Received(backend)
    for c in ("a", "b"):
        await backend.listen(c)
    batch = [
        msg("a", 1, idempotency_key="k"),
        msg("b", 1, idempotency_key="k"),  # the same key on another channel: its own
        msg("a", 2),
        msg("b", 2, idempotency_key="k"),  # a repeat within the batch
        msg("a", 3, idempotency_key="k"),
    ]
    events = await backend.append_many(batch)
    assert [e.channel for e in events] == ["a", "b", "a", "b", "a"]
    assert events[3].same_as(events[1]) and events[4].same_as(events[0])
    assert events[0].id < events[2].id
    assert [e.data for e in await read_all(backend, "a")] == [b'{"n":1}', b'{"n":2}']
    assert [e.data for e in await read_all(backend, "b")] == [b'{"n":1}']
    # the listeners got each stored event once, in order per channel
    await until(received.count, check=lambda n: n == 3, what="three live events")
    assert received.ids("a") == [events[0].id, events[2].id]
    assert received.ids("b") == [events[1].id]


@redis_only
async def test_concurrent_appends_share_a_round_trip_and_keep_their_own_errors(
    backend: Backend, backend_url: str
) -> None:
    assert isinstance(backend, RedisBackend)
    r = aioredis.from_url(without_query(backend_url))
    try:
        await r.set(backend._stream_key("broken"), "not a stream")  # XADD: WRONGTYPE
    finally:
        await r.aclose()
    pipelines = 0
    real = backend._redis.pipeline

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal pipelines
        pipelines += 1
        return real(*args, **kwargs)

    backend._redis.pipeline = counting  # type: ignore[method-assign]
    results = await asyncio.gather(
        backend.append(msg("fine", 1)),
        backend.append(msg("broken", 1)),
        backend.append_many([msg("fine", 2), msg("other", 1)]),
        return_exceptions=True,
    )
    assert pipelines == 1  # four messages of three callers: one round trip
    assert isinstance(results[1], BackendError) and "WRONGTYPE" in str(results[1])
    first, (second, other) = results[0], results[2]
    assert isinstance(first, Event) and first.id < second.id and other.channel == "other"
    assert [e.data for e in await read_all(backend, "fine")] == [b'{"n":1}', b'{"n":2}']
