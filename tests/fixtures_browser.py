"""Headless Chromium (Debian's package) driven by Playwright, and a driver for the browser
client running in it.

Playwright's own browser download does not work here, so it launches ``/usr/bin/chromium``
with the flags this machine needs (no background networking: the network is closed).
Playwright gives each launch a fresh temporary profile. A missing Chromium fails the test
loudly: CI installs it (``.ci/run``), it is never skipped.

The page under test is ``tests/pages/client.html``, served by the test nginx at
``/__test/client.html`` on the same origin as the proxied API. It imports ``/pushsvc.js``
from the server (through the proxy) and reports events and client log entries through
bindings that survive page reloads, so one Python list sees every page lifetime.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from playwright.async_api import Browser, Page, async_playwright
from playwright.async_api import TimeoutError as PlaywrightTimeoutError

from tests.waiting import until

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# test option names (snake_case) -> PushClient option names
_JS_OPTIONS = {
    "transports": "transports",
    "connect_timeout": "connectTimeout",
    "first_event_timeout": "firstEventTimeout",
    "reprobe_interval": "reprobeInterval",
    "reprobe_max": "reprobeMax",
    "poll_timeout": "pollTimeout",
    "backoff_base": "backoffBase",
    "backoff_cap": "backoffCap",
    "outbox_limit": "outboxLimit",
    "storage_key": "storageKey",
    "cursor": "cursor",
    "presence": "presence",
}
_SECONDS = {"connect_timeout", "first_event_timeout", "reprobe_interval", "reprobe_max"}
_SECONDS |= {"backoff_base", "backoff_cap"}


def chromium_path() -> str:
    found = os.environ.get("PUSHSVC_TEST_CHROMIUM") or shutil.which("chromium")
    if not found and os.access("/usr/bin/chromium", os.X_OK):
        found = "/usr/bin/chromium"
    if not found:
        pytest.fail("chromium is not installed: `apt-get install chromium` (.ci/run does it)")
    return found


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        instance = await pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            await instance.close()


@pytest.fixture
async def lazy_browser() -> AsyncIterator[Callable[[], Awaitable[Browser]]]:
    """``await lazy_browser()``: Chromium launched on first use only (tests parametrized
    over browser and Python clients pay for it only in the browser case)."""
    launched: list[Any] = []

    async def get() -> Browser:
        if not launched:
            pw = await async_playwright().start()
            launched.append(pw)
            launched.append(
                await pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
            )
        browser: Browser = launched[1]
        return browser

    yield get
    if len(launched) == 2:
        await launched[1].close()
    if launched:
        await launched[0].stop()


class BrowserClient:
    """The browser client (pushsvc.js) in a Chromium page, seen from the test.

    ``events``: every delivered event (``channel``, ``id``, ``data``, ``transport``, ``at``
    in epoch ms); ``logs``: the client's ``onLog`` entries plus ``gap`` and ``published``;
    ``presence``: the presence callbacks in order, ``{"kind": "join" | "leave", "channel",
    "member"}`` and ``{"kind": "view", "channel", "members", "counts"}`` (``onPresence``).
    """

    name = "browser"

    def __init__(self, browser: Browser) -> None:
        self.browser = browser
        self.page: Page | None = None
        self.events: list[dict[str, Any]] = []
        self.logs: list[dict[str, Any]] = []
        self.console: list[str] = []
        self.presence: list[dict[str, Any]] = []
        self.options: dict[str, Any] = {}

    async def start(
        self,
        base_url: str,
        token: str,
        channels: list[str],
        *,
        module_from_proxy: bool = False,
        **options: Any,
    ) -> BrowserClient:
        """Open the test page and start a ``PushClient`` in it. ``module_from_proxy``: load
        pushsvc.js from the proxy's copy (the page loads while pushsvc is down)."""
        page = self.page = await self.browser.new_page()
        await page.expose_function("pushsvcEvent", lambda e: self.events.append(e))
        await page.expose_function("pushsvcLog", lambda e: self.logs.append(e))
        await page.expose_function("pushsvcPresence", lambda e: self.presence.append(e))
        page.on("console", lambda m: self.console.append(m.text))
        page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))
        self.url = base_url + "/__test/client.html"
        if module_from_proxy:
            self.url += "?src=/__test/pushsvc.js"
        self.options = {"token": token, "channels": channels}
        for key, value in options.items():
            self.options[_JS_OPTIONS[key]] = value * 1000 if key in _SECONDS else value
        await self._open()
        return self

    async def _open(self) -> None:
        assert self.page is not None
        await self.page.goto(self.url)
        await self.page.wait_for_function("window.pushsvcReady === true")
        await self.page.evaluate("(o) => window.startClient(o)", self.options)

    async def reload(self) -> None:
        """Reload the page and start a client with the same options (sessionStorage stays)."""
        assert self.page is not None
        await self.page.reload()
        await self.page.wait_for_function("window.pushsvcReady === true")
        await self.page.evaluate("(o) => window.startClient(o)", self.options)

    async def _eval(self, script: str, arg: Any = None) -> Any:
        assert self.page is not None
        return await self.page.evaluate(script, arg)

    async def seen_ids(self, channel: str) -> list[str]:
        """The IDs of ``channel`` the page's ``onEvent`` saw, from the page's own record in
        sessionStorage (it survives reloads; binding calls from a page being unloaded may
        not arrive)."""
        seen = await self._eval(
            "() => JSON.parse(sessionStorage.getItem('pushsvc-test:seen') || '[]')"
        )
        return [event_id for ch, event_id in seen if ch == channel]

    async def wait_seen(self, channel: str, count: int, timeout: float = 10) -> list[str]:
        """Wait, in the page, until its own record holds ``count`` events of ``channel``
        (``page.wait_for_function``: the condition, not a sleep); return their IDs."""
        assert self.page is not None
        try:
            await self.page.wait_for_function(
                """([c, n]) => JSON.parse(sessionStorage.getItem('pushsvc-test:seen') || '[]')
                    .filter((s) => s[0] === c).length >= n""",
                arg=[channel, count],
                timeout=timeout * 1000,
                polling=50,
            )
        except PlaywrightTimeoutError:
            raise AssertionError(
                f"timed out after {timeout} s waiting for {count} events of {channel!r} in "
                f"the page; last observed: {await self.seen_ids(channel)}: {self.logs}"
            ) from None
        return await self.seen_ids(channel)

    async def ready(self, timeout: float = 15) -> str:
        """Await ``client.ready()`` in the page: the cursor once every channel's start
        position is pinned. Raises ``AssertionError`` when the page's promise rejects
        (``timeout`` after ``timeout`` s, ``closed``, ``refused``)."""
        outcome = await asyncio.wait_for(
            self._eval(
                """(ms) => window.client.ready(ms).then(
                    (cursor) => ({ cursor }),
                    (e) => ({ error: `${e.code}: ${e.message}` }),
                )""",
                timeout * 1000,
            ),
            timeout + 5,
        )
        if "error" in outcome:
            raise AssertionError(f"browser client not ready: {outcome['error']}: {self.logs}")
        return str(outcome["cursor"])

    async def transport(self) -> str | None:
        result: str | None = await self._eval("() => window.client && window.client.transport")
        return result

    async def state(self) -> str:
        return str(await self._eval("() => window.client.state"))

    async def publish(self, channel: str, data: Any, msg_id: str | None = None) -> None:
        """Queue a message (not awaited: it may wait for a connection)."""
        await self._eval("([c, d, id]) => window.queuePublish(c, d, id)", [channel, data, msg_id])

    def published(self) -> list[dict[str, Any]]:
        import json

        return [json.loads(e["detail"]) for e in self.logs if e["kind"] == "published"]

    async def members(self, channel: str) -> list[dict[str, Any]]:
        """``client.members(channel)`` in the page."""
        result: list[dict[str, Any]] = await self._eval("(c) => window.client.members(c)", channel)
        return result

    async def presence_counts(self, channel: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._eval("(c) => window.client.presenceCounts(c)", channel)
        return result

    def last_view(self, channel: str) -> list[dict[str, Any]] | None:
        """The members the last ``onPresence`` of ``channel`` reported (None: none yet)."""
        views = [p for p in self.presence if p["kind"] == "view" and p["channel"] == channel]
        return views[-1]["members"] if views else None

    async def outbox_size(self) -> int:
        return int(await self._eval("() => window.client.outboxSize"))

    async def wait_connected(self, timeout: float = 15) -> str:
        try:
            await until(
                lambda: self._eval("() => !!window.client && !!window.client.transport"),
                timeout,
                "the browser client connected",
                interval=0.02,
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {self.logs}") from None
        return str(await self.transport())

    def log_kinds(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.logs if e["kind"] == kind]

    async def close(self) -> None:
        if self.page is not None:
            with contextlib.suppress(Exception):
                await self._eval("() => window.client && window.client.close()")
            await self.page.close()
            self.page = None


@pytest.fixture
async def browser_client(browser: Browser) -> AsyncIterator[BrowserClient]:
    client = BrowserClient(browser)
    try:
        yield client
    finally:
        await client.close()
