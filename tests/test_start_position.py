"""Where a client starts: pinned at its first contact, so that nothing published while it
probes its transports is lost.

The scenario users live: a backend is already publishing at a steady rate when a fresh
client (no cursor) starts behind a proxy. The client negotiates (a plain request and
answer, which every proxy passes), then tries the WebSocket (refused), SSE (held back by a
gzip-buffering proxy for ``sse_first_byte_timeout``) and settles on long-polling. Before
``POST /v1/negotiate`` answered a cursor, each attempt started "from now" and the events
published during the probe (about 30 of them at 10/s) were silently skipped.

What the tests assert, for each client behind each proxy and directly on each transport:
the delivered events are exactly once, in order, a contiguous run of the log that ends at
its last event; every event whose publish began after ``ready()`` answered is in it;
nothing stored before the client was started is. Also the HTTP side of the rule:
negotiate's cursor and history's cursor (load, then subscribe from exactly there).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from tests.fixtures_clients import Driver, Publisher, delivered
from tests.fixtures_nginx import BEST_TRANSPORT, TYPICAL
from tests.fixtures_server import Server
from tests.waiting import until

pytestmark = pytest.mark.timeout(120)

CLIENTS = ("browser", "python")
TRANSPORTS = ("websocket", "sse", "long-polling")
CHANNEL = "ticker"
INTERVAL = 0.1  # the backend publishes one event every 100 ms, as in the report


async def start_while_publishing(
    driver: Driver, url: str, server: Server, expected_transport: str, **options: Any
) -> int:
    """Start ``driver`` on ``url`` while a backend publishes on ``CHANNEL``; check that it
    delivers everything published after its start position was pinned. Answers how many
    events were published between the pin and the connection (all delivered)."""
    publisher = Publisher(server)
    stop = asyncio.Event()
    pumping = asyncio.create_task(publisher.until(CHANNEL, stop, interval=INTERVAL))
    try:
        await until(lambda: len(publisher.stored) >= 3, 10, "the publisher to run")
        before = len(publisher.stored)  # stored before the client was started
        await driver.start(url, server.token(), [CHANNEL], **options)
        started = time.monotonic()
        await driver.ready()
        pinned = time.monotonic()
        assert await driver.wait_connected(30) == expected_transport
        connected = time.monotonic()
        # a few more events on the transport it ended on
        mark = len(publisher.stored)
        await until(lambda: len(publisher.stored) >= mark + 5, 10, "five more events")
    finally:
        stop.set()
        await pumping
    ids = publisher.ids()
    await until(
        lambda: ids[-1] in delivered(driver, CHANNEL), 20, f"the last event on {expected_transport}"
    )
    await asyncio.sleep(0.3)  # a window in which a duplicate would show up: nothing may arrive

    got = delivered(driver, CHANNEL)
    assert len(set(got)) == len(got), f"{driver.name}: duplicates {got}"
    assert got, f"{driver.name}: nothing delivered"
    first = ids.index(got[0])
    assert got == ids[first:], (
        f"{driver.name}: not a contiguous run of the log in order: missing "
        f"{[i for i in ids[first:] if i not in got]}"
    )
    assert first >= before, f"{driver.name}: delivered events stored before it started"
    # as a user sees it: the first contact (one request) pins the start at once, whatever
    # the transports do afterwards (1 s of slack for a loaded machine)
    soon = [i for i, begun in zip(ids, publisher.begun, strict=True) if begun > started + 1.0]
    missing = [i for i in soon if i not in got]
    assert not missing, f"{driver.name}: lost events published after it started: {missing}"
    # and exactly: everything published after ready() answered
    after_pin = [i for i, begun in zip(ids, publisher.begun, strict=True) if begun > pinned]
    missing = [i for i in after_pin if i not in got]
    assert not missing, f"{driver.name}: lost events published after ready(): {missing}"
    return sum(1 for begun in publisher.begun if pinned < begun < connected)


@pytest.mark.parametrize("backend_url", ["redis"], indirect=True)
@pytest.mark.parametrize("client_kind", CLIENTS)
@pytest.mark.parametrize("mode", ["buffering", "no-upgrade", TYPICAL])
async def test_a_client_started_behind_a_proxy_loses_nothing_published_while_it_probes(
    mode: str, client_kind: str, server_factory: Any, nginx_factory: Any, make_client: Any
) -> None:
    """Client defaults (3 s SSE first-byte window): behind ``buffering`` (gzip, Upgrade
    stripped) it tries WebSocket, then SSE for 3 s, then settles on long-polling."""
    server = server_factory(heartbeat_interval=1)
    proxy = nginx_factory(mode, server.port)
    driver = await make_client(client_kind)
    expected = "sse" if mode == TYPICAL else BEST_TRANSPORT[mode]
    during_probe = await start_while_publishing(driver, proxy.url, server, expected)
    if mode == "buffering":  # the scenario of the report: ~30 events during a 3 s probe
        assert during_probe >= 10, during_probe


@pytest.mark.parametrize("backend_url", ["redis"], indirect=True)
@pytest.mark.parametrize("client_kind", CLIENTS)
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_client_started_on_one_transport_loses_nothing_published_meanwhile(
    transport: str, client_kind: str, server_factory: Any, nginx_factory: Any, make_client: Any
) -> None:
    """The same, on each single transport: the Python client straight to the server, the
    browser through a transparent proxy (its page needs an origin to load from)."""
    server = server_factory(heartbeat_interval=1)
    url = server.url if client_kind == "python" else nginx_factory("good", server.port).url
    driver = await make_client(client_kind)
    await start_while_publishing(driver, url, server, transport, transports=[transport])


# --- the HTTP side: negotiate and history answer cursors --------------------------------


def negotiate(server: Server, token: str, **body: Any) -> httpx.Response:
    return httpx.post(
        server.url + "/v1/negotiate", json=body, headers={"Authorization": f"Bearer {token}"}
    )


def poll(server: Server, token: str, channels: list[str], cursor: str) -> dict[str, Any]:
    r = httpx.get(
        server.url + "/v1/poll",
        params=[*(("channel", c) for c in channels), ("cursor", cursor), ("timeout", "0")],
        headers={"Authorization": f"Bearer {token}"},
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def event_ids(answer: dict[str, Any]) -> list[str]:
    return [e["id"] for e in answer["events"]]


async def test_negotiate_pins_each_channel_at_its_top(server: Server) -> None:
    token = server.token()
    old = [server.publish("a", n) for n in range(3)]
    r = negotiate(server, token, channels=["a", "b"])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["channels"] == ["a", "b"]
    cursor = body["cursor"]
    # nothing before the pin comes back; everything after it does, on both channels
    assert poll(server, token, ["a", "b"], cursor)["events"] == []
    new = [server.publish("a", "after"), server.publish("b", "after")]
    assert event_ids(poll(server, token, ["a", "b"], cursor)) == new
    assert old[-1] not in new


async def test_negotiate_keeps_the_positions_of_the_cursor_it_is_given(server: Server) -> None:
    token = server.token()
    first = server.publish("a", 1)
    pinned = negotiate(server, token, channels=["a"]).json()["cursor"]
    second = server.publish("a", 2)
    # a client that already has a position keeps it (never moved forward over `second`);
    # a channel its cursor lacks is added at its top
    again = negotiate(server, token, channels=["a", "b"], cursor=pinned).json()["cursor"]
    assert again.startswith(pinned)
    assert event_ids(poll(server, token, ["a", "b"], again)) == [second]
    assert first != second


async def test_negotiate_takes_channels_from_the_query_too(server: Server) -> None:
    token = server.token()
    server.publish("q", 1)
    r = httpx.post(
        server.url + "/v1/negotiate",
        params={"channel": "q"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert r.status_code == 200
    assert poll(server, token, ["q"], r.json()["cursor"])["events"] == []


async def test_negotiate_without_channels_answers_no_cursor(server: Server) -> None:
    r = httpx.post(
        server.url + "/v1/negotiate", headers={"Authorization": f"Bearer {server.token()}"}
    )
    assert r.status_code == 200
    assert "cursor" not in r.json() and r.json()["transports"]


@pytest.mark.parametrize(
    ("body", "status", "problem"),
    [
        ({"channels": ["forbidden:1"]}, 403, "forbidden"),
        ({"channels": "a"}, 400, "bad-request"),
        ({"channels": ["a"], "cursor": "c1notacursor"}, 400, "bad-cursor"),
        ({"channels": ["a"], "cursor": 7}, 400, "bad-request"),
        ({"cursor": "c1"}, 400, "bad-request"),
        ({"channels": ["bad channel"]}, 400, "bad-request"),
        ({"channels": [f"c{n}" for n in range(65)]}, 400, "bad-request"),
    ],
)
async def test_negotiate_refuses_bad_channels_and_cursors_with_a_problem(
    server: Server, body: dict[str, Any], status: int, problem: str
) -> None:
    token = server.token(subscribe=("a", "c*", "bad*"))
    r = negotiate(server, token, **body)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["type"].endswith("/" + problem)
    assert "cursor" not in r.json()


@pytest.mark.parametrize("raw", [b"[1, 2]", b"{not json", b'"channels"'])
async def test_negotiate_refuses_a_body_that_is_not_a_json_object(
    server: Server, raw: bytes
) -> None:
    r = httpx.post(
        server.url + "/v1/negotiate",
        content=raw,
        headers={"Authorization": f"Bearer {server.token()}", "Content-Type": "application/json"},
    )
    assert r.status_code == 400
    assert r.json()["status"] == 400


async def test_history_answers_a_cursor_right_after_its_last_event(server: Server) -> None:
    """Load, then subscribe from exactly there: nothing loaded comes again, nothing
    published after the load is missed."""
    token = server.token()
    ids = [server.publish("h", n) for n in range(5)]
    r = httpx.get(
        server.url + "/v1/channels/h/history",
        params={"limit": 3},
        headers={"Authorization": f"Bearer {token}"},
    )
    loaded = r.json()
    assert event_ids(loaded) == ids[:3]
    later = server.publish("h", "later")
    assert event_ids(poll(server, token, ["h"], loaded["cursor"])) == [*ids[3:], later]


async def test_history_cursors_chain_into_one_cursor_for_several_channels(
    server: Server,
) -> None:
    token = server.token()
    headers = {"Authorization": f"Bearer {token}"}
    a = [server.publish("ha", n) for n in range(2)]
    server.publish("hb", 0)
    first = httpx.get(server.url + "/v1/channels/ha/history", params={"limit": 1}, headers=headers)
    both = httpx.get(
        server.url + "/v1/channels/hb/history",
        params={"cursor": first.json()["cursor"]},
        headers=headers,
    )
    assert both.status_code == 200
    new_b = server.publish("hb", 1)
    assert event_ids(poll(server, token, ["ha", "hb"], both.json()["cursor"])) == [a[1], new_b]
    bad = httpx.get(
        server.url + "/v1/channels/hb/history", params={"cursor": "c1xyz"}, headers=headers
    )
    assert bad.status_code == 400 and bad.json()["type"].endswith("/bad-cursor")


async def test_history_without_limit_reads_one_page_even_under_a_low_maximum(
    server_factory: Any,
) -> None:
    """The default page (100) is capped at history_limit_max: a server configured below
    100 still answers a history read without ``limit`` (it used to refuse it with 400)."""
    server: Server = server_factory(history_limit_max=3)
    ids = [server.publish("hl", n) for n in range(5)]
    r = httpx.get(
        server.url + "/v1/channels/hl/history",
        headers={"Authorization": f"Bearer {server.token()}"},
    )
    assert r.status_code == 200, r.text
    assert event_ids(r.json()) == ids[:3]
