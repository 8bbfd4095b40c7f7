"""Chromium's native WebSocket negotiates pushsvc's permessage-deflate (``ws_compression``)
and receives every event intact, small ones (sent plain) and large ones (compressed once),
up to a 60 KiB event.

The page is a page of the server's own origin (``/healthz``); its socket records into
``window.got``, which the test waits on with ``page.wait_for_function``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from playwright.async_api import Browser

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.parametrize("backend_url", ["memory"], indirect=True),
]

OPEN_SOCKET = """(url) => {
  window.got = { extensions: null, subscribed: false, events: [], closed: null };
  const ws = (window.ws = new WebSocket(url));
  ws.onopen = () => {
    window.got.extensions = ws.extensions;
    ws.send(JSON.stringify({ type: "subscribe", channels: ["orders"] }));
  };
  ws.onmessage = (m) => {
    const frame = JSON.parse(m.data);
    if (frame.type === "subscribed") window.got.subscribed = true;
    if (frame.type === "event") window.got.events.push(frame.data);
  };
  ws.onclose = (e) => (window.got.closed = e.code);
}"""


def payloads() -> list[Any]:
    orders = [
        {
            "order_id": f"ord-{i:06d}",
            "customer": {"id": i, "name": f"Customer {i}"},
            "items": [{"sku": f"sku-{j}", "quantity": j + 1} for j in range(6)],
        }
        for i in range(20)
    ]
    large = {"rows": [{"row": i, "label": f"label {i % 17}", "ok": True} for i in range(1300)]}
    assert 50_000 < len(json.dumps(large)) < 64 * 1024
    return [{"n": 1}, *orders, large, "tiny", {"n": 2}]


async def test_chromium_negotiates_deflate_and_receives_every_event_intact(
    server_factory: Any, browser: Browser
) -> None:
    server = server_factory(ws_compression=1)
    page = await browser.new_page()
    try:
        await page.goto(server.url + "/healthz")  # the server's origin
        url = f"{server.ws_url}/v1/ws?token={server.token()}"
        await page.evaluate(OPEN_SOCKET, url)
        await page.wait_for_function("window.got.subscribed === true", timeout=10_000)
        extensions = await page.evaluate("window.got.extensions")
        assert extensions.startswith("permessage-deflate"), extensions
        assert "server_no_context_takeover" in extensions

        sent = payloads()
        for data in sent:
            await asyncio.to_thread(server.publish, "orders", data)
        await page.wait_for_function(f"window.got.events.length >= {len(sent)}", timeout=20_000)
        assert await page.evaluate("window.got.events") == sent
        assert await page.evaluate("window.got.closed") is None
    finally:
        await page.close()
