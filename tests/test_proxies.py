"""Clients behind real restrictive proxies (nginx, three modes), in a real browser and in
Python: every event exactly once and in order across a server restart, the transport each
proxy mode allows, silence detection, the outbox, and the time a fallback takes.

Each test that observes "which transport a client ends on behind which proxy" checks the
cell of the table in ``docs/proxies.md``: that table is what these tests observed. Timings
are added to a JSON report (``PUSHSVC_PROXY_REPORT=path``, default in pytest's cache dir).

The restart is a crash (SIGKILL, then a new process on the same port, so nginx keeps
pointing at it): the log must be durable, so these tests run on Redis.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures_clients import Driver, Publisher, assert_exactly_once_in_order, delivered
from tests.fixtures_nginx import BEST_TRANSPORT, MODES, Nginx
from tests.fixtures_server import Server
from tests.waiting import until

pytestmark = [
    pytest.mark.timeout(120),
    # a restart must keep the log: every server here runs on Redis
    pytest.mark.parametrize("backend_url", ["redis"], indirect=True),
]

DOCS = Path(__file__).parent.parent / "docs" / "proxies.md"
CLIENTS = ("browser", "python")

# Short windows so the whole matrix stays fast; the fallback-timing test uses defaults.
FAST = {
    "connect_timeout": 3.0,
    "first_event_timeout": 1.5,
    "backoff_base": 0.2,
    "backoff_cap": 2.0,
    "poll_timeout": 5.0,
}


# --- server + proxy ---------------------------------------------------------------------


@dataclass
class Stack:
    server: Server
    proxy: Nginx
    nginx_factory: Any

    @property
    def url(self) -> str:
        return self.proxy.url

    def crash_restart(self) -> None:
        """SIGKILL the server and start a new process on the same port."""
        assert self.server.proc is not None
        self.server.proc.kill()
        self.server.proc.wait()
        self.server.start()

    def pause(self) -> None:
        assert self.server.proc is not None
        os.kill(self.server.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.server.proc is not None
        os.kill(self.server.proc.pid, signal.SIGCONT)

    def swap_proxy(self, mode: str) -> None:
        """Replace the proxy by one in another mode on the same port (live connections drop)."""
        port = self.proxy.port
        self.proxy.stop()
        self.proxy = self.nginx_factory(mode, self.server.port, port=port)


@pytest.fixture
def stack_factory(server_factory: Any, nginx_factory: Any) -> Callable[..., Stack]:
    def factory(mode: str, **settings: Any) -> Stack:
        server = server_factory(heartbeat_interval=1, **settings)
        return Stack(server, nginx_factory(mode, server.port), nginx_factory)

    return factory


# --- the docs table and the report ------------------------------------------------------


def documented_transport(mode: str, client: str) -> str | None:
    """The cell of docs/proxies.md's table (between its ``proxy-matrix`` markers) for
    (proxy mode, client)."""
    text = DOCS.read_text()
    start, end = text.find("<!-- proxy-matrix -->"), text.find("<!-- /proxy-matrix -->")
    assert 0 <= start < end, "docs/proxies.md lost its proxy-matrix markers"
    for line in text[start:end].splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0] == mode and cells[1] == client:
            return cells[2]
    return None


@pytest.fixture(scope="session")
def proxy_report(pytestconfig: pytest.Config) -> Any:
    rows: list[dict[str, Any]] = []
    yield rows
    target = os.environ.get("PUSHSVC_PROXY_REPORT")
    cache = getattr(pytestconfig, "cache", None)  # absent with -p no:cacheprovider
    if not target and cache is not None:
        target = str(cache.mkdir("pushsvc") / "proxies.json")
    if not rows or not target:
        return
    path = Path(target)
    previous = json.loads(path.read_text()) if path.exists() else []
    keys = {(r["test"], r["mode"], r["client"]) for r in rows}
    kept = [r for r in previous if (r["test"], r["mode"], r["client"]) not in keys]
    path.write_text(json.dumps(kept + rows, indent=2, sort_keys=True))


def first_event_after(driver: Driver, t_ms: float, transport: str) -> dict[str, Any] | None:
    return next((e for e in driver.events if e["at"] >= t_ms and e["transport"] == transport), None)


def timeline(driver: Driver, t0: float, **marks: float) -> None:
    """With PUSHSVC_TEST_TIMELINE=1 (and -s): the client's log relative to ``t0`` (ms)."""
    if not os.environ.get("PUSHSVC_TEST_TIMELINE"):
        return
    for e in sorted(driver.logs, key=lambda e: e["at"]):
        print(round(e["at"] - t0), e["kind"], e.get("transport") or "", e.get("detail") or "")
    for name, at in marks.items():
        print(name, round(at - t0))


# --- tests ------------------------------------------------------------------------------


@pytest.mark.parametrize("client_kind", CLIENTS)
@pytest.mark.parametrize("mode", MODES)
async def test_every_event_once_in_order_across_a_server_restart_behind_each_proxy(
    mode: str, client_kind: str, stack_factory: Any, make_client: Any, proxy_report: Any
) -> None:
    stack: Stack = stack_factory(mode)
    client = await make_client(client_kind)
    token = stack.server.token()
    await client.start(stack.url, token, ["feed", "outbox"], **FAST)
    expected_transport = BEST_TRANSPORT[mode]
    assert await client.wait_connected() == expected_transport

    publisher = Publisher(stack.server)
    marks: dict[str, float] = {}

    async def crash_and_queue() -> None:
        # crash the server, queue a message while nothing answers, then bring it back
        assert stack.server.proc is not None
        stack.server.proc.kill()
        await asyncio.to_thread(stack.server.proc.wait)
        marks["down"] = time.time() * 1000
        await asyncio.sleep(0.3)  # window: the outage, nothing answers
        await client.publish("outbox", {"offline": True}, "offline-1")
        await asyncio.sleep(0.3)  # window: the outage goes on with the message queued
        await asyncio.to_thread(stack.server.start)
        marks["up"] = time.time() * 1000

    await publisher.stream("feed", 40, hooks={15: crash_and_queue})
    expected = [i for i, _ in publisher.stored]

    await until(
        lambda: len(delivered(client, "feed")) >= len(expected) and delivered(client, "outbox"),
        30,
        f"{client_kind} behind {mode}: all {len(expected)} events and the outbox message",
    )
    await asyncio.sleep(0.3)  # window: anything extra (a duplicate) would arrive now
    assert_exactly_once_in_order(client, "feed", expected)

    # the message queued while offline is stored once and delivered once
    async with httpx.AsyncClient() as http:
        r = await http.get(
            stack.server.url + "/v1/channels/outbox/history", headers=stack.server.api_headers
        )
    stored = [e for e in r.json()["events"] if e["data"] == {"offline": True}]
    assert len(stored) == 1, stored
    assert delivered(client, "outbox") == [stored[0]["id"]]

    reached = await client.transport()
    assert reached == expected_transport
    assert documented_transport(mode, client_kind) == reached, (
        f"docs/proxies.md must say {mode} x {client_kind} -> {reached}"
    )
    first_after = first_event_after(client, marks["up"], expected_transport)
    proxy_report.append(
        {
            "test": "restart",
            "mode": mode,
            "client": client_kind,
            "transport": reached,
            "events": len(expected),
            "restart_to_first_event_ms": (
                round(first_after["at"] - marks["up"]) if first_after else None
            ),
        }
    )


async def history_of(server: Server, channel: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient() as http:
        r = await http.get(
            f"{server.url}/v1/channels/{channel}/history", headers=server.api_headers
        )
    r.raise_for_status()
    events: list[dict[str, Any]] = r.json()["events"]
    return events


@pytest.mark.parametrize("client_kind", CLIENTS)
@pytest.mark.parametrize("mode", MODES)
async def test_silence_longer_than_the_heartbeat_is_detected_and_recovered(
    mode: str,
    client_kind: str,
    stack_factory: Any,
    make_client: Any,
    proxy_report: Any,
) -> None:
    """The server process is frozen (SIGSTOP) for 5 s with heartbeat_interval=1: no FIN, no
    RST, the connection just goes quiet, as when a network path dies. The client must
    notice while it lasts (2.5 heartbeats + 0.5 s of silence; a long-poll request its own
    timeout + the same margin) and recover after it. A message published into the silence
    reaches the server twice (the frozen connection's copy and the resend): stored once."""
    stack: Stack = stack_factory(mode)
    client = await make_client(client_kind)
    options = {**FAST, "poll_timeout": 1.0}
    await client.start(stack.url, stack.server.token(), ["feed", "outbox"], **options)
    assert await client.wait_connected() == BEST_TRANSPORT[mode]

    publisher = Publisher(stack.server)
    await publisher.stream("feed", 5)
    await until(lambda: len(delivered(client, "feed")) == 5, 10, "the first events")

    paused_at = time.time() * 1000
    stack.pause()
    try:
        await client.publish("outbox", {"sent-while-frozen": True}, "frozen-1")
        await asyncio.sleep(5.0)  # window: the silence the client must notice
    finally:
        resumed_at = time.time() * 1000
        stack.resume()
    await publisher.stream("feed", 10)

    expected = [i for i, _ in publisher.stored]
    await until(
        lambda: len(delivered(client, "feed")) >= len(expected) and delivered(client, "outbox"),
        30,
        "recovery after the pause",
    )
    await asyncio.sleep(0.3)  # window: a duplicate would arrive now
    timeline(client, paused_at, resumed=resumed_at)
    noticed = [
        e
        for e in client.log_kinds("state")
        if paused_at <= e["at"] < resumed_at and e["detail"] in ("disconnected", "connecting")
    ]
    assert noticed, f"{client_kind} behind {mode} did not notice the silence during the pause"
    assert_exactly_once_in_order(client, "feed", expected)
    stored = [e for e in await history_of(stack.server, "outbox")]
    assert [e["data"] for e in stored] == [{"sent-while-frozen": True}]
    assert delivered(client, "outbox") == [stored[0]["id"]]
    assert await client.transport() == BEST_TRANSPORT[mode]
    proxy_report.append(
        {
            "test": "silence",
            "mode": mode,
            "client": client_kind,
            "transport": await client.transport(),
            "pause_to_detection_ms": round(noticed[0]["at"] - paused_at),
        }
    )


@pytest.mark.parametrize("client_kind", CLIENTS)
@pytest.mark.parametrize("mode", ["no-upgrade", "buffering"])
async def test_falls_back_when_the_proxy_turns_restrictive_and_moves_back_up(
    mode: str, client_kind: str, stack_factory: Any, make_client: Any, proxy_report: Any
) -> None:
    """A client on WebSocket behind a good proxy; the proxy is replaced by a restrictive one
    on the same port (mid-stream), then by a good one again. Default client settings
    except a 2 s re-probe. Measured: from the moment the good proxy is stopped to the first
    event delivered on the fallback transport; then back to WebSocket."""
    stack: Stack = stack_factory("good")
    client = await make_client(client_kind)
    await client.start(stack.url, stack.server.token(), ["feed"], reprobe_interval=2.0)
    assert await client.wait_connected() == "websocket"

    publisher = Publisher(stack.server)
    stop = asyncio.Event()
    pumping = asyncio.create_task(publisher.until("feed", stop))
    try:
        await until(lambda: len(delivered(client, "feed")) >= 5, 10, "events on WebSocket")
        failed_at = time.time() * 1000
        await asyncio.to_thread(stack.swap_proxy, mode)
        fallback = BEST_TRANSPORT[mode]
        await until(
            lambda: first_event_after(client, failed_at, fallback) is not None,
            20,
            f"the first event on {fallback}",
        )
        first = first_event_after(client, failed_at, fallback)
        assert first is not None
        # the client's own record of the WebSocket failing behind the new proxy (browser)
        ws_failed = [
            e
            for e in client.log_kinds("transport-failed")
            if e["at"] >= failed_at and e.get("transport") == "websocket"
        ]

        fixed_at = time.time() * 1000
        await asyncio.to_thread(stack.swap_proxy, "good")
        await until(
            lambda: first_event_after(client, fixed_at, "websocket") is not None,
            20,
            "moving back up to WebSocket",
        )
        back = first_event_after(client, fixed_at, "websocket")
        assert back is not None
        mark = len(delivered(client, "feed"))
        await until(
            lambda: len(delivered(client, "feed")) >= mark + 3, 10, "more events on WebSocket"
        )
    finally:
        stop.set()
        await pumping
    expected = [i for i, _ in publisher.stored]
    await until(lambda: len(delivered(client, "feed")) >= len(expected), 20, "the tail")
    await asyncio.sleep(0.3)  # window: a duplicate would arrive now
    timeline(client, failed_at, fixed=fixed_at, first_fallback=first["at"], back=back["at"])
    assert_exactly_once_in_order(client, "feed", expected)
    assert await client.transport() == "websocket"
    proxy_report.append(
        {
            "test": "fallback",
            "mode": mode,
            "client": client_kind,
            "transport": fallback,
            "proxy_failure_to_first_fallback_event_ms": round(first["at"] - failed_at),
            "ws_failure_to_first_fallback_event_ms": (
                round(first["at"] - ws_failed[0]["at"]) if ws_failed else None
            ),
            "proxy_fixed_to_first_websocket_event_ms": round(back["at"] - fixed_at),
            "events": len(expected),
        }
    )
