"""The clients as tests drive them: the Python client behind the same driver interface as
the browser's (``BrowserClient``), a ``make_client`` fixture for either, and a backend
``Publisher`` that stores every message once (idempotency key, retries) and records when
each publish began."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from tests.fixtures_browser import BrowserClient
from tests.fixtures_server import API_KEY, Server
from tests.waiting import until

# --- the Python client, seen through the same driver interface as BrowserClient --------


class PythonClient:
    """``pushsvc.client.Client`` in this process, recording what it yields."""

    name = "python"
    _OPTIONS = {
        "transports": "transports",
        "connect_timeout": "connect_timeout",
        "first_event_timeout": "sse_first_byte_timeout",
        "reprobe_interval": "reprobe_interval",
        "poll_timeout": "poll_timeout",
        "backoff_base": "backoff_base",
        "backoff_cap": "backoff_cap",
        "outbox_limit": "outbox_limit",
    }

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.logs: list[dict[str, Any]] = []
        self.futures: dict[str, asyncio.Future[str]] = {}
        self.client: Any = None
        self.reader: asyncio.Task[None] | None = None

    async def start(
        self, base_url: str, token: str, channels: list[str], **options: Any
    ) -> PythonClient:
        from pushsvc.client import Client, Event

        kwargs = {self._OPTIONS[k]: v for k, v in options.items() if k in self._OPTIONS}
        self.client = client = Client(base_url, token, channels, on_state=self._state, **kwargs)
        client.start()

        async def read() -> None:
            async for item in client:
                if isinstance(item, Event):
                    self.events.append(
                        {
                            "channel": item.channel,
                            "id": item.id,
                            "data": item.data,
                            "transport": client.transport,
                            "at": time.time() * 1000,
                        }
                    )
                else:
                    self.logs.append({"at": time.time() * 1000, "kind": "gap"})

        self.reader = asyncio.create_task(read())
        return self

    def _state(self, state: str, transport: str | None) -> None:
        self.logs.append(
            {"at": time.time() * 1000, "kind": "state", "transport": transport, "detail": state}
        )

    async def transport(self) -> str | None:
        result: str | None = self.client.transport
        return result

    async def publish(self, channel: str, data: Any, msg_id: str | None = None) -> None:
        self.futures[msg_id or uuid.uuid4().hex] = self.client.publish(channel, data)

    async def wait_connected(self, timeout: float = 15) -> str:
        await until(lambda: self.client.transport is not None, timeout, "connection")
        return str(self.client.transport)

    async def ready(self, timeout: float = 15) -> str:
        """The start cursor, once every channel's start position is pinned."""
        cursor: str = await self.client.ready(timeout)
        return cursor

    def log_kinds(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.logs if e["kind"] == kind]

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
        if self.reader is not None:
            self.reader.cancel()
            await asyncio.gather(self.reader, return_exceptions=True)


Driver = BrowserClient | PythonClient


@pytest.fixture
async def make_client(lazy_browser: Any) -> AsyncIterator[Callable[[str], Any]]:
    made: list[Driver] = []

    async def factory(kind: str) -> Driver:
        driver: Driver
        driver = BrowserClient(await lazy_browser()) if kind == "browser" else PythonClient()
        made.append(driver)
        return driver

    yield factory
    for driver in made:
        await driver.close()


class Publisher:
    """Publishes straight to the server with an idempotency key, retrying each message
    until it is stored (through restarts and pauses), one at a time, so the answered IDs
    are the stream's order."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.stored: list[tuple[str, Any]] = []
        # per stored message, when its first attempt began (time.monotonic()): a message
        # begun after a moment T was stored after T
        self.begun: list[float] = []

    async def publish(self, channel: str, data: Any) -> str:
        body = {"channel": channel, "data": data, "idempotency_key": uuid.uuid4().hex}
        headers = {"Authorization": f"Bearer {API_KEY}"}
        begun = time.monotonic()
        deadline = begun + 40
        async with httpx.AsyncClient(timeout=1.0) as http:
            while True:
                try:
                    r = await http.post(self.server.url + "/v1/publish", json=body, headers=headers)
                    if r.status_code == 200:
                        event_id = str(r.json()["id"])
                        self.stored.append((event_id, data))
                        self.begun.append(begun)
                        return event_id
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"could not publish {data!r} within 40 s")
                await asyncio.sleep(0.05)  # poll: retry until stored, against the deadline

    async def stream(
        self,
        channel: str,
        count: int,
        interval: float = 0.02,
        hooks: dict[int, Callable[[], Awaitable[None]]] | None = None,
    ) -> None:
        for n in range(count):
            if hooks and n in hooks:
                await hooks[n]()
            await self.publish(channel, {"n": len(self.stored)})
            await asyncio.sleep(interval)  # pace: a steady stream of publishes

    def ids(self) -> list[str]:
        return [i for i, _ in self.stored]

    async def until(self, channel: str, stop: asyncio.Event, interval: float = 0.02) -> None:
        while not stop.is_set():
            await self.publish(channel, {"n": len(self.stored)})
            await asyncio.sleep(interval)  # pace: a steady stream of publishes


def delivered(driver: Driver, channel: str) -> list[str]:
    return [e["id"] for e in driver.events if e["channel"] == channel]


def assert_exactly_once_in_order(driver: Driver, channel: str, expected: list[str]) -> None:
    got = delivered(driver, channel)
    dupes = sorted({i for i in got if got.count(i) > 1})
    assert not dupes, f"{driver.name}: duplicates on {channel}: {dupes}"
    missing = [i for i in expected if i not in got]
    assert not missing, f"{driver.name}: missing on {channel}: {missing}"
    assert got == expected, f"{driver.name}: out of order or extra on {channel}"
