"""A page that uses the browser's native ``EventSource`` directly, as its documentation
teaches: with ``named_events=1`` each ``addEventListener(name, ...)`` gets exactly the
events of that name, and ``onmessage`` the unnamed ones, in Chromium.

The page is any page of the server's own origin (``/healthz``), so the stream is
same-origin; its listeners record into ``window.got``, which the test waits on with
``page.wait_for_function`` (the condition, not a sleep).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from playwright.async_api import Browser

from tests.fixtures_server import Server

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.parametrize("backend_url", ["memory"], indirect=True),
]

OPEN_STREAM = """(url) => {
  window.got = { "order.created": [], "order.paid": [], message: [], subscribed: 0, errors: 0 };
  const es = (window.es = new EventSource(url));
  for (const name of ["order.created", "order.paid"]) {
    es.addEventListener(name, (e) => window.got[name].push([JSON.parse(e.data), e.lastEventId]));
  }
  es.onmessage = (e) => window.got.message.push([JSON.parse(e.data), e.lastEventId]);
  es.addEventListener("subscribed", () => (window.got.subscribed += 1));
  es.onerror = () => (window.got.errors += 1);
}"""


async def test_native_eventsource_listeners_get_the_events_of_their_name(
    server: Server, browser: Browser
) -> None:
    page = await browser.new_page()
    try:
        await page.goto(server.url + "/healthz")  # the server's origin
        url = f"/v1/sse?channel=orders&token={server.token()}&named_events=1"
        await page.evaluate(OPEN_STREAM, url)
        await page.wait_for_function("window.got.subscribed === 1", timeout=10_000)

        published: list[tuple[str | None, dict[str, Any]]] = [
            ("order.created", {"order": 1}),
            ("order.paid", {"order": 1}),
            (None, {"note": "unnamed"}),
            ("order.created", {"order": 2}),
            ("order.paid", {"order": 2}),
            (None, {"note": "unnamed again"}),
        ]
        ids: list[str] = []
        for name, data in published:
            extra = {} if name is None else {"event": name}
            ids.append(await asyncio.to_thread(server.publish, "orders", data, **extra))
        await page.wait_for_function(
            "Object.values(window.got).filter(Array.isArray)"
            ".reduce((n, list) => n + list.length, 0) >= 6",
            timeout=10_000,
            polling=50,
        )
        got = await page.evaluate("window.got")
        await page.evaluate("window.es.close()")
    finally:
        await page.close()

    def expected(want: str | None) -> list[tuple[str, dict[str, Any]]]:
        return [(ids[i], data) for i, (name, data) in enumerate(published) if name == want]

    def received(listener: str) -> list[tuple[str, dict[str, Any]]]:
        return [(body["id"], body["data"]) for body, _ in got[listener]]

    assert received("order.created") == expected("order.created"), got
    assert received("order.paid") == expected("order.paid"), got
    assert received("message") == expected(None), got
    assert [body["event"] for body, _ in got["message"]] == ["message", "message"]
    # each listener's event carries the cursor as lastEventId, as with onmessage alone
    listeners = ("order.created", "order.paid", "message")
    assert all(cursor.startswith("c1") for k in listeners for _, cursor in got[k]), got
    assert got["errors"] == 0
