"""The browser client (``GET /pushsvc.js``) in headless Chromium: what only a browser page
has -- sessionStorage across a reload, the outbox bound, gaps, binary events on each
native transport, a refused token -- through the well-configured nginx; and the start
position pinned by negotiate (``ready()``, the ``cursor`` option), through a buffering one.

Transport fallback, restarts and silence for both clients are in ``test_proxies.py``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tests.fixtures_browser import BrowserClient
from tests.fixtures_nginx import Nginx
from tests.fixtures_server import Server
from tests.waiting import until

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.parametrize("backend_url", ["memory"], indirect=True),
]

FAST = {"connect_timeout": 3.0, "backoff_base": 0.2, "backoff_cap": 1.0}


@pytest.fixture
def proxied(server_factory: Any, nginx_factory: Any) -> tuple[Server, Nginx]:
    server = server_factory(heartbeat_interval=1)
    return server, nginx_factory("good", server.port)


def ids(client: BrowserClient, channel: str) -> list[str]:
    return [e["id"] for e in client.events if e["channel"] == channel]


def test_client_module_and_types_are_served(server: Server) -> None:
    r = httpx.get(server.url + "/pushsvc.js")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/javascript")
    assert "export class PushClient" in r.text
    again = httpx.get(server.url + "/pushsvc.js", headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304
    types = httpx.get(server.url + "/pushsvc.d.ts")
    assert types.status_code == 200
    assert "export class PushClient" in types.text


async def test_page_reload_resumes_from_session_storage_without_loss_or_duplicate(
    proxied: tuple[Server, Nginx], browser_client: BrowserClient
) -> None:
    server, proxy = proxied
    await browser_client.start(proxy.url, server.token(), ["feed"], **FAST)
    await browser_client.wait_connected()
    published = [server.publish("feed", {"n": n}) for n in range(5)]
    await until(lambda: len(ids(browser_client, "feed")) == 5, 10, "the first events")

    # events published while the page reloads are read from the stored cursor
    reloading = asyncio.create_task(browser_client.reload())
    published += [await asyncio.to_thread(server.publish, "feed", {"n": n}) for n in range(5, 10)]
    await reloading
    await browser_client.wait_connected()
    published += [server.publish("feed", {"n": n}) for n in range(10, 15)]
    await browser_client.wait_seen("feed", 15)
    await asyncio.sleep(0.3)  # window: a duplicate would arrive now
    # the page's own record: each event exactly once, in order, across the reload
    assert await browser_client.seen_ids("feed") == published, browser_client.logs
    # what reached the test through the page's binding is a subset of it, without dups
    reported = ids(browser_client, "feed")
    assert len(set(reported)) == len(reported) and set(reported) <= set(published)


async def test_page_reloaded_while_transports_are_probed_resumes_from_the_pinned_start(
    server_factory: Any, nginx_factory: Any, browser_client: BrowserClient
) -> None:
    """A fresh page behind a buffering proxy: the WebSocket is refused and the SSE stream is
    held for firstEventTimeout, so no transport has subscribed when the page reloads. The
    start pinned by negotiate is in sessionStorage already: the reloaded page delivers what
    was published during the reload, once, in order (a client that started "from now" per
    attempt lost it)."""
    server = server_factory(heartbeat_interval=1)
    proxy = nginx_factory("buffering", server.port)
    await browser_client.start(
        proxy.url, server.token(), ["quiet"], first_event_timeout=3.0, **FAST
    )
    pinned = await browser_client.ready()
    await until(lambda: browser_client.log_kinds("pinned"), 5, "the pinned log entry")
    assert browser_client.log_kinds("pinned")[0]["detail"] == "negotiate"
    await until(
        lambda: any(e.get("transport") == "sse" for e in browser_client.log_kinds("try")),
        10,
        "the SSE attempt (held by the proxy)",
    )
    assert await browser_client.transport() is None  # nothing subscribed yet

    reloading = asyncio.create_task(browser_client.reload())
    published = [await asyncio.to_thread(server.publish, "quiet", {"n": n}) for n in range(3)]
    await reloading
    # the reloaded client starts from the stored pinned cursor, before any frame
    assert await browser_client._eval("() => window.client.cursor") == pinned
    assert await browser_client.wait_connected(20) == "long-polling"
    await browser_client.wait_seen("quiet", 3)
    await asyncio.sleep(0.5)  # a window in which no duplicate may arrive
    assert await browser_client.seen_ids("quiet") == published, browser_client.logs


async def test_cursor_option_starts_after_the_history_the_page_loaded(
    proxied: tuple[Server, Nginx], browser_client: BrowserClient
) -> None:
    """Load-then-subscribe: the history's ``cursor`` after event 3 of 5 starts the client at
    event 4; the explicit cursor also wins over the one sessionStorage holds by then."""
    server, proxy = proxied
    token = server.token()
    published = [server.publish("feed", {"n": n}) for n in range(5)]
    history = httpx.get(
        server.url + "/v1/channels/feed/history",
        params={"limit": "3"},
        headers={"Authorization": f"Bearer {token}"},
    ).json()
    assert [e["id"] for e in history["events"]] == published[:3]
    await browser_client.start(proxy.url, token, ["feed"], cursor=history["cursor"], **FAST)
    await browser_client.ready()
    await until(lambda: len(ids(browser_client, "feed")) >= 2, 10, "events 4 and 5")
    live = server.publish("feed", {"n": 5})
    await until(lambda: len(ids(browser_client, "feed")) >= 3, 10, "the live event")
    await asyncio.sleep(0.3)  # a window in which nothing else may arrive
    expected = [published[3], published[4], live]
    assert ids(browser_client, "feed") == expected

    # A new client in the page: sessionStorage says "after the live event", the option wins.
    await browser_client._eval("() => window.client.close()")
    await browser_client._eval("(o) => window.startClient(o)", browser_client.options)
    await until(lambda: len(ids(browser_client, "feed")) >= 6, 10, "the redelivery")
    await asyncio.sleep(0.3)  # a window in which nothing else may arrive
    assert ids(browser_client, "feed") == expected * 2


async def test_ready_rejects_on_timeout_and_on_close_before_the_start_is_pinned(
    proxied: tuple[Server, Nginx], browser_client: BrowserClient
) -> None:
    server, proxy = proxied
    server.stop()  # the proxy answers 502: nothing can pin the start
    await browser_client.start(proxy.url, server.token(), ["feed"], module_from_proxy=True, **FAST)
    with pytest.raises(AssertionError, match="timeout: start position not pinned within 300"):
        await browser_client.ready(timeout=0.3)
    outcome = await browser_client._eval(
        """() => {
            const pending = window.client.ready();  // no limit
            window.client.close();
            const after = window.client.ready(60000);
            const code = (p) => p.then(() => "resolved", (e) => `${e.name} ${e.code}`);
            return Promise.all([code(pending), code(after)]);
        }"""
    )
    assert outcome == ["PushError closed", "PushError closed"]
    assert not browser_client.log_kinds("pinned")


async def test_a_stored_cursor_the_server_refuses_is_dropped_but_an_explicit_one_is_fatal(
    proxied: tuple[Server, Nginx], browser_client: BrowserClient
) -> None:
    server, proxy = proxied
    await browser_client.start(
        proxy.url, server.token(), ["feed"], storage_key="feed-state", **FAST
    )
    pinned = await browser_client.ready()
    await browser_client._eval("() => window.client.close()")
    tampered = pinned[:-1] + ("B" if pinned[-1] == "A" else "A")  # fails the segment's CRC
    await browser_client._eval(
        """(c) => {
            const saved = JSON.parse(sessionStorage.getItem("feed-state"));
            sessionStorage.setItem("feed-state", JSON.stringify({ ...saved, cursor: c }));
        }""",
        tampered,
    )
    await browser_client._eval("(o) => window.startClient(o)", browser_client.options)
    assert await browser_client.ready() == pinned  # the next negotiate pinned the top again
    await until(lambda: browser_client.log_kinds("cursor-refused"), 5, "the log entry")
    await browser_client.wait_connected()
    event = server.publish("feed", {"n": 1})
    await until(lambda: ids(browser_client, "feed") == [event], 10, "the event")

    await browser_client._eval("() => window.client.close()")
    outcome = await browser_client._eval(
        """(o) => {
            window.startClient(o);
            return window.client.ready(10000).then(() => "resolved", (e) => e.code);
        }""",
        {**browser_client.options, "cursor": tampered},
    )
    assert outcome == "refused"
    assert await browser_client.state() == "closed"


async def test_outbox_survives_a_reload_while_offline_and_is_sent_once(
    proxied: tuple[Server, Nginx], browser_client: BrowserClient
) -> None:
    server, proxy = proxied
    await browser_client.start(proxy.url, server.token(), ["chat"], module_from_proxy=True, **FAST)
    await browser_client.wait_connected()
    server.stop()
    await browser_client.publish("chat", {"text": "written offline"}, "msg-offline-1")
    assert await browser_client.outbox_size() == 1
    await browser_client.reload()  # the promise is gone; the message is in sessionStorage
    assert await browser_client.outbox_size() == 1
    await asyncio.to_thread(server.start)  # memory:// starts empty: the message is new
    await until(lambda: browser_client.published(), 15, "the restored message's ack")
    outcome = browser_client.published()[0]
    assert outcome["id"] == "msg-offline-1"
    await until(lambda: ids(browser_client, "chat"), 10, "the message's delivery")
    await asyncio.sleep(0.3)  # window: a second delivery would arrive now
    assert ids(browser_client, "chat") == [outcome["eventId"]]
    history = httpx.get(
        server.url + "/v1/channels/chat/history", headers=server.api_headers
    ).json()["events"]
    assert [e["data"] for e in history] == [{"text": "written offline"}]
    assert await browser_client.outbox_size() == 0


async def test_outbox_is_bounded_and_rejects_when_full(
    proxied: tuple[Server, Nginx], browser_client: BrowserClient
) -> None:
    server, proxy = proxied
    server.stop()  # nothing answers: every message waits in the outbox
    await browser_client.start(
        proxy.url, server.token(), ["chat"], module_from_proxy=True, outbox_limit=2, **FAST
    )
    for n in range(3):
        await browser_client.publish("chat", {"n": n}, f"m{n}")
    await until(
        lambda: browser_client.log_kinds("publish-rejected"), 5, "the third publish's rejection"
    )
    rejected = browser_client.log_kinds("publish-rejected")
    assert len(rejected) == 1
    assert '"id":"m2"' in rejected[0]["detail"]
    assert '"code":"outbox-full"' in rejected[0]["detail"]
    assert await browser_client.outbox_size() == 2


async def test_gap_is_surfaced_and_delivery_goes_on_after_it(
    server_factory: Any, nginx_factory: Any, browser_client: BrowserClient
) -> None:
    server = server_factory(retention_max_len=5)
    proxy = nginx_factory("good", server.port)
    await browser_client.start(proxy.url, server.token(), ["feed"], **FAST)
    await browser_client.wait_connected()
    first = server.publish("feed", {"n": 0})
    await until(lambda: ids(browser_client, "feed") == [first], 10, "the first event")
    await browser_client._eval("() => window.client.close()")
    later = [server.publish("feed", {"n": n}) for n in range(1, 21)]  # 15 of them trimmed
    await browser_client._eval("(o) => window.startClient(o)", browser_client.options)
    await until(lambda: len(ids(browser_client, "feed")) >= 6, 10, "the retained events")
    await asyncio.sleep(0.3)  # window: nothing else may arrive
    assert ids(browser_client, "feed") == [first, *later[-5:]]
    gaps = browser_client.log_kinds("gap")
    assert len(gaps) == 1
    assert f'"after":"{first}"' in gaps[0]["detail"]
    assert f'"until":"{later[-6]}"' in gaps[0]["detail"]


@pytest.mark.parametrize("transport", ["websocket", "sse", "long-polling"])
async def test_json_and_binary_events_on_each_native_transport(
    transport: str, proxied: tuple[Server, Nginx], browser_client: BrowserClient
) -> None:
    server, proxy = proxied
    await browser_client.start(proxy.url, server.token(), ["mixed"], transports=[transport], **FAST)
    assert await browser_client.wait_connected() == transport
    httpx.post(
        server.url + "/v1/publish",
        json={
            "messages": [
                {"channel": "mixed", "data": {"text": "é ✓"}},
                {"channel": "mixed", "data_b64": "AAEC/w=="},
            ]
        },
        headers=server.api_headers,
    ).raise_for_status()
    await until(lambda: len(browser_client.events) == 2, 10, "two events")
    text, raw = browser_client.events
    assert text["data"] == {"text": "é ✓"} and not text.get("binary")
    assert raw["binary"] is True
    assert raw["data"] == [0, 1, 2, 255]  # a Uint8Array in the page
    assert {e["transport"] for e in browser_client.events} == {transport}


async def test_websocket_asks_for_batches_and_delivers_a_burst_once_in_order(
    proxied: tuple[Server, Nginx], browser_client: BrowserClient
) -> None:
    """``/v1/ws?batch=1``: a burst reaches the client as text messages holding several
    frames separated by "\\n"; each frame is handled, in order."""
    server, proxy = proxied
    await browser_client.start(
        proxy.url, server.token(), ["burst"], transports=["websocket"], **FAST
    )
    assert await browser_client.wait_connected() == "websocket"
    # Watch the next WebSocket: close this one, the client reconnects (and resumes).
    page = browser_client.page
    assert page is not None
    urls: list[str] = []
    texts: list[str] = []

    def watch(ws: Any) -> None:
        urls.append(ws.url)
        ws.on("framereceived", lambda p: texts.append(p) if isinstance(p, str) else None)

    page.on("websocket", watch)
    await browser_client._eval("() => window.client._active.ws.close()")
    await until(lambda: bool(urls), 10, "a new WebSocket")
    await until(lambda: any('"subscribed"' in t for t in texts), 10, "the resubscription")
    published: list[str] = []
    async with httpx.AsyncClient(headers=server.api_headers) as http:
        for _ in range(3):  # at most 100 messages per publish
            burst = [{"channel": "burst", "data": {"n": n, "s": "a\nb"}} for n in range(100)]
            r = await http.post(server.url + "/v1/publish", json={"messages": burst})
            r.raise_for_status()
            published += [str(e["id"]) for e in r.json()["results"]]
    await until(lambda: len(ids(browser_client, "burst")) >= 300, 15, "the burst")
    await asyncio.sleep(0.2)  # window: a duplicate would arrive now
    assert ids(browser_client, "burst") == published
    assert [e["data"]["n"] for e in browser_client.events] == list(range(100)) * 3
    assert all(e["data"]["s"] == "a\nb" for e in browser_client.events)
    assert "batch=1" in urls[0].split("?", 1)[1].split("&")
    assert any("\n" in t for t in texts), "the server batched nothing: no test of the split"


async def test_a_refused_token_closes_the_client_with_the_reason(
    proxied: tuple[Server, Nginx], browser_client: BrowserClient
) -> None:
    _, proxy = proxied
    await browser_client.start(proxy.url, "not-a-token", ["feed"], **FAST)
    await until(
        lambda: any(e.get("detail") == "closed" for e in browser_client.log_kinds("state")),
        10,
        "the client to close",
    )
    fatal = browser_client.log_kinds("fatal")
    assert fatal and "401" in fatal[0]["detail"]
