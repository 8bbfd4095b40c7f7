"""The long-poll endpoint's own plumbing: its query parser agrees with Starlette's, a
client that goes away mid-poll leaves nothing behind, and errors are problem bodies."""

from __future__ import annotations

import asyncio
import json
import socket
import threading

import httpx
import pytest
from starlette.datastructures import QueryParams

from pushsvc.transports.asgi import query_from
from tests.fixtures_server import Server
from tests.test_metrics import scrape, value
from tests.waiting import until_sync


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"channel=a",
        b"channel=a&channel=b&cursor=c1xyz",
        b"channel=a%2Fb&token=x%2By&timeout=0",
        b"channel=caf%C3%A9&x=a+b&empty=&flag",
        b"&&channel=a&&",
        b"cursor=1&cursor=2",
        b"k=%zz&j=%",
    ],
)
def test_query_parser_agrees_with_starlette(raw: bytes) -> None:
    ours = query_from({"query_string": raw})
    theirs = QueryParams(raw)
    assert sorted(ours) == sorted(theirs.keys())
    for key in theirs:
        assert ours.getlist(key) == theirs.getlist(key)
        assert ours.get(key) == theirs.get(key)
    assert ours.get("missing", "d") == "d"
    assert ours.getlist("missing") == []


def open_polls(server: Server, channel: str, count: int) -> list[socket.socket]:
    """``count`` raw polls (timeout 20 s) sent and left waiting."""
    request = (
        f"GET /v1/poll?channel={channel}&timeout=20 HTTP/1.1\r\n"
        f"Host: 127.0.0.1\r\nAuthorization: Bearer {server.token()}\r\n\r\n"
    ).encode()
    socks = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        s.sendall(request)
        socks.append(s)
    return socks


def open_poll_count(server: Server) -> float:
    return value(scrape(server), "pushsvc_connections_open", transport="long-polling")


def wait_for_count(server: Server, expected: float) -> None:
    until_sync(
        lambda: open_poll_count(server),
        10,
        f"{expected} open polls",
        check=lambda count: count == expected,
        interval=0.05,
    )


def test_a_poll_whose_client_goes_away_is_released_at_once(server: Server) -> None:
    socks = open_polls(server, "gone", 5)
    wait_for_count(server, 5)
    for s in socks[:3]:
        s.close()
    wait_for_count(server, 2)  # long before the 20 s timeout
    # the two still waiting are answered normally
    server.publish("gone", {"n": 1})
    for s in socks[3:]:
        data = b""
        while not data.endswith(b"}"):
            chunk = s.recv(65536)
            assert chunk, "connection closed before the answer"
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert [e["data"] for e in json.loads(body)["events"]] == [{"n": 1}]
        s.close()
    wait_for_count(server, 0)


@pytest.mark.asyncio
async def test_poll_errors_are_problem_bodies(server: Server) -> None:
    token = server.token()
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        cases = [
            ({"channel": "a", "timeout": "soon"}, {"Authorization": f"Bearer {token}"}, 400),
            ({"channel": "a", "timeout": "nan"}, {"Authorization": f"Bearer {token}"}, 400),
            ({"channel": "a"}, {"Authorization": "Basic x"}, 401),
            ({"channel": "a"}, {}, 401),
            ({"channel": "a", "cursor": "c1garbage"}, {"Authorization": f"Bearer {token}"}, 400),
            ({}, {"Authorization": f"Bearer {token}"}, 400),
        ]
        for params, headers, status in cases:
            r = await client.get("/v1/poll", params=params, headers=headers)
            assert r.status_code == status, (params, r.text)
            assert r.headers["content-type"] == "application/problem+json"
            assert int(r.headers["content-length"]) == len(r.content)
            problem = r.json()
            assert problem["status"] == status and problem["title"]
        # and a good poll still answers, with the cursor to go on from
        r = await client.get(
            "/v1/poll",
            params={"channel": "a", "timeout": "0"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
        assert r.json()["events"] == [] and r.json()["cursor"].startswith("c1")
    await asyncio.sleep(0)


def test_a_poll_behind_the_log_is_answered_from_it_and_a_caught_up_one_waits_live(
    server: Server,
) -> None:
    """Both ways a poll answers: from the log alone when its cursor is behind (several
    channels, a batch bounded by the history page), and live when it is caught up."""
    auth = {"Authorization": f"Bearer {server.token()}"}

    def poll(**params: object) -> dict[str, object]:
        r = httpx.get(server.url + "/v1/poll", params=params, headers=auth, timeout=30)
        assert r.status_code == 200, r.text
        body: dict[str, object] = r.json()
        return body

    start = poll(channel=["lp-a", "lp-b"], timeout=0)["cursor"]
    ids = [server.publish("lp-a", {"n": n}) for n in range(3)]
    # behind on lp-a, caught up on lp-b: answered with lp-a's events, the cursor for both
    behind = poll(channel=["lp-a", "lp-b"], cursor=start, timeout=20)
    assert [e["id"] for e in behind["events"]] == ids  # type: ignore[index,union-attr]
    again = poll(channel=["lp-a", "lp-b"], cursor=behind["cursor"], timeout=0)
    assert again["events"] == []
    # caught up: it waits, and gets what is published meanwhile (here, on lp-b)
    with httpx.Client(timeout=30) as client:
        live: list[httpx.Response] = []
        params = {"channel": ["lp-a", "lp-b"], "cursor": behind["cursor"], "timeout": 20}

        def waiting() -> None:
            live.append(client.get(server.url + "/v1/poll", params=params, headers=auth))

        t = threading.Thread(target=waiting)
        t.start()
        until_sync(lambda: open_poll_count(server) >= 1, what="the poll waiting live")
        late = server.publish("lp-b", {"n": "late"})
        t.join(30)
    assert [e["id"] for e in live[0].json()["events"]] == [late]
