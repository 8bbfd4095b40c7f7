"""``GET /metrics`` after known traffic: the counters and histograms move by exactly what
the traffic did, on both backends, against a real server."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures_server import API_KEY, Server, make_server
from tests.waiting import until
from tests.wire import SSEReader, poll_collect, poll_once

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(server: Server) -> Samples:
    r = httpx.get(server.url + "/metrics", timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    out: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def read_text(path: str) -> str:
    return Path(path).read_text()


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def ws_subscribe(server: Server, channel: str, token: str | None = None) -> Any:
    ws = await websockets.connect(f"{server.ws_url}/v1/ws?token={token or server.token()}")
    await ws.send(json.dumps({"type": "subscribe", "channels": [channel]}))
    assert json.loads(await ws.recv())["type"] == "subscribed"
    return ws


async def ws_events(ws: Any, n: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    async with asyncio.timeout(10):
        while len(out) < n:
            frame = json.loads(await ws.recv())
            if frame["type"] == "event":
                out.append(frame)
    return out


def publish_batch(server: Server, channel: str, values: list[Any]) -> None:
    r = httpx.post(
        server.url + "/v1/publish",
        json={"messages": [{"channel": channel, "event": "m", "data": v} for v in values]},
        headers=server.api_headers,
        timeout=10,
    )
    r.raise_for_status()


async def test_metrics_count_traffic_on_every_transport(server_factory: Any) -> None:
    server: Server = server_factory(metrics_latency_every=1)
    channel = "metrics"
    token = server.token()
    ws = await ws_subscribe(server, channel)
    async with (
        httpx.AsyncClient(timeout=10) as client,
        client.stream(
            "GET",
            server.url + "/v1/sse",
            params={"channel": channel},
            headers={"Authorization": f"Bearer {token}"},
        ) as response,
    ):
        sse = SSEReader(response).frames()
        first = await anext(sse)
        assert first.event == "subscribed"
        cursor = (await poll_once(server.url, [channel], token, timeout=0))["cursor"]

        for i in range(4):
            server.publish(channel, i)
        publish_batch(server, channel, [4, 5, 6])

        assert [e["data"] for e in await ws_events(ws, 7)] == list(range(7))
        got: list[Any] = []
        async with asyncio.timeout(10):
            while len(got) < 7:
                frame = await anext(sse)
                if frame.event == "message":
                    got.append(frame.json()["data"])
        assert got == list(range(7))
        polled, _ = await poll_collect(server.url, [channel], token, 7, cursor)
        assert [e["data"] for e in polled] == list(range(7))

        during = scrape(server)
    await ws.close()

    def closed(m: Samples) -> bool:
        return (
            value(m, "pushsvc_connections_open", transport="websocket") == 0
            and value(m, "pushsvc_connections_open", transport="sse") == 0
            and value(m, "pushsvc_connections_closed_total", transport="websocket", reason="normal")
            > 0
        )

    after = await until(
        lambda: scrape(server), what="both connections counted closed", check=closed
    )

    assert value(during, "pushsvc_connections_open", transport="websocket") == 1
    assert value(during, "pushsvc_connections_open", transport="sse") == 1
    assert value(after, "pushsvc_connections_open", transport="websocket") == 0
    assert value(after, "pushsvc_connections_open", transport="sse") == 0
    assert value(after, "pushsvc_connections_closed_total", transport="websocket", reason="normal")
    assert value(after, "pushsvc_events_published_total") == 7
    for transport in ("websocket", "sse", "long-polling"):
        assert value(after, "pushsvc_events_delivered_total", transport=transport) == 7, transport
        count = value(after, "pushsvc_delivery_latency_seconds_count", transport=transport)
        assert 1 <= count <= 7, transport  # one sample per write that carried events
        assert (
            value(after, "pushsvc_delivery_latency_seconds_bucket", transport=transport, le="+Inf")
            == count
        )
        mean = value(after, "pushsvc_delivery_latency_seconds_sum", transport=transport) / count
        assert 0 <= mean < 5, transport
    # frames include the subscribed control frames; writes at least one per event batch
    assert value(after, "pushsvc_frames_sent_total", transport="websocket") >= 8
    assert value(after, "pushsvc_writes_total", transport="sse") >= 1
    # each poll after the first carried a cursor: a clean resume
    assert value(after, "pushsvc_resumes_total", transport="long-polling", outcome="clean") >= 1
    assert value(after, "pushsvc_resumes_total", transport="long-polling", outcome="gap") == 0
    # 4 single publishes and one batch; the log was asked for history at least once
    assert value(after, "pushsvc_backend_command_seconds_count", command="append_many") == 5
    assert value(after, "pushsvc_backend_command_seconds_count", command="read_after") >= 1
    assert value(after, "pushsvc_backend_listener_up") == 1
    assert value(after, "pushsvc_backend_listener_reconnects_total") == 0


async def test_metrics_count_auth_failures_and_rejections(server_factory: Any) -> None:
    server: Server = server_factory(max_publish_bytes=1024)
    url = server.url
    assert httpx.get(url + "/v1/poll", params={"channel": "a"}).status_code == 401
    bad = {"Authorization": "Bearer not-a-token"}
    assert httpx.get(url + "/v1/sse", params={"channel": "a"}, headers=bad).status_code == 401
    expired = {"Authorization": f"Bearer {server.token(ttl=-10)}"}
    assert httpx.get(url + "/v1/poll", params={"channel": "a"}, headers=expired).status_code == 401
    other = {"Authorization": f"Bearer {server.token(subscribe=('other:*',))}"}
    assert httpx.get(url + "/v1/poll", params={"channel": "a"}, headers=other).status_code == 403
    with pytest.raises(websockets.InvalidStatus):
        await websockets.connect(f"{server.ws_url}/v1/ws?token=garbage")
    big = httpx.post(
        url + "/v1/publish",
        json={"channel": "a", "data": "x" * 2000},
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    assert big.status_code == 413
    assert httpx.get(url + "/no-such-route").status_code == 404

    m = scrape(server)
    assert value(m, "pushsvc_auth_failures_total", reason="missing") == 1
    assert value(m, "pushsvc_auth_failures_total", reason="invalid") == 2  # SSE + WebSocket
    assert value(m, "pushsvc_auth_failures_total", reason="expired") == 1
    assert value(m, "pushsvc_auth_failures_total", reason="not-granted") == 1
    assert value(m, "pushsvc_rejected_requests_total", status="401", problem="unauthorized") == 4
    assert value(m, "pushsvc_rejected_requests_total", status="403", problem="forbidden") == 1
    assert (
        value(m, "pushsvc_rejected_requests_total", status="413", problem="payload-too-large") == 1
    )
    assert value(m, "pushsvc_rejected_requests_total", status="404", problem="about:blank") == 1
    assert value(m, "pushsvc_events_published_total") == 0


async def test_metrics_count_resume_outcomes_and_gap_width(server_factory: Any) -> None:
    server: Server = server_factory(retention_max_len=3)
    token = server.token()
    server.publish("g", "before")
    cursor = (await poll_once(server.url, ["g"], token, timeout=0))["cursor"]
    for i in range(6):
        server.publish("g", i)
    body = await poll_once(server.url, ["g"], token, cursor, timeout=0)
    assert [e["type"] for e in body["events"]] == ["gap", "event", "event", "event"]
    await poll_once(server.url, ["g"], token, body["cursor"], timeout=0)

    m = scrape(server)
    assert value(m, "pushsvc_resumes_total", transport="long-polling", outcome="gap") == 1
    assert value(m, "pushsvc_resumes_total", transport="long-polling", outcome="clean") == 1
    assert value(m, "pushsvc_resume_gap_seconds_count") == 1


@pytest.mark.parametrize("backend_url", ["memory"], indirect=True)
async def test_slow_consumer_cut_is_counted(server_factory: Any) -> None:
    # memory://: a batch is handed to the hub synchronously, so it overflows a 4-frame queue
    server: Server = server_factory(outbound_queue_messages=4)
    ws = await ws_subscribe(server, "slow")
    publish_batch(server, "slow", list(range(10)))
    async with asyncio.timeout(10):
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4008
    m = await until(
        lambda: scrape(server),
        what="the cut counted closed",
        check=lambda m: value(
            m, "pushsvc_connections_closed_total", transport="websocket", reason="slow-consumer"
        ),
    )
    assert value(m, "pushsvc_slow_consumer_cuts_total", transport="websocket") == 1
    assert (
        value(m, "pushsvc_connections_closed_total", transport="websocket", reason="slow-consumer")
        == 1
    )


@pytest.mark.parametrize("backend_url", ["memory"], indirect=True)
async def test_json_logs_one_line_per_connection_open_and_close(
    backend_url: str, tmp_path: Path
) -> None:
    server = make_server(backend_url, log_json=1)
    server.log_path = str(tmp_path / "server.log")
    server.start()
    try:
        ws = await ws_subscribe(server, "logs")
        await ws.close()
        await poll_once(server.url, ["logs"], server.token(), timeout=0)
        # both connections' close lines written (logging flushes each record)
        await until(
            lambda: read_text(str(server.log_path)).count('"event":"close"'),
            what="two close lines in the log",
            check=lambda n: n >= 2,
        )
    finally:
        server.stop()
    text = read_text(server.log_path)
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    events = [(x["event"], x["transport"]) for x in lines]
    assert events == [
        ("open", "websocket"),
        ("close", "websocket"),
        ("open", "long-polling"),
        ("close", "long-polling"),
    ]
    close = lines[1]
    assert close["subject"] == "alice"
    assert close["reason"] == "normal" and close["code"] == 1000
    assert 0 <= close["duration_s"] < 10
    assert "token" not in text


async def test_deaf_listener_is_visible_in_metrics() -> None:
    from pushsvc.backends.base import ListenerStatus
    from pushsvc.backends.memory import MemoryBackend
    from pushsvc.metrics import Metrics

    class Deaf(MemoryBackend):
        def listener_status(self) -> ListenerStatus:
            return ListenerStatus(connected=False, reconnects=3, channels=2)

    metrics = Metrics(Deaf())
    text = metrics.render().decode()
    assert "pushsvc_backend_listener_up 0.0" in text
    assert "pushsvc_backend_listener_reconnects_total 3.0" in text


def test_transport_stats_count_event_frames_and_sample_one_write_in_n() -> None:
    import time

    from pushsvc.metrics import TransportStats
    from pushsvc.protocol import frames
    from pushsvc.protocol.events import Event

    now_ms = int(time.time() * 1000)
    events = [Event("c", (now_ms - 20, i), "m", b"1") for i in range(8)]
    ws = TransportStats("websocket", every=4)
    for e in events:
        ws.wrote([frames.ws_event(e, None)])
    ws.wrote([frames.ws_control("heartbeat")])  # a control frame is no event
    assert (ws.events, ws.frames, ws.writes) == (8, 9, 9)
    assert ws.latency_count == 2  # writes 1 and 5
    assert 19 <= ws.latency_sum_ms / 2 < 1000

    sse = TransportStats("sse", every=1)
    sse.wrote([frames.SSE_HEARTBEAT, *(frames.sse_event(e, None) for e in events[:3])])
    assert (sse.events, sse.frames, sse.latency_count) == (3, 4, 1)
    poll = TransportStats("long-polling", every=1)
    poll.wrote([frames.poll_event(e) for e in events])
    poll.wrote([])  # a poll answered at its timeout
    assert (poll.events, poll.writes, poll.latency_count) == (8, 2, 1)


def test_an_unexpected_error_answers_a_bare_500_problem_and_is_counted() -> None:
    """A bug in a handler: a problem body that says nothing of the failure, and a count
    under status 500 (the 5xx error-rate alert of deploy/prometheus reads it)."""
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.testclient import TestClient

    from pushsvc.app import create_app
    from pushsvc.settings import Settings

    app = create_app(Settings(secrets=("s",), api_keys=("k",)))

    async def broken(request: Request) -> Response:
        raise RuntimeError("a secret detail")

    app.add_route("/broken", broken)
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.get("/broken")
        assert r.status_code == 500
        assert r.json()["type"].endswith("/internal-error")
        assert "secret" not in r.text
        families = {
            sample.labels.get("problem"): sample.value
            for family in text_string_to_metric_families(client.get("/metrics").text)
            for sample in family.samples
            if sample.name == "pushsvc_rejected_requests_total"
        }
    assert families.get("internal-error") == 1.0
