"""Redis Cluster (``redis+cluster://``) against a real 3-master cluster the tests start.

The backend and presence contract suites run on it too (their ``backend_url`` fixture
has a ``redis-cluster`` parameter); here: the resume tests through ``pushsvc serve`` on
the cluster, what only a cluster has (one slot per channel, one listener per primary),
and a channel whose slot moves to another primary while it is listened.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot
from redis.exceptions import MovedError

from pushsvc.backends import Backend, Message
from pushsvc.backends.base import PresenceEntry
from pushsvc.backends.redis import cluster_nodes, parse_url
from pushsvc.exceptions import BackendError, ConfigError
from pushsvc.protocol.events import Event
from tests.fixtures_redis import (
    MakeBackend,
    RedisCluster,
    backend_url_for,
    running_cluster,
    with_prefix,
)
from tests.test_resume import (
    test_batch_publish_answers_every_id_in_order,
    test_binary_payload_on_every_transport,
    test_every_sse_frame_id_is_a_cursor_for_all_channels,
    test_live_and_history_seam_has_no_gap_or_duplicate,
    test_live_events_reach_subscribers_on_every_instance,
    test_one_cursor_resumes_across_sse_long_poll_and_websocket,
    test_publish_is_idempotent_by_key,
    test_quiet_channel_subscriber_resumes_from_its_first_cursor,
    test_resume_on_another_instance,
    test_trimmed_history_sends_a_gap_on_every_transport,
)
from tests.waiting import until

# The resume tests, collected again here: their ``server`` runs on the cluster.
__all__ = [
    "test_batch_publish_answers_every_id_in_order",
    "test_binary_payload_on_every_transport",
    "test_every_sse_frame_id_is_a_cursor_for_all_channels",
    "test_live_and_history_seam_has_no_gap_or_duplicate",
    "test_live_events_reach_subscribers_on_every_instance",
    "test_one_cursor_resumes_across_sse_long_poll_and_websocket",
    "test_publish_is_idempotent_by_key",
    "test_quiet_channel_subscriber_resumes_from_its_first_cursor",
    "test_resume_on_another_instance",
    "test_trimmed_history_sends_a_gap_on_every_transport",
]


@pytest.fixture(params=["redis-cluster"])
def backend_url(request: pytest.FixtureRequest) -> str:
    return backend_url_for(request)


@pytest.fixture
async def nodes(redis_cluster: RedisCluster) -> AsyncIterator[dict[int, aioredis.Redis]]:
    """A plain client per node, by port."""
    clients = {port: aioredis.Redis(port=port) for port in redis_cluster.ports}
    yield clients
    for client in clients.values():
        await client.aclose()


async def node_ids(nodes: dict[int, aioredis.Redis]) -> dict[int, str]:
    return {port: (await c.execute_command("CLUSTER MYID")).decode() for port, c in nodes.items()}


async def owner(nodes: dict[int, aioredis.Redis], key: bytes) -> int:
    """The node serving ``key``'s slot: the others answer MOVED."""
    serving = []
    for port, client in nodes.items():
        try:
            await client.exists(key)
        except MovedError:
            pass
        else:
            serving.append(port)
    assert len(serving) == 1, serving
    return serving[0]


def test_the_cluster_url_names_its_nodes_and_keeps_prefix_and_options() -> None:
    url = "redis+cluster://u:p@10.0.0.1:7000,10.0.0.2:7001,10.0.0.3/0?prefix=app:"
    assert cluster_nodes(url) == [("10.0.0.1", 7000), ("10.0.0.2", 7001), ("10.0.0.3", 6379)]
    assert parse_url(url)[1] == "app:"
    with pytest.raises(ConfigError, match="not host:port"):
        cluster_nodes("redis+cluster://a:1,b:x/")


async def test_a_channel_keeps_all_its_keys_in_one_slot(
    backend: Backend, nodes: dict[int, aioredis.Redis], backend_url: str
) -> None:
    prefix = parse_url(backend_url)[1]
    channels = [f"room-{i}" for i in range(12)]
    for c in channels:
        await backend.append(Message(c, "m", b"1", idempotency_key=f"k-{c}"))
        await backend.presence_join(PresenceEntry(c, f"conn-{c}", "alice", b""))
    keys_by_channel: dict[str, set[int]] = {c: set() for c in channels}
    holders: dict[str, set[int]] = {c: set() for c in channels}
    for port, client in nodes.items():
        async for raw in client.scan_iter(match=f"{prefix}*"):
            key = raw.decode()
            channel = key[len(prefix) + 1 : key.index("}")]
            keys_by_channel[channel].add(key_slot(raw))
            holders[channel].add(port)
    for c in channels:
        assert len(keys_by_channel[c]) == 1, c  # stream, idempotency, presence: one slot
        assert len(holders[c]) == 1, c
    assert len(set().union(*holders.values())) == 3  # the channels spread over the masters


async def test_one_listener_connection_per_primary_delivers_every_slot(
    backend: Backend, nodes: dict[int, aioredis.Redis]
) -> None:
    received: list[Event] = []
    backend.set_sink(received.append)
    channels = [f"c{i}" for i in range(30)]  # spread over the three primaries
    for c in channels:
        await backend.listen(c)
    sent = await backend.append_many([Message(c, "m", b"x") for c in channels])
    await until(lambda: len(received) >= len(sent), 10, "every notification")
    assert sorted((e.channel, e.id) for e in received) == sorted((e.channel, e.id) for e in sent)
    for client in nodes.values():
        names = [c.get("name") for c in await client.client_list()]
        assert names.count("pushsvc-listener") == 1
    assert backend.listener_status().connected


async def migrate_slot(
    nodes: dict[int, aioredis.Redis], slot: int, source: int, target: int
) -> None:
    """Move ``slot`` from ``source`` to ``target`` as ``redis-cli --cluster reshard`` does:
    IMPORTING / MIGRATING, MIGRATE the keys, then SETSLOT NODE on every node."""
    ids = await node_ids(nodes)
    src, dst = nodes[source], nodes[target]
    await dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", ids[source])
    await src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", ids[target])
    while keys := await src.execute_command("CLUSTER GETKEYSINSLOT", slot, 100):
        await src.execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *keys)
        await asyncio.sleep(0.05)  # pace: let publishes interleave with the migration
    for port in (target, source, *(p for p in nodes if p not in (source, target))):
        await nodes[port].execute_command("CLUSTER SETSLOT", slot, "NODE", ids[target])


async def test_a_listened_channel_whose_slot_moves_loses_nothing(
    make_backend: MakeBackend, nodes: dict[int, aioredis.Redis], backend_url: str
) -> None:
    # one instance listens, another publishes all along (as two pushsvc processes would)
    listener = await make_backend(topology_interval=60.0)  # moves are followed by hint
    publisher = await make_backend()
    received: list[Event] = []
    listener.set_sink(received.append)
    channel = "moving"
    shard = f"{parse_url(backend_url)[1]}{{{channel}}}:n".encode()
    await listener.listen(channel)
    sent: list[Event] = []
    stop = asyncio.Event()

    async def publish() -> None:
        i = 0
        while not stop.is_set():
            sent.append(await publisher.append(Message(channel, "m", b"%d" % i)))
            i += 1
            await asyncio.sleep(0.005)  # pace: a steady trickle, not a flood

    task = asyncio.create_task(publish())
    try:
        await until(lambda: len(sent) >= 20, 10, "events before the move")
        source = await owner(nodes, shard)
        target = next(p for p in nodes if p != source)
        await migrate_slot(nodes, key_slot(shard), source, target)
        assert await owner(nodes, shard) == target
        count = len(sent)
        await until(lambda: len(sent) >= count + 20, 10, "events after the move")
    finally:
        stop.set()
        await task
    await until(lambda: len(received) >= len(sent), 10, "every event, moved or not")
    await asyncio.sleep(0.1)  # window: a duplicate would arrive now
    assert [e.id for e in received] == [e.id for e in sent]
    # the hub trusts what it saw live only while this count stands still
    assert listener.listener_status().reconnects >= 1


async def test_a_subscription_sent_to_a_former_owner_follows_the_moved_reply(
    make_backend: MakeBackend, nodes: dict[int, aioredis.Redis], backend_url: str
) -> None:
    # the listener reads the slot map at start; the slot then moves behind its back (no
    # channel of it is listened, so no sunsubscribe tells it): its SSUBSCRIBE goes to the
    # former owner, which answers MOVED
    listener = await make_backend(topology_interval=60.0)
    received: list[Event] = []
    listener.set_sink(received.append)
    channel = "moved-before-listen"
    shard = f"{parse_url(backend_url)[1]}{{{channel}}}:n".encode()
    source = await owner(nodes, shard)
    target = next(p for p in nodes if p != source)
    await migrate_slot(nodes, key_slot(shard), source, target)
    await listener.listen(channel)
    sent = [await listener.append(Message(channel, "m", b"%d" % i)) for i in range(5)]
    await until(lambda: len(received) >= len(sent), 10, "the notifications")
    assert [e.id for e in received] == [e.id for e in sent]


async def test_a_lost_link_to_one_primary_is_replaced_and_re_read(
    make_backend: MakeBackend, nodes: dict[int, aioredis.Redis], backend_url: str
) -> None:
    listener = await make_backend(ping_interval=0.2, ping_timeout=1.0)
    publisher = await make_backend()
    received: list[Event] = []
    listener.set_sink(received.append)
    channels = [f"k{i}" for i in range(12)]
    for c in channels:
        await listener.listen(c)
    victim = nodes[await owner(nodes, f"{parse_url(backend_url)[1]}{{k0}}:n".encode())]
    killed = await victim.client_kill_filter(_type="pubsub")
    assert killed == 1  # this node's link
    # published while that link is down: re-read once it is back
    sent = await publisher.append_many([Message(c, "m", b"x") for c in channels * 3])
    await until(lambda: len(received) >= len(sent), 10, "every event")
    await asyncio.sleep(0.1)  # window: a duplicate would arrive now
    for c in channels:
        assert [e.id for e in received if e.channel == c] == [e.id for e in sent if e.channel == c]
    assert listener.listener_status().reconnects >= 1
    await until(lambda: listener.listener_status().connected, 10, "every link up")


@pytest.fixture
def cluster_with_replicas(tmp_path: Path) -> Iterator[RedisCluster]:
    """3 primaries with a replica each, for this test alone (it kills a primary)."""
    with running_cluster(tmp_path, 6, replicas=1) as cluster:
        yield cluster


async def test_a_failover_moves_a_listened_channel_to_the_promoted_replica(
    make_backend: MakeBackend, cluster_with_replicas: RedisCluster
) -> None:
    cluster = cluster_with_replicas
    url = with_prefix(cluster.url, "failover:")
    listener = await make_backend(url=url, ping_interval=0.2, ping_timeout=1.0)
    publisher = await make_backend(url=url)
    received: list[Event] = []
    listener.set_sink(received.append)
    channel = "survivor"
    await listener.listen(channel)
    clients = {port: aioredis.Redis(port=port) for port in cluster.ports}
    try:
        primary = await owner(clients, f"failover:{{{channel}}}:n".encode())
        sent = [await publisher.append(Message(channel, "m", b"%d" % i)) for i in range(5)]
        assert await clients[primary].execute_command("WAIT", 1, 5000) == 1  # replicated
        cluster.procs[primary].kill()
        cluster.procs[primary].wait()

        async def append_through_failover(i: int) -> Event:
            async def attempt() -> Event | None:
                m = Message(channel, "m", b"%d" % i, idempotency_key=f"k{i}")
                try:
                    return await publisher.append(m)
                except BackendError:  # 503 until a replica is promoted: the publisher retries
                    return None

            event: Event = await until(attempt, 30, "an append after the failover", interval=0.1)
            return event

        sent += [await append_through_failover(i) for i in range(5, 10)]
        await until(lambda: len(received) >= len(sent), 30, "every event across the failover")
        await asyncio.sleep(0.1)  # window: a duplicate would arrive now
        assert [e.id for e in received] == [e.id for e in sent]
        await until(lambda: listener.listener_status().connected, 30, "the listener up again")
    finally:
        for client in clients.values():
            await client.aclose()


@pytest.mark.parametrize("backend_url", ["redis", "redis-cluster"], indirect=True)
async def test_an_idle_listener_link_stays_connected(make_backend: MakeBackend) -> None:
    # a link with no channel subscribed (a primary none of this process's channels lives
    # on) answers PING with a plain PONG, not a pub/sub reply: it is alive all the same
    backend = await make_backend(ping_interval=0.05, ping_timeout=0.2)
    await asyncio.sleep(1.0)  # window: a link taken for deaf would reconnect now
    status = backend.listener_status()
    assert (status.connected, status.reconnects) == (True, 0)
