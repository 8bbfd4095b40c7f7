"""``pushsvc.Publisher`` and ``SyncPublisher`` against a real server: a lost answer is
retried with the same idempotency key and stored once, 429 and 503 are retried after
their ``Retry-After``, other errors are final and typed, the background batcher groups
messages, and the retries stay within their attempts and deadline.

Faults the real server does not make on demand (a 503, a 502 from a proxy) come from a
transport that answers a scripted status before it forwards requests to the server."""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from pushsvc import (
    BackendError,
    BadRequest,
    Publisher,
    SyncPublisher,
    TooManyRequests,
    Unauthorized,
    Unavailable,
)
from tests.fixtures_server import API_KEY, Server, free_port
from tests.test_client import Proxy, history_ids, unique


@pytest.fixture
def backend_url() -> str:
    return "memory://"  # the publisher's behaviour does not depend on the backend


FAST = {"backoff_base": 0.01, "backoff_cap": 0.05}


def problem(status: int, kind: str, retry_after: int | None = None) -> httpx.Response:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
    body = {"type": "https://pushsvc.dev/problems/" + kind, "status": status, "detail": kind}
    return httpx.Response(status, json=body, headers=headers)


class Scripted(httpx.AsyncBaseTransport):
    """Answers the scripted responses first, then forwards to the real server; records
    the status and the idempotency keys of every request."""

    def __init__(self, *script: httpx.Response) -> None:
        self.script = list(script)
        self.inner = httpx.AsyncHTTPTransport()
        self.statuses: list[int] = []
        self.keys: list[list[str]] = []
        self.sizes: list[int] = []

    def record(self, request: httpx.Request, status: int) -> None:
        body = json.loads(request.content)
        messages = body.get("messages", [body])
        self.keys.append([m["idempotency_key"] for m in messages])
        self.sizes.append(len(messages))
        self.statuses.append(status)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        if self.script:
            response = self.script.pop(0)
        else:
            response = await self.inner.handle_async_request(request)
        self.record(request, response.status_code)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


class SyncScripted(httpx.BaseTransport):
    def __init__(self, *script: httpx.Response) -> None:
        self.script = list(script)
        self.inner = httpx.HTTPTransport()
        self.statuses: list[int] = []
        self.sizes: list[int] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()
        body = json.loads(request.content)
        self.sizes.append(len(body["messages"]) if "messages" in body else 1)
        response = self.script.pop(0) if self.script else self.inner.handle_request(request)
        self.statuses.append(response.status_code)
        return response

    def close(self) -> None:
        self.inner.close()


async def test_a_lost_answer_is_retried_with_the_same_key_and_stored_once(
    server: Server,
) -> None:
    channel = unique()
    async with Proxy(server.url) as proxy:
        proxy.drop_publish_responses = 1
        async with Publisher(proxy.url, API_KEY, **FAST) as publisher:
            event_id = await publisher.publish(channel, {"n": 1})
        assert proxy.drop_publish_responses == 0  # the first answer was indeed cut
    assert await history_ids(server, channel) == [event_id]


async def test_a_lost_batch_answer_is_retried_and_each_message_stored_once(
    server: Server,
) -> None:
    channel = unique()
    async with Proxy(server.url) as proxy:
        proxy.drop_publish_responses = 1
        async with Publisher(proxy.url, API_KEY, **FAST) as publisher:
            ids = await publisher.publish_many([{"channel": channel, "data": i} for i in range(5)])
    assert await history_ids(server, channel) == ids


async def test_503_and_gateway_errors_are_retried_with_the_same_key(server: Server) -> None:
    transport = Scripted(problem(503, "unavailable", 0), httpx.Response(502), httpx.Response(504))
    channel = unique()
    async with Publisher(server.url, API_KEY, transport=transport, **FAST) as publisher:
        event_id = await publisher.publish(channel, "x", idempotency_key="mine")
    assert transport.statuses == [503, 502, 504, 200]
    assert transport.keys == [["mine"]] * 4
    assert await history_ids(server, channel) == [event_id]


async def test_a_generated_key_is_kept_across_retries(server: Server) -> None:
    transport = Scripted(httpx.Response(503))
    async with Publisher(server.url, API_KEY, transport=transport, **FAST) as publisher:
        await publisher.publish(unique(), "x")
    assert len(transport.keys) == 2 and transport.keys[0] == transport.keys[1]
    assert transport.keys[0][0]


async def test_429_is_retried_after_its_retry_after(server_factory: Any) -> None:
    # one publish per second, no burst beyond one: the second publish at once is refused
    server: Server = server_factory(api_key_publish_rate=1, api_key_publish_burst=1)
    channel = unique()
    transport = Scripted()
    async with Publisher(server.url, API_KEY, transport=transport, **FAST) as publisher:
        first = await publisher.publish(channel, 1)
        started = time.monotonic()
        second = await publisher.publish(channel, 2)
        waited = time.monotonic() - started
    assert transport.statuses == [200, 429, 200]
    assert waited >= 0.9  # Retry-After: 1, not the 10 ms backoff
    assert await history_ids(server, channel) == [first, second]


async def test_retry_after_beyond_the_deadline_fails_at_once(server: Server) -> None:
    transport = Scripted(problem(429, "rate-limited", 30))
    async with Publisher(server.url, API_KEY, transport=transport, deadline=2, **FAST) as p:
        started = time.monotonic()
        with pytest.raises(TooManyRequests) as refused:
            await p.publish(unique(), 1)
    assert time.monotonic() - started < 1
    assert refused.value.extra["retry_after"] == 30


async def test_a_bad_request_is_not_retried_and_carries_the_problem(server: Server) -> None:
    transport = Scripted()
    async with Publisher(server.url, API_KEY, transport=transport, **FAST) as publisher:
        with pytest.raises(BadRequest) as refused:
            await publisher.publish("bad channel\n", 1)
    assert transport.statuses == [400]
    assert refused.value.extra["status"] == 400
    assert "channel" in refused.value.detail


async def test_a_wrong_api_key_is_unauthorized_and_not_retried(server: Server) -> None:
    transport = Scripted()
    async with Publisher(server.url, "wrong", transport=transport, **FAST) as publisher:
        with pytest.raises(Unauthorized):
            await publisher.publish(unique(), 1)
    assert transport.statuses == [401]


async def test_retries_stop_after_max_attempts(server: Server) -> None:
    transport = Scripted(*(problem(503, "unavailable", 0) for _ in range(10)))
    async with Publisher(
        server.url, API_KEY, transport=transport, max_attempts=3, **FAST
    ) as publisher:
        with pytest.raises(Unavailable):
            await publisher.publish(unique(), 1)
    assert transport.statuses == [503, 503, 503]


async def test_no_server_raises_backend_error_within_the_deadline() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    async with Publisher(url, API_KEY, deadline=1, backoff_base=0.05, backoff_cap=0.2) as p:
        with pytest.raises(BackendError, match="no answer"):
            await p.publish("c", 1)
    assert time.monotonic() - started < 3


async def test_the_batcher_groups_queued_messages_into_few_requests(server: Server) -> None:
    channel = unique()
    transport = Scripted()
    async with Publisher(
        server.url, API_KEY, transport=transport, batch_window=0.2, max_batch=10
    ) as publisher:
        ids = await asyncio.gather(*(publisher.publish(channel, i) for i in range(25)))
    assert sorted(transport.sizes, reverse=True) == [10, 10, 5]
    assert await history_ids(server, channel) == list(ids)


async def test_a_bad_message_in_a_batch_fails_alone(server: Server) -> None:
    channel = unique()
    async with Publisher(server.url, API_KEY, batch_window=0.2, max_batch=10) as publisher:
        results = await asyncio.gather(
            publisher.publish(channel, 1),
            publisher.publish("bad channel\n", 2),
            publisher.publish(channel, 3),
            return_exceptions=True,
        )
    assert isinstance(results[1], BadRequest)
    assert await history_ids(server, channel) == [results[0], results[2]]


async def test_aclose_sends_what_is_queued(server: Server) -> None:
    channel = unique()
    publisher = Publisher(server.url, API_KEY, batch_window=5)
    pending = [asyncio.create_task(publisher.publish(channel, i)) for i in range(3)]
    await asyncio.sleep(0)  # the tasks queue their messages
    await publisher.flush()
    await publisher.aclose()
    assert await history_ids(server, channel) == [await t for t in pending]


async def test_publish_many_splits_into_batches_of_max_batch(server: Server) -> None:
    channel = unique()
    transport = Scripted()
    async with Publisher(server.url, API_KEY, transport=transport, max_batch=4) as publisher:
        ids = await publisher.publish_many(
            [{"channel": channel, "data": i} for i in range(9)]
            + [{"channel": channel, "data": b"\xff", "event": "raw"}]
        )
    assert transport.sizes == [4, 4, 2]
    assert await history_ids(server, channel) == ids


def test_sync_publisher_publishes_retries_and_batches(server: Server) -> None:
    channel = unique()
    transport = SyncScripted(problem(503, "unavailable", 0))
    with SyncPublisher(server.url, API_KEY, transport=transport, **FAST) as publisher:
        first = publisher.publish(channel, 0, event="created")
        more = publisher.publish_many([{"channel": channel, "data": i} for i in (1, 2)])
        with pytest.raises(BadRequest):
            publisher.publish("", 1)
    assert transport.statuses == [503, 200, 200, 400]
    ids = [e["id"] for e in server_history(server, channel)]
    assert ids == [first, *more]


def test_sync_batcher_groups_messages_from_threads(server: Server) -> None:
    channel = unique()
    transport = SyncScripted()
    with (
        SyncPublisher(
            server.url, API_KEY, transport=transport, batch_window=0.3, max_batch=50
        ) as publisher,
        ThreadPoolExecutor(8) as pool,
    ):
        ids = list(pool.map(lambda i: publisher.publish(channel, i), range(16)))
    assert sum(transport.sizes) == 16 and len(transport.sizes) < 16
    assert sorted(e["id"] for e in server_history(server, channel)) == sorted(ids)


def server_history(server: Server, channel: str) -> list[dict[str, Any]]:
    r = httpx.get(
        f"{server.url}/v1/channels/{channel}/history",
        params={"limit": 1000},
        headers=server.api_headers,
    )
    return [e for e in r.json()["events"] if e["type"] == "event"]
