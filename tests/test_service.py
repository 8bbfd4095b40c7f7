"""``PushService``: the in-process API of a mounted pushsvc validates, limits and fails as
the HTTP API does (compared against the same app's HTTP answers), stores a retried
idempotency key once, counts its publishes, and refuses to work before its lifespan."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from pushsvc import BadRequest, ConfigError, PayloadTooLarge, PushError, PushService, Settings
from pushsvc.protocol.events import Event, Gap

API_KEY = "service-test-key"


@pytest.fixture
async def push(backend_url: str) -> AsyncIterator[PushService]:
    service = PushService(
        Settings(
            backend_url=backend_url,
            secrets=("s" * 32,),
            api_keys=(API_KEY,),
            max_publish_bytes=64,
            max_batch_messages=3,
            history_limit_max=50,
        )
    )
    async with service:
        yield service


@pytest.fixture
async def http(push: PushService) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=push.app),
        base_url="http://push",
        headers={"Authorization": f"Bearer {API_KEY}"},
    ) as client:
        yield client


def problem_of(exc: PushError) -> tuple[int, str, str]:
    return exc.status, exc.problem, exc.detail


async def http_problem(http: httpx.AsyncClient, body: Any) -> tuple[int, str, str]:
    r = await http.post("/v1/publish", json=body)
    problem = r.json()
    return r.status_code, problem["type"].rpartition("/")[2], problem["detail"]


BAD_MESSAGES: list[dict[str, Any]] = [
    {"channel": "", "data": 1},
    {"channel": "x" * 200, "data": 1},
    {"channel": "bad channel\n", "data": 1},
    {"channel": "ok", "data": 1, "event": "no spaces allowed!"},
    {"channel": "ok", "data": "x" * 100},
    {"channel": "ok", "data": b"\x00" * 100},
    {"channel": "ok", "data": 1, "idempotency_key": ""},
    {"channel": "ok", "data": 1, "idempotency_key": "k" * 129},
]


def as_http(message: dict[str, Any]) -> dict[str, Any]:
    if isinstance(message.get("data"), bytes):
        data = message.pop("data")
        message = {**message, "data_b64": base64.b64encode(data).decode()}
    return message


@pytest.mark.parametrize("message", BAD_MESSAGES, ids=range(len(BAD_MESSAGES)))
async def test_a_bad_publish_fails_in_process_exactly_as_over_http(
    push: PushService, http: httpx.AsyncClient, message: dict[str, Any]
) -> None:
    expected = await http_problem(http, as_http(dict(message)))
    assert expected[0] in (400, 413)
    with pytest.raises(PushError) as single:
        await push.publish(
            message["channel"],
            message["data"],
            event=message.get("event"),
            idempotency_key=message.get("idempotency_key"),
        )
    assert problem_of(single.value) == expected
    with pytest.raises(PushError) as batch:
        await push.publish_many([{"channel": "ok", "data": 0}, message])  # type: ignore[list-item]
    assert problem_of(batch.value) == await http_problem(
        http, {"messages": [{"channel": "ok", "data": 0}, as_http(dict(message))]}
    )


async def test_batch_limits_are_the_http_limits(push: PushService, http: httpx.AsyncClient) -> None:
    four = [{"channel": "ok", "data": i} for i in range(4)]
    with pytest.raises(PayloadTooLarge) as too_many:
        await push.publish_many(four)  # type: ignore[arg-type]
    assert problem_of(too_many.value) == await http_problem(http, {"messages": four})
    with pytest.raises(BadRequest) as empty:
        await push.publish_many([])
    assert problem_of(empty.value) == await http_problem(http, {"messages": []})
    # nothing of a refused batch was stored
    assert (await push.history("ok")).events == []


async def test_data_that_is_not_json_is_a_bad_request(push: PushService) -> None:
    with pytest.raises(BadRequest, match="not JSON-serializable"):
        await push.publish("ok", {"when": object()})


async def test_the_same_idempotency_key_twice_stores_one_event(push: PushService) -> None:
    first = await push.publish("orders", {"n": 1}, idempotency_key="order-1")
    again = await push.publish("orders", {"n": 1}, idempotency_key="order-1")
    assert again == first
    page = await push.history("orders")
    assert [e.id_str for e in page.events if isinstance(e, Event)] == [first]


async def test_in_process_and_api_key_publishes_share_idempotency_keys(
    push: PushService, http: httpx.AsyncClient
) -> None:
    event_id = await push.publish("orders", 1, idempotency_key="shared")
    r = await http.post(
        "/v1/publish", json={"channel": "orders", "data": 1, "idempotency_key": "shared"}
    )
    assert r.json()["id"] == event_id


async def test_publish_many_answers_ids_in_order_and_history_reads_them(
    push: PushService, http: httpx.AsyncClient
) -> None:
    ids = await push.publish_many(
        [
            {"channel": "a", "data": {"x": 1}, "event": "created"},
            {"channel": "a", "data": b"\x01\x02"},
            {"channel": "b", "data": None},
        ]
    )
    assert len(ids) == 3
    page = await push.history("a", limit=10)
    events = [e for e in page.events if isinstance(e, Event)]
    assert [e.id_str for e in events] == ids[:2]
    assert events[0].name == "created" and events[0].value() == {"x": 1}
    assert events[1].binary and events[1].value() == b"\x01\x02"
    assert page.top == ids[1] and page.next_after == ids[1]
    over_http = (await http.get("/v1/channels/a/history", params={"limit": 10})).json()
    assert over_http["top"] == page.top and over_http["next_after"] == page.next_after
    rest = await push.history("a", after=ids[0], limit=10)
    assert [e.id_str for e in rest.events if isinstance(e, Event)] == [ids[1]]


@pytest.mark.parametrize(
    ("after", "limit"), [(None, 0), (None, 51), ("not-an-id", 10), (None, True), (None, "5")]
)
async def test_bad_history_arguments_fail_as_over_http(
    push: PushService, http: httpx.AsyncClient, after: Any, limit: Any
) -> None:
    with pytest.raises(BadRequest) as refused:
        await push.history("ok", after=after, limit=limit)
    if isinstance(limit, int) and not isinstance(limit, bool):
        params: dict[str, Any] = {"limit": limit}
        if after is not None:
            params["after"] = after
        r = await http.get("/v1/channels/ok/history", params=params)
        assert (r.status_code, r.json()["detail"]) == (400, refused.value.detail)


async def test_history_after_a_trim_starts_with_a_gap(backend_url: str) -> None:
    settings = Settings(backend_url=backend_url, retention_max_len=2, retention_approximate=False)
    async with PushService(settings) as push:
        ids = [await push.publish("t", i) for i in range(5)]
        page = await push.history("t")
    assert isinstance(page.events[0], Gap)
    assert [e.id_str for e in page.events[1:] if isinstance(e, Event)] == ids[-2:]


async def test_presence_reads_answer_an_empty_channel(push: PushService) -> None:
    presence = await push.presence("room")
    assert (presence.channel, presence.members, presence.member_count) == ("room", [], 0)
    assert not presence.truncated
    stats = await push.presence_stats("room")
    assert (stats.member_count, stats.connection_count) == (0, 0)
    with pytest.raises(BadRequest):
        await push.presence("")


async def test_publishes_and_refusals_are_counted_in_the_metrics(
    push: PushService, http: httpx.AsyncClient
) -> None:
    def sample(text: str, name: str) -> float:
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = (await http.get("/metrics")).text
    await push.publish_many([{"channel": "m", "data": 1}, {"channel": "m", "data": 2}])
    with pytest.raises(BadRequest):
        await push.publish("", 1)
    after = (await http.get("/metrics")).text
    published = "pushsvc_events_published_total"
    assert sample(after, published) - sample(before, published) == 2
    rejected = 'pushsvc_rejected_requests_total{problem="bad-request",status="400"}'
    assert sample(after, rejected) - sample(before, rejected) == 1


async def test_calls_before_the_lifespan_raise_a_config_error() -> None:
    push = PushService(Settings())
    with pytest.raises(ConfigError, match="lifespan"):
        await push.publish("c", 1)
    async with push:
        await push.publish("c", 1)
    with pytest.raises(ConfigError):
        await push.history("c")


async def test_the_lifespan_cannot_run_twice_at_once() -> None:
    push = PushService(Settings())
    async with push.lifespan(None):
        with pytest.raises(ConfigError, match="running already"):
            async with push:
                pass
        await push.publish("c", 1)
