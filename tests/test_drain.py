"""Graceful drain: SIGTERM to one of two instances behind nginx moves its clients to the
other, with every event exactly once and in order.

Two ``pushsvc serve`` processes on one Redis (a key prefix of the test's own), behind an
nginx that balances them round-robin (the fixtures' "good" proxy with an ``upstream`` of
two servers). Python clients on each transport, on both instances; a backend publishes to
the instance that stays, the whole time. SIGTERM to the other one (by its pid): it must
exit within ``--graceful-timeout`` (plus the process's start-up and teardown margin); its
WebSocket clients get close 1012, its SSE clients a ``close`` event with 1012, its pending
long-polls their answer at once; every client resumes through nginx on the survivor. The
test prints the drain's duration (SIGTERM to exit) and the time until every client had an
event published after the moved ones were told to move (docs/how-to/drain.md quotes
them). The clients' backoff is 10 s: a client that waited one after 1012 fails the test.
A second test does the same with ``pushsvc.js`` in Chromium (a WebSocket and an SSE
client on the instance that leaves).
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from pushsvc.app import create_app
from pushsvc.client._errors import Transient
from pushsvc.client._transports import classify_close
from pushsvc.protocol.codes import CLOSE_CODES, reconnect_at_once
from pushsvc.settings import Settings
from tests.fixtures_clients import Publisher, PythonClient, assert_exactly_once_in_order
from tests.fixtures_nginx import Nginx
from tests.fixtures_server import API_KEY, SECRET, Server, free_port, make_server
from tests.waiting import until

CHANNEL = "drain:feed"
TRANSPORTS = ("websocket", "sse", "long-polling")
PER_INSTANCE = 2  # clients of each streaming transport on each instance
POLLERS = 3  # long-polls alternate between the instances by themselves
GRACEFUL_TIMEOUT = 10.0
EXIT_MARGIN = 5.0  # the interpreter's teardown, on a loaded machine
BACKOFF = 10.0  # the clients' backoff (base and cap), seconds
RESUMED_WITHIN = 5.0  # seconds; a client that waited a backoff would take 0-10 s

pytestmark = pytest.mark.timeout(60)


@dataclasses.dataclass
class TwoUpstreams(Nginx):
    """The fixtures' "good" proxy, balancing two instances round-robin (nginx's default:
    a refused connection is passed to the next server, which is how a drained instance's
    clients land on the other)."""

    ports: tuple[int, ...] = ()

    def config(self) -> str:
        one = f"proxy_pass http://127.0.0.1:{self.upstream_port};"
        text = super().config()
        assert one in text
        servers = " ".join(f"server 127.0.0.1:{p};" for p in self.ports)
        text = text.replace(one, "proxy_pass http://pushsvc_fleet;")
        return text.replace(
            "    server {", f"    upstream pushsvc_fleet {{ {servers} }}\n    server {{", 1
        )


def serve(server: Server) -> Server:
    """Run ``server`` as ``pushsvc serve`` (the graceful server), not bare uvicorn."""
    cmd = [sys.executable, "-m", "pushsvc", "serve", "--host", "127.0.0.1"]
    cmd += ["--port", str(server.port), "--graceful-timeout", str(GRACEFUL_TIMEOUT)]
    cmd += ["--log-level", "warning"]
    server.proc = subprocess.Popen(cmd, env=server.env)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"pushsvc serve exited with {server.proc.returncode}")
        try:
            if httpx.get(server.url + "/healthz", timeout=0.5).status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.05)  # poll: until the server answers, against the deadline
    raise RuntimeError("pushsvc serve did not answer /healthz within 20 s")


class Recorder(PythonClient):
    """A Python client that also keeps why each of its connections ended."""

    def __init__(self, transport: str) -> None:
        super().__init__()
        self.transport_name = transport
        self.losses: list[BaseException] = []
        self.name = f"python-{transport}"

    def _state(self, state: str, transport: str | None) -> None:
        super()._state(state, transport)
        if state == "disconnected" and self.client is not None:
            error = self.client.last_error
            if error is not None and (not self.losses or self.losses[-1] is not error):
                self.losses.append(error)

    def close_codes(self) -> list[int | None]:
        return [e.code for e in self.losses if isinstance(e, Transient)]


async def open_connections(server: Server, transport: str) -> int:
    """This instance's open connections of ``transport`` (its /metrics)."""
    async with httpx.AsyncClient() as http:
        text = (await http.get(server.url + "/metrics", timeout=5)).text
    found = re.search(rf'^pushsvc_connections_open\{{transport="{transport}"\}} (\S+)', text, re.M)
    return int(float(found.group(1))) if found else 0


@pytest.fixture
async def fleet(redis_url: str, tmp_path: Path) -> AsyncIterator[tuple[Server, Server, Nginx]]:
    leaving, staying = make_server(redis_url), make_server(redis_url)
    proxy: Nginx | None = None
    try:
        serve(leaving)
        serve(staying)
        prefix = tmp_path / "nginx"
        for sub in ("client_body", "proxy_temp", "fastcgi_temp", "uwsgi_temp", "scgi_temp"):
            (prefix / sub).mkdir(parents=True, exist_ok=True)
        ports = (leaving.port, staying.port)
        proxy = TwoUpstreams("good", free_port(), leaving.port, prefix, ports=ports).start()
        yield leaving, staying, proxy
    finally:
        if proxy is not None:
            proxy.stop()
        leaving.stop()
        staying.stop()


async def resumed(
    publisher: Publisher, clients: list[Any], told: Callable[[], bool], sigterm: float
) -> float:
    """Seconds from the SIGTERM until every client has an event whose publish began after
    every moved client was told to move (``told``): uvicorn notices a signal within 0.1 s,
    so an event published right after the SIGTERM may still reach them where they were."""
    await until(told, 10, "every client on the instance to be told to move")
    moved_at = time.monotonic()
    await until(lambda: any(b > moved_at for b in publisher.begun), 10, "a publish after it")
    first_after = next(i for i, b in enumerate(publisher.begun) if b > moved_at)
    marker = publisher.stored[first_after][0]
    await until(
        lambda: all(marker in {e["id"] for e in c.events} for c in clients),
        20,
        "every client to resume on the other instance",
    )
    return time.monotonic() - sigterm


async def shift_rotation(http: httpx.AsyncClient, proxy: Nginx, attempt: int) -> None:
    """Requests through nginx that move its round-robin on: one or two, alternately, so
    that whatever number of requests a client's start makes, the next start lands on
    the other instance within two attempts."""
    for _ in range(1 + attempt % 2):
        await http.get(proxy.url + "/healthz")


async def place_clients(
    proxy: Nginx, leaving: Server, staying: Server, token: str
) -> list[tuple[Recorder, bool]]:
    """Clients through nginx, ``PER_INSTANCE`` of each streaming transport on each
    instance (round-robin alternates per request: a stray request through nginx shifts
    the next connection to the other instance), and ``POLLERS`` long-polling ones.
    Answers (client, whether it is on the instance that will leave)."""
    options: dict[str, Any] = {
        # a backoff this long would show: after 1012 the clients reconnect without it
        "backoff_base": BACKOFF,
        "backoff_cap": BACKOFF,
        "connect_timeout": 5.0,
        "reprobe_interval": 3600.0,
        "poll_timeout": 20.0,
    }
    placed: list[tuple[Recorder, bool]] = []
    async with httpx.AsyncClient() as http:
        for transport in ("websocket", "sse"):
            counts = {True: 0, False: 0}
            for attempt in range(6 * PER_INSTANCE):
                if min(counts.values()) >= PER_INSTANCE:
                    break
                before = await open_connections(leaving, transport)
                client = Recorder(transport)
                await client.start(proxy.url, token, [CHANNEL], transports=(transport,), **options)
                await client.ready()
                await client.wait_connected()
                on_leaving = await open_connections(leaving, transport) > before
                if counts[on_leaving] >= PER_INSTANCE:
                    await client.close()  # that side is full: shift the rotation, retry
                    await shift_rotation(http, proxy, attempt)
                    continue
                counts[on_leaving] += 1
                placed.append((client, on_leaving))
            assert min(counts.values()) >= PER_INSTANCE, f"{transport} clients: {counts}"
        for _ in range(POLLERS):
            client = Recorder("long-polling")
            await client.start(proxy.url, token, [CHANNEL], transports=("long-polling",), **options)
            await client.ready()
            placed.append((client, False))
    return placed


async def test_sigterm_drains_an_instance_and_its_clients_resume_on_the_other(
    fleet: tuple[Server, Server, Nginx],
) -> None:
    leaving, staying, proxy = fleet
    assert leaving.proc is not None
    token = staying.token(subscribe=(CHANNEL,), publish=())
    placed = await place_clients(proxy, leaving, staying, token)
    clients = [c for c, _ in placed]
    publisher = Publisher(staying)
    stop = asyncio.Event()
    publishing = asyncio.create_task(publisher.until(CHANNEL, stop, interval=0.02))
    try:
        # every client receives the stream before the drain
        await until(lambda: len(publisher.stored) >= 20, 20, "20 events stored")
        await until(lambda: all(len(c.events) >= 10 for c in clients), 20, "every client receiving")
        pending_polls = await open_connections(leaving, "long-polling")

        sigterm = time.monotonic()
        stored_before = len(publisher.stored)
        leaving.proc.send_signal(signal.SIGTERM)

        async def exited() -> float:
            assert leaving.proc is not None
            code = await asyncio.to_thread(leaving.proc.wait, GRACEFUL_TIMEOUT + EXIT_MARGIN)
            assert code in (0, -signal.SIGTERM), f"exit status {code}"
            return time.monotonic() - sigterm

        moved = [c for c, on_leaving in placed if on_leaving]
        drain, resume = await asyncio.gather(
            exited(), resumed(publisher, clients, lambda: all(c.losses for c in moved), sigterm)
        )
        # a steady stream goes on a while on the survivor, then stops
        await until(lambda: len(publisher.stored) >= stored_before + 40, 20, "40 more events")
    finally:
        stop.set()
        await publishing
    try:
        expected = publisher.ids()
        await until(
            lambda: all(len(c.events) >= len(expected) for c in clients),
            20,
            "every client to catch up",
        )
        for client in clients:
            assert_exactly_once_in_order(client, CHANNEL, expected)
        for client, on_leaving in placed:
            codes = client.close_codes()
            if on_leaving:  # told to move: 1012, by close frame or SSE close event
                assert codes == [1012], f"{client.name}: connection ends {client.losses}"
            elif client.transport_name != "long-polling":
                assert codes == [], f"{client.name} on the survivor: {client.losses}"
        print(
            f"\ndrain: SIGTERM to exit {drain:.3f} s (graceful timeout {GRACEFUL_TIMEOUT:g} s); "
            f"every client resumed within {resume:.3f} s of the SIGTERM; "
            f"{sum(on for _, on in placed)} streaming clients moved, "
            f"{pending_polls} long-poll(s) pending on the instance; "
            f"{len(expected)} events, each delivered once to each of {len(clients)} clients"
        )
        assert drain < GRACEFUL_TIMEOUT + EXIT_MARGIN
        # nothing waited for the timeout: streams ended and pending polls answered at once
        assert drain < GRACEFUL_TIMEOUT / 2, f"the drain took {drain:.1f} s"
        assert resume < RESUMED_WITHIN, "a client waited a backoff delay after 1012"
    finally:
        for client in clients:
            await client.close()


async def test_browser_clients_move_at_once_after_1012(
    fleet: tuple[Server, Server, Nginx], make_client: Any
) -> None:
    """pushsvc.js: a WebSocket and an SSE client on the instance that leaves resume on
    the other without their (10 s) backoff, every event once and in order."""
    leaving, staying, proxy = fleet
    assert leaving.proc is not None
    token = staying.token(subscribe=(CHANNEL,), publish=())
    options = {"backoff_base": BACKOFF, "backoff_cap": BACKOFF, "reprobe_interval": 3600.0}
    clients: list[Any] = []
    async with httpx.AsyncClient() as http:
        for transport in ("websocket", "sse"):
            for attempt in range(6):
                before = await open_connections(leaving, transport)
                client = await make_client("browser")
                await client.start(proxy.url, token, [CHANNEL], transports=[transport], **options)
                await client.ready()
                assert await client.wait_connected() == transport
                if await open_connections(leaving, transport) > before:
                    clients.append(client)
                    break
                await client.close()  # on the survivor: shift the rotation, retry
                await shift_rotation(http, proxy, attempt)
            else:
                raise AssertionError(f"no browser {transport} client landed on the instance")
    publisher = Publisher(staying)
    stop = asyncio.Event()
    publishing = asyncio.create_task(publisher.until(CHANNEL, stop, interval=0.02))
    try:
        await until(lambda: all(len(c.events) >= 10 for c in clients), 20, "events before")
        sigterm = time.monotonic()
        leaving.proc.send_signal(signal.SIGTERM)
        resume = await resumed(
            publisher, clients, lambda: all(c.log_kinds("lost") for c in clients), sigterm
        )
        stored = len(publisher.stored)
        await until(lambda: len(publisher.stored) >= stored + 20, 20, "20 more events")
    finally:
        stop.set()
        await publishing
    expected = publisher.ids()
    await until(lambda: all(len(c.events) >= len(expected) for c in clients), 20, "catch up")
    for client in clients:
        assert_exactly_once_in_order(client, CHANNEL, expected)
        lost = [entry["detail"] for entry in client.log_kinds("lost")]
        assert len(lost) == 1 and "1012" in lost[0], lost
    print(f"\ndrain, browser clients: every one resumed within {resume:.3f} s of the SIGTERM")
    assert resume < RESUMED_WITHIN, "a browser client waited a backoff delay after 1012"
    await asyncio.to_thread(leaving.proc.wait, GRACEFUL_TIMEOUT + EXIT_MARGIN)


@pytest.mark.parametrize("code", [*sorted(CLOSE_CODES), 1005, 1006])
def test_only_a_drain_is_resumed_without_backoff(code: int) -> None:
    outcome = classify_close(code, "why")
    at_once = isinstance(outcome, Transient) and outcome.at_once
    assert at_once == (code == 1012)
    assert reconnect_at_once(code) == (code == 1012)


async def test_readiness_answers_503_once_the_drain_starts() -> None:
    app = create_app(Settings(secrets=(SECRET,), api_keys=(API_KEY,)))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://pushsvc") as http:
            assert (await http.get("/readyz")).status_code == 200
            await app.state.hub.drain()
            r = await http.get("/readyz")
    assert r.status_code == 503
    assert r.json()["status"] == "unavailable" and "draining" in r.json()["detail"]
